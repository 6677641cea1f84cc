"""Cleanup of zombie operation records: strategies and their handlers, removal accounting, sinks,
the sweeper, the manager that puts them together, memory pressure and the archive."""

from contend.cleanup.archive import (
    ArchiveCleanupHandler,
    ArchivedRecord,
    ArchiveReader,
    ArchiveSink,
    install_archive,
)
from contend.cleanup.handlers import (
    CleanupHandler,
    CleanupHandlerRegistry,
    CustomCleanupHandler,
    DeferredCleanupHandler,
    ImmediateCleanupHandler,
    LazyCleanupHandler,
    NoOpCleanupHandler,
)
from contend.cleanup.manager import CleanupManager
from contend.cleanup.pressure import MemoryPressureMonitor, read_memory_pressure
from contend.cleanup.sinks import Removal, RemovalSink
from contend.config import EffectiveCleanup

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
    "install_archive",
    "read_memory_pressure",
]
