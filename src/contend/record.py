"""`Record`: one call's operation record as contend keeps it, and its only writer.

A plain slotted object: a call reads its record a few dozen times, and a pydantic model pays for
every attribute read (its ``__getattr__`` keeps CPython from specialising the read). Users never
hold a `Record`: registry queries, cleanup handlers and removal sinks get a
`ConflictResolutionOperation` view of it (`view`), made when first asked for and kept current by
every method here that changes the record. Nothing else writes a record.

The id is made when first read: a call that loses its window in the tick it was submitted and
leaves at once is never looked up, so it never pays for one.
"""

from __future__ import annotations

import weakref
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from contend._fast import construct_model, new_id
from contend.clock import utcnow
from contend.config import CleanupConfig
from contend.enums import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    ZOMBIE_STATUSES,
    CleanupStrategy,
    OperationStatus,
)
from contend.errors import InvalidTransitionError
from contend.operations import ConflictResolutionOperation, view_of

__all__ = ["Record", "record_of"]

_PENDING = OperationStatus.PENDING
_EXECUTING = OperationStatus.EXECUTING
_IMMEDIATE = CleanupStrategy.IMMEDIATE
_NAME = {s: s.value for s in CleanupStrategy}
"""A strategy's name as a plain string (an enum member's ``.value`` is a property: slow)."""
_FIELDS = (
    "function_name",
    "target_entity_id",
    "target_entity_ids",
    "target_type",
    "priority",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "error_message",
    "retry_count",
    "cleanup_config",
    "cleanup_scheduled_at",
    "cleanup_handler_name",
    "cleanup_strategy",
)
_new = object.__new__
_set = object.__setattr__


class Record:
    """The record of one decorated call: what it targets, its priority, where it stands, and
    what cleanup decided for it. Field names and meanings are those of
    `ConflictResolutionOperation`."""

    __slots__ = (*_FIELDS, "made_id", "_winner", "_view")

    function_name: str
    target_entity_id: UUID | None
    target_entity_ids: tuple[UUID, ...]
    target_type: str
    priority: int
    status: OperationStatus
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    retry_count: int
    cleanup_config: CleanupConfig | None
    cleanup_scheduled_at: datetime | None
    cleanup_handler_name: str | None
    cleanup_strategy: CleanupStrategy | None
    made_id: UUID | None
    """The id, once made (read); None before."""
    _winner: Record | UUID | None
    _view: weakref.ref[ConflictResolutionOperation] | None
    """The view last handed out, weakly: the view holds the record, so a strong reference back
    would make every record a view was made of a cycle for the garbage collector."""

    def __init__(
        self,
        function_name: str,
        target_ids: tuple[UUID, ...],
        target_type: str,
        priority: int,
        cleanup_config: CleanupConfig | None,
        created_at: datetime,
        ecs_id: UUID | None = None,
    ) -> None:
        """A PENDING record, from values already validated (a decorator's config, the entities
        found in the call)."""
        self.made_id = ecs_id
        self._view = None
        self.function_name = function_name
        self.target_entity_id = target_ids[0] if target_ids else None
        self.target_entity_ids = target_ids
        self.target_type = target_type
        self.priority = priority
        self.status = _PENDING
        self.created_at = created_at
        self.started_at = None
        self.completed_at = None
        self.error_message = None
        self.retry_count = 0
        self._winner = None
        self.cleanup_config = cleanup_config
        self.cleanup_scheduled_at = None
        self.cleanup_handler_name = None
        self.cleanup_strategy = None

    def __repr__(self) -> str:
        return f"Record({self.function_name!r}, {self.status.value}, priority={self.priority})"

    # reading ------------------------------------------------------------------------------------
    @property
    def ecs_id(self) -> UUID:
        """The record's id, made when first read."""
        oid = self.made_id
        if oid is None:
            oid = self.made_id = new_id()
        return oid

    @property
    def winner_id(self) -> UUID | None:
        """The id of the call this one lost to (kept as that call's record until read: a
        window's losers that leave at once never make their winner's id)."""
        winner = self._winner
        if winner is None or isinstance(winner, UUID):
            return winner
        return winner.ecs_id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def is_zombie(self) -> bool:
        """A terminal record other than a success: what cleanup is for."""
        return self.status in ZOMBIE_STATUSES

    def get_cleanup_config(self) -> CleanupConfig:
        """The config this record was made under, or the defaults."""
        return self.cleanup_config or CleanupConfig()

    def view(self) -> ConflictResolutionOperation:
        """The public model of this record, kept current: the same object each time while
        anyone holds it."""
        ref = self._view
        view = ref() if ref is not None else None
        if view is None:
            view = _model(self)
            _set(view, "_record", self)
            self._view = weakref.ref(view)
        return view

    def snapshot(self) -> ConflictResolutionOperation:
        """A model of this record as it is now, not kept current (for dumping)."""
        return _model(self)

    def to_json(self) -> str:
        """The record as the JSON of its model (what a shared store keeps)."""
        return _model(self).model_dump_json()

    @classmethod
    def from_json(cls, text: str, status: OperationStatus | None = None) -> Record:
        """A record from `to_json`'s text; `status`, when given, overrides the one in it."""
        record = cls.from_operation(ConflictResolutionOperation.model_validate_json(text))
        if status is not None:
            record.status = status
        return record

    @classmethod
    def from_operation(cls, op: ConflictResolutionOperation) -> Record:
        """A record holding the fields of a model (built by hand, or read from a store)."""
        record = _new(cls)
        d = op.__dict__
        for name in _FIELDS:
            _set(record, name, d[name])
        record.made_id = op.ecs_id
        record._winner = d["winner_id"]
        record._view = None
        return record

    # writing ------------------------------------------------------------------------------------
    def transition(self, to: OperationStatus, at: datetime | None = None) -> None:
        """Move along one edge of the status machine (`TRANSITIONS`); anything else raises."""
        current = self.status
        if to not in TRANSITIONS[current]:
            raise InvalidTransitionError(self.ecs_id, current.value, to.value)
        if at is None:
            at = utcnow()
        self.status = to
        if to is _EXECUTING:
            self.started_at = at
        else:
            self.completed_at = at
        if self._view is not None:
            self._refresh()

    def mark(
        self,
        message: str | None,
        winner_id: UUID | None,
        strategy: CleanupStrategy,
    ) -> None:
        """What ended the call (its message and the winner it lost to) and the cleanup strategy
        that applies to it."""
        self.error_message = message
        self._winner = winner_id
        self.cleanup_strategy = strategy
        self.cleanup_handler_name = _NAME[strategy]
        if self._view is not None:
            self._refresh()

    def end(
        self,
        status: OperationStatus,
        at: datetime,
        message: str | None,
        winner: Record | UUID | None,
        strategy: CleanupStrategy,
    ) -> None:
        """`transition` to the terminal `status`, then `mark`, in one step (a window's losers
        end this way, many at a time); `winner` may be the winner's record."""
        current = self.status
        if status not in TRANSITIONS[current]:
            raise InvalidTransitionError(self.ecs_id, current.value, status.value)
        self.status = status
        self.completed_at = at
        self.error_message = message
        self._winner = winner
        self.cleanup_strategy = strategy
        self.cleanup_handler_name = _NAME[strategy]
        if self._view is not None:
            self._refresh()

    def plan_cleanup(self, strategy: CleanupStrategy, due: datetime | None) -> None:
        """The design's ``schedule_cleanup``: the strategy, and when a deferred or lazy record
        becomes due (None for the others)."""
        self.cleanup_strategy = strategy
        if strategy is not _IMMEDIATE:
            if due is not None:
                self.cleanup_scheduled_at = due
            self.cleanup_handler_name = _NAME[strategy]
        if self._view is not None:
            self._refresh()

    def retain_until(self, due: datetime) -> None:
        """The record is to be removed at `due`."""
        self.cleanup_scheduled_at = due
        if self._view is not None:
            self._refresh()

    def due_after(self, minutes: float, now: datetime) -> datetime:
        """The moment `minutes` after the record's completion (else after `now`)."""
        return (self.completed_at or now) + timedelta(minutes=minutes)

    def retain_for(self, minutes: float, now: datetime) -> datetime:
        """Due `minutes` after its completion (else after `now`); returns the due time."""
        due = self.due_after(minutes, now)
        self.retain_until(due)
        return due

    def handled_by(self, name: str) -> None:
        """The name of the cleanup handler that took charge of the record."""
        self.cleanup_handler_name = name
        if self._view is not None:
            self._refresh()

    def retried(self, attempts: int) -> None:
        """The call has been retried `attempts` times (OCC)."""
        self.retry_count = attempts
        if self._view is not None:
            self._refresh()

    def add_note(self, note: str) -> None:
        """Append `note` to the error message (what a store learnt after the call ended)."""
        self.error_message = f"{self.error_message}; {note}" if self.error_message else note
        if self._view is not None:
            self._refresh()

    def set_status(self, status: OperationStatus) -> None:
        """Take `status` as told by a store, without the status machine (another worker has
        moved the record on, or a store reports what it holds)."""
        self.status = status
        if self._view is not None:
            self._refresh()

    def _refresh(self) -> None:
        ref = self._view
        view = ref() if ref is not None else None
        if view is None:
            self._view = None
        else:
            view.__dict__.update(_fields(self))


def _fields(record: Record) -> dict[str, Any]:
    d = {name: getattr(record, name) for name in _FIELDS}
    d["winner_id"] = record.winner_id
    d["ecs_id"] = record.ecs_id
    d["version"] = 0
    d["last_modified"] = record.created_at
    return d


def _model(record: Record) -> ConflictResolutionOperation:
    """A model of `record`; every value comes from a validated config, the entities of a call, or
    a store that wrote it from such a model, so none is validated again."""
    return construct_model(ConflictResolutionOperation, _fields(record), None)


def record_of(operation: ConflictResolutionOperation | Record) -> Record | None:
    """The record behind `operation`: itself, the record a view shows, or None for a model built
    by hand."""
    if isinstance(operation, Record):
        return operation
    return view_of(operation)
