"""Removal accounting: every record that leaves the registry is counted once, here.

Whatever removed it (a handler, the sweeper, a lazy query, the per-target cap, a hand), a removal
is counted under its reason (`removed`, ``contend_removals_total{reason}``), under the strategy
that removed it (``contend_operations_cleaned_total{strategy}``), off the zombie gauge when it was
a zombie, with its reclaim lag when it waited for a due time, and announced by one
`OperationCleanedEvent` to whoever subscribes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING, cast

from contend.enums import CleanupStrategy, OperationStatus
from contend.events import OperationCleanedEvent
from contend.metrics import AT_ONCE_REASONS

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.base import Backend
    from contend.clock import Clock
    from contend.events import EventBus
    from contend.metrics import CleanupMetrics
    from contend.record import Record

__all__ = ["Removals"]

log = logging.getLogger("contend.cleanup")

_KIND = attrgetter("cleanup_strategy", "status", "target_type")
_SCHEDULED = attrgetter("cleanup_scheduled_at")
_COMPLETED = attrgetter("completed_at")


class Removals:
    """Counts removals (one runtime's)."""

    def __init__(
        self, backend: Backend, clock: Clock, metrics: CleanupMetrics, events: EventBus
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.metrics = metrics
        self.events = events
        self.removed: Counter[str] = Counter()
        """Removals by reason, since the runtime started."""

    async def remove(self, op_id: UUID, reason: str, strategy: CleanupStrategy | None) -> bool:
        """Take a record out of the backend and count it; False if it was already gone."""
        record = await self.backend.remove(op_id)
        if record is None:
            return False
        await self.count(record, reason, strategy or record.cleanup_strategy)
        return True

    async def count(self, record: Record, reason: str, strategy: CleanupStrategy | None) -> None:
        """Count the removal of one record that was booked, and announce it."""
        label = strategy or "none"
        self.tally(record, reason, label)
        if self.events.wants(OperationCleanedEvent):
            await self.announce(record, reason, label)

    def tally(self, record: Record, reason: str, strategy: str) -> None:
        """Count one removal of a booked record."""
        self.removed[reason] += 1
        lag = None
        if reason not in AT_ONCE_REASONS:
            due = record.cleanup_scheduled_at or record.completed_at
            lag = self.clock.time() - due.timestamp() if due is not None else None
        self.metrics.removed(
            reason, strategy, record.target_type if record.is_zombie else None, lag
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("removed operation %s (%s, reason %s)", record.ecs_id, record.status, reason)

    def tally_passed(self, records: Sequence[Record], reason: str, strategy: str) -> None:
        """Count records that left in the step they ended, never booked (no gauge moves, but
        each target type's gauge series exists): one update per metric for the batch."""
        metrics = self.metrics
        for target_type in {r.target_type for r in records}:
            metrics.zombie_passed(target_type)
        n = len(records)
        self.removed[reason] += n
        metrics.removed(reason, strategy, None, None, n)
        if log.isEnabledFor(logging.DEBUG):
            for r in records:
                log.debug("removed operation %s (%s, reason %s)", r.ecs_id, r.status, reason)

    async def announce(self, record: Record, reason: str, strategy: str) -> None:
        await self.events.emit(
            OperationCleanedEvent(
                op_id=record.ecs_id,
                target_entity_id=record.target_entity_id,
                reason=reason,
                strategy=strategy,
                status=record.status.value,
            )
        )

    async def count_many(self, records: Sequence[Record], reason: str) -> None:
        """Count a batch of removals (a sweep's): each tally is one pass in C over the batch."""
        metrics = self.metrics
        kinds = Counter(map(_KIND, records))
        metrics.reclaim_lag.labels(reason).observe_durations(_lags(records, self.clock.time()))
        self.removed[reason] += len(records)
        metrics.removals_by_reason.labels(reason).inc(len(records))
        for (strategy, status, target_type), n in kinds.items():
            metrics.operations_cleaned_by_strategy.labels(strategy or "none").inc(n)
            if status is not OperationStatus.SUCCEEDED:
                metrics.current_zombie_count_by_target.labels(target_type).dec(n)
        log.debug("removed %d operation record(s) (reason %s)", len(records), reason)
        if self.events.wants(OperationCleanedEvent):
            for record in records:
                await self.announce(record, reason, record.cleanup_strategy or "none")


def _lags(records: Sequence[Record], now: float) -> list[timedelta]:
    """How long past its due moment (scheduled removal, else completion) each record went.

    Kept as timedeltas: subtracting aware datetimes costs a third of converting each to a
    timestamp. Records without either time are left out, as one at a time they are.
    """
    scheduled: list[datetime | None] = list(map(_SCHEDULED, records))
    if None in scheduled:
        if scheduled.count(None) == len(scheduled):
            scheduled = list(map(_COMPLETED, records))
        else:
            scheduled = [s or c for s, c in zip(scheduled, map(_COMPLETED, records), strict=True)]
        if None in scheduled:
            scheduled = [d for d in scheduled if d is not None]
    moment = datetime.fromtimestamp(now, UTC)
    try:
        return list(map(moment.__sub__, cast("list[datetime]", scheduled)))
    except TypeError:  # a naive datetime set by hand: compare as timestamps, as `tally` does
        return [timedelta(seconds=now - d.timestamp()) for d in scheduled if d is not None]
