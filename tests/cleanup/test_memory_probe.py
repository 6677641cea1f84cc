"""Memory pressure: cgroup v2 and v1 files, no limit, psutil fallback; cached on the clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    FakeClock,
    Runtime,
    cleanup_system_health_check,
    with_conflict_resolution,
)
from contend.cleanup import MemoryPressureMonitor, read_memory_pressure

GIB = 1 << 30
RAM = 64 * GIB
NO_PROC = Path("/nonexistent/proc/self/cgroup")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def machine() -> float:
    return psutil.virtual_memory().percent / 100.0


def test_cgroup_v2(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", str(2 * GIB))
    write(tmp_path / "memory.current", str(GIB // 2 * 3))
    assert read_memory_pressure(tmp_path, proc_cgroup=NO_PROC, ram=RAM) == 0.75


def test_cgroup_v2_leaves_reclaimable_page_cache_out(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", str(2 * GIB))
    write(tmp_path / "memory.current", str(GIB // 2 * 3))
    write(tmp_path / "memory.stat", f"anon 123\nfile 456\ninactive_file {GIB // 2}\n")
    assert read_memory_pressure(tmp_path, proc_cgroup=NO_PROC, ram=RAM) == 0.5


def test_cgroup_v2_of_this_process(tmp_path: Path) -> None:
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "0::/system.slice/app.service")
    service = tmp_path / "system.slice" / "app.service"
    write(service / "memory.max", str(4 * GIB))
    write(service / "memory.current", str(GIB))
    assert read_memory_pressure(tmp_path, proc_cgroup=proc, ram=RAM) == 0.25


def test_cgroup_v1(tmp_path: Path) -> None:
    write(tmp_path / "memory" / "memory.limit_in_bytes", str(4 * GIB))
    write(tmp_path / "memory" / "memory.usage_in_bytes", str(3 * GIB))
    write(tmp_path / "memory" / "memory.stat", f"cache 1\ntotal_inactive_file {GIB}\n")
    assert read_memory_pressure(tmp_path, proc_cgroup=NO_PROC, ram=RAM) == 0.5


def test_usage_over_the_limit_reads_as_full(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", str(GIB))
    write(tmp_path / "memory.current", str(2 * GIB))
    assert read_memory_pressure(tmp_path, proc_cgroup=NO_PROC, ram=RAM) == 1.0


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"memory.max": "max", "memory.current": str(GIB)}, "v2 max means no limit"),
        (
            {
                "memory/memory.limit_in_bytes": "9223372036854771712",
                "memory/memory.usage_in_bytes": str(GIB),
            },
            "v1 unlimited",
        ),
        ({"memory.max": str(RAM * 2), "memory.current": str(GIB)}, "limit above the RAM"),
        ({}, "no cgroup files"),
        ({"memory.max": "garbage", "memory.current": str(GIB)}, "unreadable limit"),
    ],
)
def test_falls_back_to_the_machine(tmp_path: Path, files: dict[str, str], why: str) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    assert read_memory_pressure(tmp_path, proc_cgroup=NO_PROC, ram=RAM) == pytest.approx(
        machine(), abs=0.05
    ), why


def test_monitor_caches_on_the_given_clock() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def probe() -> float:
        calls.append(1)
        return 0.3 + 0.1 * len(calls)

    monitor = MemoryPressureMonitor(probe, time_source=clock.time)
    assert [monitor.pressure() for _ in range(100)] == [0.4] * 100
    clock.advance(seconds=0.999)
    assert monitor.pressure() == 0.4
    clock.advance(seconds=0.001)
    assert monitor.pressure() == pytest.approx(0.5)
    assert len(calls) == 2


class Item(Entity):
    n: int = 0


async def test_many_rejections_read_the_probe_once(clock: FakeClock) -> None:
    calls: list[int] = []

    def probe() -> float:
        calls.append(1)
        return 0.2

    rt = Runtime(clock=clock, memory_probe=probe)

    @with_conflict_resolution(cleanup=CleanupStrategy.IMMEDIATE, runtime=rt)
    async def bump(item: Item) -> Item:
        return item

    for _ in range(20):
        await asyncio.gather(*(bump(Item()) for _ in range(1)))
        item = Item()
        await asyncio.gather(*(bump(item) for _ in range(5)), return_exceptions=True)
    assert rt.cleanup.removed == {"immediate": 80}
    assert len(calls) == 1


async def test_a_raising_probe_reads_as_zero_and_is_reported(clock: FakeClock) -> None:
    def broken() -> float:
        raise OSError("cgroup fs unmounted")

    rt = Runtime(clock=clock, memory_probe=broken)

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.NONE, memory_pressure_threshold=0.1),
        runtime=rt,
    )
    async def bump(item: Item) -> Item:
        return item

    item = Item()
    await asyncio.gather(*(bump(item) for _ in range(3)), return_exceptions=True)
    assert rt.registry.zombie_count == 2  # 0 pressure: the configured NONE applies
    assert rt.memory.failures == 1
    health = await cleanup_system_health_check(rt)
    assert health["memory_pressure"] == 0.0
    assert health["status"] == "degraded"
    assert any("cgroup fs unmounted" in issue for issue in health["issues"])


def test_a_nan_probe_counts_as_a_failure() -> None:
    monitor = MemoryPressureMonitor(lambda: float("nan"))
    assert monitor.pressure() == 0.0
    assert monitor.failures == 1


def test_the_cache_follows_the_runtime_clock_in_force_and_a_new_probe_is_read_at_once() -> None:
    """A test that swapped in a FakeClock (or the probe) after building the runtime saw the old
    reading for a second of real time."""
    from contend import CleanupConfig, ConflictResolutionOperation, Runtime

    level = [0.5]
    rt = Runtime(memory_probe=lambda: level[0])
    clock = FakeClock()
    rt.clock = clock
    assert rt.memory.pressure() == 0.5
    level[0] = 0.95
    assert rt.memory.pressure() == 0.5  # cached
    clock.advance(seconds=2)
    assert rt.memory.pressure() == 0.95
    rt.memory.probe = lambda: 0.2
    assert rt.memory.pressure() == 0.2
    config = CleanupConfig(memory_pressure_threshold=0.8)
    op = ConflictResolutionOperation(priority=5)
    rt.memory.probe = lambda: 0.9
    assert config.get_effective_cleanup_strategy(op, rt).value == "immediate"
