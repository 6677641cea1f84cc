"""Running cleanup handlers: the instance for each strategy, time limits, and what failed.

A handler that raises, returns something, or runs past ``handler_timeout_seconds`` has failed: the
failure is counted and logged, never raised (the caller still gets its answer), the record stays,
and the health check reads the recent runs kept here. Removal sinks and sweeps report their runs
here too, so `active` counts every cleanup step in progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from contend.cleanup.handlers import CleanupHandler, CleanupHandlerRegistry, CustomCleanupHandler
from contend.enums import CleanupStrategy

if TYPE_CHECKING:
    from contend.backends.base import Backend
    from contend.cleanup.manager import CleanupManager
    from contend.clock import Clock
    from contend.config import CleanupConfig, EffectiveCleanup
    from contend.metrics import CleanupMetrics
    from contend.record import Record

__all__ = ["RECENT_RUNS", "HandlerRuns"]

log = logging.getLogger("contend.cleanup")

RECENT_RUNS = 10_000


class HandlerRuns:
    """The handlers of one runtime and the record of their runs."""

    def __init__(
        self, manager: CleanupManager, backend: Backend, clock: Clock, metrics: CleanupMetrics
    ) -> None:
        self.manager = manager
        self.backend = backend
        self.clock = clock
        self.metrics = metrics
        self._handlers: dict[tuple[object, ...], CleanupHandler] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        """Handlers running in tasks of their own (kept here until done)."""
        self.runs = 0
        self.failures = 0
        self.failed_handlers: Counter[str] = Counter()
        self.last_failure: str | None = None
        self.active = 0
        self._recent: deque[tuple[float, str | None]] = deque(maxlen=RECENT_RUNS)
        """(clock time, failed handler's name or None) of the latest handler and sink runs."""

    def handler(self, effective: EffectiveCleanup, config: CleanupConfig) -> CleanupHandler:
        """The handler that applies `effective` under `config`, made once and bound."""
        strategy = effective.strategy
        name = CleanupHandlerRegistry.name_for(strategy, config)
        if strategy is CleanupStrategy.CUSTOM:
            key: tuple[object, ...] = (strategy, name, CleanupHandlerRegistry.get(name))
        else:
            key = (strategy, effective.trigger, effective.retention_minutes, name)
        handler = self._handlers.get(key)
        if handler is None:
            handler = CleanupHandlerRegistry.handler_class(strategy, config).for_cleanup(
                effective, config
            )
            handler.bind(self.manager)
            self._handlers[key] = handler
        return handler

    async def run(
        self,
        record: Record,
        effective: EffectiveCleanup,
        config: CleanupConfig,
        may_suspend: bool,
    ) -> None:
        """Run the handler for `record`.

        One that may suspend (a custom handler; any handler with a removal sink, or on a backend
        that does I/O) runs in a task of its own: a caller cancelled meanwhile gets its
        CancelledError at once and the handler still finishes, so the record is cleaned up (or
        the failure counted) instead of being left with nothing scheduled. The stock handlers on
        the in-memory store never suspend, so nothing can interrupt them.
        """
        if not may_suspend and effective.strategy is not CleanupStrategy.CUSTOM:
            await self._handle(record, effective, config)
            return
        await asyncio.shield(self.spawn(self._handle(record, effective, config)))

    def spawn(self, step: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a cleanup step in a task of its own, kept until it ends (a caller cancelled
        meanwhile does not cut it short)."""
        task = asyncio.get_running_loop().create_task(step)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _handle(
        self, record: Record, effective: EffectiveCleanup, config: CleanupConfig
    ) -> None:
        """Run the handler; any failure (including a handler that can no longer be found by
        name) is counted and logged, never raised."""
        strategy = effective.strategy
        custom: CustomCleanupHandler | None = None
        failed: str | None = None
        started = time.perf_counter()
        self.begin()
        try:
            handler = self.handler(effective, config)
            if isinstance(handler, CustomCleanupHandler):
                custom = handler
                self.metrics.custom_cleanup_handlers_used.labels(custom.name).inc()
                async with asyncio.timeout(config.handler_timeout_seconds):
                    await handler.handle(record)
            else:
                await handler.handle(record)
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
            elif strategy is CleanupStrategy.CUSTOM:
                name = config.custom_cleanup_handler or "custom"
            else:
                name = strategy.value
            failed = name
            self.failed(name, why)
            self.metrics.cleanup_failed(strategy)
            kept = await self.backend.get_operation(record.ecs_id) is not None
            log.error(
                "cleanup handler %s failed for operation %s (target %s, status %s): %s; %s",
                name,
                record.ecs_id,
                record.target_entity_id,
                record.status.value,
                why,
                "the record is kept" if kept else "the record had already been removed",
            )
        finally:
            self.end(failed)
            if custom is not None or strategy is CleanupStrategy.CUSTOM:
                self.metrics.handler_ran(strategy, time.perf_counter() - started)

    def begin(self) -> None:
        """A cleanup step (a handler, a sink, a sweep) starts."""
        self.active += 1

    def end(self, failed: str | None = None, *, run: bool = True) -> None:
        """It ended; a handler or sink `run` is recorded (`failed`: the name of what failed,
        else None) for `recent`; a sweep is not a run."""
        self.active -= 1
        if run:
            self.runs += 1
            self._recent.append((self.clock.time(), failed))

    def failed(self, name: str, why: str) -> None:
        self.failures += 1
        self.failed_handlers[name] += 1
        self.last_failure = f"{name}: {why}"

    def recent(self, since: float) -> tuple[int, Counter[str]]:
        """Handler and sink runs at or after clock time `since` (among the latest
        `RECENT_RUNS`), and their failures by handler name."""
        runs = 0
        failures: Counter[str] = Counter()
        for at, failed in reversed(self._recent):
            if at < since:
                break
            runs += 1
            if failed is not None:
                failures[failed] += 1
        return runs, failures
