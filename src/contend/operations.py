"""The public face of an operation record: a pydantic model users can build, read and dump.

contend keeps each call's record as a plain `contend.record.Record`; registry queries, cleanup
handlers and removal sinks hand users a `ConflictResolutionOperation` view of it, kept current by
the record (see `contend.record`). Built by hand, ``ConflictResolutionOperation(priority=...)``
is a standalone model, for evaluating cleanup policy.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import Field

from contend.clock import utcnow
from contend.config import CleanupConfig
from contend.current import current_runtime
from contend.entity import Entity
from contend.enums import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    CleanupStrategy,
    OperationPriority,
    OperationStatus,
)
from contend.errors import InvalidTransitionError

if TYPE_CHECKING:
    from contend.record import Record

__all__ = [
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "ConflictResolutionOperation",
    "OperationEntity",
    "OperationPriority",
    "OperationStatus",
    "view_of",
]


class OperationEntity(Entity):
    """The record of one call: what it targets, how urgent it is, and where it stands."""

    function_name: str = ""
    target_entity_id: UUID | None = None
    target_entity_ids: tuple[UUID, ...] = ()
    target_type: str = ""
    priority: int = Field(default=OperationPriority.NORMAL, ge=1, le=10)
    status: OperationStatus = OperationStatus.PENDING
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    retry_count: int = Field(default=0, ge=0)
    winner_id: UUID | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_zombie(self) -> bool:
        """A terminal record other than a success: what cleanup is for."""
        return self.status in TERMINAL_STATUSES and self.status is not OperationStatus.SUCCEEDED

    def transition(self, to: OperationStatus, at: datetime | None = None) -> None:
        """Move along one edge of the status machine; anything else raises."""
        current = self.status
        if to not in TRANSITIONS[current]:
            raise InvalidTransitionError(self.ecs_id, current.value, to.value)
        self.status = to
        if to is OperationStatus.EXECUTING:
            self.started_at = at or _now()
        else:
            self.completed_at = at or _now()


class ConflictResolutionOperation(OperationEntity):
    """An operation record with the cleanup fields of the design."""

    cleanup_config: CleanupConfig | None = None
    cleanup_scheduled_at: datetime | None = None
    cleanup_handler_name: str | None = None
    cleanup_strategy: CleanupStrategy | None = None

    __slots__ = ("_record",)
    """A view holds the record it shows in `_record` (see `view_of`). A slot, not a pydantic
    private attribute: copies, pickles and comparisons leave it out, so a copy of a view is a
    model of its own, equal to it, and the record (which only finds its view weakly) is never
    part of a cycle."""
    if TYPE_CHECKING:
        _record: Record

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FIELDS and view_of(self) is not None:
            _refuse_write(self, name)
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in _FIELDS and view_of(self) is not None:
            _refuse_write(self, name)
        super().__delattr__(name)

    def get_cleanup_config(self) -> CleanupConfig:
        """The config this record was made under, or the defaults."""
        return self.cleanup_config or CleanupConfig()

    def schedule_cleanup(
        self,
        strategy: CleanupStrategy,
        retention_minutes: int | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        """Record when (and by which strategy) this record is to be removed.

        On a view of a live record, the record changes (and so this view): a handler that calls
        it is heard. Removal itself is scheduled by ``CleanupHandler.retain_for``.
        """
        due = None
        if strategy in (CleanupStrategy.DEFERRED, CleanupStrategy.LAZY):
            retention = (
                retention_minutes
                if retention_minutes is not None
                else self.get_cleanup_config().retention_minutes
            )
            due = (self.completed_at or now or _now()) + timedelta(minutes=retention)
        record = view_of(self)
        if record is not None:
            record.plan_cleanup(strategy, due)
            return
        self.cleanup_strategy = strategy
        if strategy is CleanupStrategy.IMMEDIATE:
            return
        if due is not None:
            self.cleanup_scheduled_at = due
        self.cleanup_handler_name = strategy.value

    def is_cleanup_due(self, now: datetime | None = None) -> bool:
        """True once the scheduled removal time has come (by default on the current runtime's
        clock, which a test's FakeClock replaces)."""
        if self.cleanup_scheduled_at is None:
            return False
        return (now or _now()) >= self.cleanup_scheduled_at

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view without the config object."""
        return self.model_dump(mode="json", exclude={"cleanup_config"})


def _now() -> datetime:
    """The time on the current runtime's clock: the one its records are stamped and due by."""
    now: datetime = current_runtime().clock.now()
    return now


def view_of(operation: ConflictResolutionOperation) -> Record | None:
    """The record `operation` is a view of, or None for a model built by hand (or a copy)."""
    return getattr(operation, "_record", None)


_FIELDS = frozenset(ConflictResolutionOperation.model_fields)


def _refuse_write(view: ConflictResolutionOperation, name: str) -> None:
    """A view is what every registry query and handler of its record is handed: a write to it
    would change what all of them read, and not the record."""
    raise AttributeError(
        f"{name}: this ConflictResolutionOperation is contend's read-only view of operation "
        f"{view.ecs_id}, kept current by contend; act on the record through the cleanup handler"
        " (remove, retain_for) or schedule_cleanup(), or take a copy of your own (model_copy())"
    )
