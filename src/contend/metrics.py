"""Prometheus metrics of one runtime, on a CollectorRegistry of its own."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from contend.config import CleanupStrategy

__all__ = ["OUTCOMES", "REMOVAL_REASONS", "CleanupMetrics"]

REMOVAL_REASONS = ("immediate", "ttl", "lazy", "cap", "pressure", "force", "custom", "manual")
OUTCOMES = ("succeeded", "failed", "rejected", "cancelled")
_STRATEGIES = tuple(s.value for s in CleanupStrategy)

_LATENCY_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_LAG_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
_WINDOW_BUCKETS = (2, 3, 5, 10, 20, 50, 100, 1000, 10000)


M = TypeVar("M", bound=MetricWrapperBase)


def _bind(metric: M, values: tuple[str, ...]) -> dict[str, M]:
    return {v: metric.labels(v) for v in values}


class CleanupMetrics:
    """Metrics for cleanup system (names follow Prometheus conventions, prefix ``contend_``).

    Labels stay low-cardinality: strategy, target type, handler name, reason, outcome; never an
    entity or operation id. Each instance registers on its own ``CollectorRegistry`` so two
    runtimes in one process never collide. The hot path goes through the small methods below,
    which use label children bound once (``labels()`` costs about 2 us a call).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # cleanup effectiveness
        self.operations_cleaned_by_strategy = Counter(
            "contend_operations_cleaned",
            "Records removed from the registry by cleanup, by the strategy that removed them.",
            ["strategy"],
            registry=r,
        )
        self.cleanup_latency_by_strategy = Histogram(
            "contend_cleanup_latency_seconds",
            "Time spent in a cleanup handler for one record, by strategy.",
            ["strategy"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cleanup_failures_by_strategy = Counter(
            "contend_cleanup_failures",
            "Cleanup runs that raised or timed out (the record was kept), by strategy.",
            ["strategy"],
            registry=r,
        )
        # system health
        self.current_zombie_count_by_target = Gauge(
            "contend_zombie_operations",
            "Zombie records (rejected, failed, cancelled) present, by target entity type.",
            ["target_type"],
            registry=r,
        )
        self.memory_pressure_triggered_cleanups = Counter(
            "contend_memory_pressure_cleanups",
            "Zombies switched to immediate cleanup because memory pressure was over threshold.",
            registry=r,
        )
        self.force_cleanup_triggered = Counter(
            "contend_force_cleanups",
            "Zombies switched to immediate cleanup because force_cleanup_threshold was exceeded.",
            registry=r,
        )
        # configuration usage
        self.decorators_by_cleanup_strategy = Gauge(
            "contend_decorators",
            "Decorated functions called on this runtime, by configured cleanup strategy.",
            ["strategy"],
            registry=r,
        )
        self.custom_cleanup_handlers_used = Counter(
            "contend_custom_cleanup_handler_calls",
            "Custom cleanup handler invocations, by registered handler name.",
            ["handler_name"],
            registry=r,
        )
        # what operators ask for next
        self.removals_by_reason = Counter(
            "contend_removals",
            "Records removed from the registry, by reason "
            "(immediate, ttl, lazy, cap, pressure, force, custom, manual).",
            ["reason"],
            registry=r,
        )
        self.reclaim_lag = Histogram(
            "contend_reclaim_lag_seconds",
            "From the moment a record became due for removal to its removal, by reason.",
            ["reason"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.staging_window_size = Histogram(
            "contend_staging_window_size",
            "Calls resolved together in one contended staging window (two or more).",
            buckets=_WINDOW_BUCKETS,
            registry=r,
        )
        self.operations_by_outcome = Counter(
            "contend_operations",
            "Decorated calls by terminal status (succeeded, failed, rejected, cancelled).",
            ["outcome"],
            registry=r,
        )
        self.occ_retries = Counter(
            "contend_occ_retries", "OCC attempts retried after a version conflict.", registry=r
        )
        self.occ_conflicts = Counter(
            "contend_occ_conflicts", "Version conflicts met at OCC commit.", registry=r
        )
        self.occ_exhausted = Counter(
            "contend_occ_exhausted",
            "Calls that failed with OCCConflictError after max_retries conflicts.",
            registry=r,
        )
        self._outcome = _bind(self.operations_by_outcome, OUTCOMES)
        self._removed = _bind(self.removals_by_reason, REMOVAL_REASONS)
        self._lag = _bind(self.reclaim_lag, REMOVAL_REASONS)
        self._cleaned = _bind(self.operations_cleaned_by_strategy, _STRATEGIES)
        self._failures = _bind(self.cleanup_failures_by_strategy, _STRATEGIES)
        self._latency = _bind(self.cleanup_latency_by_strategy, _STRATEGIES)
        self._zombies: dict[str, Gauge] = {}

    def record_cleanup_operation(
        self, strategy: CleanupStrategy, latency_ms: float, success: bool
    ) -> None:
        """Record a cleanup operation."""
        value = CleanupStrategy(strategy).value
        self._latency[value].observe(latency_ms / 1000.0)
        if success:
            self._cleaned[value].inc()
        else:
            self._failures[value].inc()

    def outcome(self, status: str) -> None:
        """Count a call's terminal status."""
        self._outcome[status].inc()

    def handler_ran(self, strategy: str, seconds: float) -> None:
        self._latency[strategy].observe(seconds)

    def cleanup_failed(self, strategy: str) -> None:
        self._failures[strategy].inc()

    def zombie_added(self, target_type: str) -> None:
        self._zombie_gauge(target_type).inc()

    def removed(
        self, reason: str, strategy: str, zombie_target_type: str | None, lag_seconds: float | None
    ) -> None:
        """Count one removal; `zombie_target_type` is None for a record that was no zombie."""
        removed = self._removed.get(reason)
        if removed is None:
            removed = self._removed[reason] = self.removals_by_reason.labels(reason)
        removed.inc()
        self._cleaned[strategy].inc()
        if zombie_target_type is not None:
            self._zombie_gauge(zombie_target_type).dec()
        if lag_seconds is not None:
            lag = self._lag.get(reason)
            if lag is None:
                lag = self._lag[reason] = self.reclaim_lag.labels(reason)
            lag.observe(max(0.0, lag_seconds))

    def _zombie_gauge(self, target_type: str) -> Gauge:
        gauge = self._zombies.get(target_type)
        if gauge is None:
            gauge = self._zombies[target_type] = self.current_zombie_count_by_target.labels(
                target_type
            )
        return gauge

    def exposition(self) -> bytes:
        """The Prometheus text format of this runtime's metrics."""
        return generate_latest(self.registry)
