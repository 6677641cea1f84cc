"""The event bus: typed frozen events, sync and async subscribers, isolation of failures."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from uuid import UUID, uuid4

import pytest

from contend import (
    CleanupStrategy,
    Entity,
    EventBus,
    OCCConfig,
    OperationCleanedEvent,
    OperationCompletedEvent,
    OperationConflictEvent,
    OperationEvent,
    OperationRejectedEvent,
    OperationRetriedEvent,
    OperationStartedEvent,
    Runtime,
    emit,
    with_conflict_resolution,
)
from contend.testing import EventRecorder


class Box(Entity):
    value: int = 0


async def test_sync_and_async_subscribers_both_receive() -> None:
    bus = EventBus()
    sync_got: list[OperationEvent] = []
    async_got: list[OperationEvent] = []

    async def on_async(event: OperationStartedEvent) -> None:
        await asyncio.sleep(0)
        async_got.append(event)

    bus.subscribe(OperationStartedEvent, sync_got.append)
    bus.subscribe(OperationStartedEvent, on_async)
    event = OperationStartedEvent(op_id=uuid4(), function_name="f")
    await bus.emit(event)
    assert sync_got == [event]
    assert async_got == [event]


async def test_subscription_by_base_class_receives_subclasses() -> None:
    bus = EventBus()
    every: list[OperationEvent] = []
    only_rejected: list[OperationEvent] = []
    bus.subscribe(OperationEvent, every.append)
    bus.subscribe(OperationRejectedEvent, only_rejected.append)
    started = OperationStartedEvent(op_id=uuid4())
    rejected = OperationRejectedEvent(op_id=uuid4(), cleanup_strategy="immediate")
    await bus.emit(started)
    await bus.emit(rejected)
    assert every == [started, rejected]
    assert only_rejected == [rejected]
    assert bus.wants(OperationCleanedEvent)


async def test_unsubscribe_by_handle_and_by_method() -> None:
    bus = EventBus()
    a: list[OperationEvent] = []
    b: list[OperationEvent] = []
    undo_a = bus.subscribe(OperationStartedEvent, a.append)
    bus.subscribe(OperationEvent, b.append)
    await bus.emit(OperationStartedEvent(op_id=uuid4()))
    undo_a()
    bus.unsubscribe(OperationEvent, b.append)
    await bus.emit(OperationStartedEvent(op_id=uuid4()))
    assert len(a) == 1
    assert len(b) == 1
    assert not bus.wants(OperationStartedEvent)
    undo_a()  # a second unsubscribe is harmless


def test_events_are_frozen() -> None:
    event = OperationRejectedEvent(op_id=uuid4(), cleanup_strategy="deferred")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.cleanup_strategy = "none"  # type: ignore[misc]


def test_every_event_type_requires_an_op_id() -> None:
    for kind in (
        OperationStartedEvent,
        OperationCompletedEvent,
        OperationRejectedEvent,
        OperationRetriedEvent,
        OperationConflictEvent,
        OperationCleanedEvent,
    ):
        assert issubclass(kind, OperationEvent)
        with pytest.raises(TypeError):
            kind()  # type: ignore[call-arg]


async def test_raising_subscriber_is_logged_and_isolated(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    seen_after: list[OperationEvent] = []

    def broken(event: OperationEvent) -> None:
        raise RuntimeError("subscriber bug")

    async def broken_async(event: OperationEvent) -> None:
        raise KeyError("async subscriber bug")

    runtime.events.subscribe(OperationEvent, broken)
    runtime.events.subscribe(OperationEvent, broken_async)
    runtime.events.subscribe(OperationEvent, seen_after.append)

    @with_conflict_resolution(cleanup=CleanupStrategy.IMMEDIATE)
    async def work(box: Box) -> int:
        box.value += 1
        return box.value

    box = Box()
    with caplog.at_level(logging.ERROR, logger="contend.events"):
        results = await asyncio.gather(work(box), work(box), return_exceptions=True)
        await asyncio.sleep(0)
    assert results[0] == 1
    assert box.value == 1
    assert {type(e) for e in seen_after} >= {
        OperationStartedEvent,
        OperationCompletedEvent,
        OperationRejectedEvent,
    }
    messages = [r.getMessage() for r in caplog.records if r.name == "contend.events"]
    assert any("raised" in m for m in messages)
    assert runtime.events.subscriber_errors == 2 * len(seen_after)


async def test_every_emitted_event_carries_the_operation_id(runtime: Runtime) -> None:
    events = EventRecorder(runtime, OperationEvent).events
    gate = asyncio.Event()

    @with_conflict_resolution(cleanup=CleanupStrategy.IMMEDIATE)
    async def contested(box: Box) -> None:
        box.value += 1

    @with_conflict_resolution(pre_ecs=False, occ=OCCConfig(max_retries=1, base_delay_ms=0.0))
    async def overtaken(box: Box) -> None:
        box.value += 1
        await gate.wait()

    @with_conflict_resolution(cleanup=CleanupStrategy.IMMEDIATE)
    async def failing(box: Box) -> None:
        raise ValueError("x")

    @with_conflict_resolution(pre_ecs=False, occ=True)
    async def plain(box: Box) -> None:
        box.value += 1

    box = Box()
    await asyncio.gather(*(contested(box) for _ in range(3)), return_exceptions=True)
    slow = asyncio.create_task(overtaken(box))
    await asyncio.sleep(0)
    await plain(box)
    gate.set()
    await slow
    with pytest.raises(ValueError):
        await failing(Box())
    await asyncio.sleep(0)

    kinds = {type(e) for e in events}
    assert kinds == {
        OperationStartedEvent,
        OperationCompletedEvent,
        OperationRejectedEvent,
        OperationRetriedEvent,
        OperationConflictEvent,
        OperationCleanedEvent,
    }
    started_ids = {e.op_id for e in events if isinstance(e, OperationStartedEvent)}
    rejected_ids = {e.op_id for e in events if isinstance(e, OperationRejectedEvent)}
    for e in events:
        assert isinstance(e.op_id, UUID)
        assert e.op_id in started_ids | rejected_ids, f"{type(e).__name__} names an unknown call"
    conflict = next(e for e in events if isinstance(e, OperationConflictEvent))
    assert conflict.contenders == 3
    assert set(conflict.rejected_ids) == rejected_ids
    assert conflict.op_id in started_ids
    rejected = [e for e in events if isinstance(e, OperationRejectedEvent)]
    assert all(e.cleanup_strategy == "immediate" for e in rejected)
    assert all(e.winner_id == conflict.op_id for e in rejected)
    cleaned = {e.op_id for e in events if isinstance(e, OperationCleanedEvent)}
    failed = [e for e in events if isinstance(e, OperationCompletedEvent) and e.status == "failed"]
    assert len(failed) == 1
    assert cleaned == rejected_ids | {failed[0].op_id}
    retried = [e for e in events if isinstance(e, OperationRetriedEvent)]
    assert len(retried) == 1
    assert retried[0].target_entity_id == box.ecs_id


async def test_module_emit_publishes_on_the_current_runtime(runtime: Runtime) -> None:
    got = EventRecorder(runtime, OperationRejectedEvent).events
    event = OperationRejectedEvent(op_id=uuid4(), cleanup_strategy="lazy")
    await emit(event)
    assert got == [event]
