"""The local Redis Cluster of the tests (redis_cluster.py): three masters that serve every slot,
reached through redis-py's asyncio cluster client; one node restarted, one paused. Then the
backend on it: from_url, a loop change, a paused node, a restarted node, a killed worker, and
wake-ups on sharded pub/sub."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis_workers as w
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis_cluster import LocalCluster
from redis_scenarios import Account, count_scripts, waiters_through_a_restart

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConfigurationError,
    OperationCleanedEvent,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)
from contend.backends.redis import RedisBackend, RedisUnavailableError

SPAWN = mp.get_context("spawn")


@pytest.fixture(scope="module")
def aof_cluster() -> Iterator[LocalCluster]:
    """A cluster of this module's own whose nodes keep their data in an append-only file: a
    restarted node comes back with every acknowledged write (windows, leases, state)."""
    cluster = LocalCluster(aof=True)
    cluster.start()
    yield cluster
    cluster.stop()


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


# the backend on a cluster -------------------------------------------------------------------------
NONE = CleanupConfig(
    strategy=CleanupStrategy.NONE, immediate_cleanup_priorities=[], debug_retention_priorities=[]
)


def _worker(url: str, prefix: str, **kwargs: Any) -> Runtime:
    kwargs.setdefault("lease_ms", 2000)
    return Runtime(
        backend=RedisBackend.from_url(url, prefix=prefix, **kwargs), memory_probe=lambda: 0.0
    )


def _backend(rt: Runtime) -> RedisBackend:
    assert isinstance(rt.backend, RedisBackend)
    return rt.backend


def _adder(rt: Runtime, **options: Any) -> Any:
    @with_conflict_resolution(cleanup=NONE, runtime=rt, **options)
    async def add(acct: Account, amount: int) -> int:
        acct.balance += amount
        return acct.balance

    return add


def _node_of_target(cluster: LocalCluster, rt: Runtime, acct: Account) -> int:
    """The index of the node that holds `acct`'s keys (its window, lease, state)."""
    keys = _backend(rt).keys
    return cluster.node_of(keys.tag(keys.of(acct.ecs_id)))


@pytest.mark.parametrize("form", ["node", "scheme"])
async def test_from_url_serves_a_cluster_from_one_nodes_url_or_the_cluster_scheme(
    redis_cluster: LocalCluster, prefix: str, form: str
) -> None:
    """A plain URL of one node is found to be a cluster (``INFO cluster``) before the first
    command; ``redis+cluster://`` says so up front. Either way calls work on every target."""
    url = redis_cluster.url
    if form == "scheme":
        url = url.replace("redis://", "redis+cluster://")
    rt = _worker(url, prefix)
    add = _adder(rt, occ=True)
    accounts = [Account() for _ in range(12)]
    assert await asyncio.gather(*(add(a, 5) for a in accounts)) == [5] * 12
    assert isinstance(_backend(rt).client, RedisCluster)
    fresh = _worker(redis_cluster.url, prefix)
    stored = await fresh.backend.get_entity(accounts[0].ecs_id, Account)
    assert isinstance(stored, Account) and stored.balance == 5
    await rt.aclose()
    await fresh.aclose()


def test_from_url_names_what_a_cluster_cannot_take(redis_cluster: LocalCluster) -> None:
    scheme = redis_cluster.url.replace("redis://", "redis+cluster://")
    with pytest.raises(ConfigurationError, match="cluster"):
        RedisBackend.from_url(scheme, cluster=False)
    with pytest.raises(ConfigurationError, match="url"):
        RedisBackend.from_url(scheme.replace("/0", "/2"))


def test_a_runtime_moved_to_a_new_event_loop_keeps_working_on_a_cluster(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """The runtime binds to each new loop: the cluster client's connections of the old loop
    are dropped (they cannot be used from another loop), new ones are made."""
    rt = _worker(redis_cluster.url, prefix)
    add = _adder(rt, occ=True)
    acct = Account()

    async def last(amount: int) -> int:
        try:
            return int(await add(acct, amount))
        finally:
            await rt.aclose()

    assert asyncio.run(add(acct, 1)) == 1
    assert asyncio.run(last(2)) == 3


async def test_a_paused_node_fails_only_its_targets_calls_within_the_socket_timeout(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """The cluster client gets from_url's timeouts: a call on a target of a paused node fails
    with `RedisUnavailableError` (nothing written) after about twice `socket_timeout` (one
    resend) instead of waiting for the pause to end, while a target on another node goes on;
    once the pause ends, calls on the first go through again."""
    rt = _worker(redis_cluster.url, prefix, socket_timeout=0.2, connect_timeout=0.2)
    add = _adder(rt, occ=True)
    acct, other = Account(), Account()
    paused = 0  # the node of the URL, the client's first: the one it would ask about the slots
    while _node_of_target(redis_cluster, rt, acct) != paused:
        acct = Account()
    while _node_of_target(redis_cluster, rt, other) == paused:
        other = Account()
    assert await asyncio.gather(add(acct, 1), add(other, 1)) == [1, 1]
    redis_cluster.pause(paused, 2500)
    started = time.monotonic()
    with pytest.raises(RedisUnavailableError):
        await add(acct, 1)
    assert time.monotonic() - started < 1.5
    assert await add(other, 1) == 2
    deadline = time.monotonic() + 10
    while True:
        try:
            assert await add(acct, 10) == 11
            break
        except RedisUnavailableError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    await rt.aclose()


async def test_waiters_on_a_cluster_are_woken_by_sharded_messages_of_their_targets_node(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """Wake-ups on a cluster are sharded pub/sub on the node that holds the target: 40
    waiters submitted one by one each ask Redis at most twice (each window's message wakes
    only the calls it decided), as on a single node."""
    rt = _worker(redis_cluster.url, prefix)
    add = _adder(rt, pre_ecs=PreECSConfig(conflict_policy="wait", max_wait_ms=20_000))
    acct = Account()
    assert await add(acct, 0) == 0
    counts = count_scripts(_backend(rt))
    tasks = []
    for _ in range(40):
        tasks.append(asyncio.ensure_future(add(acct, 1)))
        await asyncio.sleep(0)
    assert sorted(await asyncio.wait_for(asyncio.gather(*tasks), 30)) == list(range(1, 41))
    assert counts.get("RESOLVE", 0) <= 2 * 40, counts
    node = redis_cluster.nodes[_node_of_target(redis_cluster, rt, acct)]
    with contextlib.closing(node.client()) as client:
        channels = client.execute_command("PUBSUB", "SHARDCHANNELS", f"*{prefix}*")
        assert channels, "no sharded subscription on the target's node"
    await rt.aclose()


async def test_waiters_wait_through_a_node_restart_and_go_through(
    aof_cluster: LocalCluster, prefix: str
) -> None:
    """The node holding a target restarts while calls wait for it: the listener of that node
    subscribes again, scripts the restarted node no longer knows are loaded again (NOSCRIPT),
    and the waiters all go through; the calls under the reject policy fail at once."""
    rt = _worker(aof_cluster.url, prefix, socket_timeout=0.3, connect_timeout=0.2, lease_ms=5000)

    async def restart(acct: Account) -> None:
        await asyncio.to_thread(aof_cluster.restart, _node_of_target(aof_cluster, rt, acct))
        # until the restarted node serves the target again: for a moment after a restart a
        # node may answer CLUSTERDOWN, which fails a write (nothing written) as an outage does
        deadline = time.monotonic() + 10
        while True:
            try:
                await rt.backend.get_entity(acct.ecs_id, Account)
                return
            except RedisUnavailableError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

    await waiters_through_a_restart(rt, restart)
    await rt.aclose()


async def test_a_killed_worker_blocks_its_target_on_a_cluster_only_until_its_lease_expires(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """SIGKILL of a worker holding a target: another worker's call on it goes through once the
    lease (800 ms) has run out, and the dead worker's record is reaped and cleaned."""
    target = str(uuid.uuid4())
    started = SPAWN.Event()
    proc = SPAWN.Process(
        target=w.hold_forever, args=(redis_cluster.url, prefix, target, 800, started)
    )
    proc.start()
    try:
        assert await asyncio.to_thread(started.wait, 30)
        os.kill(proc.pid or 0, signal.SIGKILL)
        await asyncio.to_thread(proc.join, 10)
    finally:
        if proc.is_alive():
            proc.kill()
    killed = time.monotonic()
    rt = _worker(redis_cluster.url, prefix, lease_ms=800)
    cleaned: asyncio.Queue[OperationCleanedEvent] = asyncio.Queue()
    rt.events.subscribe(OperationCleanedEvent, cleaned.put_nowait)

    @with_conflict_resolution(cleanup=NONE, runtime=rt)
    async def write(s: w.Slot) -> str:
        s.value = 7
        return "done"

    assert await asyncio.wait_for(write(w.Slot(ecs_id=uuid.UUID(target))), 10) == "done"
    assert time.monotonic() - killed < 5
    event = await asyncio.wait_for(cleaned.get(), 10)
    assert (event.status, event.reason) == ("failed", "immediate")
    await rt.aclose()


async def test_calls_beyond_a_nodes_connections_wait_their_turn_instead_of_failing(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """redis-py's cluster pool raises at `max_connections` instead of waiting: while a node is
    slow, calls made one tick after another (each tick's commands one pipeline, on a connection
    of its own) would fail with a healthy cluster. They wait for a command to be answered."""
    rt = _worker(redis_cluster.url, prefix, max_connections=2)
    add = _adder(rt, occ=True)
    accounts = []
    while len(accounts) < 8:
        acct = Account()
        if _node_of_target(redis_cluster, rt, acct) == 1:
            accounts.append(acct)
    assert await add(accounts[0], 1) == 1
    redis_cluster.pause(1, 300)
    calls = []
    for acct in accounts:
        calls.append(asyncio.ensure_future(add(acct, 1)))
        await asyncio.sleep(0.01)
    assert await asyncio.gather(*calls, return_exceptions=True) == [2] + [1] * 7
    await rt.aclose()


async def test_a_user_whose_acl_refuses_info_is_served_as_a_single_node(
    redis_server: w.RedisServer, prefix: str
) -> None:
    """The question `from_url` asks a plain URL's node (``INFO cluster``) may be refused by its
    ACL: the node is then taken as a single node, and calls work."""
    user = f"u{prefix}"
    with contextlib.closing(redis_server.client()) as admin:
        admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-info")
    url = redis_server.url.replace("redis://", f"redis://{user}:pw@")
    rt = _worker(url, prefix)
    assert await _adder(rt, occ=True)(Account(), 3) == 3
    assert not isinstance(_backend(rt).client, RedisCluster)
    await rt.aclose()
