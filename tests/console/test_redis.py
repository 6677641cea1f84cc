"""The console on the current RedisBackend (read through Backend.zombies until the backend has
a paged query): a standalone console sees the zombies a worker left in Redis and acts on them."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from conftest import Account, call, contend_on
from contend import FakeClock, Runtime
from contend.backends.redis import RedisBackend
from contend.console import make_console
from contend.console.query import ListedZombies

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from redis_workers import RedisServer

TOKEN = "redis-console-test-token"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def worker_and_console(redis_server: RedisServer) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """A worker's runtime and the console's own runtime, on one Redis prefix."""
    made = [
        Runtime(
            backend=RedisBackend.from_url(redis_server.url, prefix="console", lease_ms=2000),
            clock=FakeClock(),
            memory_probe=lambda: 0.0,
        )
        for _ in range(2)
    ]
    yield made[0], made[1]
    for rt in made:
        await rt.aclose()


async def test_a_standalone_console_sees_and_removes_a_workers_zombies(worker_and_console):
    worker, console_rt = worker_and_console
    account = Account()
    await contend_on(worker, [account], 1, width=4)  # 3 rejected, in Redis
    flush = getattr(worker.backend, "flush", None)
    if flush is not None:
        await flush()
    console = make_console(console_rt, token=TOKEN)
    assert isinstance(console.reader, ListedZombies)
    listing = await call(console, f"/zombies?target={account.ecs_id}")
    assert listing.status == 200 and listing.text.count('class="open"') == 3
    overview = await call(console, "/")
    assert overview.status == 200 and str(account.ecs_id) in overview.text
    (op, *_) = await console_rt.backend.zombies(account.ecs_id)
    reply = await call(
        console,
        "/actions/remove",
        method="POST",
        form={"op": str(op.ecs_id)},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert reply.status == 303
    assert len(await worker.backend.zombies(account.ecs_id)) == 2
    assert console_rt.cleanup.removed["manual"] == 1
