"""Which cleanup strategy applies to a record right now: the one implementation of the rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from contend.config import CleanupConfig, CleanupStrategy

if TYPE_CHECKING:
    from contend.operations import ConflictResolutionOperation
    from contend.runtime import Runtime

__all__ = ["EffectiveCleanup", "effective_cleanup"]

_REASON = {
    CleanupStrategy.NONE: "none",
    CleanupStrategy.IMMEDIATE: "immediate",
    CleanupStrategy.DEFERRED: "ttl",
    CleanupStrategy.LAZY: "lazy",
    CleanupStrategy.CUSTOM: "custom",
}


class EffectiveCleanup(NamedTuple):
    """A strategy plus why it was chosen (the removal reason reported in metrics).

    A tuple, not a frozen dataclass: one is built per zombie, and a frozen dataclass pays a
    guarded ``__setattr__`` per field.
    """

    strategy: CleanupStrategy
    reason: str
    retention_minutes: int


def _runtime(runtime: Runtime | None) -> Runtime:
    if runtime is not None:
        return runtime
    from contend.runtime import get_runtime

    return get_runtime()


def _get_system_memory_pressure(runtime: Runtime | None = None) -> float:
    """Fraction of memory in use, from the runtime's (cached, replaceable) probe."""
    return _runtime(runtime).memory.pressure()


def _get_current_zombie_count(runtime: Runtime | None = None) -> int:
    """Zombies in the runtime, read from its counter (never a scan)."""
    return _runtime(runtime).backend.zombie_count


_AT_ONCE = EffectiveCleanup(CleanupStrategy.IMMEDIATE, "immediate", 0)
_PRESSURE = EffectiveCleanup(CleanupStrategy.IMMEDIATE, "pressure", 0)
_FORCE = EffectiveCleanup(CleanupStrategy.IMMEDIATE, "force", 0)


def effective_cleanup(
    config: CleanupConfig, operation: ConflictResolutionOperation, runtime: Runtime | None = None
) -> EffectiveCleanup:
    """First matching rule wins: immediate priorities, memory pressure, force threshold,
    debug-retention priorities, then the configured strategy."""
    priority = operation.priority
    if priority in config.immediate_cleanup_priorities:
        return _AT_ONCE
    if (
        config.aggressive_on_memory_pressure
        and _get_system_memory_pressure(runtime) > config.memory_pressure_threshold
    ):
        return _PRESSURE
    if _get_current_zombie_count(runtime) > config.force_cleanup_threshold:
        return _FORCE
    if priority in config.debug_retention_priorities:
        return EffectiveCleanup(CleanupStrategy.DEFERRED, "ttl", config.retention_minutes)
    strategy = config.strategy
    return EffectiveCleanup(strategy, _REASON[strategy], config.retention_minutes)
