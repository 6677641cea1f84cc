"""The design's "Adaptive Cleanup Based on System Load" example, runnable.

Only the import line differs from the design, plus the `DataRecord` entity (with
`process_batch_update()`) the example presupposes and a small driver.
"""

from __future__ import annotations

import asyncio

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    OperationRejectedError,
    PreECSConfig,
    get_runtime,
    with_conflict_resolution,
)


class DataRecord(Entity):
    key: str
    batches: int = 0

    def process_batch_update(self) -> None:
        self.batches += 1


# fmt: off
# --- the design's example, verbatim -----------------------------------------------------------
# Smart cleanup that adapts to system conditions
@with_conflict_resolution(
    pre_ecs=PreECSConfig(enabled=True),
    cleanup=CleanupConfig(
        strategy=CleanupStrategy.DEFERRED,  # Default strategy
        retention_minutes=30,
        aggressive_on_memory_pressure=True,  # Switch to immediate if memory > 80%
        memory_pressure_threshold=0.8,
        force_cleanup_threshold=5000,  # Immediate cleanup if >5000 zombies
        max_zombie_count_per_target=50  # Per-target limits
    )
)
async def batch_process_records(record: DataRecord) -> DataRecord:
    record.process_batch_update()
    return record
# ----------------------------------------------------------------------------------------------
# fmt: on


async def run_example(rounds: int = 60, contenders: int = 3) -> dict[str, object]:
    """Hammer one record: rejected batches pile up to the per-target cap of 50 and no further."""
    record = DataRecord(key="orders-2026-01")
    rejected = 0
    for _ in range(rounds):
        results = await asyncio.gather(
            *(batch_process_records(record) for _ in range(contenders)), return_exceptions=True
        )
        rejected += sum(isinstance(r, OperationRejectedError) for r in results)
    rt = get_runtime()
    return {
        "batches": record.batches,
        "rejected": rejected,
        "zombies": rt.registry.zombie_count,
        "removed": dict(rt.cleanup.removed),
        "memory_pressure": rt.memory.pressure(),
    }


def main() -> None:
    outcome = asyncio.run(run_example())
    print(f"{outcome['batches']} batches applied, {outcome['rejected']} rejected")
    print(f"zombies kept: {outcome['zombies']} (removed: {outcome['removed']})")
    print(f"memory pressure now {outcome['memory_pressure']:.1%}")


if __name__ == "__main__":
    main()
