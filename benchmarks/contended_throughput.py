"""Contended throughput: 5-way contention spread over 1,000 targets.

Each round gathers 5 calls on each of 1,000 accounts (5,000 calls in one tick): per account one
wins and four are rejected. The figure is operations resolved per second (successes plus
rejections). Baseline: gathering the same number of bare coroutines. Rejected records use the
IMMEDIATE strategy so the registry does not grow across rounds; a second row uses the default
cleanup config (DEFERRED, 30 min, force threshold 1,000) for comparison.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import REFERENCE_CONTENDED_OPS_PER_S, Account, Row, deposit, main, median, row

from contend import (
    CleanupConfig,
    CleanupStrategy,
    FakeClock,
    OperationRejectedError,
    Runtime,
    with_conflict_resolution,
)

TARGETS = 1_000
WAYS = 5


async def _round(
    fn: Callable[[Account, int], Awaitable[int]], accounts: list[Account]
) -> tuple[float, int, int]:
    t = time.perf_counter_ns()
    results: list[Any] = await asyncio.gather(
        *[fn(a, 1) for a in accounts for _ in range(WAYS)], return_exceptions=True
    )
    elapsed = (time.perf_counter_ns() - t) / 1e9
    rejected = sum(1 for r in results if isinstance(r, OperationRejectedError))
    errors = sum(1 for r in results if isinstance(r, BaseException)) - rejected
    return elapsed, rejected, errors


async def _throughput(
    fn: Callable[[Account, int], Awaitable[int]], accounts: list[Account], rounds: int
) -> tuple[float, int, int]:
    """Calls resolved per second over `rounds` rounds; plus total rejections and other errors."""
    total = 0.0
    rejected = errors = 0
    for _ in range(rounds):
        elapsed, rej, err = await _round(fn, accounts)
        total += elapsed
        rejected += rej
        errors += err
    return rounds * len(accounts) * WAYS / total, rejected, errors


async def _measure(quick: bool) -> list[Row]:
    rounds, reps = (2, 2) if quick else (6, 5)
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
    immediate = with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.IMMEDIATE)(deposit)
    rt_default = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
    default = with_conflict_resolution(runtime=rt_default, cleanup=CleanupConfig())(deposit)
    accounts = [Account() for _ in range(TARGETS)]
    variants = {"bare": deposit, "immediate": immediate, "default": default}
    for fn in variants.values():
        await _throughput(fn, accounts, 1)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    wrong = 0
    for _ in range(reps):
        for name, fn in variants.items():
            gc.collect()
            rate, rejected, errors = await _throughput(fn, accounts, rounds)
            rates[name].append(rate)
            expected = 0 if name == "bare" else rounds * TARGETS * (WAYS - 1)
            wrong += errors + abs(rejected - expected)
    for r in (rt, rt_default):
        r.cleanup.stop()
    bare = median(rates["bare"])
    value = median(rates["immediate"])
    note = (
        f"{reps} reps x {rounds} rounds x {TARGETS * WAYS:,} calls; "
        f"reference implementation {REFERENCE_CONTENDED_OPS_PER_S:,.0f} ops/s "
        f"({value / REFERENCE_CONTENDED_OPS_PER_S:.1f}x that here)"
    )
    if wrong:
        note += f"; {wrong} calls did not end as 1 winner + 4 rejections per target"
    return [
        row(
            "contended throughput (5-way x 1,000 targets)",
            value,
            "ops/s",
            baseline=bare,
            target=">= 50000",
            ok=value >= 50_000 and not wrong,
            note=note,
        ),
        row(
            "contended throughput, default cleanup config",
            median(rates["default"]),
            "ops/s",
            baseline=bare,
        ),
    ]


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
