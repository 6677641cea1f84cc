"""Resident memory over many calls with cleanup on: it must stay flat after warm-up.

Rounds of 5-way contention over 1,000 accounts (1 winner + 4 rejections per account and round)
run for 1,000,000 calls per strategy (100,000 with --quick), for IMMEDIATE and for DEFERRED
(retention 1 min on a FakeClock advanced 15 s per round, so records are swept as they fall due).
RSS is sampled after every round; the figure is the growth from the end of warm-up (the first
20% of calls, and at least until the first retention has passed) to the highest later sample,
in percent (target <= 10%). Baseline: the same rounds with the bare coroutine.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

from _common import Account, Row, deposit, main, row, rss_bytes

from contend import (
    CleanupConfig,
    CleanupStrategy,
    FakeClock,
    Runtime,
    with_conflict_resolution,
)

TARGETS = 1_000
WAYS = 5
WARMUP_SHARE = 0.2
ADVANCE_SECONDS = 15.0
RETENTION_SECONDS = 60.0
CHECK_INTERVAL_SECONDS = 10.0


async def _growth(
    fn: Callable[[Account, int], Awaitable[int]], calls: int, clock: FakeClock | None
) -> tuple[float, int, int]:
    """Growth in percent after warm-up, RSS at the end of warm-up and at the end."""
    accounts = [Account() for _ in range(TARGETS)]
    rounds = max(5, calls // (TARGETS * WAYS))
    steady = int((RETENTION_SECONDS + CHECK_INTERVAL_SECONDS) // ADVANCE_SECONDS) + 2
    warm = min(rounds - 1, max(steady, int(rounds * WARMUP_SHARE)))
    base = peak = 0
    for i in range(rounds):
        results: list[Any] = await asyncio.gather(
            *[fn(a, 1) for a in accounts for _ in range(WAYS)], return_exceptions=True
        )
        del results
        if clock is not None:
            clock.advance(ADVANCE_SECONDS)
            await asyncio.sleep(0)
        if i + 1 == warm:
            gc.collect()
            base = peak = rss_bytes()
        elif i + 1 > warm:
            peak = max(peak, rss_bytes())
    return (peak - base) / base * 100.0, base, peak


async def _measure(quick: bool) -> list[Row]:
    calls = 100_000 if quick else 1_000_000
    bare_growth, _, _ = await _growth(deposit, calls, None)
    rows: list[Row] = []
    for strategy in (CleanupStrategy.IMMEDIATE, CleanupStrategy.DEFERRED):
        clock = FakeClock()
        rt = Runtime(clock=clock, memory_probe=lambda: 0.0)
        config = CleanupConfig(
            strategy=strategy,
            retention_minutes=int(RETENTION_SECONDS // 60),
            cleanup_check_interval_seconds=int(CHECK_INTERVAL_SECONDS),
            max_zombie_count_per_target=10_000,
            force_cleanup_threshold=100_000,
            aggressive_on_memory_pressure=False,
        )
        fn = with_conflict_resolution(runtime=rt, cleanup=config)(deposit)
        growth, base, peak = await _growth(fn, calls, clock)
        zombies = rt.backend.zombie_count
        rt.cleanup.stop()
        rows.append(
            row(
                f"RSS growth over {calls:,} calls, {strategy.value}",
                growth,
                "%",
                baseline=bare_growth,
                target="<= 10",
                note=(
                    f"RSS {base / 2**20:.1f} MiB after warm-up, peak {peak / 2**20:.1f} MiB; "
                    f"{zombies:,} zombies at the end; ratio vs bare growth is not meaningful "
                    "when the bare growth is near 0"
                ),
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
