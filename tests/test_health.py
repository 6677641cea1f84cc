"""cleanup_system_health_check: the design's dict and thresholds on a runtime's real books."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictResolutionOperation,
    FakeClock,
    Runtime,
    cleanup_system_health_check,
    with_conflict_resolution,
)
from contend.testing import Account, make_runtime

KEEP = CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=10_000)
DESIGN_KEYS = {
    "status",
    "total_zombie_operations",
    "zombie_counts_by_target",
    "memory_pressure",
    "active_cleanup_tasks",
    "failed_cleanup_handlers",
    "issues",
}


def failing(
    cleanup: CleanupConfig = KEEP, runtime: Runtime | None = None
) -> Callable[[Account], Awaitable[None]]:
    @with_conflict_resolution(cleanup=cleanup, runtime=runtime)
    async def fail(acct: Account) -> None:
        raise ValueError("boom")

    return fail


async def test_fresh_runtime_is_healthy_with_the_design_fields(runtime: Runtime) -> None:
    report = await cleanup_system_health_check()
    assert set(report) >= DESIGN_KEYS
    assert report["status"] == "healthy"
    assert report["total_zombie_operations"] == 0
    assert report["zombie_counts_by_target"] == {}
    assert report["failed_cleanup_handlers"] == {}
    assert report["issues"] == []
    assert report["oldest_zombie_age_seconds"] is None
    assert report["cleanup_failure_rate"] == 0.0


async def test_zombie_counts_are_reported_by_target(runtime: Runtime) -> None:
    fail = failing()
    a, b = Account(), Account()
    for acct in (a, a, b):
        with pytest.raises(ValueError):
            await fail(acct)
    report = await cleanup_system_health_check(runtime)
    assert report["total_zombie_operations"] == 3
    assert report["zombie_counts_by_target"] == {str(a.ecs_id): 2, str(b.ecs_id): 1}
    assert report["status"] == "healthy"


async def test_a_zombie_older_than_24_hours_degrades(runtime: Runtime, clock: FakeClock) -> None:
    fail = failing()
    with pytest.raises(ValueError):
        await fail(Account())
    clock.advance(hours=23)
    assert (await cleanup_system_health_check(runtime))["status"] == "healthy"

    clock.advance(hours=2)
    report = await cleanup_system_health_check(runtime)
    assert report["status"] == "degraded"
    assert report["oldest_zombie_age_seconds"] == 25 * 3600
    assert any("Oldest zombie is 25.0 h old" in issue for issue in report["issues"])


async def test_oldest_age_is_the_oldest_across_targets(runtime: Runtime, clock: FakeClock) -> None:
    fail = failing()
    with pytest.raises(ValueError):
        await fail(Account())
    clock.advance(hours=5)
    with pytest.raises(ValueError):
        await fail(Account())
    clock.advance(hours=1)
    report = await cleanup_system_health_check(runtime)
    assert report["oldest_zombie_age_seconds"] == 6 * 3600


async def test_memory_pressure_over_90_percent_degrades(runtime: Runtime) -> None:
    runtime.memory.set_probe(lambda: 0.92)
    report = await cleanup_system_health_check(runtime)
    assert report["status"] == "degraded"
    assert report["memory_pressure"] == pytest.approx(0.92)
    assert report["issues"] == ["High memory pressure: 92.0%"]

    runtime.memory.set_probe(lambda: 0.9)
    assert (await cleanup_system_health_check(runtime))["status"] == "healthy"


async def test_a_failing_memory_probe_degrades(runtime: Runtime) -> None:
    def broken() -> float:
        raise OSError("cgroup file vanished")

    runtime.memory.set_probe(broken)
    report = await cleanup_system_health_check(runtime)
    assert report["status"] == "degraded"
    assert any("cgroup file vanished" in issue for issue in report["issues"])


async def test_more_than_10000_zombies_degrades() -> None:
    rt = make_runtime()
    fail = failing(
        CleanupConfig(
            strategy=CleanupStrategy.NONE,
            max_zombie_count_per_target=10_000,
            force_cleanup_threshold=100_000,
        ),
        runtime=rt,
    )
    acct = Account()
    for _ in range(10_000):
        with pytest.raises(ValueError):
            await fail(acct)
    assert (await cleanup_system_health_check(rt))["status"] == "healthy"
    with pytest.raises(ValueError):
        await fail(Account())
    report = await cleanup_system_health_check(rt)
    assert report["status"] == "degraded"
    assert report["total_zombie_operations"] == 10_001
    assert report["issues"] == ["High zombie count: 10001"]


async def test_a_failed_custom_handler_makes_it_unhealthy_and_keeps_the_record(
    runtime: Runtime,
) -> None:
    class Broken(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            raise OSError("audit store unreachable")

    CleanupHandlerRegistry.register("health-test-broken", Broken)
    try:
        fail = failing(
            CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="health-test-broken"
            )
        )
        with pytest.raises(ValueError):
            await fail(Account())
    finally:
        CleanupHandlerRegistry.unregister("health-test-broken")
    report = await cleanup_system_health_check(runtime)
    assert report["status"] == "unhealthy"
    assert report["failed_cleanup_handlers"] == {"health-test-broken": 1}
    assert report["total_zombie_operations"] == 1
    assert report["cleanup_failure_rate"] == 1.0
    assert "audit store unreachable" in report["last_cleanup_failure"]
    assert any("Failed cleanup handlers" in issue for issue in report["issues"])
    assert any("failure rate 100.0%" in issue for issue in report["issues"])


async def test_failure_rate_is_reported_against_all_cleanup_runs(runtime: Runtime) -> None:
    failures_left = [1]

    class SometimesBroken(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            if failures_left[0]:
                failures_left[0] -= 1
                raise OSError("flaky")
            await self.remove(operation)

    CleanupHandlerRegistry.register("health-test-flaky", SometimesBroken)
    try:
        fail = failing(
            CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="health-test-flaky"
            )
        )
        for _ in range(20):
            with pytest.raises(ValueError):
                await fail(Account())
    finally:
        CleanupHandlerRegistry.unregister("health-test-flaky")
    report = await cleanup_system_health_check(runtime)
    assert report["cleanup_failure_rate"] == pytest.approx(1 / 20)
    assert report["total_zombie_operations"] == 1
    assert report["status"] == "unhealthy"
    assert not any("failure rate" in issue for issue in report["issues"])


async def test_a_handler_in_progress_counts_as_an_active_cleanup_task(runtime: Runtime) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    class Slow(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            entered.set()
            await release.wait()
            await self.remove(operation)

    CleanupHandlerRegistry.register("health-test-slow", Slow)
    try:
        fail = failing(
            CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="health-test-slow"
            )
        )
        task = asyncio.create_task(fail(Account()))
        await asyncio.wait_for(entered.wait(), 5)
        busy = await cleanup_system_health_check(runtime)
        release.set()
        with pytest.raises(ValueError):
            await task
    finally:
        CleanupHandlerRegistry.unregister("health-test-slow")
    assert busy["active_cleanup_tasks"] >= 1
    done = await cleanup_system_health_check(runtime)
    assert done["active_cleanup_tasks"] == 0
    assert done["total_zombie_operations"] == 0


async def test_health_recovers_once_failures_are_older_than_the_window(
    runtime: Runtime, clock: FakeClock
) -> None:
    """One handler failure used to keep /healthz at 503 for the life of the process, even once
    the record was removed and clean calls followed."""
    broken = [True]

    class Flaky(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            if broken[0]:
                raise OSError("audit store unreachable")
            await self.remove(operation)

    CleanupHandlerRegistry.register("health-test-recovers", Flaky)
    try:
        fail = failing(
            CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="health-test-recovers"
            )
        )
        with pytest.raises(ValueError):
            await fail(Account())
        (kept,) = await runtime.registry.zombies()
        assert (await cleanup_system_health_check(runtime))["status"] == "unhealthy"
        assert await runtime.registry.remove(kept.ecs_id)
        broken[0] = False
        for _ in range(50):
            with pytest.raises(ValueError):
                await fail(Account())
        clock.advance(minutes=4)
        assert (await cleanup_system_health_check(runtime))["status"] == "unhealthy"
        clock.advance(minutes=1, seconds=1)
        report = await cleanup_system_health_check(runtime)
        assert report["status"] == "healthy", report["issues"]
        assert report["failed_cleanup_handlers"] == {}
        assert report["failed_cleanup_handlers_total"] == {"health-test-recovers": 1}
        assert report["cleanup_failure_rate"] == 0.0
        narrow = await cleanup_system_health_check(runtime, failure_window_seconds=3_600)
        assert narrow["status"] == "unhealthy"
    finally:
        CleanupHandlerRegistry.unregister("health-test-recovers")


async def test_the_per_target_list_can_be_capped(runtime: Runtime) -> None:
    fail = failing()
    accounts = [Account() for _ in range(5)]
    for i, acct in enumerate(accounts):
        for _ in range(i + 1):
            with pytest.raises(ValueError):
                await fail(acct)
    full = await cleanup_system_health_check(runtime)
    assert len(full["zombie_counts_by_target"]) == 5
    assert full["zombie_targets"] == 5 and not full["zombie_counts_truncated"]
    top = await cleanup_system_health_check(runtime, max_targets=2)
    assert top["zombie_counts_by_target"] == {
        str(accounts[4].ecs_id): 5,
        str(accounts[3].ecs_id): 4,
    }
    assert top["zombie_targets"] == 5 and top["zombie_counts_truncated"]
    none = await cleanup_system_health_check(runtime, max_targets=0)
    assert none["zombie_counts_by_target"] == {} and none["total_zombie_operations"] == 15
    with pytest.raises(ValueError, match="max_targets"):
        await cleanup_system_health_check(runtime, max_targets=-1)


async def test_a_handler_that_removes_the_record_then_raises_is_logged_truthfully(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    class RemovesThenRaises(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            await self.remove(operation)
            raise OSError("audit write failed after removal")

    CleanupHandlerRegistry.register("health-test-removes", RemovesThenRaises)
    try:
        fail = failing(
            CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="health-test-removes"
            )
        )
        with pytest.raises(ValueError):
            await fail(Account())
    finally:
        CleanupHandlerRegistry.unregister("health-test-removes")
    assert runtime.backend.zombie_count == 0
    (message,) = [r.getMessage() for r in caplog.records if "audit write failed" in r.getMessage()]
    assert "the record had already been removed" in message
    assert "the record is kept" not in message
