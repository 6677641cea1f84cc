"""What happens to a record once its call ends: books, handlers, removals and the sweeper."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from typing import TYPE_CHECKING

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
from contend.operations import ConflictResolutionOperation, OperationStatus

if TYPE_CHECKING:
    from uuid import UUID

    from contend.runtime import Runtime

__all__ = ["CleanupManager"]

log = logging.getLogger("contend.cleanup")

SWEEP_BATCH = 10_000
DEFAULT_CHECK_INTERVAL = 60.0


class CleanupManager:
    """One per runtime: applies the effective strategy to every zombie and counts every removal."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._handlers: dict[tuple[object, ...], CleanupHandler] = {}
        self.handler_runs = 0
        self.handler_failures = 0
        self.failed_handlers: Counter[str] = Counter()
        self.last_failure: str | None = None
        self.active_tasks = 0
        self.removed: Counter[str] = Counter()
        self.check_interval: float | None = None
        self.sweeps = 0
        self._last_sweep = float("-inf")
        self._sweeper: asyncio.Task[None] | None = None
        self._sweeper_loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_at = float("inf")

    # lifecycle ----------------------------------------------------------------------------------
    async def succeeded(self, op: ConflictResolutionOperation, config: CleanupConfig) -> None:
        rt = self.rt
        rt.backend.set_status(op, OperationStatus.SUCCEEDED, rt.clock.now())
        rt.metrics.outcome("succeeded")
        if config.retain_succeeded and config.strategy in (
            CleanupStrategy.DEFERRED,
            CleanupStrategy.LAZY,
            CleanupStrategy.NONE,
        ):
            handler = self._handler(
                EffectiveCleanup(config.strategy, "ttl", config.retention_minutes), config
            )
            await handler.handle_operation_rejection(op)
        else:
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
        d = op.__dict__
        rt.backend.set_status(op, status, rt.clock.now())
        d["error_message"] = message
        d["winner_id"] = winner_id
        rt.metrics.outcome(status.value)
        eff = effective_cleanup(config, op, rt)
        if eff.reason == "pressure":
            rt.metrics.memory_pressure_triggered_cleanups.inc()
        elif eff.reason == "force":
            rt.metrics.force_cleanup_triggered.inc()
        d["cleanup_strategy"] = eff.strategy
        d["cleanup_handler_name"] = eff.strategy.value
        evicted = await rt.backend.add_zombie(op, None, config.max_zombie_count_per_target)
        rt.metrics.current_zombie_count_by_target.labels(op.target_type).inc()
        for gone in evicted:
            await self._count(gone, "cap", gone.cleanup_strategy)
        await self._run_handler(op, eff, config)
        if status is not OperationStatus.REJECTED and rt.events.wants(OperationCompletedEvent):
            await rt.events.emit(
                OperationCompletedEvent(
                    op_id=op.ecs_id,
                    target_entity_id=op.target_entity_id,
                    status=status.value,
                    duration_ms=_duration_ms(op),
                    error_message=message,
                )
            )
        return eff

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
        """Run the handler for `op`; any failure (including a handler that can no longer be
        found by name) is counted and logged, never raised, so the caller still gets its answer."""
        metrics = self.rt.metrics
        custom: CustomCleanupHandler | None = None
        self.handler_runs += 1
        self.active_tasks += 1
        started = time.perf_counter()
        try:
            handler = self._handler(eff, config)
            if isinstance(handler, CustomCleanupHandler):
                custom = handler
                metrics.custom_cleanup_handlers_used.labels(custom.name).inc()
            coro: Awaitable[object] = handler.handle_operation_rejection(op)
            if custom is not None:
                result = await asyncio.wait_for(coro, config.handler_timeout_seconds)
            else:
                result = await coro
            if result is not None:
                raise TypeError(f"handler returned {result!r}; a cleanup handler returns None")
        except Exception as exc:
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
            self.handler_failures += 1
            self.failed_handlers[name] += 1
            self.last_failure = f"{name}: {why}"
            metrics.cleanup_failures_by_strategy.labels(eff.strategy.value).inc()
            log.error(
                "cleanup handler %s failed for operation %s (target %s, status %s): %s; "
                "the record is kept",
                name,
                op.ecs_id,
                op.target_entity_id,
                op.status.value,
                why,
            )
        finally:
            self.active_tasks -= 1
            metrics.cleanup_latency_by_strategy.labels(eff.strategy.value).observe(
                time.perf_counter() - started
            )

    # removals -----------------------------------------------------------------------------------
    async def remove(
        self, op_id: UUID, reason: str, *, strategy: CleanupStrategy | None = None
    ) -> bool:
        """Take a record out of the registry, counting the removal once; False if already gone."""
        op = await self.rt.backend.remove(op_id)
        if op is None:
            return False
        await self._count(op, reason, strategy or op.cleanup_strategy)
        return True

    async def _count(
        self, op: ConflictResolutionOperation, reason: str, strategy: CleanupStrategy | None
    ) -> None:
        rt = self.rt
        metrics = rt.metrics
        self.removed[reason] += 1
        metrics.removals_by_reason.labels(reason).inc()
        strategy_value = strategy.value if strategy is not None else "none"
        metrics.operations_cleaned_by_strategy.labels(strategy_value).inc()
        if op.is_zombie:
            metrics.current_zombie_count_by_target.labels(op.target_type).dec()
        due = op.cleanup_scheduled_at or op.completed_at
        if due is not None:
            metrics.reclaim_lag.observe(max(0.0, rt.clock.time() - due.timestamp()))
        log.debug("removed operation %s (%s, reason %s)", op.ecs_id, op.status.value, reason)
        if rt.events.wants(OperationCleanedEvent):
            await rt.events.emit(
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
        now = self.rt.clock.now()
        kept: list[ConflictResolutionOperation] = []
        for op in ops:
            due = op.cleanup_scheduled_at
            if op.cleanup_strategy is CleanupStrategy.LAZY and due is not None and now >= due:
                await self.remove(op.ecs_id, "lazy")
            else:
                kept.append(op)
        return kept

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
                batch = await rt.backend.pop_due(moment, SWEEP_BATCH)
                for op_id in batch:
                    if await self.remove(op_id, "ttl"):
                        removed += 1
                if len(batch) < SWEEP_BATCH:
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
                sleeper = asyncio.ensure_future(rt.clock.sleep(delay))
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

    def stop(self) -> None:
        if self._sweeper is not None and not self._sweeper.done():
            self._sweeper.cancel()
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


def _duration_ms(op: ConflictResolutionOperation) -> float:
    if op.completed_at is None:
        return 0.0
    start = op.started_at or op.created_at
    return (op.completed_at - start).total_seconds() * 1000.0
