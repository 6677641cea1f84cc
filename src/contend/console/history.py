"""The last hour in a bounded ring of samples, taken on the runtime's clock.

The runtime keeps counters, not history; the console samples them every
``sample_interval_seconds`` (clock time, so a `FakeClock` drives it in tests) into a ring that
holds ``history_minutes`` of samples and nothing older. Heavier aggregates (health, hottest
targets, zombies by strategy) are taken with the same sample, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from contend.console.query import StrategyCounts, ZombieFilter, ZombieReader, count_by_strategy
from contend.health import cleanup_system_health_check
from contend.metrics import REMOVAL_REASONS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from contend.console.settings import ConsoleSettings
    from contend.runtime import Runtime

__all__ = ["History", "HotTarget", "Point", "Snapshot", "read_counters"]

log = logging.getLogger("contend.console")

REJECTED = "rejected"
CONFLICTS = "conflicts"


@dataclass(frozen=True, slots=True)
class Point:
    """One sample: zombies now (and by strategy) and the cumulative counters at clock time t."""

    t: float
    zombies: int
    by_strategy: dict[str, int]
    counters: dict[str, float]


@dataclass(frozen=True, slots=True)
class HotTarget:
    target_id: UUID
    zombies: int
    target_type: str
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The aggregates of the latest sample, shown on the overview."""

    t: float
    health: dict[str, Any]
    hot: list[HotTarget]
    strategies: StrategyCounts


def read_counters(registry: CollectorRegistry) -> dict[str, float]:
    """Rejections, OCC conflicts and removals by reason, as the runtime exports them."""
    out = {REJECTED: 0.0, CONFLICTS: 0.0, **{f"removed:{r}": 0.0 for r in REMOVAL_REASONS}}
    for family in registry.collect():
        for s in family.samples:
            if s.name == "contend_operations_total" and s.labels.get("outcome") == "rejected":
                out[REJECTED] = s.value
            elif s.name == "contend_occ_conflicts_total":
                out[CONFLICTS] = s.value
            elif s.name == "contend_removals_total":
                out[f"removed:{s.labels.get('reason', '')}"] = s.value
    return out


class History:
    """The ring of samples and the latest snapshot of one runtime."""

    def __init__(self, runtime: Runtime, reader: ZombieReader, settings: ConsoleSettings) -> None:
        self.rt = runtime
        self.reader = reader
        self.settings = settings
        self.interval = settings.sample_interval_seconds
        self.span = settings.history_minutes * 60.0
        self.points: deque[Point] = deque(maxlen=int(self.span // self.interval) + 1)
        self.latest: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None

    # sampling ---------------------------------------------------------------------------------
    async def sample(self, *, record: bool = True) -> Snapshot:
        """Take a sample now; `record=False` refreshes the snapshot only (after an action)."""
        rt = self.rt
        total = rt.backend.zombie_count
        strategies = await count_by_strategy(
            self.reader, total, scan_limit=self.settings.strategy_scan_limit
        )
        t = rt.clock.time()
        if record:
            counters = read_counters(rt.metrics.registry)
            self.points.append(Point(t, total, dict(strategies.counts), counters))
        health = await cleanup_system_health_check(rt, max_targets=0)
        hot = await self._hottest()
        self.latest = Snapshot(t, health, hot, strategies)
        return self.latest

    async def _hottest(self) -> list[HotTarget]:
        counts = await self.rt.backend.zombie_counts_by_target()
        top = heapq.nlargest(self.settings.hot_targets, counts.items(), key=_second)
        hot = []
        for target_id, n in top:
            first = await self.reader.page(ZombieFilter(target_id=target_id), None, 1, 64)
            op = first.records[0] if first.records else None
            hot.append(
                HotTarget(
                    target_id,
                    n,
                    op.target_type if op is not None else "",
                    op.completed_at if op is not None else None,
                )
            )
        return hot

    async def _run(self) -> None:
        clock = self.rt.clock
        while True:
            try:
                await self.sample()
            except Exception:
                log.exception("console sample failed; trying again after the interval")
            await clock.sleep(self.interval)

    def start(self) -> None:
        """Sample every interval from now on (in the running loop); idempotent."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._task = loop.create_task(self._run(), name="contend-console-sampler")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done() and not task.get_loop().is_closed():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # series -----------------------------------------------------------------------------------
    def window(self, now: float) -> list[Point]:
        """The samples of the last `span` seconds, oldest first."""
        since = now - self.span
        return [p for p in self.points if since <= p.t <= now]

    def per_minute(self, key: str, now: float) -> list[tuple[float, float | None]]:
        """(minute start, increase of counter `key` in that minute) for each minute of the span;
        None where the samples do not cover the minute."""
        points = list(self.points)
        times = [p.t for p in points]
        minutes = int(self.span // 60)
        end = now - now % 60 + 60
        out: list[tuple[float, float | None]] = []
        for i in range(minutes, 0, -1):
            start = end - i * 60
            a = _value_at(points, times, key, start)
            b = _value_at(points, times, key, min(start + 60, now))
            out.append((start, None if a is None or b is None else max(0.0, b - a)))
        return out


def _second(item: tuple[UUID, int]) -> int:
    return item[1]


def _value_at(points: list[Point], times: list[float], key: str, t: float) -> float | None:
    """The counter at clock time `t`, interpolated between the samples around it (a late
    sample does not shift a minute's increase into the next minute); None before the first."""
    i = bisect_right(times, t)
    if not i:
        return None
    before = points[i - 1].counters.get(key, 0.0)
    if i == len(points) or times[i] == times[i - 1]:
        return before
    after = points[i].counters.get(key, 0.0)
    return before + (after - before) * (t - times[i - 1]) / (times[i] - times[i - 1])
