"""Adaptive rules: per-target cap, force threshold, memory pressure, priority lists."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    FakeClock,
    OperationCleanedEvent,
    OperationPriority,
    OperationRejectedError,
    Runtime,
    with_conflict_resolution,
)
from contend.testing import EventRecorder, make_runtime


class Item(Entity):
    n: int = 0


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


def make(rt: Runtime, **cleanup: Any) -> Callable[..., Any]:
    @with_conflict_resolution(cleanup=CleanupConfig(**cleanup), runtime=rt)
    async def bump(item: Item) -> Item:
        item.n += 1
        return item

    return bump


async def test_per_target_cap_keeps_the_newest(runtime: Runtime, clock: FakeClock) -> None:
    events = EventRecorder(runtime, OperationCleanedEvent).events
    bump = make(runtime, strategy=CleanupStrategy.NONE, max_zombie_count_per_target=3)
    item, other = Item(), Item()
    rejected_ids = []
    for _ in range(5):
        results = await asyncio.gather(bump(item), bump(item), return_exceptions=True)
        rejected_ids += [r.op_id for r in results if isinstance(r, OperationRejectedError)]
        clock.advance(seconds=1)
    await asyncio.gather(bump(other), bump(other), return_exceptions=True)
    kept = await runtime.registry.zombies(item.ecs_id)
    assert [z.ecs_id for z in kept] == rejected_ids[-3:]
    assert len(await runtime.registry.zombies(other.ecs_id)) == 1
    assert runtime.registry.zombie_count == 4
    assert runtime.cleanup.removed == {"cap": 2}
    assert metric(runtime, "contend_removals_total", reason="cap") == 2
    assert sorted(e.op_id for e in events) == sorted(rejected_ids[:2])


async def test_force_threshold_turns_the_strategy_immediate(clock: FakeClock) -> None:
    rt = make_runtime(clock=clock)
    bump = make(rt, strategy=CleanupStrategy.NONE, force_cleanup_threshold=100)
    items = [Item() for _ in range(101)]
    await asyncio.gather(*(bump(i) for i in items for _ in range(2)), return_exceptions=True)
    assert rt.registry.zombie_count == 101  # 100 kept, then the 101st made it exceed
    assert rt.cleanup.removed == {}
    item = Item()
    results = await asyncio.gather(*(bump(item) for _ in range(4)), return_exceptions=True)
    assert sum(isinstance(r, OperationRejectedError) for r in results) == 3
    assert rt.registry.zombie_count == 101
    assert rt.cleanup.removed == {"force": 3}
    assert metric(rt, "contend_removals_total", reason="force") == 3
    assert metric(rt, "contend_force_cleanups_total") == 3


async def test_memory_pressure_turns_the_strategy_immediate(clock: FakeClock) -> None:
    pressure = [0.5]
    rt = Runtime(clock=clock, memory_probe=lambda: pressure[0])
    bump = make(rt, strategy=CleanupStrategy.DEFERRED, memory_pressure_threshold=0.8)
    await asyncio.gather(*(bump(Item()) for _ in range(1)))
    item = Item()
    await asyncio.gather(*(bump(item) for _ in range(3)), return_exceptions=True)
    assert rt.registry.zombie_count == 2
    pressure[0] = 0.9
    clock.advance(seconds=1)  # the monitor's cached reading expires
    other = Item()
    await asyncio.gather(*(bump(other) for _ in range(3)), return_exceptions=True)
    assert rt.registry.zombie_count == 2
    assert rt.cleanup.removed == {"pressure": 2}
    assert metric(rt, "contend_memory_pressure_cleanups_total") == 2
    assert metric(rt, "contend_removals_total", reason="pressure") == 2
    rt.cleanup.stop()


async def test_immediate_cleanup_priorities(runtime: Runtime) -> None:
    bump = make(
        runtime,
        strategy=CleanupStrategy.NONE,
        immediate_cleanup_priorities=[OperationPriority.CRITICAL, OperationPriority.HIGH],
        debug_retention_priorities=[],
    )
    item = Item()
    critical = bump.with_priority(OperationPriority.CRITICAL)  # type: ignore[attr-defined]
    high = bump.with_priority(OperationPriority.HIGH)  # type: ignore[attr-defined]
    results = await asyncio.gather(
        critical(item), critical(item), high(item), bump(item), return_exceptions=True
    )
    assert isinstance(results[0], Item)
    kept = await runtime.registry.zombies(item.ecs_id)
    assert [z.priority for z in kept] == [OperationPriority.NORMAL]
    assert runtime.cleanup.removed == {"immediate": 2}


async def test_debug_retention_priorities_are_deferred(runtime: Runtime, clock: FakeClock) -> None:
    bump = make(
        runtime,
        strategy=CleanupStrategy.IMMEDIATE,
        retention_minutes=15,
        immediate_cleanup_priorities=[],
        debug_retention_priorities=[OperationPriority.LOW],
    )
    item = Item()
    low = bump.with_priority(OperationPriority.LOW)  # type: ignore[attr-defined]
    await asyncio.gather(bump(item), low(item), bump(item), return_exceptions=True)
    (kept,) = await runtime.registry.zombies(item.ecs_id)
    assert kept.priority == OperationPriority.LOW
    assert kept.cleanup_strategy is CleanupStrategy.DEFERRED
    assert runtime.cleanup.removed == {"immediate": 1}
    clock.advance(minutes=15)
    await settle()
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"immediate": 1, "ttl": 1}
