"""The design's health check, computed from one runtime's books."""

from __future__ import annotations

from typing import Any

from contend.runtime import Runtime, get_runtime

__all__ = ["cleanup_system_health_check"]

ZOMBIE_DEGRADED = 10_000
PRESSURE_DEGRADED = 0.9
OLDEST_ZOMBIE_DEGRADED_SECONDS = 24 * 3600
FAILURE_RATE_UNHEALTHY = 0.10


async def cleanup_system_health_check(runtime: Runtime | None = None) -> dict[str, Any]:
    """Comprehensive health check for cleanup system.

    The design's dict and thresholds (degraded past 10,000 zombies or 90% memory pressure,
    unhealthy once a cleanup handler has failed), plus the oldest zombie's age (degraded past
    24 h) and the share of cleanup runs that failed (unhealthy past 10%). A failed handler keeps
    the runtime unhealthy: the records it could not clean are still there for an operator.
    On a shared backend (Redis) the totals are read from it now, what it reports (unreadable
    keys, writes waiting for it) is listed, and an unreachable backend makes the check
    unhealthy instead of raising.
    """
    rt = runtime or get_runtime()
    backend_issues: list[str] = []
    unreachable = False
    counts: dict[Any, int] = {}
    oldest_ops: list[Any] = []
    total_zombies = rt.backend.zombie_count
    try:
        counts = await rt.backend.zombie_counts_by_target()
        refresh = getattr(rt.backend, "refresh_zombie_count", None)  # a shared store's total
        if refresh is not None:
            total_zombies = await refresh()
        oldest_ops = await rt.backend.oldest_zombies()
    except ConnectionError as exc:
        unreachable = True
        backend_issues.append(f"Backend unavailable: {exc}")
    backend_issues += getattr(rt.backend, "health_issues", list)()
    zombie_counts = {str(k): v for k, v in counts.items()}
    manager = rt.cleanup
    failed_cleanup_handlers = dict(manager.failed_handlers)
    memory_pressure = rt.memory.pressure()
    oldest = None
    now = rt.clock.now()
    for op in oldest_ops:
        if op.completed_at is not None:
            age = (now - op.completed_at).total_seconds()
            oldest = age if oldest is None else max(oldest, age)
    runs = manager.handler_runs
    failure_rate = manager.handler_failures / runs if runs else 0.0

    status = "healthy"
    issues: list[str] = []
    if total_zombies > ZOMBIE_DEGRADED:
        status = "degraded"
        issues.append(f"High zombie count: {total_zombies}")
    if memory_pressure > PRESSURE_DEGRADED:
        status = "degraded"
        issues.append(f"High memory pressure: {memory_pressure:.1%}")
    if oldest is not None and oldest > OLDEST_ZOMBIE_DEGRADED_SECONDS:
        status = "degraded"
        issues.append(f"Oldest zombie is {oldest / 3600:.1f} h old")
    if rt.memory.failures:
        status = "degraded" if status == "healthy" else status
        issues.append(f"Memory probe failed {rt.memory.failures} time(s): {rt.memory.last_error}")
    if failed_cleanup_handlers:
        status = "unhealthy"
        issues.append(f"Failed cleanup handlers: {failed_cleanup_handlers}")
    if failure_rate > FAILURE_RATE_UNHEALTHY:
        status = "unhealthy"
        issues.append(f"Cleanup failure rate {failure_rate:.1%} exceeds 10%")
    if backend_issues:
        status = "unhealthy" if unreachable else ("degraded" if status == "healthy" else status)
        issues += backend_issues

    return {
        "status": status,
        "total_zombie_operations": total_zombies,
        "zombie_counts_by_target": zombie_counts,
        "memory_pressure": memory_pressure,
        "active_cleanup_tasks": manager.active_tasks + (1 if manager.sweeper_running else 0),
        "failed_cleanup_handlers": failed_cleanup_handlers,
        "oldest_zombie_age_seconds": oldest,
        "cleanup_failure_rate": failure_rate,
        "last_cleanup_failure": manager.last_failure,
        "event_subscriber_errors": rt.events.subscriber_errors,
        "issues": issues,
    }
