"""The design's migration phases 1 and 3, runnable.

Only the import lines differ from the design. Phase 1's block is a configuration class of the
design's own (it shows the phase-1 default, NONE); contend ships phase 3, where the default is
DEFERRED and `CleanupConfig(strategy=CleanupStrategy.NONE)` keeps the old behaviour.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConflictResolutionMode,
    Entity,
    OCCConfig,
    OperationRejectedError,
    PreECSConfig,
    get_runtime,
    with_conflict_resolution,
)


# fmt: off
# --- the design's phase 1 block, verbatim -----------------------------------------------------
# Add CleanupConfig to existing configuration
class ConflictResolutionConfig(BaseModel):
    mode: ConflictResolutionMode = ConflictResolutionMode.PRE_ECS
    pre_ecs: PreECSConfig = Field(default_factory=PreECSConfig)
    occ: OCCConfig = Field(default_factory=OCCConfig)
    cleanup: CleanupConfig = Field(default_factory=lambda: CleanupConfig(strategy=CleanupStrategy.NONE))  # Default to current behavior  # noqa: E501

# Existing decorators continue to work unchanged
@with_conflict_resolution()  # No cleanup configuration - defaults to NONE
async def existing_operation(entity: Entity) -> Entity:
    return entity
# ----------------------------------------------------------------------------------------------

# --- the design's phase 3 block, verbatim -----------------------------------------------------
# Change default cleanup strategy
cleanup: CleanupConfig = Field(default_factory=lambda: CleanupConfig(strategy=CleanupStrategy.DEFERRED))  # noqa: E501

# Provide migration path for systems that want old behavior
@with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.NONE))
async def legacy_operation(entity: Entity) -> Entity:
    return entity
# ----------------------------------------------------------------------------------------------
# fmt: on


async def run_example() -> dict[str, object]:
    """Contend both functions: the undecorated default defers, the legacy one keeps zombies."""
    rt = get_runtime()
    a, b = Entity(), Entity()
    first = await asyncio.gather(*(existing_operation(a) for _ in range(3)), return_exceptions=True)
    second = await asyncio.gather(*(legacy_operation(b) for _ in range(3)), return_exceptions=True)
    existing_zombies = await rt.registry.zombies(a.ecs_id)
    legacy_zombies = await rt.registry.zombies(b.ecs_id)
    return {
        "phase1_default": ConflictResolutionConfig().cleanup.strategy.value,
        "shipped_default": existing_operation.conflict_config.cleanup.strategy.value,
        "existing_rejected": sum(isinstance(r, OperationRejectedError) for r in first),
        "existing_strategies": sorted({str(z.cleanup_strategy) for z in existing_zombies}),
        "legacy_rejected": sum(isinstance(r, OperationRejectedError) for r in second),
        "legacy_strategies": sorted({str(z.cleanup_strategy) for z in legacy_zombies}),
        "legacy_scheduled": [z.cleanup_scheduled_at for z in legacy_zombies],
    }


def main() -> None:
    outcome = asyncio.run(run_example())
    print(f"phase-1 default strategy: {outcome['phase1_default']}")
    print(f"contend's default strategy: {outcome['shipped_default']}")
    print(
        f"existing_operation: {outcome['existing_rejected']} rejected, kept as "
        f"{outcome['existing_strategies']}"
    )
    print(
        f"legacy_operation: {outcome['legacy_rejected']} rejected, kept as "
        f"{outcome['legacy_strategies']} with no removal scheduled"
    )


if __name__ == "__main__":
    main()
