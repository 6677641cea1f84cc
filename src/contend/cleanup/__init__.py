"""Cleanup of zombie operation records: strategies, handlers, policy, sweeper."""

from contend.cleanup.handlers import (
    CleanupHandler,
    CustomCleanupHandler,
    DeferredCleanupHandler,
    ImmediateCleanupHandler,
    LazyCleanupHandler,
    NoOpCleanupHandler,
)
from contend.cleanup.manager import CleanupManager
from contend.cleanup.memory import MemoryPressureMonitor, read_memory_pressure
from contend.cleanup.policy import EffectiveCleanup, effective_cleanup
from contend.cleanup.registry import CleanupHandlerRegistry

__all__ = [
    "CleanupHandler",
    "CleanupHandlerRegistry",
    "CleanupManager",
    "CustomCleanupHandler",
    "DeferredCleanupHandler",
    "EffectiveCleanup",
    "ImmediateCleanupHandler",
    "LazyCleanupHandler",
    "MemoryPressureMonitor",
    "NoOpCleanupHandler",
    "effective_cleanup",
    "read_memory_pressure",
]
