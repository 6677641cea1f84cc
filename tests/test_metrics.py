"""CleanupMetrics: what an operator reads off a runtime after real calls, and the logs beside it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupMetrics,
    CleanupStrategy,
    ConflictResolutionOperation,
    FakeClock,
    OCCConfig,
    OCCConflictError,
    OperationRejectedError,
    OperationRetriedEvent,
    Runtime,
    with_conflict_resolution,
)
from contend.testing import Account, EventRecorder, make_runtime

KEEP = CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=10_000)


def value(rt: Runtime, name: str, **labels: str) -> float:
    found = rt.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_contended_run_counts_outcomes_removals_and_windows(runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE))
    async def deposit(acct: Account, amount: float) -> Account:
        acct.balance += amount
        return acct

    results: list[object] = []
    for acct in (Account(), Account(), Account()):
        results += await asyncio.gather(
            *(deposit(acct, 1) for _ in range(4)), return_exceptions=True
        )
    ok = sum(isinstance(r, Account) for r in results)
    rejected = sum(isinstance(r, OperationRejectedError) for r in results)
    assert (ok, rejected) == (3, 9)

    assert value(runtime, "contend_operations_total", outcome="succeeded") == ok
    assert value(runtime, "contend_operations_total", outcome="rejected") == rejected
    assert value(runtime, "contend_operations_total", outcome="failed") == 0
    assert value(runtime, "contend_removals_total", reason="immediate") == rejected
    assert value(runtime, "contend_operations_cleaned_total", strategy="immediate") == rejected
    assert value(runtime, "contend_zombie_operations", target_type="Account") == 0
    assert value(runtime, "contend_staging_window_size_count") == 3
    assert value(runtime, "contend_staging_window_size_sum") == 12
    assert value(runtime, "contend_decorators", strategy="immediate") == 1
    # built-in handlers do O(1) bookkeeping; handler latency is observed for custom handlers
    assert value(runtime, "contend_cleanup_latency_seconds_count", strategy="immediate") == 0


async def test_reclaim_lag_runs_from_due_moment_to_removal(
    runtime: Runtime, clock: FakeClock
) -> None:
    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=30)
    )
    async def fail(acct: Account) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await fail(Account())
    assert value(runtime, "contend_zombie_operations", target_type="Account") == 1

    clock.advance(minutes=45)
    await runtime.cleanup.sweep()
    assert value(runtime, "contend_removals_total", reason="ttl") == 1
    assert value(runtime, "contend_operations_cleaned_total", strategy="deferred") == 1
    assert value(runtime, "contend_reclaim_lag_seconds_count", reason="ttl") == 1
    assert value(runtime, "contend_reclaim_lag_seconds_sum", reason="ttl") == 15 * 60
    assert value(runtime, "contend_reclaim_lag_seconds_bucket", reason="ttl", le="300.0") == 0
    assert value(runtime, "contend_reclaim_lag_seconds_bucket", reason="ttl", le="900.0") == 1
    assert value(runtime, "contend_zombie_operations", target_type="Account") == 0
    assert value(runtime, "contend_operations_total", outcome="failed") == 1
    lag_reasons = {
        s.labels["reason"]
        for family in text_string_to_metric_families(runtime.metrics.exposition().decode())
        if family.name == "contend_reclaim_lag_seconds"
        for s in family.samples
    }
    assert "ttl" in lag_reasons
    assert not lag_reasons & {"immediate", "cap", "pressure", "force"}  # never observed there


async def test_cap_and_manual_removals_are_counted_by_reason(runtime: Runtime) -> None:
    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=2)
    )
    async def fail(acct: Account) -> None:
        raise ValueError("boom")

    acct = Account()
    for _ in range(5):
        with pytest.raises(ValueError):
            await fail(acct)
    assert value(runtime, "contend_removals_total", reason="cap") == 3
    assert value(runtime, "contend_zombie_operations", target_type="Account") == 2

    left = await runtime.registry.zombies(acct.ecs_id)
    assert await runtime.registry.remove(left[0].ecs_id)
    assert value(runtime, "contend_removals_total", reason="manual") == 1
    assert value(runtime, "contend_zombie_operations", target_type="Account") == 1


async def test_lazy_removal_is_counted_when_a_query_meets_it(
    runtime: Runtime, clock: FakeClock
) -> None:
    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.LAZY, retention_minutes=1)
    )
    async def fail(acct: Account) -> None:
        raise ValueError("boom")

    acct = Account()
    with pytest.raises(ValueError):
        await fail(acct)
    clock.advance(minutes=3)
    assert value(runtime, "contend_removals_total", reason="lazy") == 0
    assert await runtime.registry.zombies(acct.ecs_id) == []
    assert value(runtime, "contend_removals_total", reason="lazy") == 1
    assert value(runtime, "contend_reclaim_lag_seconds_sum", reason="lazy") == 120


async def test_pressure_and_force_switches_are_counted(runtime: Runtime) -> None:
    @with_conflict_resolution(
        cleanup=CleanupConfig(
            strategy=CleanupStrategy.NONE,
            max_zombie_count_per_target=10_000,
            force_cleanup_threshold=100,
        )
    )
    async def fail(acct: Account) -> None:
        raise ValueError("boom")

    runtime.memory.set_probe(lambda: 0.95)
    with pytest.raises(ValueError):
        await fail(Account())
    assert value(runtime, "contend_memory_pressure_cleanups_total") == 1
    assert value(runtime, "contend_removals_total", reason="pressure") == 1

    runtime.memory.set_probe(lambda: 0.0)
    acct = Account()
    for _ in range(102):
        with pytest.raises(ValueError):
            await fail(acct)
    assert value(runtime, "contend_force_cleanups_total") == 1
    assert value(runtime, "contend_removals_total", reason="force") == 1
    assert runtime.backend.zombie_count == 101


async def test_custom_handler_calls_and_removals(runtime: Runtime) -> None:
    class RemoveAtOnce(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            await self.remove(operation)

    CleanupHandlerRegistry.register("metrics-test-remove", RemoveAtOnce)
    try:

        @with_conflict_resolution(
            cleanup=CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="metrics-test-remove"
            )
        )
        async def fail(acct: Account) -> None:
            raise ValueError("boom")

        for _ in range(3):
            with pytest.raises(ValueError):
                await fail(Account())
    finally:
        CleanupHandlerRegistry.unregister("metrics-test-remove")
    assert (
        value(
            runtime,
            "contend_custom_cleanup_handler_calls_total",
            handler_name="metrics-test-remove",
        )
        == 3
    )
    assert value(runtime, "contend_removals_total", reason="custom") == 3
    assert value(runtime, "contend_operations_cleaned_total", strategy="custom") == 3
    assert value(runtime, "contend_cleanup_latency_seconds_count", strategy="custom") == 3


async def test_occ_retries_and_conflicts_match_what_happened(runtime: Runtime) -> None:
    retried = EventRecorder(runtime, OperationRetriedEvent).events

    @with_conflict_resolution(
        pre_ecs=False, occ=OCCConfig(max_retries=2, base_delay_ms=0.0), cleanup=KEEP
    )
    async def bump(acct: Account) -> None:
        seen = acct.balance
        await asyncio.sleep(0)
        acct.balance = seen + 1

    results = await asyncio.gather(*(bump(Account()) for _ in range(2)), return_exceptions=True)
    assert results == [None, None]
    assert value(runtime, "contend_occ_conflicts_total") == 0

    shared = Account()
    results = await asyncio.gather(*(bump(shared) for _ in range(12)), return_exceptions=True)
    exhausted = sum(isinstance(r, OCCConflictError) for r in results)
    retries = value(runtime, "contend_occ_retries_total")
    assert retries == len(retried) > 0
    assert value(runtime, "contend_occ_exhausted_total") == exhausted > 0
    assert value(runtime, "contend_occ_conflicts_total") == retries + exhausted
    assert value(runtime, "contend_operations_total", outcome="failed") == exhausted


def test_record_cleanup_operation_as_the_design_calls_it() -> None:
    metrics = CleanupMetrics()
    metrics.record_cleanup_operation(CleanupStrategy.DEFERRED, 12.5, True)
    metrics.record_cleanup_operation(CleanupStrategy.DEFERRED, 7.5, False)
    get = metrics.registry.get_sample_value
    assert get("contend_operations_cleaned_total", {"strategy": "deferred"}) == 1
    assert get("contend_cleanup_failures_total", {"strategy": "deferred"}) == 1
    assert get("contend_cleanup_latency_seconds_count", {"strategy": "deferred"}) == 2
    assert get("contend_cleanup_latency_seconds_sum", {"strategy": "deferred"}) == pytest.approx(
        0.020
    )


DESIGN_METRICS = {
    "operations_cleaned_by_strategy": ("strategy", "contend_operations_cleaned_total"),
    "cleanup_latency_by_strategy": ("strategy", "contend_cleanup_latency_seconds_sum"),
    "cleanup_failures_by_strategy": ("strategy", "contend_cleanup_failures_total"),
    "current_zombie_count_by_target": ("target_type", "contend_zombie_operations"),
    "decorators_by_cleanup_strategy": ("strategy", "contend_decorators"),
    "custom_cleanup_handlers_used": ("handler_name", "contend_custom_cleanup_handler_calls_total"),
}


@pytest.mark.parametrize("attribute", sorted(DESIGN_METRICS))
def test_every_design_metric_takes_labels_as_prometheus_client_and_the_design_do(
    attribute: str,
) -> None:
    """`.labels(strategy="lazy")` raised TypeError on some of them, and the design's
    `.inc(labels={...})` / `.observe(x, labels={...})` on all of them."""
    metrics = CleanupMetrics()
    label, sample = DESIGN_METRICS[attribute]
    metric = getattr(metrics, attribute)
    get = metrics.registry.get_sample_value
    record = "observe" if attribute == "cleanup_latency_by_strategy" else "inc"
    getattr(metric.labels(**{label: "lazy"}), record)(2.0)
    getattr(metric.labels("lazy"), record)(1.0)
    getattr(metric, record)(0.5, labels={label: "lazy"})
    assert get(sample, {label: "lazy"}) == pytest.approx(3.5)
    with pytest.raises(ValueError):
        metric.labels(nonsense="lazy")


def test_the_unlabelled_design_metrics_take_inc() -> None:
    metrics = CleanupMetrics()
    metrics.memory_pressure_triggered_cleanups.inc()
    metrics.force_cleanup_triggered.inc(3)
    get = metrics.registry.get_sample_value
    assert get("contend_memory_pressure_cleanups_total", {}) == 1
    assert get("contend_force_cleanups_total", {}) == 3


async def test_two_runtimes_keep_separate_metrics() -> None:
    one = make_runtime()
    two = make_runtime()

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE), runtime=one
    )
    async def on_one(acct: Account) -> None:
        return None

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE), runtime=two
    )
    async def on_two(acct: Account) -> None:
        return None

    acct = Account()
    await asyncio.gather(*(on_one(acct) for _ in range(3)), return_exceptions=True)
    await on_two(Account())
    assert value(one, "contend_operations_total", outcome="rejected") == 2
    assert value(two, "contend_operations_total", outcome="rejected") == 0
    assert value(two, "contend_operations_total", outcome="succeeded") == 1
    assert value(one, "contend_operations_total", outcome="succeeded") == 1
    assert one.metrics.registry is not two.metrics.registry


async def test_exposition_follows_prometheus_conventions_and_never_names_an_entity(
    runtime: Runtime, clock: FakeClock
) -> None:
    @with_conflict_resolution(
        occ=OCCConfig(max_retries=1, base_delay_ms=0.0),
        cleanup=CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=1),
    )
    async def deposit(acct: Account) -> None:
        acct.balance += 1

    accounts = [Account() for _ in range(3)]
    errors = [
        r
        for acct in accounts
        for r in await asyncio.gather(*(deposit(acct) for _ in range(3)), return_exceptions=True)
        if isinstance(r, OperationRejectedError)
    ]
    assert len(errors) == 6
    clock.advance(minutes=2)
    await runtime.cleanup.sweep()

    ids = {str(a.ecs_id) for a in accounts} | {str(e.op_id) for e in errors}
    text = runtime.metrics.exposition().decode()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert family.name.startswith("contend_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for sample in family.samples:
            assert not ids & set(sample.labels.values()), sample
            assert not {"op_id", "entity_id", "target_entity_id"} & set(sample.labels)
    assert "contend_removals_total" in text and "contend_reclaim_lag_seconds_bucket" in text


# logging -------------------------------------------------------------------------------------


async def test_rejection_is_logged_with_ids_priorities_and_strategy(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="contend")

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE))
    async def deposit(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    results = await asyncio.gather(
        deposit.with_priority(8)(acct), deposit.with_priority(3)(acct), return_exceptions=True
    )
    rejection = results[1]
    assert isinstance(rejection, OperationRejectedError)
    found = [
        r
        for r in caplog.records
        if r.name == "contend.decorator" and str(rejection.op_id) in r.getMessage()
    ]
    assert len(found) == 1
    message = found[0].getMessage()
    assert "rejected" in message
    assert str(acct.ecs_id) in message
    assert str(rejection.winner_id) in message
    assert "priority 3" in message and "priority 8" in message
    assert "immediate" in message


async def test_occ_retry_is_logged_with_op_entity_and_versions(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="contend")

    @with_conflict_resolution(pre_ecs=False, occ=OCCConfig(max_retries=3, base_delay_ms=0.0))
    async def bump(acct: Account) -> None:
        seen = acct.balance
        await asyncio.sleep(0)
        acct.balance = seen + 1

    acct = Account()
    await asyncio.gather(bump(acct), bump(acct), return_exceptions=True)
    retries = [r for r in caplog.records if r.name == "contend.occ" and "retry" in r.getMessage()]
    assert retries
    message = retries[0].getMessage()
    assert str(acct.ecs_id) in message
    assert "retry 1/3" in message
    assert "version" in message


async def test_cleanup_handler_failure_is_logged_as_an_error(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            raise OSError("audit store unreachable")

    CleanupHandlerRegistry.register("metrics-test-broken", Broken)
    try:

        @with_conflict_resolution(
            cleanup=CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="metrics-test-broken"
            )
        )
        async def fail(acct: Account) -> None:
            raise ValueError("boom")

        acct = Account()
        with pytest.raises(ValueError):
            await fail(acct)
    finally:
        CleanupHandlerRegistry.unregister("metrics-test-broken")
    (zombie,) = await runtime.registry.zombies(acct.ecs_id)
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "contend.cleanup"
    ]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "metrics-test-broken" in message
    assert str(zombie.ecs_id) in message
    assert str(acct.ecs_id) in message
    assert "audit store unreachable" in message
    assert value(runtime, "contend_cleanup_failures_total", strategy="custom") == 1
