"""Typed, frozen lifecycle events and the bus that delivers them."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from contend.clock import utcnow
from contend.current import current_runtime

__all__ = [
    "EventBus",
    "OperationCleanedEvent",
    "OperationCompletedEvent",
    "OperationConflictEvent",
    "OperationEvent",
    "OperationRejectedEvent",
    "OperationRetriedEvent",
    "OperationStartedEvent",
    "emit",
]

log = logging.getLogger("contend.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationEvent:
    """Base of every event: which operation, on which target, when."""

    op_id: UUID
    target_entity_id: UUID | None = None
    timestamp: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationStartedEvent(OperationEvent):
    function_name: str = ""
    priority: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationCompletedEvent(OperationEvent):
    """The call ended: status is succeeded, failed or cancelled."""

    status: str = "succeeded"
    duration_ms: float = 0.0
    error_message: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationRejectedEvent(OperationEvent):
    rejection_reason: str = ""
    cleanup_strategy: str = ""
    winner_id: UUID | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationRetriedEvent(OperationEvent):
    attempt: int = 1
    entity_id: UUID | None = None
    expected_version: int = 0
    actual_version: int = 0
    delay_ms: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationConflictEvent(OperationEvent):
    """A staging window held more than one call; op_id is the winner's."""

    contenders: int = 0
    winner_priority: int = 0
    rejected_ids: tuple[UUID, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationCleanedEvent(OperationEvent):
    """A terminal record left the registry."""

    reason: str = ""
    strategy: str = ""
    status: str = ""


E = TypeVar("E", bound=OperationEvent)
Handler = Callable[[Any], Awaitable[None] | None]


class EventBus:
    """Per-runtime publish/subscribe; a subscriber that raises is logged and skipped."""

    def __init__(self) -> None:
        self._subs: dict[type[OperationEvent], list[Handler]] = {}
        self._resolved: dict[type[OperationEvent], tuple[Handler, ...]] = {}
        self.subscriber_errors = 0

    def subscribe(
        self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]
    ) -> Callable[[], None]:
        """Deliver `event_type` events (subclasses too) to `handler`; returns an unsubscriber."""
        if not isinstance(event_type, type):
            raise TypeError(f"subscribe: event_type must be an event class, got {event_type!r}")
        if not callable(handler):
            raise TypeError(f"subscribe: handler must be callable, got {handler!r}")
        self._subs.setdefault(event_type, []).append(handler)
        self._resolved.clear()

        def unsubscribe() -> None:
            self.unsubscribe(event_type, handler)

        return unsubscribe

    def unsubscribe(
        self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]
    ) -> None:
        handlers = self._subs.get(event_type)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._subs[event_type]
            self._resolved.clear()

    def wants(self, event_type: type[OperationEvent]) -> bool:
        """Cheap check so the hot path builds no event nobody listens to."""
        if not self._subs:
            return False
        return bool(self._handlers_for(event_type))

    def _handlers_for(self, event_type: type[OperationEvent]) -> tuple[Handler, ...]:
        found = self._resolved.get(event_type)
        if found is None:
            found = tuple(h for klass in event_type.__mro__ for h in self._subs.get(klass, ()))
            self._resolved[event_type] = found
        return found

    async def emit(self, event: OperationEvent) -> None:
        if not self._subs:
            return
        for handler in self._handlers_for(type(event)):
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.subscriber_errors += 1
                log.exception(
                    "event subscriber %r raised on %s for operation %s; ignored",
                    handler,
                    type(event).__name__,
                    event.op_id,
                )


async def emit(event: OperationEvent) -> None:
    """Publish `event` on the current runtime's bus."""
    bus: EventBus = current_runtime().events
    await bus.emit(event)
