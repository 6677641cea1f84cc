"""Operation records: priorities, the status machine, cleanup fields, no references kept."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConflictResolutionOperation,
    Entity,
    InvalidTransitionError,
    OperationEntity,
    OperationPriority,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.operations import TERMINAL_STATUSES, TRANSITIONS
from contend.testing import runtime_in_use

S = OperationStatus
LEGAL = {
    (S.PENDING, S.EXECUTING),
    (S.PENDING, S.REJECTED),
    (S.PENDING, S.CANCELLED),
    (S.EXECUTING, S.SUCCEEDED),
    (S.EXECUTING, S.FAILED),
    (S.EXECUTING, S.CANCELLED),
}
ALL_EDGES = list(itertools.product(list(S), list(S)))


def test_priority_names_and_values() -> None:
    assert {p.name: int(p) for p in OperationPriority} == {
        "BACKGROUND": 1,
        "LOW": 2,
        "NORMAL": 5,
        "HIGH": 8,
        "CRITICAL": 10,
    }
    assert OperationPriority.HIGH > OperationPriority.NORMAL


def test_record_can_be_built_without_a_target() -> None:
    op = ConflictResolutionOperation(priority=OperationPriority.NORMAL)
    assert op.target_entity_id is None
    assert op.target_entity_ids == ()
    assert op.status is S.PENDING
    assert op.retry_count == 0
    assert op.cleanup_config is None
    assert isinstance(op, OperationEntity)
    assert isinstance(op, Entity)


@pytest.mark.parametrize("priority", [0, 11, -1])
def test_record_priority_out_of_range_is_refused(priority: int) -> None:
    with pytest.raises(ValidationError, match="priority"):
        ConflictResolutionOperation(priority=priority)


def test_transition_table_is_exactly_the_documented_machine() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == LEGAL
    assert frozenset({S.SUCCEEDED, S.FAILED, S.REJECTED, S.CANCELLED}) == TERMINAL_STATUSES


def _at(status: OperationStatus) -> ConflictResolutionOperation:
    """A record brought to `status` through legal edges only."""
    op = ConflictResolutionOperation(priority=5)
    path = {
        S.PENDING: [],
        S.EXECUTING: [S.EXECUTING],
        S.SUCCEEDED: [S.EXECUTING, S.SUCCEEDED],
        S.FAILED: [S.EXECUTING, S.FAILED],
        S.REJECTED: [S.REJECTED],
        S.CANCELLED: [S.CANCELLED],
    }[status]
    for step in path:
        op.transition(step)
    return op


@pytest.mark.parametrize(("src", "dst"), sorted(LEGAL))
def test_every_legal_edge(src: OperationStatus, dst: OperationStatus) -> None:
    op = _at(src)
    when = datetime(2030, 5, 1, tzinfo=UTC)
    op.transition(dst, when)
    assert op.status is dst
    if dst is S.EXECUTING:
        assert op.started_at == when
        assert op.completed_at is None
        assert not op.is_terminal
    else:
        assert op.completed_at == when
        assert op.is_terminal
        assert op.is_zombie is (dst is not S.SUCCEEDED)


@pytest.mark.parametrize(("src", "dst"), [e for e in ALL_EDGES if e not in LEGAL])
def test_every_illegal_edge_raises_a_clear_error(
    src: OperationStatus, dst: OperationStatus
) -> None:
    op = _at(src)
    before = op.model_dump()
    with pytest.raises(InvalidTransitionError) as info:
        op.transition(dst)
    err = info.value
    assert not isinstance(err, AssertionError)
    assert isinstance(err, RuntimeError)
    assert (err.current, err.requested) == (src.value, dst.value)
    assert f"{src.value} -> {dst.value}" in str(err)
    assert str(op.ecs_id) in str(err)
    assert op.model_dump() == before, "a refused transition changes nothing"


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
def test_terminal_states_never_change(terminal: OperationStatus) -> None:
    op = _at(terminal)
    for dst in S:
        with pytest.raises(InvalidTransitionError):
            op.transition(dst)
    assert op.status is terminal


def test_schedule_cleanup_and_is_cleanup_due() -> None:
    done = datetime(2030, 1, 1, tzinfo=UTC)
    op = _at(S.REJECTED)
    op.__dict__["completed_at"] = done
    op.schedule_cleanup(CleanupStrategy.DEFERRED, 15)
    assert op.cleanup_scheduled_at == done + timedelta(minutes=15)
    assert op.cleanup_handler_name == "deferred"
    assert not op.is_cleanup_due(done + timedelta(minutes=14, seconds=59))
    assert op.is_cleanup_due(done + timedelta(minutes=15))

    fresh = _at(S.REJECTED)
    fresh.schedule_cleanup(CleanupStrategy.IMMEDIATE)
    assert fresh.cleanup_scheduled_at is None
    assert not fresh.is_cleanup_due()


async def test_is_cleanup_due_reads_the_runtimes_clock() -> None:
    """A view's is_cleanup_due() compared with the wall clock: under a FakeClock (which starts at
    2026-01-01) a 30-minute retention read as due at once, and advancing the clock meant nothing."""

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy="lazy", retention_minutes=30, debug_retention_priorities=[])
    )
    async def work(box: Box) -> None:
        box.value += 1

    box = Box()
    with runtime_in_use() as rt:
        await asyncio.gather(work(box), work(box), return_exceptions=True)
        [zombie] = await rt.registry.zombies()
        assert not zombie.is_cleanup_due()
        rt.clock.advance(minutes=30)  # type: ignore[attr-defined]
        assert zombie.is_cleanup_due()


def test_schedule_cleanup_defaults_to_the_record_config_retention() -> None:
    op = ConflictResolutionOperation(
        priority=5, cleanup_config=CleanupConfig(strategy="deferred", retention_minutes=7)
    )
    op.transition(S.REJECTED, datetime(2030, 1, 1, tzinfo=UTC))
    op.schedule_cleanup(CleanupStrategy.DEFERRED)
    assert op.cleanup_scheduled_at == datetime(2030, 1, 1, 0, 7, tzinfo=UTC)
    assert op.get_cleanup_config().retention_minutes == 7
    assert ConflictResolutionOperation(priority=5).get_cleanup_config() == CleanupConfig()


# --- records keep no reference to a call's arguments or result ---------------------------------


class Box(Entity):
    value: int = 0


class Payload:
    """A big non-entity argument whose lifetime we watch."""

    def __init__(self) -> None:
        self.blob = bytearray(1 << 20)


async def _collect() -> None:
    """Leave the loop step that woke us (its handle still references the awaited future)."""
    await asyncio.sleep(0)
    gc.collect()


async def _all_records(rt: Runtime, box: Box) -> list[ConflictResolutionOperation]:
    return await rt.registry.operations_for_target(box.ecs_id)


async def test_rejected_and_succeeded_records_hold_no_argument_or_result(runtime: Runtime) -> None:
    keep = CleanupConfig(strategy=CleanupStrategy.NONE, retain_succeeded=True)

    @with_conflict_resolution(cleanup=keep)
    async def work(box: Box, payload: Payload) -> Payload:
        await asyncio.sleep(0)
        return Payload()

    box = Box()
    payloads = [Payload() for _ in range(3)]
    refs = [weakref.ref(p) for p in payloads]
    results = await asyncio.gather(*(work(box, p) for p in payloads), return_exceptions=True)
    result_refs = [weakref.ref(r) for r in results]
    del payloads, results
    await _collect()

    records = await _all_records(runtime, box)
    assert sorted(op.status for op in records) == sorted([S.SUCCEEDED, S.REJECTED, S.REJECTED])
    assert all(op.is_terminal for op in records)
    assert [r() for r in refs] == [None, None, None]
    assert [r() for r in result_refs] == [None, None, None]


async def test_failed_and_cancelled_records_hold_no_argument(runtime: Runtime) -> None:
    gate = asyncio.Event()

    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def work(box: Box, payload: Payload, fail: bool) -> None:
        if fail:
            raise ValueError("no")
        await gate.wait()

    box_a, box_b = Box(), Box()
    p_fail, p_cancel = Payload(), Payload()
    r_fail, r_cancel = weakref.ref(p_fail), weakref.ref(p_cancel)
    with pytest.raises(ValueError):
        await work(box_a, p_fail, True)
    task = asyncio.create_task(work(box_b, p_cancel, False))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del p_fail, p_cancel, task
    await _collect()

    [failed] = await _all_records(runtime, box_a)
    [cancelled] = await _all_records(runtime, box_b)
    assert failed.status is S.FAILED
    assert cancelled.status is S.CANCELLED
    assert r_fail() is None
    assert r_cancel() is None
