"""The storage and coordination interface a runtime runs on (in-memory now, Redis next)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from uuid import UUID

from contend.entity import Entity
from contend.enums import OperationStatus
from contend.record import Record
from contend.staging import Coordinator, Lost, Staged

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from contend.clock import Clock

__all__ = [
    "Backend",
    "Coordinator",
    "Hooks",
    "Lost",
    "Staged",
    "Store",
    "VersionConflict",
    "Write",
]


@dataclass(frozen=True, slots=True)
class VersionConflict:
    """A compare-and-set found `entity_id` at `actual` instead of `expected`."""

    entity_id: UUID
    expected: int
    actual: int


@dataclass(frozen=True, slots=True)
class Write:
    """One target of an OCC commit: write `state` over `committed` if it is still at `expected`."""

    committed: Entity
    state: Entity
    expected: int


@dataclass(frozen=True, slots=True)
class Hooks:
    """What a backend may call back into the runtime that owns it, and nothing more.

    Given by the runtime (`Backend.attach`, when the backend has it), again whenever the runtime's
    clock is replaced.
    """

    clock: Clock
    """Dates records and due times."""
    observe_window: Callable[..., None]
    """``(winner, contenders, rejected_ids, carried=0)``: a contested window's metrics and
    conflict event, reported once across workers by the winner's worker; `rejected_ids` is the
    ids of the calls rejected, or (cheaper) a function returning them, called only when someone
    subscribes to conflict events."""
    bury: Callable[[Record, OperationStatus, str], Awaitable[object]]
    """End a record as a zombie with a message (an orphan of a dead worker) and apply its
    cleanup."""
    count_removal: Callable[[Record, str | None], Awaitable[None]]
    """Count a removal learnt after the call that made it returned, once, under a reason (None:
    the record's strategy's own)."""
    sweep: Callable[[], Awaitable[int]]
    """Run a sweep now (to replay a sweep whose reply was lost)."""
    metrics_registry: CollectorRegistry
    """Where a backend registers metrics of its own."""


@runtime_checkable
class Store(Protocol):
    """The synchronous side of a backend whose state is in this process (the memory backend).

    The runtime calls it instead of the `Backend` coroutines on the hot path: nothing there can
    suspend, so awaiting would only cost a coroutine per step. A backend offers one through its
    ``store`` attribute. Records of staged calls stay with the coordinator until they end (see
    `LocalCoordinator`); `add_operation` is for calls that are not staged.
    """

    @property
    def zombie_count(self) -> int: ...

    def ensure_entity(self, entity: Entity) -> Entity:
        """Register `entity` on first use; return the committed instance for its id."""
        ...

    def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        """Record an unguarded write (OCC off): version + 1 on each."""
        ...

    def add_operation(self, op: Record) -> None:
        """Index a record of a call in flight."""
        ...

    def set_status(self, op: Record, status: OperationStatus, at: datetime) -> None:
        """Move `op` along the status machine and keep the status index in step."""
        ...

    def end(self, ops: Sequence[Record], status: OperationStatus, at: datetime) -> None:
        """Give each record its terminal `status` and forget it at once (a success that is not
        kept, a zombie cleaned immediately): nothing can observe it in between, so the zombie
        books are never touched."""
        ...

    def forget(self, ops: Iterable[Record]) -> None:
        """`end` for records already given their terminal status (`Record.end`)."""
        ...

    def add_zombie(self, op: Record, due: float | None, cap: int) -> list[Record]:
        """Book a terminal record; returns the oldest zombies of its target evicted past `cap`."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Committed entity state, operation records and the zombie books, indexed for O(result).

    Optional parts a backend may add, found by the runtime with ``getattr``: ``store`` (a `Store`,
    the synchronous hot path), ``attach(hooks: Hooks)`` (called once the runtime owns it, and
    again when the runtime's clock changes), ``reset()`` (the runtime moved to a new event loop),
    ``health_issues()``, ``refresh_zombie_count()``, ``top_zombie_targets(n)``.

    A call's steps map onto it so that a remote backend can fuse them: a winner's write
    (`commit` or `bump`), its `Coordinator.release` and the end of its record (`discard` or
    `add_zombie`) come one after the other with nothing awaited in between but the write itself,
    so a backend may send them as one request (the Redis backend does).
    """

    name: str

    @property
    def coordinator(self) -> Coordinator:
        """The staging coordinator that shares this backend's view of targets."""
        ...

    @property
    def zombie_count(self) -> int:
        """Zombies present (kept as a counter; a distributed backend gives its last known count)."""
        ...

    # entities
    async def ensure_entity(self, entity: Entity) -> Entity:
        """Register `entity` on first use; return the committed instance for its id."""
        ...

    async def get_entity(self, entity_id: UUID, kind: type[Entity] | None = None) -> Entity | None:
        """The committed entity; `kind` is the class to load one this process has not seen into
        (a backend that only knows entities it was given may ignore it)."""
        ...

    async def commit(self, writes: Sequence[Write], now: datetime) -> VersionConflict | None:
        """All-or-nothing compare-and-set; on success each committed instance holds its state."""
        ...

    async def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        """Record an unguarded write (OCC off): version + 1 on each."""
        ...

    # operation records
    async def add_operation(self, op: Record) -> None: ...

    def set_status(self, op: Record, status: OperationStatus, at: datetime | None = None) -> None:
        """Move `op` along the status machine and keep the status index in step."""
        ...

    async def get_operation(self, op_id: UUID) -> Record | None: ...

    async def discard(self, op: Record) -> None:
        """A succeeded record leaves (not a zombie, not a cleanup)."""
        ...

    async def add_zombie(self, op: Record, due: float | None, cap: int) -> list[Record]:
        """Book a terminal record; returns the oldest zombies of its target evicted past `cap`."""
        ...

    async def remove(self, op_id: UUID) -> Record | None:
        """Take a record out of every index; None if it was already gone."""
        ...

    async def operations_for_target(self, target_id: UUID) -> list[Record]: ...

    async def operations_with_status(self, status: OperationStatus) -> list[Record]: ...

    async def zombies(self, target_id: UUID | None = None) -> list[Record]: ...

    async def zombie_counts_by_target(self) -> dict[UUID, int]: ...

    async def oldest_zombies(self) -> list[Record]:
        """The oldest zombie of each target, for the health check."""
        ...

    async def schedule(self, op_id: UUID, due: float) -> None:
        """(Re)schedule a record's removal for the sweeper."""
        ...

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        """Ids whose scheduled removal is at or before `now`, earliest first, at most `limit`."""
        ...

    async def take_due(self, now: float, limit: int) -> list[Record]:
        """Take the records due by `now` out of every index in one step (a sweep)."""
        ...

    async def next_due(self) -> float | None: ...

    async def close(self) -> None: ...
