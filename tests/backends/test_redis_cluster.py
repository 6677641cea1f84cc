"""The local Redis Cluster of the tests (redis_cluster.py): three masters that serve every slot,
reached through redis-py's asyncio cluster client; one node restarted, one paused."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis_cluster import LocalCluster


def _keys_per_node(cluster: LocalCluster, prefix: str, n: int) -> dict[int, list[str]]:
    spread: dict[int, list[str]] = {}
    for i in range(n):
        key = f"{prefix}:{i}"
        spread.setdefault(cluster.node_of(key), []).append(key)
    return spread


async def test_keys_written_through_the_cluster_client_land_on_all_three_masters(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    client = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True)
    try:
        for i in range(30):
            await client.set(f"{prefix}:{i}", i)
        spread = _keys_per_node(redis_cluster, prefix, 30)
        assert sorted(spread) == [0, 1, 2]
        for index, keys in spread.items():
            node = aioredis.Redis(port=redis_cluster.ports[index], decode_responses=True)
            try:
                assert await node.mget(keys[:1]) == [keys[0].rsplit(":", 1)[1]]
            finally:
                await node.aclose()
    finally:
        await client.aclose()


async def test_a_restarted_node_serves_its_slots_again_to_the_same_client(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    client = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True)
    key = f"{prefix}:restarted"
    index = redis_cluster.node_of(key)
    pid = redis_cluster.nodes[index].proc.pid  # type: ignore[union-attr]
    try:
        await client.set(key, "before")
        redis_cluster.restart(index)
        assert redis_cluster.nodes[index].proc.pid != pid  # type: ignore[union-attr]
        assert redis_cluster.node_of(key) == index
        await client.set(key, "after")
        assert await client.get(key) == "after"
    finally:
        await client.aclose()


async def test_a_paused_node_stalls_only_its_own_clients_until_the_pause_ends(
    redis_cluster: LocalCluster,
) -> None:
    once = Retry(NoBackoff(), 0)
    nodes = [aioredis.Redis(port=p, socket_timeout=0.2, retry=once) for p in redis_cluster.ports]
    patient = aioredis.Redis(port=redis_cluster.ports[1], socket_timeout=5)
    try:
        await patient.ping()
        redis_cluster.pause(1, 500)
        with pytest.raises(RedisTimeoutError):
            await nodes[1].ping()
        assert await nodes[0].ping() is True
        assert await nodes[2].ping() is True
        assert await patient.ping() is True  # answered once the pause ended
    finally:
        for node in (*nodes, patient):
            await node.aclose()
