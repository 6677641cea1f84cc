"""The design's "Enhanced Decorator API" example, runnable.

Only the import line differs from the design, plus the `CriticalEntity` entity (with its `data`
dict) the example presupposes and a small driver.
"""

from __future__ import annotations

import asyncio
from typing import Any

from contend import (
    CleanupConfig,
    Entity,
    OCCConfig,
    OperationRejectedError,
    PreECSConfig,
    get_runtime,
    with_conflict_resolution,
)


class CriticalEntity(Entity):
    data: dict[str, Any] = {}


# fmt: off
# --- the design's example, verbatim -----------------------------------------------------------
# Future decorator API with cleanup configuration
@with_conflict_resolution(
    pre_ecs=PreECSConfig(enabled=True),
    occ=OCCConfig(enabled=True, max_retries=3),
    cleanup=CleanupConfig(
        strategy="deferred",
        retention_minutes=30,
        aggressive_on_memory_pressure=True,
        custom_cleanup_handler=None
    )
)
async def update_critical_data(entity: CriticalEntity, data: dict) -> CriticalEntity:
    entity.data.update(data)
    return entity
# ----------------------------------------------------------------------------------------------
# fmt: on


async def run_example() -> dict[str, object]:
    """Two concurrent updates: one commits, the other is kept 30 minutes for inspection."""
    entity = CriticalEntity(data={"limit": 100})
    results = await asyncio.gather(
        update_critical_data(entity, {"limit": 250}),
        update_critical_data(entity, {"limit": 50, "frozen": True}),
        return_exceptions=True,
    )
    rt = get_runtime()
    zombies = await rt.registry.zombies(entity.ecs_id)
    return {
        "data": dict(entity.data),
        "version": entity.version,
        "rejected": sum(isinstance(r, OperationRejectedError) for r in results),
        "retained": len(zombies),
        "kept_until": [str(z.cleanup_scheduled_at) for z in zombies],
    }


def main() -> None:
    outcome = asyncio.run(run_example())
    print(f"data {outcome['data']} at version {outcome['version']}")
    print(f"{outcome['rejected']} update rejected, kept until {outcome['kept_until']}")


if __name__ == "__main__":
    main()
