"""A sweep takes its due records as one batch: every index, count and metric must still be exact."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConflictResolutionOperation,
    Entity,
    FakeClock,
    OperationCleanedEvent,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.record import Record
from contend.testing import EventRecorder, make_runtime


class Item(Entity):
    n: int = 0


def _record(**fields: Any) -> Record:
    """A record as a call makes it, from the fields of its public model."""
    return Record.from_operation(ConflictResolutionOperation(**fields))


def views(records: Sequence[Record]) -> list[ConflictResolutionOperation]:
    return [r.view() for r in records]


def deferred(minutes: int = 1, *, retain_succeeded: bool = False) -> CleanupConfig:
    return CleanupConfig(
        strategy=CleanupStrategy.DEFERRED,
        retention_minutes=minutes,
        max_zombie_count_per_target=10_000,
        force_cleanup_threshold=100_000,
        retain_succeeded=retain_succeeded,
    )


async def bury(
    rt: Runtime,
    config: CleanupConfig,
    targets: tuple[uuid.UUID, ...],
    status: OperationStatus = OperationStatus.REJECTED,
    target_type: str = "Item",
) -> Record:
    """A zombie made the way a rejected (or failed) call makes one, without the call."""
    op = _record(
        function_name="batch",
        target_entity_id=targets[0] if targets else None,
        target_entity_ids=targets,
        target_type=target_type,
        cleanup_config=config,
    )
    await rt.backend.add_operation(op)
    if status is not OperationStatus.REJECTED:
        rt.backend.set_status(op, OperationStatus.EXECUTING, rt.clock.now())
    await rt.cleanup.bury(op, status, config, "lost")
    return op


def runtime(clock: FakeClock) -> Runtime:
    rt = make_runtime(clock=clock)
    rt.cleanup.stop()
    return rt


def sample(rt: Runtime, name: str, **labels: str) -> float:
    found = rt.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_a_record_rescheduled_is_swept_at_its_latest_due_time_only(clock: FakeClock) -> None:
    rt = runtime(clock)
    target = uuid.uuid4()
    later = await bury(rt, deferred(1), (target,))
    sooner = await bury(rt, deferred(1), (target,))
    start = clock.time()
    await rt.cleanup.schedule(later, start + 600.5)  # into another second
    await rt.cleanup.schedule(sooner, start + 30.25)  # earlier than first filed
    await rt.cleanup.schedule(sooner, start + 30.75)  # and again within the same second
    assert await rt.backend.next_due() == start + 30.75

    clock.advance(30.5)
    assert await rt.cleanup.sweep() == 0
    clock.advance(0.25)
    assert await rt.cleanup.sweep() == 1
    clock.advance(60)
    assert await rt.cleanup.sweep() == 0, "the first filing of `later` is stale"
    assert await rt.registry.zombies(target) == [later.view()]
    clock.advance(600)
    assert await rt.cleanup.sweep() == 1
    assert rt.cleanup.removed == {"ttl": 2}
    assert await rt.backend.next_due() is None
    assert rt.backend.scheduled_count() == 0  # type: ignore[attr-defined]


async def test_within_one_second_a_sweep_takes_only_what_is_due(clock: FakeClock) -> None:
    rt = runtime(clock)
    ops = [await bury(rt, CleanupConfig(strategy=CleanupStrategy.NONE), (uuid.uuid4(),))]
    ops += [await bury(rt, CleanupConfig(strategy=CleanupStrategy.NONE), (uuid.uuid4(),))]
    ops += [await bury(rt, CleanupConfig(strategy=CleanupStrategy.NONE), (uuid.uuid4(),))]
    start = clock.time()
    for op, offset in zip(ops, (100.8, 100.2, 100.5), strict=True):
        await rt.cleanup.schedule(op, start + offset)

    clock.advance(100.5)
    assert await rt.cleanup.sweep() == 2
    assert [await rt.registry.get_operation(op.ecs_id) for op in ops] == [ops[0].view(), None, None]
    assert await rt.registry.operations_with_status(OperationStatus.REJECTED) == [ops[0].view()]
    assert rt.backend.scheduled_count() == 1  # type: ignore[attr-defined]
    assert await rt.backend.next_due() == start + 100.8
    clock.advance(0.3)
    assert await rt.cleanup.sweep() == 1
    assert rt.registry.zombie_count == 0


async def test_a_batch_limit_splits_a_second_and_skips_records_already_gone(
    clock: FakeClock,
) -> None:
    rt = runtime(clock)
    targets = tuple(uuid.uuid4() for _ in range(3))
    ops = [await bury(rt, deferred(1), (targets[i % 3],)) for i in range(10)]
    for gone in ops[1:4]:
        assert await rt.registry.remove(gone.ecs_id)
    clock.advance(minutes=1)

    first = await rt.backend.take_due(clock.time(), 4)
    assert first == [ops[0], *ops[4:7]]
    rest = await rt.backend.take_due(clock.time(), 4)
    assert rest == ops[7:]
    assert await rt.backend.take_due(clock.time(), 4) == []
    assert rt.registry.zombie_count == 0
    assert await rt.registry.zombie_counts_by_target() == {}


async def test_sweeping_multi_target_and_targetless_records_clears_every_index(
    clock: FakeClock,
) -> None:
    rt = runtime(clock)
    a, b, c = (uuid.uuid4() for _ in range(3))
    kept = await bury(rt, deferred(60), (a,))
    both = await bury(rt, deferred(1), (a, b))
    await bury(rt, deferred(1), ())
    await bury(rt, deferred(1), (c,), OperationStatus.FAILED, target_type="Box")
    assert rt.registry.zombie_count == 4

    clock.advance(minutes=1)
    assert await rt.cleanup.sweep() == 3
    assert await rt.registry.operations_for_target(a) == [kept.view()]
    assert await rt.registry.operations_for_target(b) == []
    assert await rt.registry.operations_for_target(c) == []
    assert await rt.registry.zombies() == [kept.view()]
    assert await rt.registry.zombie_counts_by_target() == {a: 1}
    assert await rt.registry.operations_with_status(OperationStatus.REJECTED) == [kept.view()]
    assert await rt.registry.operations_with_status(OperationStatus.FAILED) == []
    assert await rt.registry.get_operation(both.ecs_id) is None
    assert rt.registry.zombie_count == 1
    assert sample(rt, "contend_zombie_operations", target_type="Item") == 1
    assert sample(rt, "contend_zombie_operations", target_type="Box") == 0


async def test_retained_successes_swept_leave_the_zombie_gauge_alone(clock: FakeClock) -> None:
    rt = runtime(clock)
    config = deferred(1, retain_succeeded=True)

    @with_conflict_resolution(cleanup=config, runtime=rt)
    async def touch(item: Item) -> None:
        item.n += 1

    @with_conflict_resolution(cleanup=config, runtime=rt)
    async def fail(item: Item) -> None:
        raise ValueError("boom")

    item = Item()
    for _ in range(3):
        await touch(item)
        with pytest.raises(ValueError, match="boom"):
            await fail(item)
    rt.cleanup.stop()
    assert sample(rt, "contend_zombie_operations", target_type="Item") == 3

    clock.advance(minutes=1)
    assert await rt.cleanup.sweep() == 6
    assert await rt.registry.operations_for_target(item.ecs_id) == []
    assert sample(rt, "contend_zombie_operations", target_type="Item") == 0
    assert sample(rt, "contend_removals_total", reason="ttl") == 6
    assert sample(rt, "contend_operations_cleaned_total", strategy="deferred") == 6
    assert rt.registry.zombie_count == 0


async def test_a_sweep_observes_each_records_reclaim_lag_once(clock: FakeClock) -> None:
    rt = runtime(clock)
    ops = []
    for wait in (100.0, 50.0, 5.0, 0.5, 0.0):
        ops.append(await bury(rt, deferred(1), (uuid.uuid4(),)))
        clock.advance(wait)
    # due in 10 minutes by its record, but handed to the sweeper for now: lag 0, not negative
    ahead = await bury(rt, CleanupConfig(strategy=CleanupStrategy.NONE), (uuid.uuid4(),))
    ahead.view().schedule_cleanup(CleanupStrategy.DEFERRED, 10)
    await rt.cleanup.schedule(ahead, clock.time())
    cleaned = EventRecorder(rt, OperationCleanedEvent).events

    clock.advance(60)
    assert await rt.cleanup.sweep() == 6
    # lags 155.5, 55.5, 5.5, 0.5 and 0 (due just now), and 0 for `ahead`
    assert sample(rt, "contend_reclaim_lag_seconds_count", reason="ttl") == 6
    assert sample(rt, "contend_reclaim_lag_seconds_sum", reason="ttl") == 217.0
    cumulative = {"0.001": 2, "0.1": 2, "1.0": 3, "10.0": 4, "60.0": 5, "300.0": 6, "+Inf": 6}
    for le, count in cumulative.items():
        assert sample(rt, "contend_reclaim_lag_seconds_bucket", reason="ttl", le=le) == count
    assert [e.op_id for e in cleaned] == [op.ecs_id for op in [ops[0], ahead, *ops[1:]]]
    assert {(e.reason, e.strategy, e.status) for e in cleaned} == {("ttl", "deferred", "rejected")}


async def test_a_target_lists_its_records_whatever_their_state(clock: FakeClock) -> None:
    rt = runtime(clock)
    a, b = uuid.uuid4(), uuid.uuid4()
    keep = CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=2)
    pending = _record(
        function_name="f", target_entity_id=a, target_entity_ids=(a,), target_type="Item"
    )
    await rt.backend.add_operation(pending)
    success = _record(
        function_name="f", target_entity_id=a, target_entity_ids=(a,), target_type="Item"
    )
    await rt.backend.add_operation(success)
    rt.backend.set_status(success, OperationStatus.EXECUTING, clock.now())
    await rt.cleanup.succeeded(success, deferred(1, retain_succeeded=True))
    oldest = await bury(rt, keep, (a,))
    pair = await bury(rt, keep, (a, b))
    other = await bury(rt, deferred(1), (b, a))

    def ids(records: Sequence[Record | ConflictResolutionOperation]) -> set[uuid.UUID]:
        return {r.ecs_id for r in records}

    listed = ids([pending, success, oldest, pair, other])
    assert ids(await rt.registry.operations_for_target(a)) == listed
    assert ids(await rt.registry.operations_for_target(b)) == ids([pair, other])
    probe = ConflictResolutionOperation(
        function_name="g", target_entity_id=a, target_entity_ids=(a,), target_type="Item"
    )
    assert await rt.registry.conflicting_operations(probe) == [pending.view()]

    newest = await bury(rt, keep, (a,))  # a cap of 2 zombies on `a` evicts `oldest`
    assert ids(await rt.registry.operations_for_target(a)) == listed - {oldest.ecs_id} | {
        newest.ecs_id
    }
    assert await rt.registry.remove(pair.ecs_id)
    assert ids(await rt.registry.operations_for_target(b)) == {other.ecs_id}
    clock.advance(minutes=1)
    assert await rt.cleanup.sweep() == 2
    assert ids(await rt.registry.operations_for_target(a)) == ids([pending, newest])
    assert await rt.registry.operations_for_target(b) == []
    assert await rt.registry.zombies(a) == [newest.view()]


async def test_a_schedule_set_in_flight_holds_once_the_call_ends(clock: FakeClock) -> None:
    rt = runtime(clock)
    target = uuid.uuid4()
    op = _record(function_name="f", target_entity_id=target, target_entity_ids=(target,))
    await rt.backend.add_operation(op)
    await rt.cleanup.schedule(op, clock.time() + 30)
    rt.cleanup.stop()
    rt.backend.set_status(op, OperationStatus.REJECTED, clock.now())
    assert rt.backend.scheduled_count() == 1  # type: ignore[attr-defined]
    clock.advance(29)
    assert await rt.cleanup.sweep() == 0
    clock.advance(1)
    assert await rt.cleanup.sweep() == 1
    assert await rt.registry.get_operation(op.ecs_id) is None
    assert rt.backend.scheduled_count() == 0  # type: ignore[attr-defined]


async def test_a_vetoed_sweep_keeps_its_batch_listed_and_scheduled(clock: FakeClock) -> None:
    rt = runtime(clock)
    targets = (uuid.uuid4(),)
    ops = [await bury(rt, deferred(1), targets) for _ in range(3)]
    rt.cleanup.stop()
    seen: list[int] = []

    async def veto(batch: Sequence[object]) -> None:
        seen.append(len(batch))
        raise OSError("archive offline")

    detach = rt.cleanup.add_removal_sink(veto)
    clock.advance(minutes=1)
    assert await rt.cleanup.sweep() == 0
    assert seen == [3]
    assert await rt.registry.operations_with_status(OperationStatus.REJECTED) == views(ops)
    assert await rt.registry.zombies(targets[0]) == views(ops)
    assert rt.backend.scheduled_count() == 3  # type: ignore[attr-defined]
    detach()
    clock.advance(59)
    assert await rt.cleanup.sweep() == 0, "retried after the check interval, not before"
    clock.advance(1)
    assert await rt.cleanup.sweep() == 3
    assert rt.registry.zombie_count == 0
    assert rt.backend.scheduled_count() == 0  # type: ignore[attr-defined]


async def test_a_scheduled_record_that_leaves_as_it_ends_is_off_the_schedule(
    clock: FakeClock,
) -> None:
    """A call whose record got a removal time while it ran, then succeeded: the record leaves
    at once, and the schedule no longer counts it."""
    rt = runtime(clock)
    seen: list[ConflictResolutionOperation] = []

    @with_conflict_resolution(runtime=rt)
    async def work(item: Item) -> int:
        [op] = await rt.registry.operations_with_status(OperationStatus.EXECUTING)
        seen.append(op)
        await rt.cleanup.schedule(op, clock.time() + 30)
        assert rt.backend.scheduled_count() == 1  # type: ignore[attr-defined]
        return 1

    assert await work(Item()) == 1
    assert rt.backend.scheduled_count() == 0  # type: ignore[attr-defined]
    assert await rt.registry.get_operation(seen[0].ecs_id) is None
    clock.advance(60)
    assert await rt.cleanup.sweep() == 0
    rt.cleanup.stop()
