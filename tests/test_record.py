"""The record contend keeps of a call, and the view users get of it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from contend import (
    CleanupStrategy,
    ConflictResolutionOperation,
    InvalidTransitionError,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.record import Record, record_of
from contend.testing import KEEP_EVERYTHING, Account

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _record() -> Record:
    target = uuid.uuid4()
    return Record("f", (target,), "Account", 5, None, NOW)


def test_a_view_is_the_same_object_each_time_and_follows_the_record() -> None:
    record = _record()
    view = record.view()
    assert view is record.view()
    assert isinstance(view, ConflictResolutionOperation)
    assert view.status is OperationStatus.PENDING and view.ecs_id == record.ecs_id
    record.transition(OperationStatus.EXECUTING, NOW)
    record.end(OperationStatus.FAILED, NOW, "ValueError: no", None, CleanupStrategy.LAZY)
    assert view.status is OperationStatus.FAILED
    assert view.error_message == "ValueError: no"
    assert view.cleanup_strategy is CleanupStrategy.LAZY
    assert view.completed_at == NOW
    assert record_of(view) is record


def test_schedule_cleanup_on_a_view_changes_the_record() -> None:
    record = _record()
    record.transition(OperationStatus.REJECTED, NOW)
    record.view().schedule_cleanup(CleanupStrategy.DEFERRED, 15)
    assert record.cleanup_scheduled_at == NOW + timedelta(minutes=15)
    assert record.cleanup_handler_name == "deferred"


def test_the_id_is_made_once_when_first_read() -> None:
    record = _record()
    assert record.made_id is None
    first = record.ecs_id
    assert first.version == 4 and record.ecs_id is first and record.made_id is first


def test_a_winner_kept_by_its_record_is_named_by_its_id() -> None:
    winner, loser = _record(), _record()
    loser.end(OperationStatus.REJECTED, NOW, "lost", winner, CleanupStrategy.IMMEDIATE)
    assert winner.made_id is None, "not made until read"
    assert loser.winner_id == winner.ecs_id
    assert loser.view().winner_id == winner.ecs_id


def test_terminal_states_never_change() -> None:
    record = _record()
    record.transition(OperationStatus.REJECTED, NOW)
    with pytest.raises(InvalidTransitionError):
        record.transition(OperationStatus.EXECUTING, NOW)
    with pytest.raises(InvalidTransitionError):
        record.end(OperationStatus.FAILED, NOW, "x", None, CleanupStrategy.NONE)


def test_json_round_trip_keeps_every_field() -> None:
    record = _record()
    record.transition(OperationStatus.EXECUTING, NOW)
    record.end(OperationStatus.FAILED, NOW, "boom", uuid.uuid4(), CleanupStrategy.DEFERRED)
    back = Record.from_json(record.to_json())
    assert back.view().model_dump() == record.view().model_dump()


async def test_registry_queries_hand_out_views_of_the_records(runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=KEEP_EVERYTHING)
    async def touch(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    await touch(acct)
    [op] = await runtime.registry.operations_for_target(acct.ecs_id)
    assert isinstance(op, ConflictResolutionOperation)
    assert op.status is OperationStatus.SUCCEEDED
    assert await runtime.registry.get_operation(op.ecs_id) is op


def test_a_record_and_its_view_make_no_reference_cycle() -> None:
    """Each referred to the other, so every record a view was made of (every record a custom
    handler or a registry query met) was left to the cycle collector when it left: ~7 objects
    per rejection under a custom handler. The view holds its record; the record only finds its
    view while someone holds it."""
    import gc

    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            record = _record()
            view = record.view()
            record.end(OperationStatus.REJECTED, NOW, "lost", None, CleanupStrategy.CUSTOM)
            assert view.status is OperationStatus.REJECTED
            del record
            assert record_of(view) is not None, "a view held keeps its record"
            del view
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_dropped_view_is_made_again_and_follows_the_record() -> None:
    record = _record()
    before = record.view().ecs_id
    record.end(OperationStatus.REJECTED, NOW, "lost", None, CleanupStrategy.DEFERRED)
    view = record.view()
    assert (view.ecs_id, view.status) == (before, OperationStatus.REJECTED)
    record.retain_until(NOW + timedelta(minutes=5))
    assert view.cleanup_scheduled_at == NOW + timedelta(minutes=5)


@pytest.mark.parametrize(
    "change",
    [
        lambda v: setattr(v, "status", OperationStatus.SUCCEEDED),
        lambda v: setattr(v, "priority", 9),
        lambda v: setattr(v, "ecs_id", uuid.uuid4()),
        lambda v: setattr(v, "cleanup_scheduled_at", None),
        lambda v: delattr(v, "error_message"),
        lambda v: v.transition(OperationStatus.SUCCEEDED),
    ],
)
def test_a_view_is_read_only(change: object) -> None:
    """A user's assignment to a view changed what every later registry query returned (the same
    object), until the record next changed: a zombie reading SUCCEEDED with priority 99, or a
    handler's ``remove(view)`` after ``view.ecs_id = ...`` removing another record."""
    record = _record()
    record.transition(OperationStatus.EXECUTING, NOW)
    view = record.view()
    with pytest.raises(AttributeError, match="read-only view"):
        change(view)  # type: ignore[operator]
    assert record.view() is view
    assert (view.status, view.priority, view.ecs_id) == (
        OperationStatus.EXECUTING,
        5,
        record.ecs_id,
    )
    assert view.error_message is None and view.cleanup_scheduled_at is None
    record.end(OperationStatus.FAILED, NOW, "boom", None, CleanupStrategy.NONE)
    assert (view.status, view.error_message) == (OperationStatus.FAILED, "boom")


def test_copies_of_a_view_are_models_of_their_own() -> None:
    import copy
    import pickle

    record = _record()
    record.end(OperationStatus.REJECTED, NOW, "lost", None, CleanupStrategy.NONE)
    view = record.view()
    for other in (
        view.model_copy(),
        copy.copy(view),
        copy.deepcopy(view),
        pickle.loads(pickle.dumps(view)),
        record.snapshot(),
    ):
        assert other == view and other is not view
        assert record_of(other) is None
        other.priority = 9  # a copy is the user's own: it may change, the record does not
        assert (view.priority, record.priority) == (5, 5)
    built = ConflictResolutionOperation(priority=3)
    built.priority = 4
    built.transition(OperationStatus.REJECTED)
    assert (built.priority, built.status, record_of(built)) == (4, OperationStatus.REJECTED, None)
