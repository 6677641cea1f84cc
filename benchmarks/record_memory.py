"""Memory per retained operation record (a zombie kept with strategy NONE).

Rounds of 5-way contention over 1,000 accounts leave 4 rejected records per account and round;
strategy NONE keeps them all (per-target cap and force threshold raised to their maxima). Python
allocations are traced with tracemalloc from before the first round to after the last, once the
calls' own garbage is gone, and divided by the records retained: the record, its indexes and
everything it keeps alive. Baseline: the cheapest hand-rolled equivalent, a dict per record
(id, status, time, message, target) kept in a dict by id and a per-target index.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from datetime import UTC, datetime
from typing import Any

from _common import Account, Row, deposit, main, row

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Runtime,
    SystemClock,
    with_conflict_resolution,
)

TARGETS = 1_000
WAYS = 5


def _traced(fn: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return after - before


def _plain_records(n: int, targets: list[uuid.UUID]) -> Any:
    by_id: dict[uuid.UUID, dict[str, Any]] = {}
    by_target: dict[uuid.UUID, dict[uuid.UUID, None]] = {t: {} for t in targets}
    message = "Lost Pre-ECS priority conflict (priority 5 vs winner 5)"
    for i in range(n):
        oid = uuid.uuid4()
        target = targets[i % len(targets)]
        by_id[oid] = {
            "id": oid,
            "status": "rejected",
            "completed_at": datetime.now(UTC),
            "error_message": message,
            "target": target,
        }
        by_target[target][oid] = None
    return by_id, by_target


async def _measure(quick: bool) -> list[Row]:
    wanted = 20_000 if quick else 100_000
    rounds = -(-wanted // (TARGETS * (WAYS - 1)))
    # the system clock: a FakeClock that never moves would share one datetime among all records
    rt = Runtime(clock=SystemClock(), memory_probe=lambda: 0.0)
    keep_all = CleanupConfig(
        strategy=CleanupStrategy.NONE,
        max_zombie_count_per_target=10_000,
        force_cleanup_threshold=100_000,
        immediate_cleanup_priorities=[],
        debug_retention_priorities=[],
        aggressive_on_memory_pressure=False,
    )
    protected = with_conflict_resolution(runtime=rt, cleanup=keep_all)(deposit)
    accounts = [Account() for _ in range(TARGETS)]

    async def one_round() -> None:
        await asyncio.gather(
            *[protected(a, 1) for a in accounts for _ in range(WAYS)], return_exceptions=True
        )

    await one_round()  # registers the accounts and warms every cache
    start_count = rt.backend.zombie_count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(rounds):
            await one_round()
        for _ in range(3):  # let the loop drop its last handles on the final round's results
            await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    retained = rt.backend.zombie_count - start_count
    per_record = (after - before) / max(1, retained)
    plain = _traced(lambda: _plain_records(retained, [a.ecs_id for a in accounts])) / retained
    rt.cleanup.stop()
    return [
        row(
            "memory per retained record",
            per_record,
            "bytes",
            baseline=plain,
            target="<= 1024",
            note=(
                f"{retained:,} rejected records kept with strategy NONE (tracemalloc); "
                "baseline: a plain dict per record plus id and target indexes"
            ),
        )
    ]


def run(quick: bool) -> list[Row]:
    return asyncio.run(_measure(quick))


if __name__ == "__main__":
    main(run, __doc__ or "")
