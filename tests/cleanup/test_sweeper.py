"""The background sweeper: one per runtime, driven by due times, paced by the check interval."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConflictResolutionOperation,
    Entity,
    FakeClock,
    MemoryBackend,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.record import Record
from contend.testing import make_runtime


class Item(Entity):
    n: int = 0


def _record(**fields: Any) -> Record:
    """A record as a call makes it, from the fields of its public model."""
    return Record.from_operation(ConflictResolutionOperation(**fields))


def views(records: Sequence[Record]) -> list[ConflictResolutionOperation]:
    return [r.view() for r in records]


class CountingBackend(MemoryBackend):
    """Counts the records a sweep takes out, to show a sweep touches only what is due."""

    removes = 0

    async def remove(self, op_id: Any) -> Record | None:
        self.removes += 1
        return await super().remove(op_id)

    async def take_due(self, now: float, limit: int) -> list[Record]:
        taken = await super().take_due(now, limit)
        self.removes += len(taken)
        return taken


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def sweepers() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "contend-sweeper"]


async def bury(
    rt: Runtime, config: CleanupConfig, count: int, targets: list[uuid.UUID]
) -> list[Record]:
    """Zombies made the way a rejected call makes them, without the call around them."""
    ops = []
    for i in range(count):
        tid = targets[i % len(targets)]
        op = _record(
            function_name="batch",
            target_entity_id=tid,
            target_entity_ids=(tid,),
            target_type="Item",
            cleanup_config=config,
        )
        await rt.backend.add_operation(op)
        await rt.cleanup.bury(op, OperationStatus.REJECTED, config, "lost")
        ops.append(op)
    return ops


def deferred(minutes: int, interval: int = 60) -> CleanupConfig:
    return CleanupConfig(
        strategy=CleanupStrategy.DEFERRED,
        retention_minutes=minutes,
        cleanup_check_interval_seconds=interval,
        max_zombie_count_per_target=10_000,
        force_cleanup_threshold=100_000,
    )


async def test_sweeper_starts_by_itself_and_removes_due_zombies(clock: FakeClock) -> None:
    rt = make_runtime(clock=clock)

    @with_conflict_resolution(cleanup=deferred(30), runtime=rt)
    async def bump(item: Item) -> Item:
        return item

    assert not rt.cleanup.sweeper_running
    await asyncio.gather(*(bump(Item()) for _ in range(2)))
    assert not rt.cleanup.sweeper_running  # nothing to clean up yet
    item = Item()
    await asyncio.gather(*(bump(item) for _ in range(3)), return_exceptions=True)
    assert rt.cleanup.sweeper_running
    clock.advance(minutes=29)
    await settle()
    assert rt.registry.zombie_count == 2
    clock.advance(minutes=1)
    await settle()
    assert rt.registry.zombie_count == 0
    assert rt.cleanup.removed == {"ttl": 2}
    assert rt.cleanup.sweeps == 1
    rt.cleanup.stop()


async def test_one_sweeper_per_runtime(clock: FakeClock) -> None:
    first = make_runtime(clock=clock)
    second = make_runtime(clock=clock)
    targets = [uuid.uuid4() for _ in range(5)]
    await bury(first, deferred(5), 50, targets)
    await bury(second, deferred(5), 20, targets)
    await settle()
    assert len(sweepers()) == 2
    await bury(first, deferred(1), 10, targets)
    await settle()
    assert len(sweepers()) == 2
    clock.advance(minutes=5)
    await settle()
    assert (first.registry.zombie_count, second.registry.zombie_count) == (0, 0)
    first.cleanup.stop()
    second.cleanup.stop()
    await settle()
    assert sweepers() == []


async def test_a_sweep_costs_what_is_due_not_what_is_retained(clock: FakeClock) -> None:
    backend = CountingBackend()
    rt = make_runtime(backend=backend, clock=clock)
    targets = [uuid.uuid4() for _ in range(10)]
    due_soon = await bury(rt, deferred(5), 500, targets)
    await bury(rt, deferred(60), 5_000, targets)
    assert rt.registry.zombie_count == 5_500
    clock.advance(minutes=5)
    assert await rt.cleanup.sweep() == 500
    assert backend.removes == 500
    assert rt.registry.zombie_count == 5_000
    assert rt.cleanup.removed == {"ttl": 500}
    assert [await rt.registry.get_operation(op.ecs_id) for op in due_soon[:20]] == [None] * 20
    rt.cleanup.stop()


async def test_sweeper_respects_the_check_interval(clock: FakeClock) -> None:
    rt = make_runtime(clock=clock)
    config = deferred(1, interval=10)
    targets = [uuid.uuid4()]
    await bury(rt, config, 3, targets)
    clock.advance(seconds=1)
    await bury(rt, config, 4, targets)  # due one second after the first batch
    await settle()

    clock.advance(seconds=59)  # first batch due, swept
    await settle()
    assert rt.registry.zombie_count == 4
    assert rt.cleanup.sweeps == 1

    clock.advance(seconds=1)  # second batch due, but the last sweep was 1 s ago
    await settle()
    assert rt.registry.zombie_count == 4
    clock.advance(seconds=8.999)
    await settle()
    assert rt.registry.zombie_count == 4
    assert rt.cleanup.sweeps == 1

    clock.advance(seconds=0.001)  # 10 s after the first sweep
    await settle()
    assert rt.registry.zombie_count == 0
    assert rt.cleanup.sweeps == 2
    rt.cleanup.stop()


async def test_retention_counts_from_completion_not_submission(clock: FakeClock) -> None:
    rt = make_runtime(clock=clock)
    running = asyncio.Event()

    @with_conflict_resolution(cleanup=deferred(30), runtime=rt)
    async def long_job(item: Item) -> Item:
        running.set()
        await clock.sleep(600)
        raise RuntimeError("gave up after 10 minutes")

    item = Item()
    task = asyncio.create_task(long_job(item))
    await running.wait()
    clock.advance(minutes=10)
    with pytest.raises(RuntimeError, match="gave up"):
        await task
    (zombie,) = await rt.registry.zombies(item.ecs_id)
    assert zombie.completed_at == zombie.created_at + timedelta(minutes=10)
    clock.advance(minutes=29)  # 39 minutes after submission, 29 after completion
    await settle()
    assert rt.registry.zombie_count == 1
    clock.advance(minutes=1)
    await settle()
    assert rt.registry.zombie_count == 0
    rt.cleanup.stop()


async def test_sweeper_restarts_on_a_new_loop() -> None:
    clock = FakeClock()
    rt = make_runtime(clock=clock)

    async def round_trip() -> int:
        await bury(rt, deferred(1), 2, [uuid.uuid4()])
        clock.advance(minutes=1)
        await settle()
        return rt.registry.zombie_count

    assert await asyncio.create_task(round_trip()) == 0
    rt.cleanup.stop()


async def test_a_sweep_cancelled_while_a_sink_writes_leaves_its_batch_scheduled() -> None:
    """stop(), a loop switch or shutdown cancel the sweeper; the batch must not fall off."""
    clock = FakeClock()
    rt = make_runtime(clock=clock)
    config = CleanupConfig(retention_minutes=1, cleanup_check_interval_seconds=10)
    targets = [uuid.uuid4() for _ in range(20)]
    await bury(rt, config, 20, targets)
    rt.cleanup.stop()  # this test drives the sweeps itself

    async def slow_sink(batch: Any) -> None:
        await asyncio.sleep(0.05)

    rt.cleanup.add_removal_sink(slow_sink)
    clock.advance(minutes=2)
    sweep = asyncio.create_task(rt.cleanup.sweep())
    await asyncio.sleep(0.01)
    sweep.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sweep
    assert rt.registry.zombie_count == 20
    assert rt.backend.scheduled_count() == 20  # type: ignore[attr-defined]
    assert await rt.cleanup.sweep() == 20
    assert rt.registry.zombie_count == 0
    rt.cleanup.stop()
