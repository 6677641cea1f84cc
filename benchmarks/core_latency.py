"""Uncontended staged call latency: sequential awaits on one entity, staging window 0.

Baseline: awaiting the same coroutine function without the decorator. Each repetition times
every call with perf_counter_ns; the figure is the median over repetitions of each repetition's
median (and p99). Bare and decorated repetitions alternate, so machine noise hits both.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

from _common import REFERENCE_UNCONTENDED_US, Account, Row, deposit, main, median, percentile, row

from contend import (
    CleanupStrategy,
    FakeClock,
    Runtime,
    with_conflict_resolution,
)


async def _time_calls(
    fn: Callable[[Account, int], Awaitable[int]], acct: Account, n: int
) -> list[int]:
    out = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        t = clock()
        await fn(acct, 1)
        out[i] = clock() - t
    return out


async def _measure(quick: bool) -> list[Row]:
    calls, reps, warmup = (3_000, 3, 1_000) if quick else (20_000, 7, 5_000)
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
    staged = with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.IMMEDIATE)(deposit)
    staged_occ = with_conflict_resolution(runtime=rt, occ=True, cleanup=CleanupStrategy.IMMEDIATE)(
        deposit
    )
    variants: dict[str, Callable[[Account, int], Awaitable[int]]] = {
        "bare": deposit,
        "staged": staged,
        "staged+occ": staged_occ,
    }
    acct = Account()
    for fn in variants.values():
        await _time_calls(fn, acct, warmup)
    medians: dict[str, list[float]] = {k: [] for k in variants}
    p99s: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            gc.collect()
            samples = await _time_calls(fn, acct, calls)
            medians[name].append(median(samples) / 1000.0)
            p99s[name].append(percentile(samples, 0.99) / 1000.0)
    bare_med, bare_p99 = median(medians["bare"]), median(p99s["bare"])
    staged_med = median(medians["staged"])
    context = (
        f"{reps} reps x {calls:,} sequential calls; reference implementation "
        f"{REFERENCE_UNCONTENDED_US:,.0f} µs/call ({REFERENCE_UNCONTENDED_US / staged_med:,.0f}x "
        "slower than this run)"
    )
    return [
        row(
            "uncontended staged call, median",
            staged_med,
            "µs",
            baseline=bare_med,
            target="<= 15",
            note=context,
        ),
        row("uncontended staged call, p99", median(p99s["staged"]), "µs", baseline=bare_p99),
        row(
            "uncontended staged+OCC call, median",
            median(medians["staged+occ"]),
            "µs",
            baseline=bare_med,
        ),
    ]


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
