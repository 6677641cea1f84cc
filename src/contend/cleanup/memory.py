"""Memory pressure: the fraction of the memory limit in use, sampled at most about once a second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import psutil

__all__ = ["MemoryPressureMonitor", "read_memory_pressure"]

log = logging.getLogger("contend.cleanup.memory")

_CGROUP = Path("/sys/fs/cgroup")
_NO_LIMIT_V1 = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def read_memory_pressure(root: Path = _CGROUP) -> float:
    """Fraction of memory in use: the cgroup's limit when one is set, else the whole machine's."""
    limit = _read_int(root / "memory.max")
    if limit:
        used = _read_int(root / "memory.current")
        if used is not None:
            return min(1.0, used / limit)
    limit = _read_int(root / "memory" / "memory.limit_in_bytes")
    if limit and limit < _NO_LIMIT_V1:
        used = _read_int(root / "memory" / "memory.usage_in_bytes")
        if used is not None:
            return min(1.0, used / limit)
    return float(psutil.virtual_memory().percent) / 100.0


class MemoryPressureMonitor:
    """Caches a probe's reading for `max_age` seconds; a failing probe reads as 0 and is counted."""

    def __init__(
        self, probe: Callable[[], float] | None = None, max_age: float = 1.0
    ) -> None:
        self.probe: Callable[[], float] = probe or read_memory_pressure
        self.max_age = max_age
        self.failures = 0
        self.last_error: str | None = None
        self._value = 0.0
        self._at = float("-inf")

    def set_probe(self, probe: Callable[[], float]) -> None:
        """Replace the probe (tests) and forget the cached reading."""
        self.probe = probe
        self._at = float("-inf")

    def pressure(self) -> float:
        now = time.monotonic()
        if now - self._at < self.max_age:
            return self._value
        self._at = now
        try:
            value = float(self.probe())
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("memory pressure probe failed (%s); reading it as 0", self.last_error)
            value = 0.0
        self._value = min(1.0, max(0.0, value))
        return self._value
