"""The console's zombie pages on a large registry: a page costs what it shows, not the registry.

For 100k and 1M zombies (10k and 100k with --quick) in a MemoryBackend: the first page of 50,
a page 50 deep into the middle (resuming a cursor), a filter that matches nothing (stops at the
20,000-record scan limit), a target's page; baseline: reading the whole zombie list once, which
is what a console without a paged query pays per page. Also the sampler's zombies-by-strategy
count (every 10 s, capped at 200,000 records).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from _common import Row, main, median, row

from contend import FakeClock, OperationStatus, Runtime
from contend.backends.memory import MemoryBackend
from contend.config import CleanupStrategy
from contend.console.query import MemoryZombies, ZombieFilter, count_by_strategy
from contend.record import Record

TARGETS = 1_000


async def _fill(backend: MemoryBackend, n: int) -> list[uuid.UUID]:
    targets = [uuid.uuid4() for _ in range(TARGETS)]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = (OperationStatus.REJECTED,) * 8 + (OperationStatus.FAILED,) * 2
    for i in range(n):
        t = targets[i % TARGETS]
        now = start + timedelta(milliseconds=i)
        op = Record(f"fn{i % 7}", (t,), "Account", 5, None, now)
        backend.store.add_operation(op)
        status = statuses[i % 10]
        if status is OperationStatus.FAILED:
            backend.set_status(op, OperationStatus.EXECUTING, now)
        backend.set_status(op, status, now)
        op.mark(op.error_message, None, CleanupStrategy.NONE)
        await backend.add_zombie(op, None, 1 << 40)
    return targets


async def _ms(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return median(times)


async def _one(n: int) -> list[Row]:
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
    backend = rt.backend
    if not isinstance(backend, MemoryBackend):
        raise TypeError("the default runtime backend is a MemoryBackend")
    targets = await _fill(backend, n)
    reader = MemoryZombies(backend)
    everything = ZombieFilter()
    whole = await _ms(lambda: backend.zombies(), 3)
    cursor = (await reader.page(everything, None, n // 2, 10 * n)).cursor

    def page(filt: ZombieFilter, c: str | None = None) -> Callable[[], Awaitable[object]]:
        return lambda: reader.page(filt, c, 50, 20_000)

    figures = [
        ("first page of 50", await _ms(page(everything), 20)),
        ("page of 50 in the middle", await _ms(page(everything, cursor), 20)),
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
            f"console, {n:,} zombies: {name}",
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
    return rows


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
