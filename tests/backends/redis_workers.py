"""The redis-server harness and the worker processes of the Redis tests (spawned workers)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
import redis

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    OCCConfig,
    OCCConflictError,
    OperationRejectedError,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)
from contend.backends.redis import RedisBackend

INSTALL_HINT = (
    "redis-server is not installed: the Redis backend tests need a real server. Install it with "
    "`make redis-server` or `sudo apt-get update && sudo apt-get install -y redis-server`."
)


def _die_with_parent() -> None:
    """In the redis-server child: get SIGTERM when the test process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server subprocess on 127.0.0.1; can be stopped, killed and started again.

    `aof=True` keeps its data in an append-only file (fsync on every write) in a directory of
    its own, so a restart (graceful or SIGKILL) comes back with every acknowledged write.
    DEBUG (SLEEP) is enabled for local connections, for fault tests. `extra` options are
    passed on to redis-server (a cluster node's, say).
    """

    def __init__(
        self, *, aof: bool = False, data_dir: str | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.aof = aof
        self.extra = extra
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="contend-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self._remove)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else []
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *persistence,
                "--dir",
                self.data_dir,
                "--enable-debug-command",
                "local",
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        """Graceful: SIGTERM (an AOF server writes everything out first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server dies on the spot."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _remove(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the test session (each test uses a key prefix of its own)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


class Account(Entity):
    balance: int = 0


class Slot(Entity):
    value: int = 0


def _runtime(url: str, prefix: str, lease_ms: int = 2000) -> Runtime:
    return Runtime(
        backend=RedisBackend.from_url(url, prefix=prefix, lease_ms=lease_ms),
        memory_probe=lambda: 0.0,
    )


def deposits(
    url: str, prefix: str, account_ids: list[str], calls: int, seed: int
) -> dict[str, Any]:
    """`calls` OCC deposits spread over the shared accounts; returns what committed and how each
    call ended."""

    async def main() -> dict[str, Any]:
        rt = _runtime(url, prefix)
        none = CleanupConfig(strategy=CleanupStrategy.NONE)
        occ = OCCConfig(max_retries=50, base_delay_ms=0.5, max_delay_ms=20.0)

        @with_conflict_resolution(pre_ecs=False, occ=occ, cleanup=none, runtime=rt)
        async def deposit(acct: Account, amount: int) -> None:
            acct.balance += amount

        rng = random.Random(seed)
        accounts = [Account(ecs_id=UUID(i)) for i in account_ids]
        committed = 0
        ended = {"succeeded": 0, "failed": 0, "other": 0}

        async def one(acct: Account, amount: int) -> None:
            nonlocal committed
            try:
                await deposit(acct, amount)
            except OCCConflictError:
                ended["failed"] += 1
            except Exception:
                ended["other"] += 1
            else:
                committed += amount
                ended["succeeded"] += 1

        batch = 10
        for start in range(0, calls, batch):
            await asyncio.gather(
                *(
                    one(rng.choice(accounts), rng.randint(1, 100))
                    for _ in range(min(batch, calls - start))
                )
            )
        await rt.aclose()
        return {"committed": committed, **ended}

    return asyncio.run(main())


def contend_once(
    url: str, prefix: str, target: str, priority: int, window_ms: int, barrier: Any
) -> dict[str, Any]:
    """One staged call on the shared target, released together with the other workers."""

    async def main() -> dict[str, Any]:
        rt = _runtime(url, prefix)
        slot = Slot(ecs_id=UUID(target))
        await rt.registry.register(slot)

        @with_conflict_resolution(
            pre_ecs=PreECSConfig(staging_timeout_ms=window_ms),
            cleanup=CleanupConfig(strategy=CleanupStrategy.NONE),
            runtime=rt,
        )
        async def write(s: Slot, value: int) -> int:
            s.value = value
            return value

        await asyncio.to_thread(barrier.wait, 10)
        try:
            await write.with_priority(priority)(slot, priority)
            out: dict[str, Any] = {"won": True}
        except OperationRejectedError as exc:
            out = {"won": False, "winner": str(exc.winner_id)}
        await rt.aclose()
        return out

    return asyncio.run(main())


def hold_forever(url: str, prefix: str, target: str, lease_ms: int, started: Any) -> None:
    """Win the target, tell the parent, then hang inside the call until killed."""

    async def main() -> None:
        rt = _runtime(url, prefix, lease_ms)
        slot = Slot(ecs_id=UUID(target))

        @with_conflict_resolution(
            cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE), runtime=rt
        )
        async def hang(s: Slot) -> None:
            started.set()
            await asyncio.sleep(3600)

        await hang(slot)

    asyncio.run(main())


def make_zombies(url: str, prefix: str, target: str, rounds: int, cap: int) -> int:
    """Produce rejected zombies on one target (pairs of same-tick calls); returns how many."""

    async def main() -> int:
        rt = _runtime(url, prefix)
        slot = Slot(ecs_id=UUID(target))
        cfg = CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=cap)

        @with_conflict_resolution(cleanup=cfg, runtime=rt)
        async def write(s: Slot) -> None:
            s.value += 1

        rejected = 0
        for _ in range(rounds):
            res = await asyncio.gather(write(slot), write(slot), return_exceptions=True)
            rejected += sum(isinstance(r, OperationRejectedError) for r in res)
        await rt.aclose()
        return rejected

    return asyncio.run(main())


def hold_and_queue(
    url: str, prefix: str, target: str, lease_ms: int, started: Any, wait_ms: float = 0
) -> None:
    """Win the target and hang inside the call, with a second call of this worker queued in the
    target's next window (at the highest priority; waiting up to `wait_ms` under the wait
    policy when not 0), until killed."""

    async def main() -> None:
        rt = _runtime(url, prefix, lease_ms)
        slot = Slot(ecs_id=UUID(target))
        inside = asyncio.Event()

        @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.NONE), runtime=rt)
        async def hang(s: Slot) -> None:
            inside.set()
            await asyncio.sleep(3600)

        first = asyncio.ensure_future(hang(slot))
        await inside.wait()
        queued = asyncio.ensure_future(hang.with_priority(10).with_max_wait(wait_ms)(slot))
        started.set()
        await asyncio.gather(first, queued)

    asyncio.run(main())


def waiting_transfers(
    url: str, prefix: str, source: str, dests: list[str], calls: int, barrier: Any
) -> dict[str, Any]:
    """`calls` transfers out of the one shared `source` account under the wait policy (half of
    them gathered at once, half one per tick), released together with the other workers;
    returns how each ended and how much each successful one moved."""

    async def main() -> dict[str, Any]:
        rt = _runtime(url, prefix)
        occ = OCCConfig(max_retries=100, base_delay_ms=0.5, max_delay_ms=10.0)
        wait = PreECSConfig(conflict_policy="wait", max_wait_ms=60_000)

        @with_conflict_resolution(pre_ecs=wait, occ=occ, cleanup="immediate", runtime=rt)
        async def transfer(src: Account, dst: Account, amount: int) -> None:
            src.balance -= amount
            await asyncio.sleep(0)
            dst.balance += amount

        src = Account(ecs_id=UUID(source))
        targets = [Account(ecs_id=UUID(d)) for d in dests]
        for a in (src, *targets):
            rt.backend.keys.co_locate(a.ecs_id, source)  # type: ignore[attr-defined]
            await rt.registry.register(a)
        ended = {"succeeded": 0, "rejected": 0, "other": 0, "moved": 0}

        async def one(i: int) -> None:
            amount = 1 + i % 9
            try:
                await transfer(src, targets[i % len(targets)], amount)
            except OperationRejectedError:
                ended["rejected"] += 1
            except Exception:
                ended["other"] += 1
            else:
                ended["succeeded"] += 1
                ended["moved"] += amount

        await asyncio.to_thread(barrier.wait, 10)
        tasks = [asyncio.ensure_future(one(i)) for i in range(calls // 2)]
        for i in range(calls // 2, calls):
            tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        await rt.aclose()
        return ended

    return asyncio.run(main())
