"""Runtimes with zombies to look at, and a way to drive the console as an ASGI server does."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    FakeClock,
    OperationPriority,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.backends.redis import RedisBackend
from contend.http import ASGIApp
from contend.record import Record
from contend.testing import Account

OPS = Path(__file__).resolve().parents[2] / "ops"
if str(OPS) not in sys.path:
    sys.path.insert(0, str(OPS))  # ops/chromium.py: the browser the tests and the screenshot use
BACKENDS = Path(__file__).resolve().parents[1] / "backends"
if str(BACKENDS) not in sys.path:
    sys.path.insert(0, str(BACKENDS))  # redis_workers.py: the redis-server of the tests

from redis_workers import RedisServer, redis_server  # noqa: E402

__all__ = ["redis_server"]  # the session's redis-server, a fixture of redis_workers


@pytest.fixture(params=["memory", "redis"])
async def any_runtime(
    request: pytest.FixtureRequest, runtime: Runtime, clock: FakeClock
) -> AsyncIterator[Runtime]:
    """The test's runtime (on `clock`) on each backend: the console reads both alike."""
    if request.param == "memory":
        yield runtime
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    backend = RedisBackend.from_url(server.url, prefix=f"c{uuid.uuid4().hex[:12]}")
    rt = Runtime(backend=backend, clock=clock, memory_probe=lambda: 0.0)
    yield rt
    rt.cleanup.stop()
    await rt.aclose()


async def written(rt: Runtime) -> None:
    """Let a backend that writes behind (Redis: a handler's changes) catch up."""
    flush = getattr(rt.backend, "flush", None)
    if flush is not None:
        await flush()


async def book_zombies(
    rt: Runtime,
    n: int,
    *,
    targets: int = 10,
    ties: int = 1,
    function: str = "deposit",
    status: OperationStatus = OperationStatus.REJECTED,
) -> list[uuid.UUID]:
    """`n` zombies booked straight into the backend (no calls: fast on Redis), spread over
    `targets` new targets, `ties` of them completing at each moment of the runtime's clock
    (which moves 1 ms between moments); returns the targets."""
    ids = [uuid.uuid4() for _ in range(targets)]
    clock = rt.clock
    assert isinstance(clock, FakeClock)
    backend = rt.backend
    keep_all = CleanupConfig(
        strategy=CleanupStrategy.NONE,
        max_zombie_count_per_target=10_000,
        immediate_cleanup_priorities=[],
        debug_retention_priorities=[],
    )
    moments = []
    for i in range(n):
        if i and i % ties == 0:
            clock.advance(0.001)
        moments.append(clock.now())

    async def book(i: int) -> None:  # a task of its own, as a call is
        now = moments[i]
        op = Record(
            function, (ids[i % targets],), "Account", OperationPriority.NORMAL, keep_all, now
        )
        await backend.add_operation(op)
        if status is not OperationStatus.REJECTED:
            backend.set_status(op, OperationStatus.EXECUTING, now)
        backend.set_status(op, status, now)
        op.mark(op.error_message, None, CleanupStrategy.NONE)
        await backend.add_zombie(op, None, 10_000)

    for start in range(0, n, 50):  # under the client's pool of connections
        await asyncio.gather(*(book(i) for i in range(start, min(n, start + 50))))
    await written(rt)
    return ids


def keep(strategy: str = "none", **extra: Any) -> CleanupConfig:
    """A cleanup config that keeps every zombie (no cap, no force, no priority overrides)."""
    options: dict[str, Any] = {
        "strategy": strategy,
        "max_zombie_count_per_target": 10_000,
        "force_cleanup_threshold": 100_000,
        "immediate_cleanup_priorities": [],
        "debug_retention_priorities": [],
        "aggressive_on_memory_pressure": False,
        **extra,
    }
    if strategy in ("deferred", "lazy"):
        options.setdefault("retention_minutes", 30)
    return CleanupConfig(**options)


async def contend_on(
    rt: Runtime,
    accounts: Sequence[Account],
    rounds: int,
    *,
    width: int = 3,
    cleanup: CleanupConfig | None = None,
    name: str = "deposit",
    priority: int = OperationPriority.NORMAL,
) -> int:
    """`rounds` times, `width` concurrent calls on each account: width - 1 rejections each."""

    async def deposit(account: Account) -> None:
        await asyncio.sleep(0)

    deposit.__qualname__ = deposit.__name__ = name
    fn = with_conflict_resolution(runtime=rt, cleanup=cleanup or keep(), priority=priority)(deposit)
    for _ in range(rounds):
        await asyncio.gather(
            *(fn(a) for a in accounts for _ in range(width)), return_exceptions=True
        )
    return rounds * len(accounts) * (width - 1)


async def fail_on(
    rt: Runtime,
    account: Account,
    n: int,
    *,
    name: str,
    message: str,
    cleanup: CleanupConfig | None = None,
) -> None:
    """`n` failed calls of a function called `name` raising `message`."""

    async def broken(acct: Account) -> None:
        raise ValueError(message)

    broken.__qualname__ = broken.__name__ = name
    fn = with_conflict_resolution(runtime=rt, cleanup=cleanup or keep())(broken)
    for _ in range(n):
        with contextlib.suppress(ValueError):
            await fn(account)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    cookies: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode()


async def call(
    app: ASGIApp,
    path: str,
    *,
    method: str = "GET",
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    root_path: str = "",
) -> Reply:
    """Drive `app` the way an ASGI server does (path is the full path, query included)."""
    path, _, query = path.partition("?")
    body = urlencode(form).encode() if form is not None else b""
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw.append((b"host", b"console.test"))
    if form is not None:
        raw.append((b"content-type", b"application/x-www-form-urlencoded"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": root_path,
        "headers": raw,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    hdrs: dict[str, str] = {}
    cookies = []
    for k, v in start["headers"]:
        if k == b"set-cookie":
            cookies.append(v.decode())
        hdrs[k.decode()] = v.decode()
    return Reply(start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:]), cookies)
