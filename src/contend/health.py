"""The design's health check, computed from one runtime's books."""

from __future__ import annotations

import heapq
from operator import itemgetter
from typing import Any
from uuid import UUID

from contend.runtime import Runtime, get_runtime

__all__ = ["cleanup_system_health_check"]

ZOMBIE_DEGRADED = 10_000
PRESSURE_DEGRADED = 0.9
OLDEST_ZOMBIE_DEGRADED_SECONDS = 24 * 3600
FAILURE_RATE_UNHEALTHY = 0.10
FAILURE_WINDOW_SECONDS = 300.0


async def cleanup_system_health_check(
    runtime: Runtime | None = None,
    *,
    max_targets: int | None = None,
    failure_window_seconds: float = FAILURE_WINDOW_SECONDS,
) -> dict[str, Any]:
    """Comprehensive health check for cleanup system.

    The design's dict and thresholds (degraded past 10,000 zombies or 90% memory pressure,
    unhealthy when a cleanup handler failed), plus the oldest zombie's age (degraded past 24 h)
    and the share of cleanup runs that failed (unhealthy past 10%). Failures count over the
    last `failure_window_seconds` of the runtime's clock (5 minutes; at most the latest 10,000
    runs), so the check recovers once handlers work again; lifetime counts are in
    ``failed_cleanup_handlers_total``. `max_targets` keeps the `max_targets` targets with the
    most zombies in ``zombie_counts_by_target`` (None: all; 0: none).
    On a shared backend (Redis) the totals are read from it now, what it reports (unreadable
    keys, writes waiting for it) is listed, and an unreachable backend makes the check
    unhealthy instead of raising.
    """
    if max_targets is not None and (isinstance(max_targets, bool) or max_targets < 0):
        raise ValueError(f"max_targets must be None or an int >= 0, got {max_targets!r}")
    if not failure_window_seconds > 0:
        raise ValueError(f"failure_window_seconds must be > 0, got {failure_window_seconds!r}")
    rt = runtime or get_runtime()
    backend_issues: list[str] = []
    unreachable = False
    counts: dict[UUID, int] = {}
    targets = 0
    oldest_ops: list[Any] = []
    total_zombies = rt.backend.zombie_count
    try:
        counts, targets = await _zombie_counts(rt, max_targets)
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
    runs, failures = manager.recent_runs(rt.clock.time() - failure_window_seconds)
    failed_cleanup_handlers = dict(failures)
    memory_pressure = rt.memory.pressure()
    oldest = None
    now = rt.clock.now()
    for op in oldest_ops:
        if op.completed_at is not None:
            age = (now - op.completed_at).total_seconds()
            oldest = age if oldest is None else max(oldest, age)
    failure_rate = sum(failures.values()) / runs if runs else 0.0

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
        issues.append(
            f"Failed cleanup handlers in the last {failure_window_seconds:g} s: "
            f"{failed_cleanup_handlers}"
        )
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
        "zombie_targets": targets,
        "zombie_counts_truncated": len(zombie_counts) < targets,
        "memory_pressure": memory_pressure,
        "active_cleanup_tasks": manager.active_tasks + (1 if manager.sweeper_running else 0),
        "failed_cleanup_handlers": failed_cleanup_handlers,
        "failed_cleanup_handlers_total": dict(manager.failed_handlers),
        "failure_window_seconds": failure_window_seconds,
        "oldest_zombie_age_seconds": oldest,
        "cleanup_failure_rate": failure_rate,
        "last_cleanup_failure": manager.last_failure,
        "event_subscriber_errors": rt.events.subscriber_errors,
        "issues": issues,
    }


async def _zombie_counts(rt: Runtime, limit: int | None) -> tuple[dict[UUID, int], int]:
    """Zombie counts by target (the `limit` largest when given), and how many targets have any."""
    top = getattr(rt.backend, "top_zombie_targets", None)
    if limit is not None and top is not None:
        counts, targets = top(limit)
        return counts, int(targets)
    counts = await rt.backend.zombie_counts_by_target()
    if limit is None:
        return counts, len(counts)
    return dict(heapq.nlargest(limit, counts.items(), key=itemgetter(1))), len(counts)
