"""OCC throughput under conflict: read-await-write increments racing on a few entities.

200 concurrent workers each make sequential calls on one of 10 counters (20 workers per
counter). Every call reads the counter, yields to the loop once, then writes value + 1. With
staging off and OCC on (default OCCConfig: 3 retries, 1 ms base backoff with jitter) a stale
commit is retried on a fresh copy and, once retries run out, ends FAILED. The figure is calls
resolved per second (succeeded + failed); the run also checks that no update was lost (each
counter equals its successful calls). Baseline: the same workers with the bare coroutine,
which loses most of its updates.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

from _common import Row, main, median, row

from contend import (
    CleanupStrategy,
    Entity,
    FakeClock,
    OCCConflictError,
    OperationRetriedEvent,
    Runtime,
    with_conflict_resolution,
)

COUNTERS = 10
WORKERS = 200


class Counter(Entity):
    value: int = 0


async def _increment(counter: Counter) -> int:
    seen = counter.value
    await asyncio.sleep(0)
    counter.value = seen + 1
    return counter.value


async def _workers(
    fn: Callable[[Counter], Awaitable[int]], counters: list[Counter], calls_each: int
) -> tuple[float, int, int]:
    """Seconds taken, successful calls and OCC-failed calls."""
    succeeded = failed = 0

    async def worker(c: Counter) -> None:
        nonlocal succeeded, failed
        for _ in range(calls_each):
            try:
                await fn(c)
                succeeded += 1
            except OCCConflictError:
                failed += 1

    t = time.perf_counter_ns()
    await asyncio.gather(*(worker(counters[i % len(counters)]) for i in range(WORKERS)))
    return (time.perf_counter_ns() - t) / 1e9, succeeded, failed


async def _measure(quick: bool) -> list[Row]:
    calls_each, reps = (10, 3) if quick else (50, 5)
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
    retries = 0

    def on_retry(_e: OperationRetriedEvent) -> None:
        nonlocal retries
        retries += 1

    rt.events.subscribe(OperationRetriedEvent, on_retry)
    occ = with_conflict_resolution(
        runtime=rt, pre_ecs=False, occ=True, cleanup=CleanupStrategy.IMMEDIATE
    )(_increment)
    rates: dict[str, list[float]] = {"bare": [], "occ": []}
    lost_bare: list[int] = []
    lost_occ = 0
    ok_share: list[float] = []
    total_calls = 0
    await _workers(occ, [Counter() for _ in range(COUNTERS)], 2)
    retries = 0
    for _ in range(reps):
        gc.collect()
        counters = [Counter() for _ in range(COUNTERS)]
        secs, done, _ = await _workers(_increment, counters, calls_each)
        rates["bare"].append(done / secs)
        lost_bare.append(done - sum(c.value for c in counters))
        gc.collect()
        counters = [Counter() for _ in range(COUNTERS)]
        secs, done, failed = await _workers(occ, counters, calls_each)
        rates["occ"].append((done + failed) / secs)
        total_calls += done + failed
        ok_share.append(done / (done + failed))
        lost_occ += abs(done - sum(c.value for c in counters))
    rt.cleanup.stop()
    bare = median(rates["bare"])
    value = median(rates["occ"])
    calls = WORKERS * calls_each
    return [
        row(
            "OCC throughput under conflict (20 writers per entity)",
            value,
            "ops/s",
            baseline=bare,
            ok=lost_occ == 0,
            note=(
                f"{reps} reps x {calls:,} calls; {median(ok_share):.0%} committed, the rest "
                f"FAILED after 3 retries; {retries / max(1, total_calls):.2f} retries per call; "
                f"updates lost: {lost_occ} with OCC, {median(lost_bare):,.0f} per rep bare"
            ),
        ),
        row("OCC calls committed", median(ok_share) * 100, "%"),
        row("OCC updates lost", lost_occ, "calls", target="<= 0"),
    ]


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
