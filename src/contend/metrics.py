"""Prometheus metrics of one runtime, on a CollectorRegistry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from contend.config import CleanupStrategy

__all__ = ["REMOVAL_REASONS", "CleanupMetrics"]

REMOVAL_REASONS = ("immediate", "ttl", "lazy", "cap", "pressure", "force", "custom", "manual")

_LATENCY_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_LAG_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
_WINDOW_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 1000)


class CleanupMetrics:
    """Metrics for cleanup system (names follow Prometheus conventions, prefix ``contend_``).

    Labels stay low-cardinality: strategy, target type, handler name, reason, outcome.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # cleanup effectiveness
        self.operations_cleaned_by_strategy = Counter(
            "contend_operations_cleaned", "Zombie records removed, by strategy.", ["strategy"],
            registry=r,
        )
        self.cleanup_latency_by_strategy = Histogram(
            "contend_cleanup_latency_seconds", "Time spent in cleanup handlers, by strategy.",
            ["strategy"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.cleanup_failures_by_strategy = Counter(
            "contend_cleanup_failures", "Cleanup handler runs that raised or timed out.",
            ["strategy"], registry=r,
        )
        # system health
        self.current_zombie_count_by_target = Gauge(
            "contend_zombie_operations", "Zombie records present, by target entity type.",
            ["target_type"], registry=r,
        )
        self.memory_pressure_triggered_cleanups = Counter(
            "contend_memory_pressure_cleanups", "Records cleaned immediately under memory pressure.",
            registry=r,
        )
        self.force_cleanup_triggered = Counter(
            "contend_force_cleanups", "Records cleaned immediately past force_cleanup_threshold.",
            registry=r,
        )
        # configuration usage
        self.decorators_by_cleanup_strategy = Gauge(
            "contend_decorators", "Decorated functions used on this runtime, by cleanup strategy.",
            ["strategy"], registry=r,
        )
        self.custom_cleanup_handlers_used = Counter(
            "contend_custom_cleanup_handler_calls", "Custom handler invocations.",
            ["handler_name"], registry=r,
        )
        # what operators ask for next
        self.removals_by_reason = Counter(
            "contend_removals", "Records removed from the registry, by reason.", ["reason"],
            registry=r,
        )
        self.reclaim_lag = Histogram(
            "contend_reclaim_lag_seconds", "From a record's due moment to its removal.",
            buckets=_LAG_BUCKETS, registry=r,
        )
        self.staging_window_size = Histogram(
            "contend_staging_window_size", "Calls resolved together in one staging window.",
            buckets=_WINDOW_BUCKETS, registry=r,
        )
        self.operations_by_outcome = Counter(
            "contend_operations", "Decorated calls by terminal status.", ["outcome"], registry=r,
        )
        self.occ_retries = Counter(
            "contend_occ_retries", "OCC attempts retried after a version conflict.", registry=r,
        )
        self.occ_conflicts = Counter(
            "contend_occ_conflicts", "Version conflicts met at commit.", registry=r,
        )
        self.occ_exhausted = Counter(
            "contend_occ_exhausted", "Calls that failed after max_retries conflicts.", registry=r,
        )
        self._outcome = {
            s: self.operations_by_outcome.labels(s)
            for s in ("succeeded", "failed", "rejected", "cancelled")
        }
        for reason in REMOVAL_REASONS:
            self.removals_by_reason.labels(reason)
        for strategy in CleanupStrategy:
            self.operations_cleaned_by_strategy.labels(strategy.value)
            self.cleanup_failures_by_strategy.labels(strategy.value)

    def record_cleanup_operation(
        self, strategy: CleanupStrategy, latency_ms: float, success: bool
    ) -> None:
        """Record a cleanup operation."""
        self.cleanup_latency_by_strategy.labels(strategy.value).observe(latency_ms / 1000.0)
        if success:
            self.operations_cleaned_by_strategy.labels(strategy.value).inc()
        else:
            self.cleanup_failures_by_strategy.labels(strategy.value).inc()

    def outcome(self, status: str) -> None:
        self._outcome[status].inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of this runtime's metrics."""
        return generate_latest(self.registry)
