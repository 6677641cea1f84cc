"""What happens to a record once its call ends: books, handlers, removals and the sweeper."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any, cast

from contend.cleanup.handlers import (
    CleanupHandler,
    CustomCleanupHandler,
    DeferredCleanupHandler,
    ImmediateCleanupHandler,
    LazyCleanupHandler,
    NoOpCleanupHandler,
)
from contend.cleanup.policy import EffectiveCleanup, effective_cleanup
from contend.config import CleanupConfig, CleanupStrategy
from contend.events import OperationCleanedEvent, OperationCompletedEvent
from contend.metrics import AT_ONCE_REASONS
from contend.operations import ConflictResolutionOperation, OperationStatus

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.memory import MemoryBackend
    from contend.runtime import Runtime

__all__ = ["CleanupManager", "Removal", "RemovalSink"]

log = logging.getLogger("contend.cleanup")

SWEEP_BATCH = 10_000
RECENT_RUNS = 10_000
DEFAULT_CHECK_INTERVAL = 60.0
_NO_CAP = 1 << 62
_IMMEDIATE = CleanupStrategy.IMMEDIATE
_DICT = attrgetter("__dict__")
_KIND = itemgetter("cleanup_strategy", "status", "target_type")
_SCHEDULED = itemgetter("cleanup_scheduled_at")
_COMPLETED = itemgetter("completed_at")


@dataclass(frozen=True, slots=True)
class Removal:
    """A record about to leave the registry, as a removal sink sees it."""

    operation: ConflictResolutionOperation
    reason: str
    strategy: str
    removed_at: datetime


RemovalSink = Callable[[Sequence[Removal]], Awaitable[None]]


class CleanupManager:
    """One per runtime: applies the effective strategy to every zombie and counts every removal."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._handlers: dict[tuple[object, ...], CleanupHandler] = {}
        self.handler_runs = 0
        self.handler_failures = 0
        self.failed_handlers: Counter[str] = Counter()
        self.last_failure: str | None = None
        self._runs: deque[tuple[float, str | None]] = deque(maxlen=RECENT_RUNS)
        """(clock time, failed handler's name or None) of the latest handler and sink runs."""
        self.active_tasks = 0
        self.removed: Counter[str] = Counter()
        self.check_interval: float | None = None
        self.sweeps = 0
        self._last_sweep = float("-inf")
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeper_loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_at = float("inf")
        self._sinks: list[RemovalSink] = []
        self._handling: set[asyncio.Task[None]] = set()
        """Handlers running in tasks of their own (kept here until done)."""

    # lifecycle ----------------------------------------------------------------------------------
    async def succeeded(
        self, op: ConflictResolutionOperation, config: CleanupConfig, at: datetime | None = None
    ) -> None:
        rt = self.rt
        rt.metrics.outcome("succeeded")
        local = rt._local
        if config.retain_succeeded and config.strategy in (
            CleanupStrategy.DEFERRED,
            CleanupStrategy.LAZY,
            CleanupStrategy.NONE,
        ):
            rt.backend.set_status(op, OperationStatus.SUCCEEDED, at or rt.clock.now())
            handler = self._handler(
                EffectiveCleanup(config.strategy, "ttl", config.retention_minutes), config
            )
            await handler.handle_operation_rejection(op)
        elif local is not None:
            local.end_unbooked(op, OperationStatus.SUCCEEDED, at or rt.clock.now())
        else:
            rt.backend.set_status(op, OperationStatus.SUCCEEDED, at or rt.clock.now())
            await rt.backend.discard(op)
        if rt.events.wants(OperationCompletedEvent):
            await rt.events.emit(
                OperationCompletedEvent(
                    op_id=op.ecs_id,
                    target_entity_id=op.target_entity_id,
                    status=op.status.value,
                    duration_ms=_duration_ms(op),
                )
            )

    async def bury(
        self,
        op: ConflictResolutionOperation,
        status: OperationStatus,
        config: CleanupConfig,
        message: str,
        winner_id: UUID | None = None,
    ) -> EffectiveCleanup:
        """End `op` as a zombie (rejected, failed, cancelled) and apply its cleanup strategy."""
        rt = self.rt
        eff = effective_cleanup(config, op, rt)
        local = rt._local
        if eff.strategy is _IMMEDIATE and local is not None and not self._sinks:
            removed = self.pass_through(local, (op,), status, (message,), winner_id, eff)
            if removed and rt.events.wants(OperationCleanedEvent):
                await self._announce(op, eff.reason, "immediate")
        else:
            rt.backend.set_status(op, status, rt.clock.now())
            self._mark(op, status, message, winner_id, eff)
            cap = config.max_zombie_count_per_target
            if self._sinks:
                await rt.backend.add_zombie(op, None, _NO_CAP)
                rt.metrics.zombie_added(op.target_type)
                await self._evict_over_cap(op, cap)
            else:
                evicted = await rt.backend.add_zombie(op, None, cap)
                rt.metrics.zombie_added(op.target_type)
                for gone in evicted:
                    await self._count(gone, "cap", gone.cleanup_strategy)
            await self._run_handler(op, eff, config)
        if status is not OperationStatus.REJECTED and rt.events.wants(OperationCompletedEvent):
            await self._completed(op, status, message)
        return eff

    def can_pass_through(self) -> bool:
        """True when a zombie whose effective strategy is IMMEDIATE can be ended synchronously
        by `pass_through`: the stock in-memory backend, no removal sink, no removal subscriber."""
        rt = self.rt
        return (
            rt._local is not None and not self._sinks and not rt.events.wants(OperationCleanedEvent)
        )

    def pass_through(
        self,
        local: MemoryBackend,
        ops: Sequence[ConflictResolutionOperation],
        status: OperationStatus,
        messages: Sequence[str],
        winner_id: UUID | None,
        eff: EffectiveCleanup,
    ) -> list[ConflictResolutionOperation]:
        """End each of `ops` (with its message) and remove it at once, without booking it;
        returns those that were registered, so removed.

        Nothing can observe a zombie that leaves in the same step, so it never enters the zombie
        books (and the zombie gauge never moves); each removal is counted like any other. Only
        for an IMMEDIATE `eff`, with `local` the runtime's direct backend and no removal sink;
        announcing the removals is the caller's. A batch (a window's losers) is counted in one
        step per metric.
        """
        rt = self.rt
        now = rt.clock.now()
        strategy = eff.strategy
        name = strategy._value_
        removed = local.end_all_unbooked(ops, status, now)
        for op, message in zip(ops, messages, strict=True):
            d = op.__dict__
            d["error_message"] = message
            d["winner_id"] = winner_id
            d["cleanup_strategy"] = strategy
            d["cleanup_handler_name"] = name
        metrics = rt.metrics
        self._count_outcomes(status, len(ops), eff.reason)
        if removed:
            reason = eff.reason
            for target_type in {op.target_type for op in removed}:
                metrics.zombie_passed(target_type)
            self.removed[reason] += len(removed)
            metrics.removed(reason, name, None, None, len(removed))
            if log.isEnabledFor(logging.DEBUG):
                for op in removed:
                    log.debug("removed operation %s (%s, reason %s)", op.ecs_id, status, reason)
        return removed

    def _mark(
        self,
        op: ConflictResolutionOperation,
        status: OperationStatus,
        message: str,
        winner_id: UUID | None,
        eff: EffectiveCleanup,
    ) -> None:
        d = op.__dict__
        d["error_message"] = message
        d["winner_id"] = winner_id
        d["cleanup_strategy"] = eff.strategy
        d["cleanup_handler_name"] = eff.strategy._value_
        self._count_outcomes(status, 1, eff.reason)

    def _count_outcomes(self, status: OperationStatus, n: int, reason: str) -> None:
        metrics = self.rt.metrics
        metrics.outcome(status._value_, n)
        if reason == "pressure":
            metrics.memory_pressure_triggered_cleanups.inc(n)
        elif reason == "force":
            metrics.force_cleanup_triggered.inc(n)

    async def _completed(
        self, op: ConflictResolutionOperation, status: OperationStatus, message: str
    ) -> None:
        await self.rt.events.emit(
            OperationCompletedEvent(
                op_id=op.ecs_id,
                target_entity_id=op.target_entity_id,
                status=status.value,
                duration_ms=_duration_ms(op),
                error_message=message,
            )
        )

    def _handler(self, eff: EffectiveCleanup, config: CleanupConfig) -> CleanupHandler:
        strategy = eff.strategy
        if strategy is CleanupStrategy.CUSTOM:
            from contend.cleanup.registry import CleanupHandlerRegistry

            name = config.custom_cleanup_handler or ""
            key: tuple[object, ...] = (strategy, name, CleanupHandlerRegistry.get(name))
        else:
            key = (strategy, eff.reason, eff.retention_minutes)
        handler = self._handlers.get(key)
        if handler is None:
            handler = _make_handler(eff, config)
            handler.bind(self.rt)
            self._handlers[key] = handler
        return handler

    async def _run_handler(
        self, op: ConflictResolutionOperation, eff: EffectiveCleanup, config: CleanupConfig
    ) -> None:
        """Run the handler for `op` (`_handle`).

        One that may suspend (a custom handler; any handler with a removal sink, or on a backend
        that does I/O) runs in a task of its own: a caller cancelled meanwhile gets its
        CancelledError at once and the handler still finishes, so the record is cleaned up (or
        the failure counted) instead of being left with nothing scheduled. The stock handlers on
        the in-memory backend never suspend, so nothing can interrupt them.
        """
        cannot_suspend = (
            eff.strategy is not CleanupStrategy.CUSTOM
            and self.rt._local is not None
            and not self._sinks
        )
        if cannot_suspend:
            await self._handle(op, eff, config)
            return
        run = asyncio.get_running_loop().create_task(self._handle(op, eff, config))
        self._handling.add(run)
        run.add_done_callback(self._handling.discard)
        await asyncio.shield(run)

    async def _handle(
        self, op: ConflictResolutionOperation, eff: EffectiveCleanup, config: CleanupConfig
    ) -> None:
        """Run the handler for `op`; any failure (including a handler that can no longer be
        found by name) is counted and logged, never raised, so the caller still gets its answer."""
        metrics = self.rt.metrics
        custom: CustomCleanupHandler | None = None
        self.handler_runs += 1
        self.active_tasks += 1
        failed: str | None = None
        started = time.perf_counter()
        try:
            handler = self._handler(eff, config)
            if isinstance(handler, CustomCleanupHandler):
                custom = handler
                metrics.custom_cleanup_handlers_used.labels(custom.name).inc()
            coro: Awaitable[object] = handler.handle_operation_rejection(op)
            if custom is not None:
                async with asyncio.timeout(config.handler_timeout_seconds):
                    result = await coro
            else:
                result = await coro
            if result is not None:
                raise TypeError(f"handler returned {result!r}; a cleanup handler returns None")
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            if isinstance(exc, TimeoutError):
                why = f"timed out after {config.handler_timeout_seconds}s"
            else:
                why = f"{type(exc).__name__}: {exc}"
            if custom is not None:
                name = custom.name
            elif eff.strategy is CleanupStrategy.CUSTOM:
                name = config.custom_cleanup_handler or "custom"
            else:
                name = eff.strategy.value
            failed = name
            self._failed(name, why)
            metrics.cleanup_failed(eff.strategy.value)
            kept = await self.rt.backend.get_operation(op.ecs_id) is not None
            log.error(
                "cleanup handler %s failed for operation %s (target %s, status %s): %s; %s",
                name,
                op.ecs_id,
                op.target_entity_id,
                op.status.value,
                why,
                "the record is kept" if kept else "the record had already been removed",
            )
        finally:
            self._runs.append((self.rt.clock.time(), failed))
            self.active_tasks -= 1
            if custom is not None or eff.strategy is CleanupStrategy.CUSTOM:
                metrics.handler_ran(eff.strategy.value, time.perf_counter() - started)

    def _failed(self, name: str, why: str) -> None:
        self.handler_failures += 1
        self.failed_handlers[name] += 1
        self.last_failure = f"{name}: {why}"

    def recent_runs(self, since: float) -> tuple[int, Counter[str]]:
        """Handler and sink runs at or after clock time `since` (among the latest
        `RECENT_RUNS`), and their failures by handler name."""
        runs = 0
        failures: Counter[str] = Counter()
        for at, failed in reversed(self._runs):
            if at < since:
                break
            runs += 1
            if failed is not None:
                failures[failed] += 1
        return runs, failures

    # removals -----------------------------------------------------------------------------------
    async def remove(
        self, op_id: UUID, reason: str, *, strategy: CleanupStrategy | None = None
    ) -> bool:
        """Take a record out of the registry, counting the removal once; False if already gone."""
        if self._sinks:
            found = await self.rt.backend.get_operation(op_id)
            if found is None:
                return False
            return bool(await self._through_sinks([found], reason, strategy))
        op = await self.rt.backend.remove(op_id)
        if op is None:
            return False
        await self._count(op, reason, strategy or op.cleanup_strategy)
        return True

    async def _count_many(self, ops: Sequence[ConflictResolutionOperation], reason: str) -> None:
        """Count a batch of removals (a sweep's): each tally is one pass in C over the batch."""
        rt = self.rt
        metrics = rt.metrics
        dicts = list(map(_DICT, ops))
        kinds = Counter(map(_KIND, dicts))
        metrics.reclaim_lag.labels(reason).observe_durations(_lags(dicts, rt.clock.time()))
        self.removed[reason] += len(ops)
        metrics.removals_by_reason.labels(reason).inc(len(ops))
        for (strategy, status, target_type), n in kinds.items():
            metrics.operations_cleaned_by_strategy.labels(_strategy_value(strategy)).inc(n)
            if status is not OperationStatus.SUCCEEDED:
                metrics.current_zombie_count_by_target.labels(target_type).dec(n)
        log.debug("removed %d operation record(s) (reason %s)", len(ops), reason)
        if rt.events.wants(OperationCleanedEvent):
            for op in ops:
                strategy = op.cleanup_strategy
                await rt.events.emit(
                    OperationCleanedEvent(
                        op_id=op.ecs_id,
                        target_entity_id=op.target_entity_id,
                        reason=reason,
                        strategy=strategy.value if strategy is not None else "none",
                        status=op.status.value,
                    )
                )

    async def _count(
        self, op: ConflictResolutionOperation, reason: str, strategy: CleanupStrategy | None
    ) -> None:
        strategy_value = strategy._value_ if strategy is not None else "none"
        self._tally(op, reason, strategy_value)
        if self.rt.events.wants(OperationCleanedEvent):
            await self._announce(op, reason, strategy_value)

    def _tally(self, op: ConflictResolutionOperation, reason: str, strategy_value: str) -> None:
        """Count one removal of a booked record."""
        rt = self.rt
        self.removed[reason] += 1
        lag = None
        if reason not in AT_ONCE_REASONS:
            due = op.cleanup_scheduled_at or op.completed_at
            lag = rt.clock.time() - due.timestamp() if due is not None else None
        rt.metrics.removed(reason, strategy_value, op.target_type if op.is_zombie else None, lag)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("removed operation %s (%s, reason %s)", op.ecs_id, op.status, reason)

    async def _announce(
        self, op: ConflictResolutionOperation, reason: str, strategy_value: str
    ) -> None:
        await self.rt.events.emit(
            OperationCleanedEvent(
                op_id=op.ecs_id,
                target_entity_id=op.target_entity_id,
                reason=reason,
                strategy=strategy_value,
                status=op.status.value,
            )
        )

    async def remove_due_lazy(
        self, ops: list[ConflictResolutionOperation]
    ) -> list[ConflictResolutionOperation]:
        """Remove the lazy records in `ops` that are due; return the rest."""
        if self._sinks:
            return await self._lazy_through_sinks(ops)
        now = self.rt.clock.now()
        kept: list[ConflictResolutionOperation] = []
        for op in ops:
            due = op.cleanup_scheduled_at
            if op.cleanup_strategy is CleanupStrategy.LAZY and due is not None and now >= due:
                await self.remove(op.ecs_id, "lazy")
            else:
                kept.append(op)
        return kept

    # removal sinks ------------------------------------------------------------------------------
    def add_removal_sink(self, sink: RemovalSink) -> Callable[[], None]:
        """Show `sink` every batch of records before it leaves the registry; returns a detacher.

        Every removal path (immediate, ttl, lazy, cap, pressure, force, custom, manual) goes
        through the sinks; a sweep hands over its whole due batch at once. A sink that raises
        vetoes the batch: the records stay and the failure counts as a failed cleanup (swept
        records are retried after the check interval, lazy ones at the next query).
        """
        self._sinks.append(sink)

        def detach() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return detach

    @property
    def removal_sinks(self) -> tuple[RemovalSink, ...]:
        return tuple(self._sinks)

    async def _through_sinks(
        self,
        ops: Sequence[ConflictResolutionOperation],
        reason: str,
        strategy: CleanupStrategy | None,
    ) -> int | None:
        """Offer `ops` to every sink as one batch, then remove them; None if a sink vetoed."""
        rt = self.rt
        now = rt.clock.now()
        batch = [
            Removal(op, reason, _strategy_value(strategy or op.cleanup_strategy), now) for op in ops
        ]
        for sink in tuple(self._sinks):
            self.handler_runs += 1
            self.active_tasks += 1
            failed: str | None = None
            try:
                await sink(batch)
            except Exception as exc:
                name = str(getattr(sink, "name", None) or getattr(sink, "__qualname__", sink))
                why = f"{type(exc).__name__}: {exc}"
                failed = name
                self._failed(name, why)
                for value in {r.strategy for r in batch}:
                    rt.metrics.cleanup_failed(value)
                log.error(
                    "removal sink %s failed on %d record(s) (reason %s; first: operation %s, "
                    "target %s): %s; the records are kept",
                    name,
                    len(batch),
                    reason,
                    ops[0].ecs_id,
                    ops[0].target_entity_id,
                    why,
                )
                return None
            finally:
                self._runs.append((rt.clock.time(), failed))
                self.active_tasks -= 1
        removed = 0
        for r in batch:
            gone = await rt.backend.remove(r.operation.ecs_id)
            if gone is not None:
                removed += 1
                await self._count(gone, reason, strategy or gone.cleanup_strategy)
        return removed

    async def _evict_over_cap(self, op: ConflictResolutionOperation, cap: int) -> None:
        tid = op.target_entity_id
        zombies = await self.rt.backend.zombies(tid)
        if tid is None:
            zombies = [z for z in zombies if z.target_entity_id is None]
        excess = len(zombies) - cap
        if excess > 0:
            zombies.sort(key=_completed)
            await self._through_sinks(zombies[:excess], "cap", None)

    async def _sweep_through_sinks(self, ids: list[UUID], moment: float) -> int:
        backend = self.rt.backend
        ops = [op for op in [await backend.get_operation(i) for i in ids] if op is not None]
        if not ops:
            return 0
        try:
            went = await self._through_sinks(ops, "ttl", None)
        except BaseException:
            # cancelled mid-write (stop(), a loop switch, shutdown): the batch is off the
            # schedule already, so put back what is still here or nothing would remove it
            for op in ops:
                if await backend.get_operation(op.ecs_id) is not None:
                    await backend.schedule(op.ecs_id, moment)
            raise
        if went is None:
            retry = moment + (self.check_interval or DEFAULT_CHECK_INTERVAL)
            for op in ops:
                await backend.schedule(op.ecs_id, retry)
            return 0
        return went

    async def _lazy_through_sinks(
        self, ops: list[ConflictResolutionOperation]
    ) -> list[ConflictResolutionOperation]:
        now = self.rt.clock.now()
        due = [
            op
            for op in ops
            if op.cleanup_strategy is CleanupStrategy.LAZY
            and op.cleanup_scheduled_at is not None
            and now >= op.cleanup_scheduled_at
        ]
        if not due or await self._through_sinks(due, "lazy", None) is None:
            return list(ops)
        gone = {op.ecs_id for op in due}
        return [op for op in ops if op.ecs_id not in gone]

    # the sweeper --------------------------------------------------------------------------------
    async def schedule(self, op: ConflictResolutionOperation, due: float) -> None:
        """Have the sweeper remove `op` once the clock reaches `due` (epoch seconds).

        The sweeper wakes at most every ``cleanup_check_interval_seconds``: the smallest interval
        of any config it has been given work by (60 s for records without a config).
        """
        await self.rt.backend.schedule(op.ecs_id, due)
        config = op.cleanup_config
        interval = float(
            config.cleanup_check_interval_seconds if config is not None else DEFAULT_CHECK_INTERVAL
        )
        if self.check_interval is None or interval < self.check_interval:
            self.check_interval = interval
            due = float("-inf")
        self._poke(due)

    def _poke(self, due: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._sweeper
        if task is None or task.done() or self._sweeper_loop is not loop:
            if task is not None and task.cancelled() and self._sweeper_loop is loop:
                # Cancelled by someone other than stop(): the loop is shutting down (asyncio.run
                # cancels every task) and a new sweeper would be stranded; the next loop starts one.
                return
            self._wake = asyncio.Event()
            self._wake_at = float("inf")
            self._sweeper_loop = loop
            self._sweeper = loop.create_task(self._sweep_forever(), name="contend-sweeper")
        elif due < self._wake_at and self._wake is not None:
            self._wake.set()

    async def sweep(self, now: float | None = None) -> int:
        """Remove every record due by `now` (default: the clock); returns how many went."""
        rt = self.rt
        moment = rt.clock.time() if now is None else now
        removed = 0
        self.sweeps += 1
        self._last_sweep = rt.clock.time()
        self.active_tasks += 1
        try:
            while True:
                if self._sinks:
                    batch = await rt.backend.pop_due(moment, SWEEP_BATCH)
                    removed += await self._sweep_through_sinks(batch, moment)
                    taken = len(batch)
                else:
                    gone = await rt.backend.take_due(moment, SWEEP_BATCH)
                    if gone:
                        await self._count_many(gone, "ttl")
                    removed += len(gone)
                    taken = len(gone)
                if taken < SWEEP_BATCH:
                    break
                await asyncio.sleep(0)
        finally:
            self.active_tasks -= 1
        if removed:
            log.debug("sweep removed %d record(s)", removed)
        return removed

    async def _sweep_forever(self) -> None:
        rt = self.rt
        wake = self._wake
        if wake is None:
            return
        while True:
            due = await rt.backend.next_due()
            if due is None:
                self._wake_at = float("inf")
                wake.clear()
                await wake.wait()
                continue
            interval = self.check_interval or DEFAULT_CHECK_INTERVAL
            at = max(due, self._last_sweep + interval)
            delay = at - rt.clock.time()
            if delay > 0:
                self._wake_at = at
                wake.clear()
                sleeper = asyncio.ensure_future(self._sleep_until(at))
                waiter = asyncio.ensure_future(wake.wait())
                try:
                    await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    waiter.cancel()
                if rt.clock.time() < at:
                    continue
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed; retrying after the check interval")
                self._last_sweep = rt.clock.time()

    async def _sleep_until(self, at: float) -> None:
        """Sleep until the clock reads `at`, measured when this task starts: the clock may move
        between creating the task and its first step (a fake clock advanced by a test)."""
        clock = self.rt.clock
        delay = at - clock.time()
        if delay > 0:
            await clock.sleep(delay)

    def stop(self) -> None:
        """Cancel the sweeper; one stranded on a closed loop (started by a call cancelled while
        ``asyncio.run`` shut down) can no longer run and is only forgotten."""
        task = self._sweeper
        if task is not None and not task.done() and not task.get_loop().is_closed():
            task.cancel()
        self._sweeper = None

    @property
    def sweeper_running(self) -> bool:
        return self._sweeper is not None and not self._sweeper.done()


def _make_handler(eff: EffectiveCleanup, config: CleanupConfig) -> CleanupHandler:
    strategy = eff.strategy
    if strategy is CleanupStrategy.IMMEDIATE:
        return ImmediateCleanupHandler(reason=eff.reason)
    if strategy is CleanupStrategy.DEFERRED:
        return DeferredCleanupHandler(retention_minutes=eff.retention_minutes)
    if strategy is CleanupStrategy.LAZY:
        return LazyCleanupHandler(retention_minutes=eff.retention_minutes)
    if strategy is CleanupStrategy.CUSTOM:
        return CustomCleanupHandler(config.custom_cleanup_handler or "")
    return NoOpCleanupHandler()


def _lags(records: list[dict[str, Any]], now: float) -> list[timedelta]:
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
    except TypeError:  # a naive datetime set by hand: compare as timestamps, as `_count` does
        return [timedelta(seconds=now - d.timestamp()) for d in scheduled if d is not None]


def _strategy_value(strategy: CleanupStrategy | None) -> str:
    return strategy.value if strategy is not None else "none"


def _completed(op: ConflictResolutionOperation) -> datetime:
    return op.completed_at or op.created_at


def _duration_ms(op: ConflictResolutionOperation) -> float:
    if op.completed_at is None:
        return 0.0
    start = op.started_at or op.created_at
    return (op.completed_at - start).total_seconds() * 1000.0
