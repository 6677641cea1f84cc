"""The design's "Recommended Defaults", runnable: `DEFAULT_CLEANUP_CONFIG` is what contend ships."""

from __future__ import annotations

from contend import CleanupConfig, CleanupStrategy, OperationPriority

# fmt: off
# --- the design's block, verbatim -------------------------------------------------------------
# Production-ready defaults
DEFAULT_CLEANUP_CONFIG = CleanupConfig(
    strategy=CleanupStrategy.DEFERRED,  # Safe default with debugging window
    retention_minutes=30,               # 30-minute debugging window
    aggressive_on_memory_pressure=True, # Adapt to system conditions
    memory_pressure_threshold=0.8,      # Switch to immediate at 80% memory
    force_cleanup_threshold=1000,       # Emergency cleanup at 1000 zombies
    immediate_cleanup_priorities=[OperationPriority.CRITICAL]  # Critical ops get immediate cleanup
)
# ----------------------------------------------------------------------------------------------
# fmt: on


def main() -> None:
    from contend import DEFAULT_CLEANUP_CONFIG as SHIPPED
    from contend import ConflictResolutionConfig

    print(DEFAULT_CLEANUP_CONFIG.model_dump())
    print("contend ships the same:", SHIPPED == DEFAULT_CLEANUP_CONFIG)
    print("and uses it by default:", ConflictResolutionConfig().cleanup == DEFAULT_CLEANUP_CONFIG)


if __name__ == "__main__":
    main()
