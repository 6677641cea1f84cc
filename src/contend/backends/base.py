"""The storage and coordination interface a runtime runs on (in-memory now, Redis next)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from uuid import UUID

from contend.entity import Entity
from contend.operations import ConflictResolutionOperation, OperationStatus

if TYPE_CHECKING:
    import asyncio

    from contend.config import PreECSConfig
    from contend.errors import OperationRejectedError

__all__ = ["Backend", "Coordinator", "Lost", "Staged", "VersionConflict", "Write"]


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


Staged = tuple[ConflictResolutionOperation, "asyncio.Task[Any] | None", int]
"""A staged call: its record, its caller's task and that task's `cancelling()` count when the call
was staged (a higher count means the caller has since been asked to stop)."""


class Lost:
    """Internal: what a coordinator returns to a call that did not win its window.

    A value, not an exception: most calls of a contended window lose, and raising through the
    coordinator's frames costs more than the rest of a rejection.
    """

    __slots__ = ("errors", "losers", "reason", "winner")

    def __init__(
        self,
        winner: ConflictResolutionOperation | None,
        reason: str | None = None,
        losers: list[Staged] | None = None,
    ) -> None:
        self.winner = winner
        self.reason = reason
        self.losers = losers
        """Every call that lost the window, when the coordinator shares one `Lost` among them:
        the first of them to resume may then end them all in one pass (see `errors`)."""
        self.errors: dict[int, OperationRejectedError] | None = None
        """What that pass left for each loser, by record id (the decorator's business)."""

    def __repr__(self) -> str:
        return f"Lost(winner={self.winner and self.winner.ecs_id}, reason={self.reason!r})"


@runtime_checkable
class Coordinator(Protocol):
    """Pre-ECS staging: one winner per window per target; winners on a target never overlap.

    The wait conflict policy is the coordinator's: the decorator passes a `deadline` only to a
    coordinator whose class sets ``supports_wait = True`` (and refuses the policy otherwise),
    and only learns "won" (None) or "lost" (`Lost`). Such a coordinator must:

    - carry a call that loses a window, while its deadline has not passed, into the target's
      next window instead of returning; there it is ordered before every call staged after
      it, and counts one priority higher (at most 10) for each window it has lost (ageing);
    - return None once it wins, as without a deadline (it then holds the target);
    - at the deadline, take it out of whatever window holds it and return at once a `Lost`
      naming the call holding the target (else the last one it lost to; else a reason);
    - when the caller is cancelled while waiting, forget the call (nobody waits on it; if it
      had just won, release the target);
    - report each contested window, with the losers it carried, to the runtime
      (``Runtime.observe_window(..., carried=n)``).
    """

    async def acquire(
        self, op: ConflictResolutionOperation, config: PreECSConfig, deadline: float | None = None
    ) -> Lost | None:
        """Return None once `op` won and holds its primary target, or `Lost` if it did not win.

        `deadline` (the running loop's ``loop.time()``) asks for the wait policy; None rejects
        a loser of its first window.
        """
        ...

    def release(self, op: ConflictResolutionOperation) -> None:
        """`op` is done with its target; hand the target to the next window."""
        ...

    def in_flight(self) -> int:
        """Targets with a running winner or an open window."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Committed entity state, operation records and the zombie books, indexed for O(result)."""

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
    async def add_operation(self, op: ConflictResolutionOperation) -> None: ...

    def set_status(
        self, op: ConflictResolutionOperation, status: OperationStatus, at: datetime | None = None
    ) -> None:
        """Move `op` along the status machine and keep the status index in step."""
        ...

    async def get_operation(self, op_id: UUID) -> ConflictResolutionOperation | None: ...

    async def discard(self, op: ConflictResolutionOperation) -> None:
        """A succeeded record leaves (not a zombie, not a cleanup)."""
        ...

    async def add_zombie(
        self, op: ConflictResolutionOperation, due: float | None, cap: int
    ) -> list[ConflictResolutionOperation]:
        """Book a terminal record; returns the oldest zombies of its target evicted past `cap`."""
        ...

    async def remove(self, op_id: UUID) -> ConflictResolutionOperation | None:
        """Take a record out of every index; None if it was already gone."""
        ...

    async def operations_for_target(self, target_id: UUID) -> list[ConflictResolutionOperation]: ...

    async def operations_with_status(
        self, status: OperationStatus
    ) -> list[ConflictResolutionOperation]: ...

    async def zombies(self, target_id: UUID | None = None) -> list[ConflictResolutionOperation]: ...

    async def zombie_counts_by_target(self) -> dict[UUID, int]: ...

    async def oldest_zombies(self) -> list[ConflictResolutionOperation]:
        """The oldest zombie of each target, for the health check."""
        ...

    async def schedule(self, op_id: UUID, due: float) -> None:
        """(Re)schedule a record's removal for the sweeper."""
        ...

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        """Ids whose scheduled removal is at or before `now`, earliest first, at most `limit`."""
        ...

    async def take_due(self, now: float, limit: int) -> list[ConflictResolutionOperation]:
        """Take the records due by `now` out of every index in one step (a sweep)."""
        ...

    async def next_due(self) -> float | None: ...

    async def close(self) -> None: ...
