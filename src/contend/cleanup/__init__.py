"""Cleanup of zombie operation records: strategies, handlers, policy, sweeper."""

from contend.cleanup.archive import (
    ArchiveCleanupHandler,
    ArchivedRecord,
    ArchiveReader,
    ArchiveSink,
    install_archive,
)
from contend.cleanup.handlers import (
    CleanupHandler,
    CustomCleanupHandler,
    DeferredCleanupHandler,
    ImmediateCleanupHandler,
    LazyCleanupHandler,
    NoOpCleanupHandler,
)
from contend.cleanup.manager import CleanupManager, Removal, RemovalSink
from contend.cleanup.memory import MemoryPressureMonitor, read_memory_pressure
from contend.cleanup.policy import EffectiveCleanup, effective_cleanup
from contend.cleanup.registry import CleanupHandlerRegistry

__all__ = [
    "ArchiveCleanupHandler",
    "ArchiveReader",
    "ArchiveSink",
    "ArchivedRecord",
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
    "Removal",
    "RemovalSink",
    "effective_cleanup",
    "install_archive",
    "read_memory_pressure",
]
