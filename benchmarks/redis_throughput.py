"""Redis backend throughput with 1, 2 and 4 worker processes, next to the in-memory runtime.

Each worker process runs TASKS concurrent tasks; each task makes sequential staged OCC deposits
(``occ=True``, staging on, the default ``staging_timeout_ms=0``) on an account of its own, so
calls are uncontended and the figure is what the coordination itself costs. The in-memory
runtime runs the same tasks in one process (the baseline). A local redis-server is started on a
free port for the run.

Round trips per call are counted by a wrapper around the backend's writes (``Batcher.execute``:
the commands of one loop tick go in one pipelined write, one round trip; ``INFO commandstats``
would also count the commands inside the Lua scripts), for single sequential calls in three shapes:
OCC only (staging off), staged with the default 2 ms cross-process window, and staged with
``min_window_ms=0``; and for WAITERS calls under the wait policy on one account, all gathered
at once or submitted one per loop tick (a call carried from window to window must not cost a
round trip per window it waits through).
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from _common import Account, Row, main, row

from contend import CleanupStrategy, PreECSConfig, Runtime, with_conflict_resolution
from contend.backends.redis import RedisBackend, scripts

TASKS = 32
WAITERS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed: run `make redis-server` first")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    return proc, port


def _deposit_fn(rt: Runtime, staged: bool = True) -> Any:
    @with_conflict_resolution(pre_ecs=staged, occ=True, cleanup=CleanupStrategy.NONE, runtime=rt)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    return deposit


async def _drive(rt: Runtime, start: float, seconds: float) -> int:
    deposit = _deposit_fn(rt)
    accounts = [Account() for _ in range(TASKS)]
    for a in accounts:
        await rt.registry.register(a)
    await asyncio.sleep(max(0.0, start - time.time()))
    stop = start + seconds
    done = 0

    async def task(acct: Account) -> None:
        nonlocal done
        while time.time() < stop:
            await deposit(acct, 1)
            done += 1

    await asyncio.gather(*(task(a) for a in accounts))
    return done


def _worker(url: str, prefix: str, start: float, seconds: float) -> int:
    async def go() -> int:
        rt = Runtime(backend=RedisBackend.from_url(url, prefix=prefix), memory_probe=lambda: 0.0)
        try:
            return await _drive(rt, start, seconds)
        finally:
            await rt.aclose()

    return asyncio.run(go())


def _memory_ops(seconds: float) -> float:
    rt = Runtime(memory_probe=lambda: 0.0)
    done = asyncio.run(_drive(rt, time.time(), seconds))
    return done / seconds


class _Counter:
    """Counts the writes the backend sends (one per pipeline: the commands of one loop tick go
    together), but not lease renewals, which run on a timer, not per call."""

    def __init__(self, backend: RedisBackend) -> None:
        self.sent = 0
        send = backend.conn.batch.execute
        renew = hashlib.sha1(scripts.RENEW.encode()).hexdigest()

        async def counted(commands: list[tuple[Any, ...]]) -> list[Any]:
            if any(c[:2] != ("EVALSHA", renew) for c in commands):
                self.sent += 1
            return await send(commands)

        backend.conn.batch.execute = counted  # type: ignore[method-assign]


def _round_trips(port: int, calls: int, *, staged: bool, min_window_ms: int) -> float:
    async def go() -> float:
        backend = RedisBackend.from_url(
            f"redis://127.0.0.1:{port}/0",
            prefix=f"rt{staged}{min_window_ms}",
            min_window_ms=min_window_ms,
        )
        counter = _Counter(backend)
        rt = Runtime(backend=backend, memory_probe=lambda: 0.0)
        deposit = _deposit_fn(rt, staged)
        acct = Account()
        await deposit(acct, 1)  # first use: registration, script loading, pub/sub subscribe
        await backend.flush()
        before = counter.sent
        for _ in range(calls):
            await deposit(acct, 1)
        await backend.flush()
        sent = counter.sent - before
        await rt.aclose()
        return sent / calls

    return asyncio.run(go())


def _waiting_round_trips(port: int, calls: int, *, one_by_one: bool) -> float:
    async def go() -> float:
        backend = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", prefix=f"w{one_by_one}")
        counter = _Counter(backend)
        rt = Runtime(backend=backend, memory_probe=lambda: 0.0)
        wait = PreECSConfig(conflict_policy="wait", max_wait_ms=60_000)

        @with_conflict_resolution(pre_ecs=wait, occ=True, cleanup=CleanupStrategy.NONE, runtime=rt)
        async def deposit(acct: Account, amount: int) -> None:
            acct.balance += amount

        acct = Account()
        await deposit(acct, 1)
        await backend.flush()
        before = counter.sent
        tasks = []
        for _ in range(calls):
            tasks.append(asyncio.ensure_future(deposit(acct, 1)))
            if one_by_one:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await backend.flush()
        sent = counter.sent - before
        await rt.aclose()
        return sent / calls

    return asyncio.run(go())


def run(quick: bool) -> list[Row]:
    seconds = 1.0 if quick else 3.0
    rt_calls = 100 if quick else 500
    proc, port = _start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    rows: list[Row] = []
    try:
        memory = _memory_ops(seconds)
        rows.append(row("memory staged OCC deposits", memory, "ops/s", note=f"{TASKS} tasks"))
        ctx = mp.get_context("spawn")
        single: float | None = None
        with ProcessPoolExecutor(4, mp_context=ctx) as pool:
            list(pool.map(abs, range(8)))  # warm the workers up before timing
            for n in (1, 2, 4):
                start = time.time() + 1.0
                futs = [pool.submit(_worker, url, f"bench{n}", start, seconds) for _ in range(n)]
                ops = sum(f.result() for f in futs) / seconds
                if single is None:
                    single = ops
                rows.append(
                    row(
                        f"redis staged OCC deposits, {n} process(es)",
                        ops,
                        "ops/s",
                        baseline=memory if n == 1 else single,
                        note=(
                            "baseline: in-memory runtime"
                            if n == 1
                            else "baseline: 1 Redis process (ratio = scaling)"
                        ),
                    )
                )
        occ = _round_trips(port, rt_calls, staged=False, min_window_ms=2)
        rows.append(
            row("round trips per uncontended OCC call (staging off)", occ, "RT", target="<= 1")
        )
        staged = _round_trips(port, rt_calls, staged=True, min_window_ms=2)
        rows.append(
            row(
                "round trips per staged OCC call, 2 ms window",
                staged,
                "RT",
                note="join + resolve (staging: 2) + the commit, which also releases the target "
                "and ends the record",
            )
        )
        staged0 = _round_trips(port, rt_calls, staged=True, min_window_ms=0)
        rows.append(
            row(
                "round trips per staged OCC call, min_window_ms=0",
                staged0,
                "RT",
                note="join resolves at once (staging: 1) + the commit (release and end fused)",
            )
        )
        rows.append(
            row(
                "staging round trips per staged call",
                staged - occ,
                "RT",
                target="<= 2",
                note="total minus the OCC commit (release and record end ride on it)",
            )
        )
        for one_by_one in (False, True):
            waiting = _waiting_round_trips(port, WAITERS, one_by_one=one_by_one)
            how = "submitted one per tick" if one_by_one else "gathered"
            rows.append(
                row(
                    f"round trips per waiting OCC call, {WAITERS} {how} on one account",
                    waiting,
                    "RT",
                    target="<= 3",
                    note="wait policy: join (shared when gathered), one resolve for the window "
                    "that decides the call, the commit; a carried call is not woken",
                )
            )
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


if __name__ == "__main__":
    main(run, __doc__ or "")
