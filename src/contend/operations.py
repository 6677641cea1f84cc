"""Operation records: one per decorated call, with an explicit status machine."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from pydantic import Field

from contend._ids import new_id
from contend.clock import utcnow
from contend.entity import Entity
from contend.errors import InvalidTransitionError

if TYPE_CHECKING:
    from contend.config import CleanupConfig, CleanupStrategy

__all__ = [
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "ConflictResolutionOperation",
    "OperationEntity",
    "OperationPriority",
    "OperationStatus",
]


class OperationPriority(IntEnum):
    """Named priorities; any int from 1 to 10 is accepted."""

    BACKGROUND = 1
    LOW = 2
    NORMAL = 5
    HIGH = 8
    CRITICAL = 10


class OperationStatus(StrEnum):
    PENDING = "pending"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        OperationStatus.SUCCEEDED,
        OperationStatus.FAILED,
        OperationStatus.REJECTED,
        OperationStatus.CANCELLED,
    }
)

TRANSITIONS: dict[OperationStatus, frozenset[OperationStatus]] = {
    OperationStatus.PENDING: frozenset(
        {OperationStatus.EXECUTING, OperationStatus.REJECTED, OperationStatus.CANCELLED}
    ),
    OperationStatus.EXECUTING: frozenset(
        {OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELLED}
    ),
    OperationStatus.SUCCEEDED: frozenset(),
    OperationStatus.FAILED: frozenset(),
    OperationStatus.REJECTED: frozenset(),
    OperationStatus.CANCELLED: frozenset(),
}


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
        d = self.__dict__
        current = d["status"]
        if to not in TRANSITIONS[current]:
            raise InvalidTransitionError(self.ecs_id, current.value, to.value)
        d["status"] = to
        d["started_at" if to is OperationStatus.EXECUTING else "completed_at"] = at or utcnow()


_new = object.__new__
_set = object.__setattr__
_TEMPLATE: dict[str, Any] = {
    "ecs_id": None,
    "version": 0,
    "last_modified": None,
    "function_name": "",
    "target_entity_id": None,
    "target_entity_ids": (),
    "target_type": "",
    "priority": OperationPriority.NORMAL,
    "status": OperationStatus.PENDING,
    "created_at": None,
    "started_at": None,
    "completed_at": None,
    "error_message": None,
    "retry_count": 0,
    "winner_id": None,
    "cleanup_config": None,
    "cleanup_scheduled_at": None,
    "cleanup_handler_name": None,
    "cleanup_strategy": None,
}


class ConflictResolutionOperation(OperationEntity):
    """An operation record with the cleanup fields of the design."""

    cleanup_config: CleanupConfig | None = None
    cleanup_scheduled_at: datetime | None = None
    cleanup_handler_name: str | None = None
    cleanup_strategy: CleanupStrategy | None = None

    _FIELDS: ClassVar[set[str]] = set()

    @classmethod
    def _start(
        cls,
        function_name: str,
        target_ids: tuple[UUID, ...],
        target_type: str,
        priority: int,
        cleanup_config: CleanupConfig | None,
        now: datetime,
    ) -> ConflictResolutionOperation:
        """Build a PENDING record from values the decorator already validated.

        Pydantic validation costs several microseconds a call; every value here comes from a
        validated config or from the registry, so the record is assembled directly.
        """
        op = _new(cls)
        d = _TEMPLATE.copy()
        d["ecs_id"] = new_id()
        d["last_modified"] = d["created_at"] = now
        d["function_name"] = function_name
        d["target_entity_id"] = target_ids[0] if target_ids else None
        d["target_entity_ids"] = target_ids
        d["target_type"] = target_type
        d["priority"] = priority
        d["cleanup_config"] = cleanup_config
        _set(op, "__dict__", d)
        _set(op, "__pydantic_fields_set__", cls._FIELDS)
        _set(op, "__pydantic_extra__", None)
        _set(op, "__pydantic_private__", None)
        return op

    def get_cleanup_config(self) -> CleanupConfig:
        """The config this record was made under, or the defaults."""
        from contend.config import CleanupConfig

        return self.cleanup_config or CleanupConfig()

    def schedule_cleanup(
        self,
        strategy: CleanupStrategy,
        retention_minutes: int | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        """Record when (and by which strategy) this record is to be removed."""
        from contend.config import CleanupStrategy

        d = self.__dict__
        d["cleanup_strategy"] = strategy
        if strategy is CleanupStrategy.IMMEDIATE:
            return
        if strategy in (CleanupStrategy.DEFERRED, CleanupStrategy.LAZY):
            retention = (
                retention_minutes
                if retention_minutes is not None
                else self.get_cleanup_config().retention_minutes
            )
            base = self.completed_at or now or utcnow()
            d["cleanup_scheduled_at"] = base + timedelta(minutes=retention)
        d["cleanup_handler_name"] = strategy.value

    def is_cleanup_due(self, now: datetime | None = None) -> bool:
        """True once the scheduled removal time has come."""
        if self.cleanup_scheduled_at is None:
            return False
        return (now or utcnow()) >= self.cleanup_scheduled_at

    def summary(self) -> dict[str, Any]:
        """A JSON-ready view without the config object."""
        return self.model_dump(mode="json", exclude={"cleanup_config"})
