"""Where a runtime keeps its state: in this process (default) or in Redis."""

from contend.backends.base import Backend, Coordinator, Hooks, Store, VersionConflict, Write
from contend.backends.memory import MemoryBackend, MemoryStore

__all__ = [
    "Backend",
    "Coordinator",
    "Hooks",
    "MemoryBackend",
    "MemoryStore",
    "Store",
    "VersionConflict",
    "Write",
]
