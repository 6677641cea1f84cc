"""Injectable time, so retention periods can be tested without sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@runtime_checkable
class Clock(Protocol):
    """What the cleanup path reads time from."""

    def now(self) -> datetime:
        """Aware UTC wall time."""
        ...

    def time(self) -> float:
        """The same instant as seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that only moves when told to; sleepers wake when it passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FakeClock start must be timezone-aware")
        self._t = start.timestamp()
        self._cached = (self._t, datetime.fromtimestamp(self._t, UTC))
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        """The same datetime object until the clock moves (a call reads the time several times)."""
        t, dt = self._cached
        if t != self._t:
            dt = datetime.fromtimestamp(self._t, UTC)
            self._cached = (self._t, dt)
        return dt

    def time(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._t + seconds, next(self._seq), fut))
        await fut

    def advance(
        self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0
    ) -> datetime:
        """Move time forward and wake every sleeper whose deadline has passed."""
        try:
            delta = timedelta(seconds=seconds, minutes=minutes, hours=hours).total_seconds()
        except (OverflowError, ValueError):  # infinity, NaN, or past timedelta's range
            delta = math.nan
        if not delta >= 0:
            raise ValueError(
                "FakeClock.advance: delta must be a finite time >= 0, got "
                f"seconds={seconds!r}, minutes={minutes!r}, hours={hours!r}"
            )
        self._t += delta
        while self._sleepers and self._sleepers[0][0] <= self._t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        return self.now()

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"
