"""LAZY: nothing runs in the background; a query that meets a due zombie removes it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConflictResolutionOperation,
    Entity,
    FakeClock,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)


class Item(Entity):
    n: int = 0


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def lazy(rt: Runtime, minutes: int) -> Callable[..., Any]:
    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.LAZY, retention_minutes=minutes), runtime=rt
    )
    async def bump(item: Item) -> Item:
        item.n += 1
        return item

    return bump


async def rejected_pair(
    rt: Runtime, minutes: int
) -> tuple[Item, list[ConflictResolutionOperation]]:
    item = Item()
    await asyncio.gather(*(lazy(rt, minutes)(item) for _ in range(3)), return_exceptions=True)
    return item, await rt.backend.zombies(item.ecs_id)


async def test_lazy_zombies_wait_for_a_query(runtime: Runtime, clock: FakeClock) -> None:
    _, zombies = await rejected_pair(runtime, 5)
    assert len(zombies) == 2
    clock.advance(hours=3)
    await settle()
    assert not runtime.cleanup.sweeper_running
    assert runtime.registry.zombie_count == 2
    assert runtime.backend.operation_count() == 2

    assert await runtime.registry.zombies() == []
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"lazy": 2}


async def test_a_query_before_the_retention_keeps_them(runtime: Runtime, clock: FakeClock) -> None:
    item, _ = await rejected_pair(runtime, 5)
    clock.advance(minutes=4)
    assert len(await runtime.registry.zombies(item.ecs_id)) == 2
    assert len(await runtime.registry.operations_for_target(item.ecs_id)) == 2
    assert runtime.cleanup.removed == {}
    clock.advance(minutes=1)
    assert await runtime.registry.operations_for_target(item.ecs_id) == []
    assert runtime.cleanup.removed == {"lazy": 2}


async def test_retention_zero_means_due_at_once(runtime: Runtime) -> None:
    _, zombies = await rejected_pair(runtime, 0)
    assert runtime.registry.zombie_count == 2
    assert await runtime.registry.get_operation(zombies[0].ecs_id) is None
    assert runtime.registry.zombie_count == 1
    assert await runtime.registry.get_operation(zombies[1].ecs_id) is None
    assert runtime.cleanup.removed == {"lazy": 2}


async def test_zombie_listing_by_status_meets_them(runtime: Runtime, clock: FakeClock) -> None:
    await rejected_pair(runtime, 1)
    clock.advance(minutes=1)
    assert await runtime.registry.operations_with_status(OperationStatus.REJECTED) == []
    assert runtime.registry.zombie_count == 0


async def test_conflicting_operations_skip_and_remove_due_zombies(
    runtime: Runtime, clock: FakeClock
) -> None:
    item, _ = await rejected_pair(runtime, 1)
    clock.advance(minutes=1)
    gate = asyncio.Event()

    @with_conflict_resolution(cleanup=CleanupStrategy.LAZY, runtime=runtime)
    async def hold(entity: Item) -> Item:
        await gate.wait()
        return entity

    task = asyncio.create_task(hold(item))
    await settle(3)
    probe = ConflictResolutionOperation(
        target_entity_id=item.ecs_id, target_entity_ids=(item.ecs_id,)
    )
    found = await runtime.registry.conflicting_operations(probe)
    assert [op.status for op in found] == [OperationStatus.EXECUTING]
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"lazy": 2}
    gate.set()
    await task


async def test_queries_on_other_targets_leave_them(runtime: Runtime, clock: FakeClock) -> None:
    item, _ = await rejected_pair(runtime, 1)
    other, _ = await rejected_pair(runtime, 1)
    clock.advance(minutes=1)
    assert await runtime.registry.zombies(other.ecs_id) == []
    assert runtime.registry.zombie_count == 2
    assert len(await runtime.backend.zombies(item.ecs_id)) == 2


@pytest.mark.parametrize("minutes", [0, 30])
async def test_lazy_records_carry_their_due_time(runtime: Runtime, minutes: int) -> None:
    _, zombies = await rejected_pair(runtime, minutes)
    for z in zombies:
        assert z.cleanup_strategy is CleanupStrategy.LAZY
        assert z.completed_at is not None and z.cleanup_scheduled_at is not None
        assert (z.cleanup_scheduled_at - z.completed_at).total_seconds() == minutes * 60
