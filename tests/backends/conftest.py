"""A real redis-server on 127.0.0.1 and a free port, started for the tests and stopped after."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis_workers import RedisServer, redis_server

__all__ = ["redis_server"]  # the session's redis-server, a fixture of redis_workers

from contend import FakeClock, Runtime
from contend.backends.redis import RedisBackend


@pytest.fixture
def prefix() -> str:
    """A key namespace of this test's own, so tests never see each other's state."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_runtime(redis_server: RedisServer, prefix: str) -> AsyncIterator[Runtime]:
    rt = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, lease_ms=2000),
        clock=FakeClock(),
        memory_probe=lambda: 0.0,
    )
    yield rt
    await rt.aclose()


@pytest.fixture(params=["memory", "redis"])
async def any_runtime(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Runtime]:
    """The same runtime on each backend: the conformance suite runs once per backend."""
    backend = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        backend = RedisBackend.from_url(server.url, prefix=prefix, lease_ms=2000)
    rt = Runtime(backend=backend, clock=FakeClock(), memory_probe=lambda: 0.0)
    yield rt
    rt.cleanup.stop()
    await rt.aclose()
