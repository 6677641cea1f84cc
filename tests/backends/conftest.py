"""A real redis-server on 127.0.0.1 and a free port, and a local Redis Cluster of 3 masters,
started for the tests and stopped after."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis_cluster import LocalCluster, redis_cluster
from redis_workers import RedisServer, redis_server

# the session's redis-server (redis_workers) and Redis Cluster (redis_cluster)
__all__ = ["redis_cluster", "redis_server"]

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


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def any_runtime(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Runtime]:
    """The same runtime on each backend: the conformance suite runs once per backend, and on
    Redis once on a single node and once on a cluster (one node's URL: `from_url` finds out it
    is a cluster and uses redis-py's cluster client)."""
    backend = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        backend = RedisBackend.from_url(server.url, prefix=prefix, lease_ms=2000)
    elif request.param == "redis-cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        backend = RedisBackend.from_url(cluster.url, prefix=prefix, lease_ms=2000)
    rt = Runtime(backend=backend, clock=FakeClock(), memory_probe=lambda: 0.0)
    yield rt
    rt.cleanup.stop()
    await rt.aclose()
