"""The Redis backend in one process: selection, JSON storage, staging, cleanup and outages."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from typing import cast

import pytest
import redis
import redis_keys as rk
from redis_scenarios import count_scripts
from redis_workers import RedisServer

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConfigurationError,
    Entity,
    FakeClock,
    OperationRejectedError,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.backends.redis import (
    ENV_VAR,
    RedisBackend,
    RedisUnavailableError,
    backend_from_env,
)

NONE = CleanupConfig(strategy=CleanupStrategy.NONE)


class Account(Entity):
    balance: float = 0.0
    owner: str = ""


def _sync(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True)


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(ConfigurationError, match="url"):
        RedisBackend.from_url("http://localhost:6379")
    with pytest.raises(ConfigurationError, match="lease_ms"):
        RedisBackend.from_url("redis://localhost:6379", lease_ms=5)
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBackend.from_url("redis://localhost:6379", prefix="a{b}")


def test_env_var_selects_redis_with_password_db_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert backend_from_env() is None
    monkeypatch.setenv(ENV_VAR, "rediss://:s3cret@cache.internal:6380/3")
    backend = backend_from_env(prefix="svc")
    assert backend is not None
    kw = backend.client.connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"], kw["password"]) == (
        "cache.internal",
        6380,
        3,
        "s3cret",
    )
    assert backend.client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert "s3cret" not in repr(backend)
    assert backend.prefix == "svc"


async def test_state_is_json_and_another_process_view_loads_it_into_its_class(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=redis_runtime)
    async def deposit(acct: Account, amount: float) -> None:
        acct.balance += amount

    acct = Account(balance=100.0, owner="ada")
    await deposit(acct, 50.0)
    assert (acct.balance, acct.version) == (150.0, 1)

    raw = _sync(redis_server).hget(rk.key(prefix, acct.ecs_id, f"e:{acct.ecs_id}"), "d")
    assert json.loads(raw or "")["balance"] == 150.0

    other = Runtime(backend=RedisBackend.from_url(redis_server.url, prefix=prefix))
    plain = await other.registry.get_entity(acct.ecs_id)
    assert type(plain) is Entity  # the class is not stored: only the fields of every entity
    assert (plain.ecs_id, plain.version) == (acct.ecs_id, 1)
    mine = Account(ecs_id=acct.ecs_id)
    committed = await other.registry.register(mine)
    assert committed is mine
    assert (mine.balance, mine.owner, mine.version) == (150.0, "ada", 1)
    await other.aclose()

    third = Runtime(backend=RedisBackend.from_url(redis_server.url, prefix=prefix))
    typed = await third.registry.get_entity(acct.ecs_id, Account)
    assert typed is not None
    assert (typed.balance, typed.owner, typed.version) == (150.0, "ada", 1)
    assert await third.registry.get_entity(acct.ecs_id, Account) is typed
    assert await third.registry.register(Account(ecs_id=acct.ecs_id)) is typed
    assert await third.registry.get_entity(uuid.uuid4(), Account) is None
    await third.aclose()


async def test_same_tick_calls_one_winner_losers_are_json_zombies(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    @with_conflict_resolution(cleanup=NONE, runtime=redis_runtime)
    async def touch(acct: Account) -> str:
        acct.balance += 1
        return "ok"

    acct = Account()
    results = await asyncio.gather(*(touch(acct) for _ in range(5)), return_exceptions=True)
    assert results.count("ok") == 1
    rejected = [r for r in results if isinstance(r, OperationRejectedError)]
    assert len(rejected) == 4
    zombies = await redis_runtime.registry.zombies(acct.ecs_id)
    assert {z.status for z in zombies} == {OperationStatus.REJECTED}
    assert {z.ecs_id for z in zombies} == {r.op_id for r in rejected}
    assert redis_runtime.backend.zombie_count == 4
    stored = _sync(redis_server).hget(
        rk.found(_sync(redis_server), prefix, f"op:{rejected[0].op_id}"), "j"
    )
    assert json.loads(stored or "")["status"] == "rejected"


async def test_priority_wins_within_a_timed_window(redis_runtime: Runtime) -> None:
    from contend import PreECSConfig

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(staging_timeout_ms=30), cleanup=NONE, runtime=redis_runtime
    )
    async def write(acct: Account, who: str) -> str:
        acct.owner = who
        return who

    acct = Account()
    low = asyncio.ensure_future(write.with_priority(2)(acct, "low"))
    await asyncio.sleep(0.005)
    high = asyncio.ensure_future(write.with_priority(8)(acct, "high"))
    assert await high == "high"
    with pytest.raises(OperationRejectedError) as info:
        await low
    assert info.value.winner_priority == 8


async def test_deferred_removal_at_due_time_on_the_fake_clock(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    clock = redis_runtime.clock
    assert isinstance(clock, FakeClock)
    cfg = CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=30)

    @with_conflict_resolution(cleanup=cfg, runtime=redis_runtime)
    async def touch(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    await asyncio.gather(touch(acct), touch(acct), return_exceptions=True)
    (zombie,) = await redis_runtime.registry.zombies(acct.ecs_id)
    assert zombie.cleanup_scheduled_at is not None
    ttl = _sync(redis_server).pttl(rk.found(_sync(redis_server), prefix, f"op:{zombie.ecs_id}"))
    assert ttl > 30 * 60 * 1000  # the key-expiry backstop lies beyond the due time

    redis_runtime.cleanup.stop()  # this test drives the sweeps itself
    clock.advance(minutes=29)
    assert await redis_runtime.cleanup.sweep() == 0
    assert len(await redis_runtime.registry.zombies()) == 1
    clock.advance(minutes=1)
    assert await redis_runtime.cleanup.sweep() == 1
    assert await redis_runtime.registry.zombies() == []
    assert redis_runtime.backend.zombie_count == 0
    assert redis_runtime.cleanup.removed["ttl"] == 1


async def test_one_sweeper_at_a_time_across_workers(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    other = RedisBackend.from_url(redis_server.url, prefix=prefix)
    mine = redis_runtime.backend
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    r = _sync(redis_server)
    r.zadd(rk.everywhere(prefix, "due")[0], {str(first): 1.0, str(second): 2.0, str(third): 3.0})
    assert await mine.pop_due(10.0, 1) == [first]
    assert await other.pop_due(10.0, 10) == []  # locked out while the first sweeper holds it
    assert await mine.pop_due(10.0, 1) == [second]
    r.pexpire(rk.everywhere(prefix, "sweeper")[0], 1)  # the first sweeper died: its lock runs out
    await asyncio.sleep(0.01)
    assert await other.pop_due(10.0, 10) == [third]
    await other.close()


async def test_lazy_zombie_leaves_on_the_read_that_meets_it(redis_runtime: Runtime) -> None:
    clock = redis_runtime.clock
    assert isinstance(clock, FakeClock)
    cfg = CleanupConfig(strategy=CleanupStrategy.LAZY, retention_minutes=5)

    @with_conflict_resolution(cleanup=cfg, runtime=redis_runtime)
    async def touch(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    await asyncio.gather(touch(acct), touch(acct), return_exceptions=True)
    await redis_runtime.backend.flush()  # type: ignore[attr-defined]
    assert len(await redis_runtime.registry.operations_for_target(acct.ecs_id)) == 1
    clock.advance(minutes=5)
    assert await redis_runtime.registry.operations_for_target(acct.ecs_id) == []
    assert redis_runtime.cleanup.removed["lazy"] == 1
    assert redis_runtime.backend.zombie_count == 0


async def test_redis_down_fails_fast_with_a_clear_error_then_recovers() -> None:
    server = RedisServer()
    server.start()
    rt = Runtime(
        backend=RedisBackend.from_url(
            server.url, prefix="outage", lease_ms=1000, socket_timeout=1.0, connect_timeout=0.5
        ),
        memory_probe=lambda: 0.0,
    )

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=rt)
    async def deposit(acct: Account, amount: float) -> None:
        acct.balance += amount

    acct = Account()
    try:
        await deposit(acct, 1.0)
        server.stop()
        started = time.monotonic()
        with pytest.raises(RedisUnavailableError, match=r"redis://127\.0\.0\.1:\d+/0"):
            await asyncio.wait_for(deposit(Account(), 1.0), 10)
        with pytest.raises(RedisUnavailableError):
            await asyncio.wait_for(deposit(acct, 1.0), 10)
        assert time.monotonic() - started < 5
        server.start()
        fresh = Account()
        await asyncio.wait_for(deposit(fresh, 2.0), 10)
        assert fresh.balance == 2.0
    finally:
        await rt.aclose()
        server.stop()


async def test_a_contested_window_is_reported_once_across_workers_by_the_winners(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    """Two workers stage on one account in one window: the winner's worker emits the one
    OperationConflictEvent (winner, contenders, every loser of both workers) and observes the
    window's size; the other worker reports nothing."""
    from contend import OperationConflictEvent, OperationPriority, PreECSConfig

    other = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, lease_ms=2000),
        clock=FakeClock(),
        memory_probe=lambda: 0.0,
    )
    seen: dict[str, list[OperationConflictEvent]] = {"a": [], "b": []}
    redis_runtime.events.subscribe(OperationConflictEvent, seen["a"].append)
    other.events.subscribe(OperationConflictEvent, seen["b"].append)
    window = PreECSConfig(staging_timeout_ms=50)

    async def touch(acct: Account) -> str:
        return "ok"

    on_a = with_conflict_resolution(pre_ecs=window, cleanup=NONE, runtime=redis_runtime)(touch)
    on_b = with_conflict_resolution(pre_ecs=window, cleanup=NONE, runtime=other)(touch)
    acct = Account()
    held_by_b = Account(ecs_id=acct.ecs_id)
    await other.registry.register(held_by_b)
    b_acct = await other.backend.get_entity(acct.ecs_id)
    assert b_acct is held_by_b
    results = await asyncio.gather(
        on_a(acct),
        on_a(acct),
        on_b.with_priority(OperationPriority.HIGH)(b_acct),
        on_b(b_acct),
        return_exceptions=True,
    )
    await asyncio.sleep(0.05)  # the event is emitted from a task of its own
    assert results[2] == "ok"
    errors = [r for r in results if isinstance(r, OperationRejectedError)]
    assert len(errors) == 3
    assert seen["a"] == []
    [event] = seen["b"]
    assert event.op_id == errors[0].winner_id
    assert event.contenders == 4
    assert event.winner_priority == OperationPriority.HIGH
    assert set(event.rejected_ids) == {e.op_id for e in errors}
    size = "contend_staging_window_size"
    assert other.metrics.registry.get_sample_value(f"{size}_count") == 1
    assert other.metrics.registry.get_sample_value(f"{size}_sum") == 4
    assert not redis_runtime.metrics.registry.get_sample_value(f"{size}_count")
    await other.aclose()


# the wait conflict policy -------------------------------------------------------------------------
async def test_a_carried_waiter_is_not_woken_for_windows_it_does_not_win(
    redis_runtime: Runtime,
) -> None:
    """40 waiters on one target, each submitted on its own: each window's message names the
    calls it decided, so a waiter carried on sleeps through the windows it does not win. Were
    every waiter woken by every window, the 40 would ask Redis ~40 * 40 / 2 = 800 times."""
    from contend import PreECSConfig

    backend = redis_runtime.backend
    assert isinstance(backend, RedisBackend)
    counts = count_scripts(backend)
    order: list[int] = []

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(conflict_policy="wait", max_wait_ms=20_000),
        cleanup=NONE,
        runtime=redis_runtime,
    )
    async def work(acct: Account, n: int) -> None:
        order.append(n)

    acct = Account()
    await redis_runtime.registry.register(acct)
    tasks = []
    for n in range(40):
        tasks.append(asyncio.ensure_future(work(acct, n)))
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert sorted(order) == list(range(40))
    assert counts["JOIN"] <= 40
    assert counts.get("RESOLVE", 0) <= 2 * 40, counts


async def test_waiters_of_two_workers_keep_priority_then_submission_order(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    """Each waiter's place (priority, windows lost, submission number) lives in Redis: calls of
    two workers waiting on one target run in one order, and the carried count is reported once
    per contested window, by the winner's worker."""
    from contend import PreECSConfig

    other = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, lease_ms=2000),
        clock=FakeClock(),
        memory_probe=lambda: 0.0,
    )
    order: list[str] = []
    wait = PreECSConfig(conflict_policy="wait", max_wait_ms=10_000, staging_timeout_ms=60)

    async def work(acct: Account, name: str) -> str:
        order.append(name)
        await asyncio.sleep(0.002)
        return name

    on_a = with_conflict_resolution(pre_ecs=wait, cleanup=NONE, runtime=redis_runtime)(work)
    on_b = with_conflict_resolution(pre_ecs=wait, cleanup=NONE, runtime=other)(work)
    acct = Account()
    await redis_runtime.registry.register(acct)
    b_acct = await other.backend.get_entity(acct.ecs_id, Account)
    assert isinstance(b_acct, Account)
    plan = [(on_a, acct, "a5", 5), (on_b, b_acct, "b5", 5), (on_a, acct, "a8", 8)]
    plan += [(on_b, b_acct, "b2", 2), (on_a, acct, "a5x", 5), (on_b, b_acct, "b8", 8)]
    tasks = []
    for fn, target, name, priority in plan:
        tasks.append(asyncio.ensure_future(fn.with_priority(priority)(target, name)))
        await asyncio.sleep(0.005)  # one after another, all within the 60 ms window
    assert await asyncio.wait_for(asyncio.gather(*tasks), 20) == [p[2] for p in plan]
    assert order == ["a8", "b8", "a5", "b5", "a5x", "b2"]
    carried = [
        rt.metrics.registry.get_sample_value("contend_staging_carried_total") or 0.0
        for rt in (redis_runtime, other)
    ]
    assert sum(carried) == 5 + 4 + 3 + 2 + 1
    await other.aclose()


async def test_a_burst_of_calls_waits_for_connections_instead_of_failing(
    redis_server: RedisServer, prefix: str
) -> None:
    """More calls at once than the client has connections (first use of 250 accounts: several
    commands each): they queue for a connection; none fails with a Redis that is healthy."""
    rt = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, max_connections=20),
        clock=FakeClock(),
        memory_probe=lambda: 0.0,
    )

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=rt)
    async def deposit(acct: Account) -> None:
        acct.balance += 1

    accounts = [Account() for _ in range(250)]
    results = await asyncio.gather(*(deposit(a) for a in accounts), return_exceptions=True)
    assert results == [None] * 250
    assert _redis_outages(rt) == 0
    await rt.aclose()


def _redis_outages(rt: Runtime) -> int:
    backend = rt.backend
    assert isinstance(backend, RedisBackend)
    return backend.conn.outage.outages


async def test_a_waiter_past_its_deadline_in_redis_neither_wins_nor_is_carried(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    """Redis keeps each waiter's deadline with its record: should its worker not have taken it
    out of the window by then (a stalled loop, a slow network), the window's script still does
    not let it win or carry it on; it loses to the next in line."""
    from contend import OperationPriority, PreECSConfig

    entered = asyncio.Event()
    gate = asyncio.Event()

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(conflict_policy="wait", max_wait_ms=10_000),
        cleanup=NONE,
        runtime=redis_runtime,
    )
    async def work(acct: Account, name: str) -> str:
        if name == "holder":
            entered.set()
            await gate.wait()
        return name

    acct = Account()
    await redis_runtime.registry.register(acct)
    holder = asyncio.ensure_future(work(acct, "holder"))
    await entered.wait()
    first = asyncio.ensure_future(work.with_priority(OperationPriority.HIGH)(acct, "first"))
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(work(acct, "second"))
    sync = _sync(redis_server)
    window = rk.key(prefix, acct.ecs_id, f"wq:{acct.ecs_id}")
    for _ in range(200):
        if sync.zcard(window) == 2:
            break
        await asyncio.sleep(0.005)
    late = sync.zrange(window, 0, 0)[0]
    sync.hset(
        rk.key(prefix, acct.ecs_id, f"op:{late}"), "wd", 1
    )  # its deadline passed, as far as Redis knows
    gate.set()
    results = await asyncio.gather(holder, first, second, return_exceptions=True)
    assert results[0] == "holder" and results[2] == "second"
    error = results[1]
    assert isinstance(error, OperationRejectedError)
    assert str(error.op_id) == late and error.winner_priority == OperationPriority.NORMAL


# lease renewal ------------------------------------------------------------------------------------
async def test_a_lease_its_commit_released_is_not_counted_lost_by_a_renewal(
    redis_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal that runs after a winner's commit released its lease in Redis, but before the
    commit's reply reached the worker (another connection's reply can come first), must not
    report the lease lost: the call ended, nothing of it was refused."""
    backend = redis_runtime.backend
    assert isinstance(backend, RedisBackend)
    commit = backend.conn._shas["COMMIT"]
    original = backend.conn.batch.execute
    renewed: list[int] = []

    async def execute(commands: list[tuple[object, ...]]) -> list[object]:
        out = await original(commands)
        if not renewed and any(c[:2] == ("EVALSHA", commit) for c in commands):
            renewed.append(len(backend.calls.held))  # the worker still lists the lease
            await backend.calls.renew()
        return out

    backend.conn.batch.execute = execute  # type: ignore[method-assign]

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=redis_runtime)
    async def touch(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    await redis_runtime.registry.register(acct)
    await touch(acct)
    assert renewed == [1]
    assert backend.calls.lost_leases == 0
    assert "lost their lease" not in caplog.text


# the key layout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("staged", [True, False])
async def test_a_call_on_entities_of_different_buckets_fails_naming_them(
    redis_runtime: Runtime, staged: bool
) -> None:
    """Entities written together must share a bucket (one script, one slot): a call whose
    targets do not fails at call time with an error naming each target and its shard key, and
    writes nothing."""
    from contend import CrossShardError

    backend = redis_runtime.backend
    assert isinstance(backend, RedisBackend)
    src = Account(balance=10)
    dst = Account()
    while backend.keys.of(dst.ecs_id) == backend.keys.of(src.ecs_id):
        dst = Account()
    await redis_runtime.registry.register(src)
    await redis_runtime.registry.register(dst)

    @with_conflict_resolution(pre_ecs=staged, occ=True, cleanup=NONE, runtime=redis_runtime)
    async def transfer(a: Account, b: Account) -> None:
        a.balance -= 5
        b.balance += 5

    with pytest.raises(CrossShardError) as err:
        await transfer(src, dst)
    for acct in (src, dst):
        assert f"Account {acct.ecs_id} (shard key '{acct.ecs_id}')" in str(err.value)
    stored = await backend.get_entity(src.ecs_id, Account)
    assert isinstance(stored, Account) and stored.balance == 10
    assert backend.footprint()["inflight"] == backend.footprint()["leases"] == 0


async def test_the_next_due_time_is_the_earliest_of_every_bucket(redis_runtime: Runtime) -> None:
    """The sweeper sleeps until the next due time: the earliest over all buckets."""
    backend = redis_runtime.backend
    assert isinstance(backend, RedisBackend)
    assert await backend.next_due() is None
    first, second = uuid.uuid4(), uuid.uuid4()
    while backend.keys.of(second) == backend.keys.of(first):
        second = uuid.uuid4()
    await backend.client.zadd(backend.keys.key(first, "due"), {str(first): 20.5})
    await backend.client.zadd(backend.keys.key(second, "due"), {str(second): 7.25})
    assert await backend.next_due() == 7.25


async def test_a_winner_gets_a_full_lease_in_a_bucket_its_heartbeat_was_about_to_leave(
    redis_server: RedisServer, prefix: str, redis_runtime: Runtime
) -> None:
    """A worker's heartbeat lives in each bucket it uses and is renewed only where it has calls
    in flight; a join proves the worker alive, so a window it wins there grants a full lease,
    not what was left of an old heartbeat."""
    backend = redis_runtime.backend
    assert isinstance(backend, RedisBackend)

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=redis_runtime)
    async def slow(acct: Account) -> None:
        await asyncio.sleep(0.15)
        acct.balance += 1

    acct = Account()
    await redis_runtime.registry.register(acct)
    hb = rk.key(prefix, acct.ecs_id, f"hb:{backend.owner}")
    _sync(redis_server).set(hb, "1", px=30)  # left by an earlier call, about to lapse
    results = await asyncio.gather(slow(acct), slow(acct), return_exceptions=True)
    assert results.count(None) == 1, results
    assert isinstance(next(r for r in results if r is not None), OperationRejectedError)


class _Filed(Account, shard_key="customer"):
    customer: str = "c"


async def test_a_worker_remembers_a_shard_key_no_longer_than_its_entity(
    redis_runtime: Runtime,
) -> None:
    """Entities of a class with a shard key are co-located on first sight; a worker handling
    many distinct entities it then drops must not keep each one's shard key forever."""
    backend = cast("RedisBackend", redis_runtime.backend)

    @with_conflict_resolution(runtime=redis_runtime, cleanup=CleanupStrategy.IMMEDIATE)
    async def touch(item: _Filed) -> None:
        item.balance += 1

    kept = _Filed(customer="kept")
    await touch(kept)
    for i in range(200):
        await touch(_Filed(customer=f"c{i % 7}"))
    gc.collect()
    assert backend.keys.co_located() == 1
    assert backend.keys.shard_key(kept.ecs_id) == "kept"
    await touch(kept)
    assert kept.balance == 2
