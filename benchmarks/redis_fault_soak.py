"""Fault soak on the Redis backend: a worker SIGKILLed, and Redis restarted, mid-run.

WORKERS processes x TASKS tasks make staged OCC calls (``@with_conflict_resolution(occ=...)``,
staging on) on COUNTERS shared counters, as fast as they can. Each call adds 1 to its counter
and appends its own token to the counter's log, in the same committed state, so the final state
says exactly which calls applied. Every caller reports how its call ended. Two runs:

* ``kill``: one worker is SIGKILLed at 40 % of the run (its calls in flight are never reported).
* ``restart``: redis-server (append-only file on) is stopped (SIGTERM) at 40 % of the run and
  started again DOWN_SECONDS later.

Each run prints, and checks (exit status 1 if one fails):

* lost updates: calls reported applied whose token is not in the final state, plus counters
  whose value is not the length of their log (must be 0);
* applied but reported not applied: tokens in the final state whose caller was told "not
  applied" (OperationRejectedError, OCCConflictError, RedisUnavailableError, LeaseLostError,
  RedisDataError) (must be 0);
* hung calls: calls that took longer than HANG_SECONDS (must be 0);
* records not terminal after recovery: records still pending or executing in Redis once the
  surviving workers are done and one lease has passed (orphans reaped) (must be 0);
* the longest stall of any counter after the fault (from the kill, or from Redis answering
  again): the longest time without a successful call on it, against lease_ms;
* outcome unknown (OutcomeUnknownError) and the calls of the killed worker, with how many of
  them applied, for information.

    .venv/bin/python benchmarks/redis_fault_soak.py             # 2 x 30 s
    .venv/bin/python benchmarks/redis_fault_soak.py --quick     # 2 x 8 s

`run_mode(mode, seconds, ...)` returns the figures as a dict; tests/backends/test_fault_soak.py
runs both modes for a few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import redis  # noqa: E402

from contend import (  # noqa: E402
    CleanupConfig,
    CleanupStrategy,
    Entity,
    OCCConfig,
    OCCConflictError,
    OperationRejectedError,
    OutcomeUnknownError,
    Runtime,
    with_conflict_resolution,
)
from contend.backends.redis import (  # noqa: E402
    LeaseLostError,
    RedisBackend,
    RedisDataError,
    RedisUnavailableError,
)
from contend.backends.redis.keys import Keys  # noqa: E402

WORKERS = 4
TASKS = 16
COUNTERS = 8
LEASE_MS = 500
SOCKET_TIMEOUT = 0.5
SETTLE_TIMEOUT = 5.0
HANG_SECONDS = 15.0
DOWN_SECONDS = 0.5
FAULT_AT = 0.4
NOT_APPLIED = {"rejected", "occ", "unavailable", "lease", "data"}


class Counter(Entity):
    value: int = 0
    log: str = ""


# redis-server ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the redis-server child: get SIGTERM when this process dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Server:
    """redis-server with an append-only file, stopped gracefully and started again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed: run `make redis-server` first")
        self.binary = binary
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="contend-soak-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(
            [self.binary, *args], stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(1000):
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: the append-only file is written out first
            self.proc.wait(30)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# the workers -------------------------------------------------------------------------------------
class Job(NamedTuple):
    """What one worker process is given (picklable, for the spawned process)."""

    url: str
    prefix: str
    wid: int
    counter_ids: list[str]
    go: Any
    seconds: float
    reports: Any
    lease_ms: int


def worker(job: Job) -> None:
    """One worker process: TASKS tasks calling as fast as they can for `seconds` after `go`."""
    asyncio.run(_work(job))


async def _work(job: Job) -> None:
    url, prefix, wid, counter_ids, go, seconds, reports, lease_ms = job
    backend = RedisBackend.from_url(
        url,
        prefix=prefix,
        lease_ms=lease_ms,
        socket_timeout=SOCKET_TIMEOUT,
        connect_timeout=SOCKET_TIMEOUT,
        settle_timeout=SETTLE_TIMEOUT,
    )
    rt = Runtime(backend=backend, memory_probe=lambda: 0.0, name=f"soak-{wid}")
    cleanup = CleanupConfig(
        strategy=CleanupStrategy.DEFERRED, retention_minutes=1, cleanup_check_interval_seconds=10
    )

    @with_conflict_resolution(occ=OCCConfig(max_retries=3), cleanup=cleanup, runtime=rt)
    async def add(counter: Counter, token: str) -> None:
        counter.value += 1
        counter.log += token + "."

    counters = [Counter(ecs_id=uuid.UUID(i)) for i in counter_ids]
    for c in counters:
        await rt.registry.register(c)
    reports.put(("ready", wid))
    await asyncio.to_thread(go.wait, 120)
    stop = time.time() + seconds
    seq = 0

    async def task(n: int) -> None:
        nonlocal seq
        rng = random.Random(wid * 1000 + n)
        while time.time() < stop:
            seq += 1
            token = f"{wid:x}{seq:x}"
            index = rng.randrange(len(counters))
            start = time.time()
            reports.put(("start", token, index, start))
            call = asyncio.ensure_future(add(counters[index], token))
            done, _ = await asyncio.wait({call}, timeout=HANG_SECONDS)
            if not done:
                reports.put(("hung", token, index, start))
                await asyncio.wait({call})
            kind = _kind(call)
            reports.put(("end", token, index, start, time.time(), kind))
            if kind == "unavailable":
                await asyncio.sleep(0.02)

    await asyncio.gather(*(task(n) for n in range(TASKS)))
    drained = await backend.drain(30)
    reports.put(("done", wid, backend.footprint(), drained))
    await rt.aclose()


def _kind(call: asyncio.Future[None]) -> str:
    exc = call.exception()
    if exc is None:
        return "ok"
    for kind, types in (
        ("rejected", OperationRejectedError),
        ("occ", OCCConflictError),
        ("unavailable", RedisUnavailableError),
        ("lease", LeaseLostError),
        ("data", RedisDataError),
        ("unknown", OutcomeUnknownError),
    ):
        if isinstance(exc, types):
            return kind
    return f"other:{type(exc).__name__}"


# one run ------------------------------------------------------------------------------------------
def run_mode(
    mode: str,
    seconds: float = 30.0,
    *,
    lease_ms: int = LEASE_MS,
    workers: int = WORKERS,
    progress: bool = False,
) -> dict[str, Any]:
    """One soak run with fault `mode` ("kill" or "restart"); returns its figures."""
    if mode not in ("kill", "restart"):
        raise ValueError(f"mode must be 'kill' or 'restart', got {mode!r}")
    server = _Server()
    server.start()
    ctx = mp.get_context("spawn")
    reports: Any = ctx.Queue()
    go = ctx.Event()
    prefix = f"soak{uuid.uuid4().hex[:8]}"
    counter_ids = [str(uuid.uuid4()) for _ in range(COUNTERS)]
    procs = [
        ctx.Process(
            target=worker,
            args=(Job(server.url, prefix, wid, counter_ids, go, seconds, reports, lease_ms),),
        )
        for wid in range(workers)
    ]
    messages: list[tuple[Any, ...]] = []
    stop_collecting = threading.Event()

    def collect() -> None:
        while not stop_collecting.is_set() or not reports.empty():
            try:
                messages.append(reports.get(timeout=0.1))
            except queue.Empty:
                continue

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    fault: dict[str, float] = {}
    try:
        for p in procs:
            p.start()
        deadline = time.time() + 120
        while sum(m[0] == "ready" for m in list(messages)) < workers:
            if time.time() > deadline:
                raise RuntimeError("the soak workers did not start")
            time.sleep(0.05)
        began = fault["began"] = time.time()
        go.set()
        time.sleep(seconds * FAULT_AT)
        if mode == "kill":
            os.kill(procs[0].pid or 0, signal.SIGKILL)
            fault["at"] = fault["recovered"] = time.time()
        else:
            fault["at"] = time.time()
            server.stop()
            time.sleep(DOWN_SECONDS)
            server.start()
            fault["recovered"] = time.time()
        if progress:
            print(f"{mode}: fault at {fault['at'] - began:.1f} s", file=sys.stderr)
        for p in procs:
            p.join(seconds + HANG_SECONDS + 120)
        ended = began + seconds  # no call starts after this
        stop_collecting.set()
        collector.join()
        recovery = _recover(server.url, prefix, lease_ms)
        state = _final_state(server.port, prefix, counter_ids)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        stop_collecting.set()
        server.remove()
    result = _account(messages, state, fault, ended, lease_ms, killed=0 if mode == "kill" else -1)
    result.update(recovery)
    result.update(mode=mode, seconds=seconds, lease_ms=lease_ms, workers=workers)
    result["ok"] = not _failures(result)
    result["failures"] = _failures(result)
    return result


def _recover(url: str, prefix: str, lease_ms: int) -> dict[str, Any]:
    """After the workers: one more lease for orphans to fall due, then a live worker reaps them;
    what is still pending or executing then is not terminal after recovery."""

    async def go() -> dict[str, Any]:
        backend = RedisBackend.from_url(url, prefix=prefix, lease_ms=lease_ms)
        rt = Runtime(backend=backend, memory_probe=lambda: 0.0, name="soak-monitor")
        started = time.monotonic()
        client = backend.client
        keys = backend.keys

        async def total(command: str, suffix: str) -> int:
            pipe = client.pipeline(transaction=False)
            for b in keys.all():
                getattr(pipe, command)(keys.tag(b) + suffix)
            return sum(int(n or 0) for n in await pipe.execute())

        left = -1
        while time.monotonic() - started < 3 * lease_ms / 1000 + 5:
            await backend.reap_orphans()
            left = await total("scard", "os:pending") + await total("scard", "os:executing")
            if left == 0 and not await total("zcard", "inflight"):
                break
            await asyncio.sleep(lease_ms / 4000)
        await rt.aclose()
        return {
            "records_not_terminal": left,
            "recovery_seconds": round(time.monotonic() - started, 3),
        }

    return asyncio.run(go())


def _final_state(port: int, prefix: str, counter_ids: list[str]) -> list[Counter]:
    client = redis.Redis(port=port, decode_responses=True)
    out = []
    for i in counter_ids:
        raw = client.hget(Keys(prefix).key(i, f"e:{i}"), "d")
        out.append(Counter.model_validate_json(raw) if raw else Counter(ecs_id=uuid.UUID(i)))
    client.close()
    return out


def _account(
    messages: list[tuple[Any, ...]],
    state: list[Counter],
    fault: dict[str, float],
    ended: float,
    lease_ms: int,
    killed: int,
) -> dict[str, Any]:
    started: dict[str, tuple[int, float]] = {}
    ends: dict[str, tuple[int, float, float, str]] = {}
    hung = 0
    footprints: list[dict[str, int]] = []
    undrained = 0
    for m in messages:
        if m[0] == "start":
            started[m[1]] = (m[2], m[3])
        elif m[0] == "end":
            ends[m[1]] = (m[2], m[3], m[4], m[5])
        elif m[0] == "hung":
            hung += 1
        elif m[0] == "done":
            footprints.append(m[2])
            undrained += not m[3]
    applied: set[str] = set()
    inconsistent = 0
    for c in state:
        tokens = [t for t in c.log.split(".") if t]
        applied.update(tokens)
        inconsistent += c.value != len(tokens) or len(set(tokens)) != len(tokens)
    kinds: dict[str, int] = {}
    for _, _, _, kind in ends.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    said_applied = {t for t, e in ends.items() if e[3] == "ok"}
    said_not = {t for t, e in ends.items() if e[3] in NOT_APPLIED}
    unknown = {t for t, e in ends.items() if e[3] == "unknown"}
    unreported = set(started) - set(ends)
    never_made = applied - set(started)
    slowest = max((e[2] - e[1] for e in ends.values()), default=0.0)
    return {
        "calls": len(ends),
        "succeeded": len(said_applied),
        **{f"ended_{k}": n for k, n in sorted(kinds.items()) if k != "ok"},
        "lost_updates": len(said_applied - applied) + inconsistent,
        "applied_but_reported_not_applied": len(said_not & applied),
        "applied_without_a_caller": len(never_made),
        "outcome_unknown": len(unknown),
        "outcome_unknown_applied": len(unknown & applied),
        "unreported_calls_of_killed_worker": len(unreported),
        "unreported_applied": len(unreported & applied),
        "hung_calls": hung,
        "slowest_call_seconds": round(slowest, 3),
        "longest_stall_ms": round(_longest_stall(ends, fault["recovered"], ended) * 1000, 1),
        "longest_gap_before_fault_ms": round(
            _longest_stall(ends, fault["began"] + 0.5, fault["at"]) * 1000, 1
        ),
        "worker_state_left": sum(sum(f.values()) for f in footprints),
        "workers_with_writes_left": undrained,
    }


def _longest_stall(
    ends: dict[str, tuple[int, float, float, str]], since: float, until: float
) -> float:
    """The longest time any counter went without a successful call between `since` (the kill,
    or Redis answering again) and `until` (the end of the run)."""
    times: dict[int, list[float]] = {}
    for index, _, end, kind in ends.values():
        if kind == "ok" and since <= end <= until:
            times.setdefault(index, []).append(end)
    longest = 0.0
    for index in range(COUNTERS):
        points = [since, *sorted(times.get(index, [])), until]
        longest = max(longest, *(b - a for a, b in itertools.pairwise(points)))
    return longest


def _failures(result: dict[str, Any]) -> list[str]:
    out = []
    for key in (
        "lost_updates",
        "applied_but_reported_not_applied",
        "applied_without_a_caller",
        "hung_calls",
        "records_not_terminal",
        "worker_state_left",
        "workers_with_writes_left",
    ):
        if result.get(key):
            out.append(f"{key} = {result[key]}")
    others = [k for k in result if k.startswith("ended_other")]
    out += [f"{k} = {result[k]}" for k in others]
    return out


# the benchmark -----------------------------------------------------------------------------------
def run(quick: bool) -> list[dict[str, Any]]:
    from _common import row

    seconds = 8.0 if quick else 30.0
    rows = []
    for mode in ("kill", "restart"):
        r = run_mode(mode, seconds, progress=True)
        for key in (
            "calls",
            "succeeded",
            "lost_updates",
            "applied_but_reported_not_applied",
            "hung_calls",
            "records_not_terminal",
            "outcome_unknown",
            "unreported_calls_of_killed_worker",
        ):
            target = "<= 0" if key in _ZERO else None
            rows.append(row(f"fault soak ({mode}): {key}", r.get(key, 0), "calls", target=target))
        rows.append(
            row(
                f"fault soak ({mode}): longest stall after the fault",
                r["longest_stall_ms"],
                "ms",
                baseline=r["lease_ms"],
                note="baseline: lease_ms",
            )
        )
        rows.append(row(f"fault soak ({mode}): recovery of records", r["recovery_seconds"], "s"))
        if r["failures"]:
            failed = "; ".join(r["failures"])
            rows.append(row(f"fault soak ({mode}): FAILED", None, "", note=failed))
    return rows


_ZERO = {"lost_updates", "applied_but_reported_not_applied", "hung_calls", "records_not_terminal"}


def _main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 x 8 s instead of 2 x 30 s")
    parser.add_argument("--seconds", type=float, default=None, help="length of each run")
    parser.add_argument("--json", metavar="PATH", help="also write both runs as JSON")
    args = parser.parse_args()
    seconds = args.seconds or (8.0 if args.quick else 30.0)
    results = [run_mode(mode, seconds, progress=True) for mode in ("kill", "restart")]
    keys = [k for k in results[0] if k not in ("failures",)]
    keys += [k for k in results[1] if k not in keys and k != "failures"]
    width = max(map(len, keys))
    print(f"{'figure':<{width}}  {'kill':>12}  {'restart':>12}")
    for k in keys:
        print(f"{k:<{width}}  {results[0].get(k, '-')!s:>12}  {results[1].get(k, '-')!s:>12}")
    for r in results:
        for failure in r["failures"]:
            print(f"FAILED ({r['mode']}): {failure}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    _main()
