"""One behavioural suite, run against every backend (`any_runtime`: MemoryBackend, RedisBackend).

Staging, OCC, cancellation, nested calls and cleanup, as a user of `@with_conflict_resolution`
relies on them. A test here that passes on one backend and fails on the other is a bug, unless
docs/redis.md names the difference.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConfigurationError,
    ConflictResolutionOperation,
    CrossShardError,
    Entity,
    FakeClock,
    OCCConfig,
    OCCConflictError,
    OperationRejectedError,
    OperationStatus,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)

NONE = CleanupConfig(strategy=CleanupStrategy.NONE)
IMMEDIATE = CleanupConfig(strategy=CleanupStrategy.IMMEDIATE)
KEEP = CleanupConfig(
    strategy=CleanupStrategy.NONE, immediate_cleanup_priorities=[], debug_retention_priorities=[]
)


class Account(Entity):
    balance: int = 0


class Pocket(Account, shard_key="owner"):
    """An account that transfers write together with others: they share a shard key."""

    owner: str = "ada"


def _clock(rt: Runtime) -> FakeClock:
    assert isinstance(rt.clock, FakeClock)
    return rt.clock


async def _written(rt: Runtime) -> None:
    """Let a backend that writes behind (Redis: a handler's changes) catch up."""
    flush = getattr(rt.backend, "flush", None)
    if flush is not None:
        await flush()


async def _registered(rt: Runtime, *accounts: Account) -> None:
    """Register accounts; on Redis, accounts registered together share a shard key (a call may
    write several of them in one script only if they share a bucket)."""
    keys = getattr(rt.backend, "keys", None)
    for a in accounts:
        if keys is not None and len(accounts) > 1:
            keys.co_locate(a.ecs_id, str(accounts[0].ecs_id))
        await rt.registry.register(a)


async def _windowed_writer(
    rt: Runtime, window_ms: int, cleanup: CleanupConfig
) -> tuple[Any, Account]:
    """A call staged in a timed window that returns who called it, and a registered account."""

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(staging_timeout_ms=window_ms), cleanup=cleanup, runtime=rt
    )
    async def write(acct: Account, who: str) -> str:
        return who

    acct = Account()
    await _registered(rt, acct)
    return write, acct


async def _toucher(rt: Runtime, cleanup: CleanupConfig) -> tuple[Any, Account]:
    """A staged call that adds 1 to the account (and says "ok"), and a registered account."""

    @with_conflict_resolution(cleanup=cleanup, runtime=rt)
    async def touch(acct: Account) -> str:
        acct.balance += 1
        return "ok"

    acct = Account()
    await _registered(rt, acct)
    return touch, acct


async def _committed(rt: Runtime, acct: Account) -> int:
    """The committed balance as the backend holds it (Redis: read back from Redis)."""
    found = await rt.backend.get_entity(acct.ecs_id, type(acct))
    assert isinstance(found, Account)
    return found.balance


# staging ------------------------------------------------------------------------------------------
async def test_gathered_calls_have_one_winner_and_the_rest_name_it(any_runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=NONE, runtime=any_runtime)
    async def touch(acct: Account) -> str:
        acct.balance += 1
        return "ok"

    acct = Account()
    await _registered(any_runtime, acct)
    results = await asyncio.gather(*(touch(acct) for _ in range(5)), return_exceptions=True)
    assert results.count("ok") == 1
    errors = [r for r in results if isinstance(r, OperationRejectedError)]
    assert len(errors) == 4
    assert len({e.winner_id for e in errors}) == 1
    assert all(e.priority == 5 and e.winner_priority == 5 for e in errors)
    assert acct.balance == 1
    assert await _committed(any_runtime, acct) == 1
    zombies = await any_runtime.registry.zombies(acct.ecs_id)
    assert {z.ecs_id for z in zombies} == {e.op_id for e in errors}
    assert {z.status for z in zombies} == {OperationStatus.REJECTED}


async def test_highest_priority_wins_then_the_earliest(any_runtime: Runtime) -> None:
    write, acct = await _windowed_writer(any_runtime, 40, NONE)
    low = asyncio.ensure_future(write.with_priority(2)(acct, "low"))
    await asyncio.sleep(0.005)
    first = asyncio.ensure_future(write.with_priority(8)(acct, "first"))
    await asyncio.sleep(0.005)
    second = asyncio.ensure_future(write.with_priority(8)(acct, "second"))
    results = await asyncio.gather(low, first, second, return_exceptions=True)
    assert results[1] == "first"
    assert isinstance(results[0], OperationRejectedError)
    assert isinstance(results[2], OperationRejectedError)
    assert results[0].winner_priority == 8


async def test_winners_on_one_target_never_overlap_and_every_caller_is_answered(
    any_runtime: Runtime,
) -> None:
    running = 0
    most = 0

    @with_conflict_resolution(cleanup=IMMEDIATE, runtime=any_runtime)
    async def work(acct: Account) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.002)
        acct.balance += 1
        running -= 1

    acct = Account()
    await _registered(any_runtime, acct)

    async def caller(delay: float) -> str:
        await asyncio.sleep(delay)
        try:
            await work(acct)
        except OperationRejectedError:
            return "rejected"
        return "ok"

    rng = random.Random(3)
    results = await asyncio.gather(*(caller(rng.random() * 0.03) for _ in range(30)))
    assert most == 1
    assert len(results) == 30
    assert results.count("ok") == acct.balance >= 2
    assert await _committed(any_runtime, acct) == acct.balance


async def test_winners_on_different_targets_run_at_the_same_time(any_runtime: Runtime) -> None:
    inside = asyncio.Event()
    count = 0

    @with_conflict_resolution(cleanup=NONE, runtime=any_runtime)
    async def hold(acct: Account) -> None:
        nonlocal count
        count += 1
        if count == 3:
            inside.set()
        await asyncio.wait_for(inside.wait(), 5)

    accounts = [Account() for _ in range(3)]
    await _registered(any_runtime, *accounts)
    await asyncio.gather(*(hold(a) for a in accounts))
    assert count == 3


async def test_a_call_arriving_while_the_winner_runs_goes_to_the_next_window(
    any_runtime: Runtime,
) -> None:
    started = asyncio.Event()
    go = asyncio.Event()
    order: list[str] = []

    @with_conflict_resolution(cleanup=NONE, runtime=any_runtime)
    async def step(acct: Account, who: str) -> str:
        order.append(who)
        if who == "first":
            started.set()
            await go.wait()
        return who

    acct = Account()
    await _registered(any_runtime, acct)
    first = asyncio.ensure_future(step(acct, "first"))
    await started.wait()
    second = asyncio.ensure_future(step(acct, "second"))
    await asyncio.sleep(0.02)
    assert order == ["first"]
    go.set()
    assert await first == "first"
    assert await second == "second"
    assert order == ["first", "second"]


async def test_a_full_window_rejects_with_a_reason(any_runtime: Runtime) -> None:
    window = PreECSConfig(staging_timeout_ms=20, max_pending_per_target=2)

    @with_conflict_resolution(pre_ecs=window, cleanup=NONE, runtime=any_runtime)
    async def touch(acct: Account) -> str:
        return "ok"

    acct = Account()
    await _registered(any_runtime, acct)
    results = await asyncio.gather(*(touch(acct) for _ in range(4)), return_exceptions=True)
    assert results.count("ok") == 1
    full = [r for r in results if isinstance(r, OperationRejectedError) and "full" in r.reason]
    assert len(full) == 2


# OCC ----------------------------------------------------------------------------------------------
async def test_concurrent_increments_lose_no_update(any_runtime: Runtime) -> None:
    occ = OCCConfig(max_retries=30, base_delay_ms=0.2, max_delay_ms=5)

    @with_conflict_resolution(pre_ecs=False, occ=occ, cleanup=NONE, runtime=any_runtime)
    async def add(acct: Account, amount: int) -> None:
        value = acct.balance
        await asyncio.sleep(0)
        acct.balance = value + amount

    acct = Account()
    await _registered(any_runtime, acct)
    results = await asyncio.gather(*(add(acct, 1) for _ in range(40)), return_exceptions=True)
    committed = sum(r is None for r in results)
    assert all(r is None or isinstance(r, OCCConflictError) for r in results)
    assert committed > 0
    assert acct.balance == committed
    assert await _committed(any_runtime, acct) == committed


async def test_exhausted_retries_fail_with_nothing_written(any_runtime: Runtime) -> None:
    occ = OCCConfig(max_retries=0)
    entered = asyncio.Event()
    go = asyncio.Event()

    @with_conflict_resolution(pre_ecs=False, occ=occ, cleanup=NONE, runtime=any_runtime)
    async def slow(acct: Account) -> None:
        entered.set()
        await go.wait()
        acct.balance += 100

    @with_conflict_resolution(pre_ecs=False, occ=occ, cleanup=NONE, runtime=any_runtime)
    async def quick(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    await _registered(any_runtime, acct)
    loser = asyncio.ensure_future(slow(acct))
    await entered.wait()
    await quick(acct)
    go.set()
    with pytest.raises(OCCConflictError) as info:
        await loser
    assert acct.balance == 1
    assert await _committed(any_runtime, acct) == 1
    failed = await any_runtime.registry.get_operation(info.value.op_id)
    assert failed is not None
    assert failed.status is OperationStatus.FAILED


async def test_a_multi_target_commit_is_all_or_nothing(any_runtime: Runtime) -> None:
    occ = OCCConfig(max_retries=0)
    entered = asyncio.Event()
    go = asyncio.Event()

    @with_conflict_resolution(pre_ecs=False, occ=occ, cleanup=NONE, runtime=any_runtime)
    async def transfer(src: Pocket, dst: Pocket, amount: int) -> None:
        entered.set()
        await go.wait()
        src.balance -= amount
        dst.balance += amount

    @with_conflict_resolution(pre_ecs=False, occ=occ, cleanup=NONE, runtime=any_runtime)
    async def deposit(acct: Pocket, amount: int) -> None:
        acct.balance += amount

    src, dst = Pocket(balance=50), Pocket(balance=0)
    await _registered(any_runtime, src, dst)
    moving = asyncio.ensure_future(transfer(src, dst, 30))
    await entered.wait()
    await deposit(dst, 5)
    go.set()
    with pytest.raises(OCCConflictError):
        await moving
    assert (src.balance, dst.balance) == (50, 5)
    assert (await _committed(any_runtime, src), await _committed(any_runtime, dst)) == (50, 5)


@pytest.mark.parametrize("occ", [True, False])
async def test_the_callers_object_holds_the_committed_state(
    any_runtime: Runtime, occ: bool
) -> None:
    @with_conflict_resolution(occ=occ, cleanup=NONE, runtime=any_runtime)
    async def deposit(acct: Account, amount: int) -> int:
        acct.balance += amount
        return acct.balance

    acct = Account(balance=100)
    assert await deposit(acct, 50) == 150
    assert (acct.balance, acct.version) == (150, 1)
    assert await _committed(any_runtime, acct) == 150


# cancellation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ticks", [0, 1, 2, 3, 5, 8])
async def test_a_call_cancelled_at_any_point_while_staged_never_blocks_its_target(
    any_runtime: Runtime, ticks: int
) -> None:
    """The caller is cancelled `ticks` trips through the loop after it started (while its entity
    is registered, while it is staged, while its window is being joined ...); the next call on
    the same entity must go through."""
    touch, acct = await _toucher(any_runtime, IMMEDIATE)
    victim = asyncio.ensure_future(touch(acct))
    other = asyncio.ensure_future(asyncio.sleep(0))  # keeps the loop busy in the first tick
    for _ in range(ticks):
        await asyncio.sleep(0)
    victim.cancel()
    await asyncio.gather(victim, other, return_exceptions=True)
    assert await asyncio.wait_for(touch(acct), 5) == "ok"
    assert await asyncio.wait_for(touch(acct), 5) == "ok"


async def test_a_caller_cancelled_while_staged_cannot_win_its_window(any_runtime: Runtime) -> None:
    write, acct = await _windowed_writer(any_runtime, 80, KEEP)
    high = asyncio.ensure_future(write.with_priority(9)(acct, "high"))
    low = asyncio.ensure_future(write.with_priority(2)(acct, "low"))
    await asyncio.sleep(0.02)  # both are staged in the open window
    high.cancel()
    assert await asyncio.wait_for(low, 5) == "low"
    with pytest.raises(asyncio.CancelledError):
        await high
    await _written(any_runtime)
    cancelled = await any_runtime.registry.operations_with_status(OperationStatus.CANCELLED)
    assert len(cancelled) == 1


async def test_timeouts_around_gathered_calls_leave_every_entity_usable(
    any_runtime: Runtime,
) -> None:
    @with_conflict_resolution(cleanup=IMMEDIATE, runtime=any_runtime)
    async def touch(acct: Account) -> None:
        await asyncio.sleep(0)
        acct.balance += 1

    accounts = [Account() for _ in range(12)]
    await _registered(any_runtime, *accounts)
    rng = random.Random(5)
    for _ in range(25):
        try:
            async with asyncio.timeout(rng.random() * 0.004):
                await asyncio.gather(*(touch(a) for a in accounts for _ in range(2)))
        except (TimeoutError, OperationRejectedError):
            pass
    done = await asyncio.wait_for(
        asyncio.gather(*(touch(a) for a in accounts), return_exceptions=True), 10
    )
    assert done == [None] * len(accounts)
    for a in accounts:
        assert await _committed(any_runtime, a) == a.balance


async def test_a_caller_cancelled_while_executing_ends_cancelled_and_frees_the_target(
    any_runtime: Runtime,
) -> None:
    entered = asyncio.Event()

    @with_conflict_resolution(cleanup=NONE, runtime=any_runtime)
    async def hang(acct: Account) -> None:
        entered.set()
        await asyncio.sleep(60)

    touch, acct = await _toucher(any_runtime, NONE)
    task = asyncio.ensure_future(hang(acct))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(touch(acct), 5) == "ok"
    await _written(any_runtime)
    (zombie,) = await any_runtime.registry.zombies(acct.ecs_id)
    assert zombie.status is OperationStatus.CANCELLED
    assert await _committed(any_runtime, acct) == 1


# shard keys ---------------------------------------------------------------------------------------
class Tagged(Account, shard_key="tag"):
    tag: Any = "t"


async def test_a_call_on_entities_of_one_shard_key_commits_them_together(
    any_runtime: Runtime,
) -> None:
    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=any_runtime)
    async def transfer(src: Pocket, dst: Pocket, amount: int) -> None:
        src.balance -= amount
        dst.balance += amount

    src, dst = Pocket(balance=10, owner="bo"), Pocket(owner="bo")
    await transfer(src, dst, 4)
    assert (await _committed(any_runtime, src), await _committed(any_runtime, dst)) == (6, 4)


async def test_a_call_across_shard_keys_is_refused_on_redis_and_runs_in_memory(
    any_runtime: Runtime,
) -> None:
    """Redis places entities by shard key (a Redis Cluster slot each): a call whose entities
    have different ones is refused at once, naming each entity and its shard key, on a single
    node too (so it cannot first work on one node and then fail on a cluster); nothing runs,
    nothing is recorded. The memory backend has no placement and runs it (docs/redis.md)."""
    ran = []

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=any_runtime)
    async def transfer(src: Pocket, dst: Account, amount: int) -> None:
        ran.append(amount)
        src.balance -= amount
        dst.balance += amount

    src, dst = Pocket(balance=10, owner="bo"), Account()
    if any_runtime.backend.name == "memory":
        await transfer(src, dst, 4)
        assert ran == [4]
        return
    with pytest.raises(CrossShardError) as refused:
        await transfer(src, dst, 4)
    assert refused.value.shard_keys == {src.ecs_id: "bo", dst.ecs_id: str(dst.ecs_id)}
    assert f"Pocket {src.ecs_id} (shard key 'bo')" in str(refused.value)
    assert f"Account {dst.ecs_id}" in str(refused.value)
    assert ran == []
    assert await any_runtime.registry.operations_for_target(src.ecs_id) == []


@pytest.mark.parametrize("bad", ["", "a{b}", "x" * 257, 1.5, True, None])
async def test_a_bad_shard_key_value_is_refused_on_every_backend_naming_the_field(
    any_runtime: Runtime, bad: Any
) -> None:
    @with_conflict_resolution(cleanup=NONE, runtime=any_runtime)
    async def touch(item: Tagged) -> None:
        item.balance += 1

    with pytest.raises(ConfigurationError, match=r"Tagged\.tag: a shard key must be"):
        await touch(Tagged(tag=bad))
    assert await touch(Tagged(tag=7)) is None


# nested calls -------------------------------------------------------------------------------------
async def test_a_nested_call_on_a_held_target_runs_inside_and_commits_once(
    any_runtime: Runtime,
) -> None:
    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=any_runtime)
    async def inner(acct: Account) -> None:
        acct.balance += 10

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=any_runtime)
    async def outer(acct: Account) -> None:
        acct.balance += 1
        await inner(acct)

    acct = Account()
    await outer(acct)
    assert (acct.balance, acct.version) == (11, 1)
    assert await _committed(any_runtime, acct) == 11
    assert await any_runtime.registry.zombies() == []


async def test_nested_calls_gathered_inside_a_transfer_join_it(any_runtime: Runtime) -> None:
    """Tasks spawned inside a protected call (``gather``) run their calls inside it, not staged
    behind it (which waited for it forever while it waited for them)."""

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=any_runtime)
    async def move(acct: Account, x: int) -> None:
        await asyncio.sleep(0)
        acct.balance += x

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=any_runtime)
    async def transfer(src: Account, dst: Account, x: int) -> None:
        await asyncio.gather(move(src, -x), move(dst, x))

    src, dst = Account(balance=100), Account()
    await _registered(any_runtime, src, dst)
    await asyncio.wait_for(transfer(src, dst, 30), 5)
    assert (src.balance, dst.balance, src.version, dst.version) == (70, 30, 1, 1)
    assert (await _committed(any_runtime, src), await _committed(any_runtime, dst)) == (70, 30)
    assert await any_runtime.registry.zombies() == []


# cleanup ------------------------------------------------------------------------------------------
async def test_immediate_cleanup_leaves_no_zombie_and_counts_each_removal(
    any_runtime: Runtime,
) -> None:
    touch, acct = await _toucher(any_runtime, IMMEDIATE)
    await asyncio.gather(*(touch(acct) for _ in range(4)), return_exceptions=True)
    assert await any_runtime.registry.zombies() == []
    assert any_runtime.cleanup.removed["immediate"] == 3
    assert any_runtime.backend.zombie_count == 0


async def test_deferred_zombies_leave_at_their_retention(any_runtime: Runtime) -> None:
    clock = _clock(any_runtime)
    cfg = CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=30)

    touch, acct = await _toucher(any_runtime, cfg)
    await asyncio.gather(*(touch(acct) for _ in range(3)), return_exceptions=True)
    any_runtime.cleanup.stop()  # this test drives the sweeps itself
    zombies = await any_runtime.registry.zombies(acct.ecs_id)
    assert len(zombies) == 2
    assert all(z.cleanup_scheduled_at is not None for z in zombies)
    clock.advance(minutes=29)
    assert await any_runtime.cleanup.sweep() == 0
    clock.advance(minutes=1)
    assert await any_runtime.cleanup.sweep() == 2
    assert await any_runtime.registry.zombies() == []
    assert any_runtime.cleanup.removed["ttl"] == 2
    assert any_runtime.backend.zombie_count == 0


async def test_none_keeps_zombies_until_removed_by_hand(any_runtime: Runtime) -> None:
    touch, acct = await _toucher(any_runtime, KEEP)
    await asyncio.gather(*(touch(acct) for _ in range(3)), return_exceptions=True)
    _clock(any_runtime).advance(hours=24 * 30)
    assert await any_runtime.cleanup.sweep() == 0
    zombies = await any_runtime.registry.zombies(acct.ecs_id)
    assert len(zombies) == 2
    assert await any_runtime.registry.remove(zombies[0].ecs_id)
    assert not await any_runtime.registry.remove(zombies[0].ecs_id)
    assert any_runtime.cleanup.removed["manual"] == 1
    assert len(await any_runtime.registry.zombies()) == 1


async def test_lazy_zombies_leave_on_the_query_that_meets_them(any_runtime: Runtime) -> None:
    cfg = CleanupConfig(strategy=CleanupStrategy.LAZY, retention_minutes=5)

    touch, acct = await _toucher(any_runtime, cfg)
    await asyncio.gather(touch(acct), touch(acct), return_exceptions=True)
    assert len(await any_runtime.registry.operations_for_target(acct.ecs_id)) == 1
    _clock(any_runtime).advance(minutes=5)
    assert await any_runtime.registry.operations_for_target(acct.ecs_id) == []
    assert any_runtime.cleanup.removed["lazy"] == 1
    assert any_runtime.backend.zombie_count == 0


async def test_the_per_target_cap_evicts_the_oldest_and_counts_them(any_runtime: Runtime) -> None:
    cfg = CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=3)

    touch, acct = await _toucher(any_runtime, cfg)
    first: list[Any] = []
    for _ in range(4):
        results = await asyncio.gather(touch(acct), touch(acct), return_exceptions=True)
        first += [r.op_id for r in results if isinstance(r, OperationRejectedError)]
    zombies = await any_runtime.registry.zombies(acct.ecs_id)
    assert {z.ecs_id for z in zombies} == set(first[-3:])
    assert any_runtime.cleanup.removed["cap"] == 1
    assert any_runtime.backend.zombie_count == 3


async def test_a_failed_call_raises_its_error_and_becomes_a_failed_zombie(
    any_runtime: Runtime,
) -> None:
    @with_conflict_resolution(cleanup=NONE, runtime=any_runtime)
    async def boom(acct: Account) -> None:
        raise ValueError("no funds")

    @with_conflict_resolution(cleanup=NONE, runtime=any_runtime)
    async def touch(acct: Account) -> str:
        return "ok"

    acct = Account()
    await _registered(any_runtime, acct)
    with pytest.raises(ValueError, match="no funds"):
        await boom(acct)
    assert await asyncio.wait_for(touch(acct), 5) == "ok"
    (zombie,) = await any_runtime.registry.zombies(acct.ecs_id)
    assert zombie.status is OperationStatus.FAILED
    assert "no funds" in (zombie.error_message or "")


class _Audit(CleanupHandler):
    seen: list[tuple[str, str]] = []

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        type(self).seen.append((str(operation.ecs_id), operation.status.value))
        await self.remove(operation)


async def test_a_custom_handler_decides_each_zombies_fate(any_runtime: Runtime) -> None:
    CleanupHandlerRegistry.register("conformance-audit", _Audit)
    _Audit.seen = []
    try:
        cfg = CleanupConfig(
            strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="conformance-audit"
        )

        @with_conflict_resolution(cleanup=cfg, runtime=any_runtime)
        async def touch(acct: Account) -> None:
            acct.balance += 1

        acct = Account()
        await _registered(any_runtime, acct)
        results = await asyncio.gather(touch(acct), touch(acct), return_exceptions=True)
        (rejected,) = [r for r in results if isinstance(r, OperationRejectedError)]
        assert _Audit.seen == [(str(rejected.op_id), "rejected")]
        assert await any_runtime.registry.zombies() == []
        assert any_runtime.cleanup.removed["custom"] == 1
    finally:
        CleanupHandlerRegistry.unregister("conformance-audit")


@pytest.mark.parametrize("staged", [True, False])
async def test_a_retained_success_stays_until_its_retention(
    any_runtime: Runtime, staged: bool
) -> None:
    cfg = CleanupConfig(
        strategy=CleanupStrategy.DEFERRED, retention_minutes=10, retain_succeeded=True
    )

    @with_conflict_resolution(pre_ecs=staged, occ=True, cleanup=cfg, runtime=any_runtime)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    acct = Account()
    await deposit(acct, 5)
    any_runtime.cleanup.stop()
    (kept,) = await any_runtime.registry.operations_with_status(OperationStatus.SUCCEEDED)
    assert kept.target_entity_id == acct.ecs_id
    assert kept.cleanup_scheduled_at is not None
    assert await any_runtime.registry.zombies() == []
    _clock(any_runtime).advance(minutes=10)
    assert await any_runtime.cleanup.sweep() == 1
    assert await any_runtime.registry.operations_with_status(OperationStatus.SUCCEEDED) == []
    assert await _committed(any_runtime, acct) == 5


# the wait conflict policy -------------------------------------------------------------------------
WAIT = PreECSConfig(conflict_policy="wait", max_wait_ms=10_000)
LOW, NORMAL, HIGH, CRITICAL = 2, 5, 8, 10


def _metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


async def _idle(rt: Runtime) -> None:
    """Wait until the coordinator holds nothing (a Redis worker ends records on the side)."""
    for _ in range(500):
        if rt.backend.coordinator.in_flight() == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{rt.backend.coordinator.in_flight()} target(s) still in flight")


async def test_waiting_gets_every_gathered_transfer_through(any_runtime: Runtime) -> None:
    """The issue's bank: transfers gathered over a few accounts. Under reject, one per account
    per window gets through; under wait, all of them, no money lost, no overlapping winners."""
    accounts = [Pocket(balance=1_000) for _ in range(6)]
    await _registered(any_runtime, *accounts)
    running: dict[Any, int] = {a.ecs_id: 0 for a in accounts}
    overlaps = []
    occ = OCCConfig(max_retries=100, base_delay_ms=0.1, max_delay_ms=2)

    @with_conflict_resolution(pre_ecs=WAIT, occ=occ, cleanup=IMMEDIATE, runtime=any_runtime)
    async def transfer(source: Pocket, dest: Pocket, amount: int) -> None:
        running[source.ecs_id] += 1
        if running[source.ecs_id] > 1:
            overlaps.append(source.ecs_id)
        await asyncio.sleep(0)
        source.balance -= amount
        dest.balance += amount
        running[source.ecs_id] -= 1

    calls = [transfer(accounts[i % 6], accounts[(i * 5 + 1) % 6], 1 + i % 7) for i in range(90)]
    assert await asyncio.gather(*calls, return_exceptions=True) == [None] * 90
    assert overlaps == []
    committed = [await _committed(any_runtime, a) for a in accounts]
    assert sum(committed) == 6_000
    assert committed == [a.balance for a in accounts]
    assert _metric(any_runtime, "contend_operations_total", outcome="rejected") == 0
    assert _metric(any_runtime, "contend_staging_carried_total") > 0
    await _idle(any_runtime)


async def test_waiting_calls_run_in_priority_then_submission_order(any_runtime: Runtime) -> None:
    order: list[str] = []

    @with_conflict_resolution(pre_ecs=WAIT, cleanup=IMMEDIATE, runtime=any_runtime)
    async def work(acct: Account, name: str) -> str:
        order.append(name)
        await asyncio.sleep(0)
        return name

    acct = Account()
    await _registered(any_runtime, acct)
    plan = [("n1", NORMAL), ("h1", HIGH), ("n2", NORMAL), ("l1", LOW), ("h2", HIGH), ("n3", NORMAL)]
    results = await asyncio.gather(*(work.with_priority(p)(acct, n) for n, p in plan))
    assert results == [n for n, _ in plan]
    assert order == ["h1", "h2", "n1", "n2", "n3", "l1"]
    assert _metric(any_runtime, "contend_staging_carried_total") == 5 + 4 + 3 + 2 + 1
    assert _metric(any_runtime, "contend_staging_wait_seconds_count", outcome="won") == 6
    await _idle(any_runtime)


async def test_a_waiter_is_rejected_at_its_deadline_naming_the_holder(
    any_runtime: Runtime,
) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(conflict_policy="wait", max_wait_ms=60),
        cleanup=KEEP,
        runtime=any_runtime,
    )
    async def work(acct: Account, hold: bool) -> str:
        if hold:
            entered.set()
            await gate.wait()
        return "done"

    acct = Account()
    await _registered(any_runtime, acct)
    holder = asyncio.ensure_future(work.with_priority(LOW)(acct, True))
    await entered.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.ensure_future(work.with_priority(CRITICAL)(acct, False))
    done, _ = await asyncio.wait([waiter], timeout=5)
    assert done, "the waiter was not rejected at its deadline"
    waited = loop.time() - started
    error = waiter.exception()
    assert isinstance(error, OperationRejectedError)
    assert not holder.done()
    assert "after waiting max_wait_ms=60" in str(error)
    assert error.priority == CRITICAL and error.winner_priority == LOW
    await _written(any_runtime)
    (record,) = await any_runtime.registry.zombies(acct.ecs_id)
    assert record.status is OperationStatus.REJECTED
    assert record.winner_id == error.winner_id
    gate.set()
    assert await holder == "done"
    assert await asyncio.wait_for(work(acct, False), 5) == "done"
    assert _metric(any_runtime, "contend_staging_wait_seconds_count", outcome="rejected") == 1
    assert _metric(any_runtime, "contend_staging_wait_seconds_sum", outcome="rejected") >= 0.06
    assert 0.06 <= waited < 5
    await _idle(any_runtime)


async def test_low_priority_is_not_starved_by_a_steady_stream_of_high_ones(
    any_runtime: Runtime,
) -> None:
    """Fairness by ageing: each window a waiter loses counts as one more priority point (up to
    CRITICAL), and ties go to the earliest staged. A LOW call facing a fresh HIGH call in every
    window is overtaken at most 10 - 2 = 8 times, then runs; without ageing it would wait for
    the whole stream."""
    order: list[str] = []
    waiting = asyncio.Semaphore(3)

    @with_conflict_resolution(pre_ecs=WAIT, cleanup=IMMEDIATE, runtime=any_runtime)
    async def work(acct: Account, name: str) -> None:
        order.append(name)
        if name.startswith("high"):
            waiting.release()
        for _ in range(2):
            await asyncio.sleep(0)

    acct = Account()
    await _registered(any_runtime, acct)

    async def stream(n: int) -> list[asyncio.Task[None]]:
        """`n` HIGH calls, at most 3 of them waiting at any time: fresh ones in every window."""
        tasks = []
        for i in range(n):
            await waiting.acquire()
            tasks.append(asyncio.ensure_future(work.with_priority(HIGH)(acct, f"high{i}")))
            await asyncio.sleep(0)
        return tasks

    first = asyncio.ensure_future(work.with_priority(HIGH)(acct, "first"))
    await asyncio.sleep(0)
    low = asyncio.ensure_future(work.with_priority(LOW)(acct, "low"))
    highs = await stream(30)
    await asyncio.wait_for(asyncio.gather(first, low, *highs), 10)
    position = order.index("low")
    assert 3 <= position <= 1 + (10 - LOW), order[: position + 1]
    assert all(name.startswith("high") for name in order[1:position])
    assert len(order) == 32 and position < 20, "the stream ended before the LOW call ran"
    await _idle(any_runtime)


async def test_a_cancelled_waiter_never_runs_and_leaves_nothing_behind(
    any_runtime: Runtime,
) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()
    order: list[str] = []

    @with_conflict_resolution(pre_ecs=WAIT, cleanup=KEEP, runtime=any_runtime)
    async def work(acct: Account, name: str) -> str:
        order.append(name)
        if name == "holder":
            entered.set()
            await gate.wait()
        return name

    acct = Account()
    await _registered(any_runtime, acct)
    holder = asyncio.ensure_future(work(acct, "holder"))
    await entered.wait()
    waiters = [
        asyncio.ensure_future(work.with_priority(p)(acct, f"w{i}"))
        for i, p in enumerate((NORMAL, CRITICAL, NORMAL))
    ]
    await asyncio.sleep(0.03)  # all three wait for the holder
    waiters[1].cancel()
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert results[0] == "holder" and results[1] == "w0" and results[3] == "w2"
    assert isinstance(results[2], asyncio.CancelledError)
    assert order == ["holder", "w0", "w2"]
    await _written(any_runtime)
    (record,) = await any_runtime.registry.zombies(acct.ecs_id)
    assert record.status is OperationStatus.CANCELLED
    assert _metric(any_runtime, "contend_staging_wait_seconds_count", outcome="cancelled") == 1
    await _idle(any_runtime)


async def test_reject_and_wait_calls_share_a_window(any_runtime: Runtime) -> None:
    """Losers under reject are rejected; waiters of the same window are carried."""

    @with_conflict_resolution(cleanup=IMMEDIATE, runtime=any_runtime)
    async def work(acct: Account, name: str) -> str:
        await asyncio.sleep(0)
        return name

    acct = Account()
    await _registered(any_runtime, acct)
    results = await asyncio.gather(
        work(acct, "a"),
        work.with_max_wait(5_000)(acct, "b"),
        work.with_priority(HIGH)(acct, "c"),
        work(acct, "d"),
        work.with_max_wait(5_000).with_priority(LOW)(acct, "e"),
        return_exceptions=True,
    )
    assert results[1:3] == ["b", "c"] and results[4] == "e"
    assert all(isinstance(results[i], OperationRejectedError) for i in (0, 3))
    await _idle(any_runtime)


async def test_with_max_wait_zero_rejects_at_once_under_the_wait_policy(
    any_runtime: Runtime,
) -> None:
    @with_conflict_resolution(pre_ecs=WAIT, cleanup=IMMEDIATE, runtime=any_runtime)
    async def work(acct: Account) -> int:
        await asyncio.sleep(0)
        return 1

    acct = Account()
    await _registered(any_runtime, acct)
    results = await asyncio.gather(
        work(acct), work.with_max_wait(0)(acct), work(acct), return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], OperationRejectedError)
    assert "waiting" not in str(results[1])


async def test_waiting_in_a_timed_window(any_runtime: Runtime) -> None:
    order: list[str] = []

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(staging_timeout_ms=50, conflict_policy="wait", max_wait_ms=5_000),
        cleanup=IMMEDIATE,
        runtime=any_runtime,
    )
    async def work(acct: Account, name: str) -> None:
        order.append(name)
        await asyncio.sleep(0.001)

    acct = Account()
    await _registered(any_runtime, acct)
    tasks = [asyncio.ensure_future(work(acct, "a"))]
    await asyncio.sleep(0.01)
    tasks.append(asyncio.ensure_future(work.with_priority(HIGH)(acct, "b")))
    tasks.append(asyncio.ensure_future(work(acct, "c")))
    await asyncio.gather(*tasks)
    assert order == ["b", "a", "c"]
