"""The console's zombie pages on a large registry: a page costs what it shows, not the registry.

For 100k and 1M zombies (10k and 100k with --quick) in a MemoryBackend, and 100k (10k) in a
RedisBackend (a local redis-server started for the run; the zombies booked by the backend's own
script): the first page of 50, a page 50 deep into the middle (resuming a cursor), a filter
that matches nothing (stops at the 20,000-record scan limit), a target's page; baseline:
reading the whole zombie list once, which is what a console without a paged query pays per
page. Also the sampler's zombies-by-strategy count (every 10 s, capped at 200,000 records).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from _common import Row, main, median, row
from redis_throughput import _start_redis

from contend import FakeClock, OperationStatus, Runtime
from contend.backends.base import Backend
from contend.backends.memory import MemoryBackend
from contend.backends.redis import RedisBackend
from contend.config import CleanupStrategy
from contend.console.query import ZombieFilter, count_by_strategy, zombie_reader
from contend.record import Record

TARGETS = 1_000
CONCURRENT_BOOKINGS = 64
"""Redis bookings in flight at once while filling (under the client's pool of connections)."""


async def _fill(backend: Backend, n: int) -> list[uuid.UUID]:
    targets = [uuid.uuid4() for _ in range(TARGETS)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = (OperationStatus.REJECTED,) * 8 + (OperationStatus.FAILED,) * 2
    cap = 1 << 40 if isinstance(backend, MemoryBackend) else 10_000

    async def book(i: int) -> None:  # a task of its own, as a call is
        t = targets[i % TARGETS]
        now = start + timedelta(milliseconds=i)
        op = Record(f"fn{i % 7}", (t,), "Account", 5, None, now)
        await backend.add_operation(op)
        status = statuses[i % 10]
        if status is OperationStatus.FAILED:
            backend.set_status(op, OperationStatus.EXECUTING, now)
        backend.set_status(op, status, now)
        op.mark(op.error_message, None, CleanupStrategy.NONE)
        await backend.add_zombie(op, None, cap)

    if isinstance(backend, MemoryBackend):
        for i in range(n):
            await book(i)
    else:
        for first in range(0, n, CONCURRENT_BOOKINGS):
            await asyncio.gather(*map(book, range(first, min(n, first + CONCURRENT_BOOKINGS))))
    return targets


async def _ms(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


async def _one(n: int, backend: Backend | None = None) -> list[Row]:
    rt = Runtime(backend=backend, clock=FakeClock(), memory_probe=lambda: 0.0)
    backend = rt.backend
    targets = await _fill(backend, n)
    reader = zombie_reader(backend)
    everything = ZombieFilter()
    whole = await _ms(lambda: backend.zombies(), 3)
    middle = (await reader.page(everything, None, n // 2, 10 * n)).cursor

    def page(filt: ZombieFilter, c: str | None = None) -> Callable[[], Awaitable[object]]:
        return lambda: reader.page(filt, c, 50, 20_000)

    figures = [
        ("first page of 50", await _ms(page(everything), 20)),
        ("page of 50 in the middle", await _ms(page(everything, middle), 20)),
        ("no match, 20k scanned", await _ms(page(ZombieFilter(function="nope")), 5)),
        ("a target's page of 50", await _ms(page(ZombieFilter(target_id=targets[0])), 20)),
        (
            "zombies by strategy",
            await _ms(lambda: count_by_strategy(reader, n, scan_limit=200_000), 1),
        ),
    ]
    await rt.aclose()
    return [
        row(
            f"console, {backend.name}, {n:,} zombies: {name}",
            value,
            "ms",
            baseline=whole,
            note="baseline: reading the whole zombie list once (a console without paging)",
        )
        for name, value in figures
    ]


async def _measure(quick: bool) -> list[Row]:
    rows: list[Row] = []
    for n in (10_000, 100_000) if quick else (100_000, 1_000_000):
        rows += await _one(n)
    proc, port = _start_redis()
    try:
        n = 10_000 if quick else 100_000
        rows += await _one(n, RedisBackend.from_url(f"redis://127.0.0.1:{port}/0"))
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
