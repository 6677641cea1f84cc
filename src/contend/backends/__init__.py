"""Where a runtime keeps its state: in this process (default) or in Redis."""

from contend.backends.base import Backend, Coordinator, VersionConflict, Write
from contend.backends.memory import MemoryBackend

__all__ = ["Backend", "Coordinator", "MemoryBackend", "VersionConflict", "Write"]
