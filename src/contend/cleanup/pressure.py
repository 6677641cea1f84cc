"""Memory pressure: the fraction of the memory limit in use, sampled at most about once a second."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import psutil

__all__ = ["MemoryPressureMonitor", "read_memory_pressure"]

log = logging.getLogger("contend.cleanup.pressure")

_CGROUP = Path("/sys/fs/cgroup")
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _read_int(path: Path) -> int | None:
    """An integer file of the cgroup fs; None when absent, unreadable or "max" (no limit)."""
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


def _read_stat(path: Path, key: str) -> int:
    """One counter of a memory.stat file, 0 when missing."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _own_cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """Where this process's memory controller lives: its own cgroup below `root`, then `root`.

    Inside a container the namespace root is the container's cgroup; on a host, a service's
    limit (systemd ``MemoryMax=``) sits on the cgroup named in /proc/self/cgroup.
    """
    dirs: list[Path] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, rel = [*line.split(":", 2), "", ""][:3]
        rel = rel.strip().lstrip("/")
        if not rel:
            continue
        if controllers == "":
            dirs.append(root / rel)
        elif "memory" in controllers.split(","):
            dirs.append(root / "memory" / rel)
    dirs.append(root)
    return dirs


def _pressure_v2(d: Path, ram: int) -> float | None:
    limit = _read_int(d / "memory.max")
    if not limit or limit >= ram:
        return None
    used = _read_int(d / "memory.current")
    if used is None:
        return None
    used -= _read_stat(d / "memory.stat", "inactive_file")
    return min(1.0, max(0.0, used / limit))


def _pressure_v1(d: Path, ram: int) -> float | None:
    limit = _read_int(d / "memory.limit_in_bytes")
    if not limit or limit >= ram:
        return None
    used = _read_int(d / "memory.usage_in_bytes")
    if used is None:
        return None
    used -= _read_stat(d / "memory.stat", "total_inactive_file")
    return min(1.0, max(0.0, used / limit))


def read_memory_pressure(
    root: Path = _CGROUP, *, proc_cgroup: Path = _PROC_SELF_CGROUP, ram: int | None = None
) -> float:
    """Fraction of memory in use: against the cgroup's limit when one is set, else the machine's.

    cgroup v2 reads ``memory.max``/``memory.current``, v1 ``memory.limit_in_bytes``/
    ``memory.usage_in_bytes``; reclaimable page cache (inactive file pages) is not counted as
    used, as the kubelet does. "max", v1's huge "unlimited" value, or any limit at or above
    the machine's RAM (`ram`, default psutil's total) mean no limit.
    """
    total = ram if ram is not None else int(psutil.virtual_memory().total)
    for d in _own_cgroup_dirs(root, proc_cgroup):
        value = _pressure_v2(d, total)
        if value is None:
            value = _pressure_v1(d if d != root else root / "memory", total)
        if value is not None:
            return value
    return float(psutil.virtual_memory().percent) / 100.0


class MemoryPressureMonitor:
    """Caches a probe's reading for `max_age` seconds; a failing probe reads as 0 and is counted.

    `time_source` is the runtime clock's ``time`` (so a fake clock drives the cache in tests).
    """

    def __init__(
        self,
        probe: Callable[[], float] | None = None,
        max_age: float = 1.0,
        time_source: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe: Callable[[], float] = probe or read_memory_pressure
        self.max_age = max_age
        self.time_source = time_source
        self.failures = 0
        self.readings = 0
        self.last_error: str | None = None
        self._value = 0.0
        self._at: float | None = None

    @property
    def probe(self) -> Callable[[], float]:
        return self._probe

    @probe.setter
    def probe(self, probe: Callable[[], float]) -> None:
        """A new probe is read at the next `pressure()`, not after the cached reading ages."""
        self._probe = probe
        self._at = None

    def set_probe(self, probe: Callable[[], float]) -> None:
        """Replace the probe (tests) and forget the cached reading."""
        self.probe = probe

    def pressure(self) -> float:
        now = self.time_source()
        at = self._at
        if at is not None and 0.0 <= now - at < self.max_age:
            return self._value
        self._at = now
        self.readings += 1
        try:
            value = float(self._probe())
            if math.isnan(value):
                raise ValueError("probe returned NaN")
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("memory pressure probe failed (%s); reading it as 0", self.last_error)
            value = 0.0
        self._value = min(1.0, max(0.0, value))
        return self._value
