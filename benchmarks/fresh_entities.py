"""Resident memory over many calls on fresh entities the caller drops (a service that meets many
distinct entities): the registry must not keep every entity ever passed.

Each call gets a new Account, awaited alone (uncontended, IMMEDIATE cleanup), and the caller
drops it. The figure is RSS growth from the end of warm-up (the first 10% of calls) to the
highest later sample, in MiB, with the entities still registered at the end. Baseline: the same
loop with the bare coroutine.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

from _common import Account, Row, deposit, main, row, rss_bytes

from contend import Runtime, with_conflict_resolution

SAMPLES = 20


async def _growth(fn: Callable[[Account, int], Awaitable[int]], calls: int) -> float:
    step = calls // SAMPLES
    base = peak = 0
    for i in range(calls):
        await fn(Account(), 1)
        if (i + 1) % step == 0:
            if i + 1 == 2 * step:
                gc.collect()
                base = peak = rss_bytes()
            elif i + 1 > 2 * step:
                peak = max(peak, rss_bytes())
    return (peak - base) / 2**20


async def _measure(quick: bool) -> list[Row]:
    calls = 30_000 if quick else 300_000
    bare = await _growth(deposit, calls)
    rt = Runtime(memory_probe=lambda: 0.0)
    fn = with_conflict_resolution(runtime=rt, cleanup="immediate")(deposit)
    growth = await _growth(fn, calls)
    registered = rt.backend.entity_count()  # type: ignore[attr-defined]
    rt.cleanup.stop()
    return [
        row(
            f"RSS growth over {calls:,} calls on fresh entities",
            growth,
            "MiB",
            baseline=bare,
            target="<= 10",
            note=f"{registered:,} entities still registered at the end (bare loop: {bare:.1f} MiB)",
        )
    ]


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
