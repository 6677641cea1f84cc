"""Removal sinks: whatever must see a record before it leaves the registry (an archive).

With a sink attached, every removal path (immediate, ttl, lazy, cap, pressure, force, custom,
manual) hands its records to the sinks first, a sweep its whole due batch at once. A sink that
raises vetoes the batch: the records stay and the failure counts as a failed cleanup (swept
records are retried after the check interval, lazy ones at the next query).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from contend.enums import CleanupStrategy

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.base import Backend
    from contend.cleanup.handler_runs import HandlerRuns
    from contend.cleanup.removals import Removals
    from contend.clock import Clock
    from contend.metrics import CleanupMetrics
    from contend.operations import ConflictResolutionOperation
    from contend.record import Record

__all__ = ["Removal", "RemovalSink", "Sinks"]

log = logging.getLogger("contend.cleanup")


@dataclass(frozen=True, slots=True)
class Removal:
    """A record about to leave the registry, as a removal sink sees it."""

    operation: ConflictResolutionOperation
    reason: str
    strategy: str
    removed_at: datetime


RemovalSink = Callable[[Sequence[Removal]], Awaitable[None]]


class Sinks:
    """The removal sinks of one runtime, and the removals that go through them."""

    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        metrics: CleanupMetrics,
        removals: Removals,
        runs: HandlerRuns,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.metrics = metrics
        self.removals = removals
        self.runs = runs
        self._sinks: list[RemovalSink] = []

    def __bool__(self) -> bool:
        return bool(self._sinks)

    def add(self, sink: RemovalSink) -> Callable[[], None]:
        """Show `sink` every batch of records before it leaves; returns a detacher."""
        self._sinks.append(sink)

        def detach() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return detach

    @property
    def attached(self) -> tuple[RemovalSink, ...]:
        return tuple(self._sinks)

    async def remove(
        self, records: Sequence[Record], reason: str, strategy: CleanupStrategy | None
    ) -> int | None:
        """Offer `records` to every sink as one batch, then remove and count them; None if a
        sink vetoed."""
        now = self.clock.now()
        batch = [
            Removal(r.view(), reason, _label(strategy or r.cleanup_strategy), now) for r in records
        ]
        for sink in tuple(self._sinks):
            failed: str | None = None
            self.runs.begin()
            try:
                await sink(batch)
            except Exception as exc:
                name = str(getattr(sink, "name", None) or getattr(sink, "__qualname__", sink))
                why = f"{type(exc).__name__}: {exc}"
                failed = name
                self.runs.failed(name, why)
                for value in {r.strategy for r in batch}:
                    self.metrics.cleanup_failed(value)
                log.error(
                    "removal sink %s failed on %d record(s) (reason %s; first: operation %s, "
                    "target %s): %s; the records are kept",
                    name,
                    len(batch),
                    reason,
                    records[0].ecs_id,
                    records[0].target_entity_id,
                    why,
                )
                return None
            finally:
                self.runs.end(failed)
        removed = 0
        for record in records:
            gone = await self.backend.remove(record.ecs_id)
            if gone is not None:
                removed += 1
                await self.removals.count(gone, reason, strategy or gone.cleanup_strategy)
        return removed

    async def remove_by_id(
        self, op_id: UUID, reason: str, strategy: CleanupStrategy | None
    ) -> bool:
        found = await self.backend.get_operation(op_id)
        if found is None:
            return False
        return bool(await self.remove([found], reason, strategy))

    async def evict_over_cap(self, record: Record, cap: int) -> None:
        """The oldest zombies of `record`'s target past `cap` go, through the sinks."""
        tid = record.target_entity_id
        zombies = await self.backend.zombies(tid)
        if tid is None:
            zombies = [z for z in zombies if z.target_entity_id is None]
        excess = len(zombies) - cap
        if excess > 0:
            zombies.sort(key=_completed)
            await self.remove(zombies[:excess], "cap", None)

    async def sweep(self, ids: list[UUID], moment: float, retry_after: float) -> int:
        """Remove a sweep's due batch through the sinks; a vetoed batch is due again after
        `retry_after` seconds."""
        backend = self.backend
        records = [r for r in [await backend.get_operation(i) for i in ids] if r is not None]
        if not records:
            return 0
        try:
            went = await self.remove(records, "ttl", None)
        except BaseException:
            # cancelled mid-write (stop(), a loop switch, shutdown): the batch is off the
            # schedule already, so put back what is still here or nothing would remove it
            for record in records:
                if await backend.get_operation(record.ecs_id) is not None:
                    await backend.schedule(record.ecs_id, moment)
            raise
        if went is None:
            for record in records:
                await backend.schedule(record.ecs_id, moment + retry_after)
            return 0
        return went

    async def remove_due_lazy(self, records: list[Record]) -> list[Record]:
        """Remove the lazy records in `records` that are due; returns the others."""
        now = self.clock.now()
        due = [r for r in records if _lazy_due(r, now)]
        if not due or await self.remove(due, "lazy", None) is None:
            return list(records)
        gone = {id(r) for r in due}
        return [r for r in records if id(r) not in gone]


def _lazy_due(record: Record, now: datetime) -> bool:
    due = record.cleanup_scheduled_at
    return record.cleanup_strategy is CleanupStrategy.LAZY and due is not None and now >= due


def _completed(record: Record) -> datetime:
    return record.completed_at or record.created_at


def _label(strategy: CleanupStrategy | None) -> str:
    return strategy.value if strategy is not None else "none"
