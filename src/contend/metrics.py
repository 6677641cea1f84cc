"""Prometheus metrics of one runtime, on a CollectorRegistry of its own."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from contend.enums import CleanupStrategy

__all__ = ["AT_ONCE_REASONS", "OUTCOMES", "REMOVAL_REASONS", "CleanupMetrics"]

REMOVAL_REASONS = ("immediate", "ttl", "lazy", "cap", "pressure", "force", "custom", "manual")
OUTCOMES = ("succeeded", "failed", "rejected", "cancelled")
_STRATEGIES = tuple(s.value for s in CleanupStrategy)

AT_ONCE_REASONS = frozenset({"immediate", "cap", "pressure", "force"})
"""Removal reasons that remove a record at once: no reclaim lag to observe."""

_LATENCY_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_LAG_BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
_WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0)
_WINDOW_BUCKETS = (2, 3, 5, 10, 20, 50, 100, 1000, 10000)
_ZERO = timedelta(0)


M = TypeVar("M", bound=MetricWrapperBase)
C = TypeVar("C")


class _Child:
    """One label value of a `_LoopLocalFamily`: a plain number, no lock."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _HistogramChild:
    """One label value of a `_LoopLocalHistogram`: bucket counts and a sum, no lock."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_durations(self, values: list[timedelta]) -> None:
        """Observe a batch of durations (negative ones as zero); sorts `values` in place.

        Sorted, each bucket's count is one bisection: a sweep's batch costs a sort in C, which is
        close to linear for the nearly ordered lags of records taken in due order.
        """
        if not values:
            return
        values.sort()
        start = bisect_left(values, _ZERO) if values[0] < _ZERO else 0
        counts = self.counts
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(values, timedelta(seconds=bound))
            counts[i] += upto - below
            below = upto
        counts[-1] += len(values) - below
        self.sum += sum(values[start:], _ZERO).total_seconds()


class _LoopLocal(Generic[C]):
    """What the loop-local collectors share: a name, one label (or none), a child per value.

    A subclass sets what its `collect` needs, then registers itself (registering collects).
    """

    def __init__(self, name: str, documentation: str, label: str, child: Callable[[], C]) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self._child = child
        self._children: dict[str, C] = {}

    def labels(self, *values: str, **by_name: str) -> C:
        """The child for one label value, given by position or by the label's name (as in
        prometheus_client: ``labels("lazy")`` or ``labels(strategy="lazy")``)."""
        value = _one_label(self.name, self.label, values, by_name)
        child = self._children.get(value)
        if child is None:
            child = self._children[str(value)] = self._child()
        return child

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError


def _one_label(name: str, label: str, values: tuple[str, ...], by_name: dict[str, str]) -> str:
    if len(values) + len(by_name) == 1:
        if values:
            return values[0]
        if label in by_name:
            return by_name[label]
    raise ValueError(
        f"{name}: expected one value for label {label!r}, got {values or ''}{by_name or ''}"
    )


class _LoopLocalHistogram(_LoopLocal[_HistogramChild]):
    """A histogram with one label or none, for paths that observe once per record (a sweep of
    10,000) or once per contended window; `label=""` makes it unlabelled (use `labels("")`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        registry: CollectorRegistry,
        buckets: tuple[float, ...],
    ) -> None:
        self.bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, label, lambda: _HistogramChild(self.bounds))
        registry.register(self)

    def observe(self, value: float, labels: dict[str, str] | None = None) -> None:
        """The design's spelling: ``observe(x, labels={"reason": "ttl"})``."""
        self.labels(**(labels or {})).observe(value)

    def collect(self) -> Iterator[Metric]:
        names = [self.label] if self.label else []
        family = HistogramMetricFamily(self.name, self.documentation, labels=names)
        for value, child in self._children.items():
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*self.bounds, float("inf")), child.counts, strict=True):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
            family.add_metric([value] if self.label else [], buckets, child.sum)
        yield family


class _LoopLocalFamily(_LoopLocal[_Child]):
    """A one-label counter or gauge for the per-call hot path, exported at scrape time.

    prometheus_client's metrics take a lock on every update (about 1 us here, several per
    call). A runtime is driven by one event loop, so these counts need no lock; the exposition
    is still prometheus_client's, through this collector.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        registry: CollectorRegistry,
        *,
        gauge: bool = False,
        values: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, documentation, label, _Child)
        self.gauge = gauge
        for v in values:
            self.labels(v)
        registry.register(self)

    def inc(self, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        """The design's spelling: ``inc(labels={"strategy": "lazy"})``."""
        self.labels(**(labels or {})).inc(amount)

    def dec(self, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        self.labels(**(labels or {})).dec(amount)

    def set(self, value: float, labels: dict[str, str] | None = None) -> None:
        self.labels(**(labels or {})).set(value)

    def collect(self) -> Iterator[Metric]:
        family: CounterMetricFamily | GaugeMetricFamily
        if self.gauge:
            family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        else:
            family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, child in self._children.items():
            family.add_metric([value], child.value)
        yield family


class _Counter(Counter):
    """prometheus_client's Counter, also taking the design's ``inc(labels={...})``."""

    def inc(
        self,
        amount: float = 1,
        exemplar: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        if labels is not None:
            self.labels(**labels).inc(amount, exemplar)
        else:
            super().inc(amount, exemplar)


class _Gauge(Gauge):
    """prometheus_client's Gauge, also taking ``inc/dec/set(..., labels={...})``."""

    def inc(self, amount: float = 1, labels: dict[str, str] | None = None) -> None:
        if labels is not None:
            self.labels(**labels).inc(amount)
        else:
            super().inc(amount)

    def dec(self, amount: float = 1, labels: dict[str, str] | None = None) -> None:
        if labels is not None:
            self.labels(**labels).dec(amount)
        else:
            super().dec(amount)

    def set(self, value: float, labels: dict[str, str] | None = None) -> None:
        if labels is not None:
            self.labels(**labels).set(value)
        else:
            super().set(value)


class _Histogram(Histogram):
    """prometheus_client's Histogram, also taking the design's ``observe(x, labels={...})``."""

    def observe(
        self,
        amount: float,
        exemplar: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> None:
        if labels is not None:
            self.labels(**labels).observe(amount, exemplar)
        else:
            super().observe(amount, exemplar)


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
        self.operations_cleaned_by_strategy = _LoopLocalFamily(
            "contend_operations_cleaned",
            "Records removed from the registry by cleanup, by the strategy that removed them.",
            "strategy",
            r,
            values=_STRATEGIES,
        )
        self.cleanup_latency_by_strategy = _Histogram(
            "contend_cleanup_latency_seconds",
            "Time spent in a cleanup handler for one record, by strategy.",
            ["strategy"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cleanup_failures_by_strategy = _Counter(
            "contend_cleanup_failures",
            "Cleanup runs that raised or timed out (the record was kept), by strategy.",
            ["strategy"],
            registry=r,
        )
        # system health
        self.current_zombie_count_by_target = _LoopLocalFamily(
            "contend_zombie_operations",
            "Zombie records (rejected, failed, cancelled) present, by target entity type.",
            "target_type",
            r,
            gauge=True,
        )
        self.memory_pressure_triggered_cleanups = _Counter(
            "contend_memory_pressure_cleanups",
            "Zombies switched to immediate cleanup because memory pressure was over threshold.",
            registry=r,
        )
        self.force_cleanup_triggered = _Counter(
            "contend_force_cleanups",
            "Zombies switched to immediate cleanup because force_cleanup_threshold was exceeded.",
            registry=r,
        )
        # configuration usage
        self.decorators_by_cleanup_strategy = _Gauge(
            "contend_decorators",
            "Decorated functions called on this runtime, by configured cleanup strategy.",
            ["strategy"],
            registry=r,
        )
        self.custom_cleanup_handlers_used = _Counter(
            "contend_custom_cleanup_handler_calls",
            "Custom cleanup handler invocations, by registered handler name.",
            ["handler_name"],
            registry=r,
        )
        # what operators ask for next
        self.removals_by_reason = _LoopLocalFamily(
            "contend_removals",
            "Records removed from the registry, by reason "
            "(immediate, ttl, lazy, cap, pressure, force, custom, manual).",
            "reason",
            r,
            values=REMOVAL_REASONS,
        )
        self.reclaim_lag = _LoopLocalHistogram(
            "contend_reclaim_lag_seconds",
            "From the moment a record became due for removal to its removal, by reason.",
            "reason",
            r,
            _LAG_BUCKETS,
        )
        self.staging_window_size = _LoopLocalHistogram(
            "contend_staging_window_size",
            "Calls resolved together in one contended staging window (two or more).",
            "",
            r,
            _WINDOW_BUCKETS,
        ).labels("")
        self.operations_by_outcome = _LoopLocalFamily(
            "contend_operations",
            "Decorated calls by terminal status (succeeded, failed, rejected, cancelled).",
            "outcome",
            r,
            values=OUTCOMES,
        )
        self.staging_carried = _Counter(
            "contend_staging_carried",
            "Calls that lost a staging window and were carried into their target's next window"
            " (wait policy), once per window lost.",
            registry=r,
        )
        self.staging_wait_seconds = _Histogram(
            "contend_staging_wait_seconds",
            "Time calls under the wait policy spent staged, by outcome (won: it then ran;"
            " rejected: max_wait_ms passed or the window was full; cancelled; error).",
            ["outcome"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.occ_retries = _Counter(
            "contend_occ_retries", "OCC attempts retried after a version conflict.", registry=r
        )
        self.occ_conflicts = _Counter(
            "contend_occ_conflicts", "Version conflicts met at OCC commit.", registry=r
        )
        self.occ_exhausted = _Counter(
            "contend_occ_exhausted",
            "Calls that failed with OCCConflictError after max_retries conflicts.",
            registry=r,
        )
        self._outcome = {v: self.operations_by_outcome.labels(v) for v in OUTCOMES}
        self._removed = {v: self.removals_by_reason.labels(v) for v in REMOVAL_REASONS}
        self._lag = {
            v: self.reclaim_lag.labels(v) for v in REMOVAL_REASONS if v not in AT_ONCE_REASONS
        }
        self._cleaned = {v: self.operations_cleaned_by_strategy.labels(v) for v in _STRATEGIES}
        self._failures = _bind(self.cleanup_failures_by_strategy, _STRATEGIES)
        self._latency = _bind(self.cleanup_latency_by_strategy, _STRATEGIES)

    def record_cleanup_operation(
        self, strategy: CleanupStrategy, latency_ms: float, success: bool
    ) -> None:
        """The design's spelling: one cleanup run of `strategy` took `latency_ms`; a success
        counts as a record cleaned, a failure as a cleanup failure."""
        value = CleanupStrategy(strategy).value
        self._latency[value].observe(latency_ms / 1000.0)
        if success:
            self._cleaned[value].inc()
        else:
            self._failures[value].inc()

    def outcome(self, status: str, n: int = 1) -> None:
        """Count calls' terminal status."""
        self._outcome[status].value += n

    def staging_waited(self, outcome: str, seconds: float) -> None:
        """A call under the wait policy left staging (won, rejected, cancelled, error)."""
        self.staging_wait_seconds.labels(outcome).observe(max(0.0, seconds))

    def handler_ran(self, strategy: str, seconds: float) -> None:
        self._latency[strategy].observe(seconds)

    def cleanup_failed(self, strategy: str) -> None:
        self._failures[strategy].inc()

    def zombie_added(self, target_type: str) -> None:
        self.current_zombie_count_by_target.labels(target_type).value += 1

    def zombie_passed(self, target_type: str) -> None:
        """A zombie that left in the step it appeared: its gauge series exists, at net zero."""
        self.current_zombie_count_by_target.labels(target_type)

    def removed(
        self,
        reason: str,
        strategy: str,
        zombie_target_type: str | None,
        lag_seconds: float | None,
        n: int = 1,
    ) -> None:
        """Count `n` removals alike; `zombie_target_type` is None for records that were no
        zombies.

        Reclaim lag (of one removal) is observed for removals that waited for a due time (ttl,
        lazy, custom, manual); the immediate, cap, pressure and force rules remove at once by
        construction.
        """
        removed = self._removed.get(reason)
        if removed is None:
            removed = self._removed[reason] = self.removals_by_reason.labels(reason)
        removed.value += n
        self._cleaned[strategy].value += n
        if zombie_target_type is not None:
            self.current_zombie_count_by_target.labels(zombie_target_type).value -= n
        if lag_seconds is not None and reason not in AT_ONCE_REASONS:
            lag = self._lag.get(reason)
            if lag is None:
                lag = self._lag[reason] = self.reclaim_lag.labels(reason)
            lag.observe(max(0.0, lag_seconds))

    def exposition(self) -> bytes:
        """The Prometheus text format of this runtime's metrics."""
        return generate_latest(self.registry)
