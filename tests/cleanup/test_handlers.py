"""Each strategy's lifecycle on the fake clock, and each removal counted exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    FakeClock,
    OperationCleanedEvent,
    OperationRejectedError,
    OperationRejectedEvent,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.testing import EventRecorder


class Item(Entity):
    n: int = 0


async def settle(rounds: int = 10) -> None:
    """Let the sweeper and other background tasks run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def removals(rt: Runtime, reason: str) -> float:
    value = rt.metrics.registry.get_sample_value("contend_removals_total", {"reason": reason})
    return value or 0.0


def cleaned_events(rt: Runtime) -> list[OperationCleanedEvent]:
    seen = EventRecorder(rt, OperationCleanedEvent).events
    return seen


def make(rt: Runtime, **cleanup: Any) -> Callable[..., Any]:
    @with_conflict_resolution(cleanup=CleanupConfig(**cleanup), runtime=rt)
    async def bump(item: Item) -> Item:
        item.n += 1
        return item

    return bump


async def contend(fn: Callable[..., Any], item: Item, calls: int = 3) -> list[Any]:
    return list(await asyncio.gather(*(fn(item) for _ in range(calls)), return_exceptions=True))


def rejected(results: list[Any]) -> int:
    return sum(isinstance(r, OperationRejectedError) for r in results)


async def test_immediate_leaves_no_zombie(runtime: Runtime) -> None:
    events = cleaned_events(runtime)
    bump = make(runtime, strategy=CleanupStrategy.IMMEDIATE)
    item = Item()
    results = await contend(bump, item, 4)
    assert rejected(results) == 3
    assert runtime.registry.zombie_count == 0
    assert await runtime.registry.zombies() == []
    assert runtime.backend.operation_count() == 0
    assert runtime.cleanup.removed == {"immediate": 3}
    assert removals(runtime, "immediate") == 3
    assert [e.reason for e in events] == ["immediate"] * 3
    assert {e.status for e in events} == {"rejected"}


async def test_rejected_event_names_the_strategy_and_cleanup_ran_first(runtime: Runtime) -> None:
    seen: list[tuple[str, int]] = []

    def on_rejected(event: OperationRejectedEvent) -> None:
        seen.append((event.cleanup_strategy, runtime.registry.zombie_count))

    runtime.events.subscribe(OperationRejectedEvent, on_rejected)
    bump = make(runtime, strategy=CleanupStrategy.IMMEDIATE)
    await contend(bump, Item(), 2)
    assert seen == [("immediate", 0)]


async def test_deferred_keeps_the_zombie_until_exactly_its_retention(
    runtime: Runtime, clock: FakeClock
) -> None:
    events = cleaned_events(runtime)
    bump = make(runtime, strategy=CleanupStrategy.DEFERRED, retention_minutes=30)
    item = Item()
    results = await contend(bump, item, 3)
    assert rejected(results) == 2
    zombies = await runtime.registry.zombies(item.ecs_id)
    assert len(zombies) == 2
    done = zombies[0].completed_at
    assert done is not None
    assert {z.cleanup_scheduled_at for z in zombies} == {done + timedelta(minutes=30)}

    clock.advance(timedelta(minutes=30, microseconds=-1).total_seconds())
    await settle()
    assert await runtime.cleanup.sweep() == 0
    assert runtime.registry.zombie_count == 2

    clock.advance(timedelta(microseconds=1).total_seconds())
    sweeps = runtime.cleanup.sweeps
    assert await runtime.cleanup.sweep() == 2
    assert runtime.cleanup.sweeps == sweeps + 1
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"ttl": 2}
    assert removals(runtime, "ttl") == 2
    assert len(events) == 2
    await settle()
    assert runtime.cleanup.removed == {"ttl": 2}


async def test_none_keeps_zombies_until_removed_by_hand(runtime: Runtime, clock: FakeClock) -> None:
    events = cleaned_events(runtime)
    bump = make(runtime, strategy=CleanupStrategy.NONE)
    item = Item()
    await contend(bump, item, 3)
    clock.advance(hours=48)
    await settle()
    assert await runtime.cleanup.sweep() == 0
    zombies = await runtime.registry.zombies(item.ecs_id)
    assert len(zombies) == 2
    assert {z.cleanup_strategy for z in zombies} == {CleanupStrategy.NONE}
    assert not runtime.cleanup.sweeper_running

    assert await runtime.registry.remove(zombies[0].ecs_id)
    assert not await runtime.registry.remove(zombies[0].ecs_id)
    assert runtime.registry.zombie_count == 1
    assert runtime.cleanup.removed == {"manual": 1}
    assert removals(runtime, "manual") == 1
    assert len(events) == 1


async def test_failed_calls_follow_the_same_lifecycle(runtime: Runtime, clock: FakeClock) -> None:
    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=5),
        runtime=runtime,
    )
    async def explode(item: Item) -> Item:
        raise KeyError("boom")

    item = Item()
    with pytest.raises(KeyError):
        await explode(item)
    (zombie,) = await runtime.registry.zombies(item.ecs_id)
    assert zombie.status is OperationStatus.FAILED
    assert "KeyError" in (zombie.error_message or "")
    assert zombie.cleanup_strategy is CleanupStrategy.DEFERRED
    clock.advance(minutes=5)
    await settle()
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"ttl": 1}


async def test_failed_call_with_immediate_cleanup_leaves_nothing(runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=CleanupStrategy.IMMEDIATE, runtime=runtime)
    async def explode(item: Item) -> Item:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        await explode(Item())
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"immediate": 1}


async def test_cancelled_calls_follow_the_same_lifecycle(
    runtime: Runtime, clock: FakeClock
) -> None:
    started = asyncio.Event()

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=10),
        runtime=runtime,
    )
    async def slow(item: Item) -> Item:
        started.set()
        await asyncio.Event().wait()
        return item

    item = Item()
    task = asyncio.create_task(slow(item))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (zombie,) = await runtime.registry.zombies(item.ecs_id)
    assert zombie.status is OperationStatus.CANCELLED
    assert zombie.cleanup_scheduled_at == zombie.completed_at + timedelta(minutes=10)  # type: ignore[operator]
    clock.advance(minutes=10)
    await settle()
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"ttl": 1}


async def test_cancelled_while_staged_is_a_zombie_too(runtime: Runtime) -> None:
    gate = asyncio.Event()

    @with_conflict_resolution(cleanup=CleanupStrategy.NONE, runtime=runtime)
    async def hold(item: Item) -> Item:
        await gate.wait()
        return item

    item = Item()
    first = asyncio.create_task(hold(item))
    await settle(3)
    second = asyncio.create_task(hold(item))
    await settle(3)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gate.set()
    assert await first is item
    (zombie,) = await runtime.registry.zombies(item.ecs_id)
    assert zombie.status is OperationStatus.CANCELLED
    assert (
        runtime.metrics.registry.get_sample_value(
            "contend_operations_total", {"outcome": "cancelled"}
        )
        == 1
    )


@pytest.mark.parametrize(
    "strategy", [CleanupStrategy.IMMEDIATE, CleanupStrategy.DEFERRED, CleanupStrategy.LAZY]
)
async def test_every_removal_is_counted_once(
    runtime: Runtime, clock: FakeClock, strategy: CleanupStrategy
) -> None:
    events = cleaned_events(runtime)
    bump = make(runtime, strategy=strategy, retention_minutes=1, max_zombie_count_per_target=2)
    items = [Item() for _ in range(4)]
    for _ in range(3):
        await asyncio.gather(*(contend(bump, item, 3) for item in items))
    present_before = runtime.backend.operation_count()
    clock.advance(minutes=1)
    await settle()
    for item in items:
        await runtime.registry.zombies(item.ecs_id)
    await runtime.cleanup.sweep()
    left = 3 * 4 * 2 - runtime.backend.operation_count()
    assert present_before <= 3 * 4 * 2
    assert runtime.backend.operation_count() == 0
    counted = sum(runtime.cleanup.removed.values())
    assert counted == left == 24
    assert sum(removals(runtime, r) for r in runtime.cleanup.removed) == left
    assert len(events) == left
    assert len({e.op_id for e in events}) == left
    assert runtime.registry.zombie_count == 0
    registry = runtime.metrics.registry
    assert registry.get_sample_value("contend_zombie_operations", {"target_type": "Item"}) == 0
    assert (
        registry.get_sample_value("contend_operations_cleaned_total", {"strategy": strategy.value})
        == left
    )
