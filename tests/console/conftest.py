"""Runtimes with zombies to look at, and a way to drive the console as an ASGI server does."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from contend import (
    CleanupConfig,
    OperationPriority,
    Runtime,
    with_conflict_resolution,
)
from contend.http import ASGIApp
from contend.testing import Account

OPS = Path(__file__).resolve().parents[2] / "ops"
if str(OPS) not in sys.path:
    sys.path.insert(0, str(OPS))  # ops/chromium.py: the browser the tests and the screenshot use


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
