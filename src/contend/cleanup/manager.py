"""What happens to a record once its call ends: the lifecycle, and the face of the cleanup parts.

`CleanupManager` ends records (a success leaves, a zombie is booked and handed to its strategy's
handler) and is what the runtime, handlers and users talk to. The work is done by parts with one
job each: `Removals` counts every removal once, `HandlerRuns` runs handlers and keeps their
failures, `Sinks` shows records to removal sinks before they go, `Sweeper` removes what is due.
It is given what it needs (backend, store, clock, metrics, events, memory pressure), never the
runtime.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from contend.cleanup.handler_runs import HandlerRuns
from contend.cleanup.removals import Removals
from contend.cleanup.sinks import Removal, RemovalSink, Sinks
from contend.cleanup.sweeper import Sweeper
from contend.config import CleanupConfig, EffectiveCleanup
from contend.enums import CleanupStrategy, OperationStatus
from contend.events import OperationCleanedEvent, OperationCompletedEvent
from contend.record import Record, record_of

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.base import Backend, Store
    from contend.cleanup.pressure import MemoryPressureMonitor
    from contend.clock import Clock
    from contend.events import EventBus
    from contend.metrics import CleanupMetrics
    from contend.operations import ConflictResolutionOperation

__all__ = ["CleanupManager", "Removal", "RemovalSink"]

log = logging.getLogger("contend.cleanup")

_NO_CAP = 1 << 62
_IMMEDIATE = CleanupStrategy.IMMEDIATE
_SUCCEEDED = OperationStatus.SUCCEEDED
_RETAINABLE = (CleanupStrategy.DEFERRED, CleanupStrategy.LAZY, CleanupStrategy.NONE)


class CleanupManager:
    """One per runtime: applies the effective strategy to every zombie and counts every removal."""

    def __init__(
        self,
        backend: Backend,
        *,
        store: Store | None,
        clock: Clock,
        metrics: CleanupMetrics,
        events: EventBus,
        pressure: MemoryPressureMonitor,
        name: str = "contend",
    ) -> None:
        self.backend = backend
        self.store = store
        """The backend's synchronous side, when the runtime uses it (see `Runtime.store`)."""
        self.metrics = metrics
        self.events = events
        self.pressure = pressure
        self.name = name
        self.removals = Removals(backend, clock, metrics, events)
        self.runs = HandlerRuns(self, backend, clock, metrics)
        self.sinks = Sinks(backend, clock, metrics, self.removals, self.runs)
        self.sweeper = Sweeper(backend, clock, self.removals, self.sinks, self.runs)
        self._clock = clock

    @property
    def clock(self) -> Clock:
        return self._clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self._clock = clock
        for part in (self.removals, self.runs, self.sinks, self.sweeper):
            part.clock = clock

    # the policy ---------------------------------------------------------------------------------
    def effective(self, config: CleanupConfig, priority: int) -> EffectiveCleanup:
        """The cleanup that applies now to a record of `priority` made under `config`."""
        return config.effective(priority, self.pressure.pressure(), self.backend.zombie_count)

    # a call ends --------------------------------------------------------------------------------
    async def succeeded(
        self, record: Record, config: CleanupConfig, at: datetime | None = None
    ) -> None:
        """`record`'s call returned: it ends SUCCEEDED and leaves, unless its config retains
        successes (then its strategy's handler schedules it like a zombie)."""
        self.metrics.outcome("succeeded")
        at = at or self._clock.now()
        if config.retain_succeeded and config.strategy in _RETAINABLE:
            self.backend.set_status(record, _SUCCEEDED, at)
            effective = EffectiveCleanup(config.strategy, config.retention_minutes)
            await self.runs.handler(effective, config).handle(record)
        elif self.store is not None:
            self.store.end((record,), _SUCCEEDED, at)
        else:
            self.backend.set_status(record, _SUCCEEDED, at)
            await self.backend.discard(record)
        if self.events.wants(OperationCompletedEvent):
            await self._completed(record, None)

    def succeeded_in_task(
        self, record: Record, config: CleanupConfig, at: datetime | None = None
    ) -> asyncio.Task[None]:
        """`succeeded` in a task of its own: it finishes even if the caller is cancelled
        meanwhile (an event subscriber or a retained success's handler can suspend)."""
        return self.runs.spawn(self.succeeded(record, config, at))

    def leaves_at_once(self, config: CleanupConfig) -> bool:
        """True when a success under `config` can end without awaiting anything (`end_success`)."""
        return (
            self.store is not None
            and not config.retain_succeeded
            and not self.events.wants(OperationCompletedEvent)
        )

    def end_success(self, record: Record, at: datetime) -> None:
        """`succeeded` for a call `leaves_at_once` allows: the record ends and leaves in one
        step of the store."""
        self.metrics.outcome("succeeded")
        store = self.store
        if store is None:
            raise RuntimeError("end_success needs the runtime's synchronous store")
        store.end((record,), _SUCCEEDED, at)

    async def bury(
        self,
        record: Record,
        status: OperationStatus,
        config: CleanupConfig,
        message: str,
        winner_id: UUID | None = None,
    ) -> EffectiveCleanup:
        """End `record` as a zombie (rejected, failed, cancelled) and apply its cleanup strategy."""
        effective = self.effective(config, record.priority)
        if effective.strategy is _IMMEDIATE and self.store is not None and not self.sinks:
            self.pass_through(record, status, message, winner_id, effective)
            if self.events.wants(OperationCleanedEvent):
                await self.removals.announce(record, effective.trigger or "immediate", _IMMEDIATE)
        else:
            backend = self.backend
            backend.set_status(record, status, self._clock.now())
            record.mark(message, winner_id, effective.strategy)
            self._count_outcomes(status, 1, effective)
            cap = config.max_zombie_count_per_target
            if self.sinks:
                await backend.add_zombie(record, None, _NO_CAP)
                self.metrics.zombie_added(record.target_type)
                await self.sinks.evict_over_cap(record, cap)
            else:
                evicted = await backend.add_zombie(record, None, cap)
                self.metrics.zombie_added(record.target_type)
                for gone in evicted:
                    await self.removals.count(gone, "cap", gone.cleanup_strategy)
            may_suspend = self.store is None or bool(self.sinks)
            await self.runs.run(record, effective, config, may_suspend)
        if status is not OperationStatus.REJECTED and self.events.wants(OperationCompletedEvent):
            await self._completed(record, message)
        return effective

    def can_pass_through(self) -> bool:
        """True when a zombie whose effective strategy is IMMEDIATE can be ended synchronously
        by `pass_through`: a synchronous store, no removal sink, no removal subscriber."""
        return (
            self.store is not None
            and not self.sinks
            and not self.events.wants(OperationCleanedEvent)
        )

    def pass_through(
        self,
        record: Record,
        status: OperationStatus,
        message: str,
        winner_id: UUID | None,
        effective: EffectiveCleanup,
    ) -> None:
        """End `record` and remove it at once, without booking it (`passed`)."""
        record.end(status, self._clock.now(), message, winner_id, effective.strategy)
        self.passed((record,), status, effective)

    def passed(
        self, records: Sequence[Record], status: OperationStatus, effective: EffectiveCleanup
    ) -> None:
        """`records` ended (`Record.end`) and leave at once, never booked.

        Nothing can observe a zombie that leaves in the same step, so it never enters the zombie
        books (and the zombie gauge never moves); each removal is counted like any other. Only
        for an IMMEDIATE `effective`, with a synchronous store and no removal sink (see
        `can_pass_through`); announcing the removals is the caller's. A batch (a window's
        losers) is counted in one step per metric.
        """
        store = self.store
        if store is None:
            raise RuntimeError("passed needs the runtime's synchronous store")
        store.forget(records)
        self._count_outcomes(status, len(records), effective)
        self.removals.tally_passed(records, effective.trigger or "immediate", effective.strategy)

    def _count_outcomes(self, status: OperationStatus, n: int, effective: EffectiveCleanup) -> None:
        metrics = self.metrics
        metrics.outcome(status, n)
        trigger = effective.trigger
        if trigger == "pressure":
            metrics.memory_pressure_triggered_cleanups.inc(n)
        elif trigger == "force":
            metrics.force_cleanup_triggered.inc(n)

    async def _completed(self, record: Record, message: str | None) -> None:
        await self.events.emit(
            OperationCompletedEvent(
                op_id=record.ecs_id,
                target_entity_id=record.target_entity_id,
                status=record.status.value,
                duration_ms=_duration_ms(record),
                error_message=message,
            )
        )

    # removals -----------------------------------------------------------------------------------
    async def remove(
        self, op_id: UUID, reason: str, *, strategy: CleanupStrategy | None = None
    ) -> bool:
        """Take a record out of the registry, counting the removal once; False if already gone."""
        if self.sinks:
            return await self.sinks.remove_by_id(op_id, reason, strategy)
        return await self.removals.remove(op_id, reason, strategy)

    async def remove_due_lazy(self, records: list[Record]) -> list[Record]:
        """Remove the lazy records in `records` that are due; return the rest."""
        if self.sinks:
            return await self.sinks.remove_due_lazy(records)
        now = self._clock.now()
        kept: list[Record] = []
        for record in records:
            due = record.cleanup_scheduled_at
            if record.cleanup_strategy is CleanupStrategy.LAZY and due is not None and now >= due:
                await self.remove(record.ecs_id, "lazy")
            else:
                kept.append(record)
        return kept

    async def count_removal(self, record: Record, reason: str | None) -> None:
        """Count a removal learnt after the call that made it returned (a backend's hook)."""
        strategy = record.cleanup_strategy
        await self.removals.count(record, reason or "manual", strategy)

    @property
    def removed(self) -> Counter[str]:
        """Removals by reason, since the runtime started."""
        return self.removals.removed

    def record_of(self, operation: ConflictResolutionOperation | Record) -> Record | None:
        """The record behind a view a handler was given (None for a model built by hand)."""
        return record_of(operation)

    # removal sinks ------------------------------------------------------------------------------
    def add_removal_sink(self, sink: RemovalSink) -> Callable[[], None]:
        """Show `sink` every batch of records before it leaves the registry; returns a detacher
        (see `contend.cleanup.sinks`)."""
        return self.sinks.add(sink)

    @property
    def removal_sinks(self) -> tuple[RemovalSink, ...]:
        return self.sinks.attached

    # handler runs -------------------------------------------------------------------------------
    @property
    def handler_runs(self) -> int:
        return self.runs.runs

    @property
    def handler_failures(self) -> int:
        return self.runs.failures

    @property
    def failed_handlers(self) -> Counter[str]:
        return self.runs.failed_handlers

    @property
    def last_failure(self) -> str | None:
        return self.runs.last_failure

    @property
    def active_tasks(self) -> int:
        """Cleanup steps in progress (handlers, sinks, sweeps)."""
        return self.runs.active

    def recent_runs(self, since: float) -> tuple[int, Counter[str]]:
        """Handler and sink runs at or after clock time `since`, and their failures by name."""
        return self.runs.recent(since)

    # the sweeper --------------------------------------------------------------------------------
    async def schedule(self, record: Record, due: float) -> None:
        """Have the sweeper remove `record` once the clock reaches `due` (epoch seconds)."""
        await self.sweeper.schedule(record, due)

    async def sweep(self, now: float | None = None) -> int:
        """Remove every record due by `now` (default: the clock); returns how many went."""
        return await self.sweeper.sweep(now)

    def stop(self) -> None:
        """Cancel the sweeper."""
        self.sweeper.stop()

    @property
    def sweeper_running(self) -> bool:
        return self.sweeper.running

    @property
    def sweeps(self) -> int:
        return self.sweeper.sweeps

    @property
    def check_interval(self) -> float | None:
        return self.sweeper.check_interval


def _duration_ms(record: Record) -> float:
    if record.completed_at is None:
        return 0.0
    start = record.started_at or record.created_at
    return (record.completed_at - start).total_seconds() * 1000.0
