"""The sweeper: one background task per runtime removing records whose due time has come.

Driven by the earliest due time the backend holds, it wakes at most every
``cleanup_check_interval_seconds`` (the smallest interval of any config it was given work by);
a sweep's cost grows with what is due, not with what is retained. Nothing polls while nothing
is due.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contend.backends.base import Backend
    from contend.cleanup.handler_runs import HandlerRuns
    from contend.cleanup.removals import Removals
    from contend.cleanup.sinks import Sinks
    from contend.clock import Clock
    from contend.record import Record

__all__ = ["DEFAULT_CHECK_INTERVAL", "SWEEP_BATCH", "Sweeper"]

log = logging.getLogger("contend.cleanup")

SWEEP_BATCH = 10_000
DEFAULT_CHECK_INTERVAL = 60.0


class Sweeper:
    """Removes due records, in batches, from a task of its own started on first need."""

    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        removals: Removals,
        sinks: Sinks,
        runs: HandlerRuns,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.removals = removals
        self.sinks = sinks
        self.runs = runs
        self.check_interval: float | None = None
        self.sweeps = 0
        self._last_sweep = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_at = float("inf")

    async def schedule(self, record: Record, due: float) -> None:
        """Have the sweeper remove `record` once the clock reaches `due` (epoch seconds).

        The sweeper wakes at most every ``cleanup_check_interval_seconds``: the smallest interval
        of any config it has been given work by (60 s for records without a config).
        """
        await self.backend.schedule(record.ecs_id, due)
        config = record.cleanup_config
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
        task = self._task
        if task is None or task.done() or self._loop is not loop:
            if task is not None and task.cancelled() and self._loop is loop:
                # Cancelled by someone other than stop(): the loop is shutting down (asyncio.run
                # cancels every task) and a new sweeper would be stranded; the next loop starts one.
                return
            self._wake = asyncio.Event()
            self._wake_at = float("inf")
            self._loop = loop
            self._task = loop.create_task(self._sweep_forever(), name="contend-sweeper")
        elif due < self._wake_at and self._wake is not None:
            self._wake.set()

    async def sweep(self, now: float | None = None) -> int:
        """Remove every record due by `now` (default: the clock); returns how many went."""
        moment = self.clock.time() if now is None else now
        removed = 0
        self.sweeps += 1
        self._last_sweep = self.clock.time()
        backend = self.backend
        self.runs.begin()
        try:
            while True:
                if self.sinks:
                    batch = await backend.pop_due(moment, SWEEP_BATCH)
                    retry = self.check_interval or DEFAULT_CHECK_INTERVAL
                    removed += await self.sinks.sweep(batch, moment, retry)
                    taken = len(batch)
                else:
                    gone = await backend.take_due(moment, SWEEP_BATCH)
                    if gone:
                        await self.removals.count_many(gone, "ttl")
                    removed += len(gone)
                    taken = len(gone)
                if taken < SWEEP_BATCH:
                    break
                await asyncio.sleep(0)
        finally:
            self.runs.end(run=False)
        if removed:
            log.debug("sweep removed %d record(s)", removed)
        return removed

    async def _sweep_forever(self) -> None:
        wake = self._wake
        if wake is None:
            return
        while True:
            due = await self.backend.next_due()
            if due is None:
                self._wake_at = float("inf")
                wake.clear()
                await wake.wait()
                continue
            interval = self.check_interval or DEFAULT_CHECK_INTERVAL
            at = max(due, self._last_sweep + interval)
            delay = at - self.clock.time()
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
                if self.clock.time() < at:
                    continue
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed; retrying after the check interval")
                self._last_sweep = self.clock.time()

    async def _sleep_until(self, at: float) -> None:
        """Sleep until the clock reads `at`, measured when this task starts: the clock may move
        between creating the task and its first step (a fake clock advanced by a test)."""
        clock = self.clock
        delay = at - clock.time()
        if delay > 0:
            await clock.sleep(delay)

    def stop(self) -> None:
        """Cancel the sweeper; one stranded on a closed loop (started by a call cancelled while
        ``asyncio.run`` shut down) can no longer run and is only forgotten."""
        task = self._task
        if task is not None and not task.done() and not task.get_loop().is_closed():
            task.cancel()
        self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()
