"""The wait conflict policy: a loser is carried into its target's next window until its deadline."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    ConfigurationError,
    ConflictPolicy,
    MemoryBackend,
    OCCConfig,
    OperationPriority,
    OperationRejectedError,
    OperationStatus,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)
from contend.staging import LocalCoordinator
from contend.testing import Account, make_runtime

KEEP_EVERY_ZOMBIE = CleanupConfig(
    strategy=CleanupStrategy.NONE, immediate_cleanup_priorities=[], debug_retention_priorities=[]
)
WAIT = PreECSConfig(conflict_policy=ConflictPolicy.WAIT, max_wait_ms=5_000)
LOW, NORMAL, HIGH, CRITICAL = (
    OperationPriority.LOW,
    OperationPriority.NORMAL,
    OperationPriority.HIGH,
    OperationPriority.CRITICAL,
)


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "waiting_transfers.py"


def _metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


async def _ticks(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_every_gathered_transfer_goes_through_instead_of_being_rejected(
    runtime: Runtime,
) -> None:
    """The issue's bank: many transfers gathered over a few accounts. Under reject, one per
    account per window gets through; under wait, all of them, with no money lost and no two
    winners on one account at once."""
    accounts = [Account(balance=1_000) for _ in range(8)]
    running: dict[UUID, int] = defaultdict(int)
    overlaps: list[UUID] = []

    occ = OCCConfig(max_retries=100, base_delay_ms=0.1, max_delay_ms=1)

    @with_conflict_resolution(pre_ecs=WAIT, occ=occ, cleanup="immediate")
    async def transfer(source: Account, dest: Account, amount: int) -> None:
        running[source.ecs_id] += 1
        if running[source.ecs_id] > 1:
            overlaps.append(source.ecs_id)
        await asyncio.sleep(0)
        source.balance -= amount
        dest.balance += amount
        running[source.ecs_id] -= 1

    calls = [transfer(accounts[i % 8], accounts[(i * 3 + 1) % 8], 1 + i % 5) for i in range(400)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results == [None] * 400
    assert overlaps == []
    assert sum(a.balance for a in accounts) == 8_000
    assert _metric(runtime, "contend_operations_total", outcome="rejected") == 0
    assert runtime.backend.coordinator.in_flight() == 0


async def test_waiting_calls_run_in_priority_then_submission_order(runtime: Runtime) -> None:
    order: list[str] = []

    @with_conflict_resolution(pre_ecs=WAIT, cleanup="immediate")
    async def work(acct: Account, name: str) -> str:
        order.append(name)
        await asyncio.sleep(0)
        return name

    acct = Account()
    plan = [("n1", NORMAL), ("h1", HIGH), ("n2", NORMAL), ("l1", LOW), ("h2", HIGH), ("n3", NORMAL)]
    results = await asyncio.gather(*(work.with_priority(p)(acct, n) for n, p in plan))
    assert results == [n for n, _ in plan]
    assert order == ["h1", "h2", "n1", "n2", "n3", "l1"]
    assert _metric(runtime, "contend_staging_carried_total") == 5 + 4 + 3 + 2 + 1
    assert _metric(runtime, "contend_staging_wait_seconds_count", outcome="won") == 6


async def test_a_waiter_is_rejected_at_its_deadline_not_when_the_holder_ends(
    runtime: Runtime,
) -> None:
    gate = asyncio.Event()

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(conflict_policy="wait", max_wait_ms=30), cleanup=KEEP_EVERY_ZOMBIE
    )
    async def work(acct: Account, hold: bool) -> str:
        if hold:
            await gate.wait()
        return "done"

    acct = Account()
    holder = asyncio.create_task(work.with_priority(LOW)(acct, True))
    await _ticks(3)
    waiter = asyncio.create_task(work.with_priority(CRITICAL)(acct, False))
    done, _ = await asyncio.wait([waiter], timeout=2)
    assert done, "the waiter was not rejected at its deadline"
    error = waiter.exception()
    assert isinstance(error, OperationRejectedError)
    assert not holder.done()
    assert "after waiting max_wait_ms=30" in str(error)
    assert error.priority == CRITICAL and error.winner_priority == LOW
    (record,) = await runtime.registry.zombies(acct.ecs_id)
    assert record.status is OperationStatus.REJECTED
    assert record.winner_id == error.winner_id
    gate.set()
    assert await holder == "done"
    assert await work(acct, False) == "done"
    assert _metric(runtime, "contend_staging_wait_seconds_count", outcome="rejected") == 1
    waited = _metric(runtime, "contend_staging_wait_seconds_sum", outcome="rejected")
    assert 0.03 <= waited < 2
    assert runtime.backend.coordinator.in_flight() == 0


async def test_low_priority_is_not_starved_by_a_steady_stream_of_high_ones(
    runtime: Runtime,
) -> None:
    """Fairness by ageing: each window a waiter loses counts as one more priority point (up to
    CRITICAL), and ties go to the earliest staged. A LOW call facing a fresh HIGH call in every
    window is overtaken at most 10 - 2 = 8 times, then runs; without ageing it would wait for
    the whole stream."""
    order: list[str] = []
    streaming = True

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(conflict_policy="wait", max_wait_ms=60_000), cleanup="immediate"
    )
    async def work(acct: Account, name: str) -> None:
        order.append(name)
        await _ticks(2)

    acct = Account()

    async def stream() -> list[asyncio.Task[None]]:
        tasks = []
        n = 0
        while streaming and n < 200:
            tasks.append(asyncio.create_task(work.with_priority(HIGH)(acct, f"high{n}")))
            n += 1
            await asyncio.sleep(0)
        return tasks

    first = asyncio.create_task(work.with_priority(HIGH)(acct, "first"))
    await asyncio.sleep(0)
    low = asyncio.create_task(work.with_priority(LOW)(acct, "low"))
    producer = asyncio.create_task(stream())
    await asyncio.wait_for(low, timeout=5)
    streaming = False
    highs = await producer
    await asyncio.gather(first, *highs)
    position = order.index("low")
    assert 1 <= position <= 1 + (10 - LOW), order[: position + 1]
    assert len(order) > position + 5, "the stream ended before the LOW call ran: nothing shown"
    assert all(name.startswith("high") for name in order[1:position])


async def test_a_cancelled_waiter_leaves_nothing_behind(runtime: Runtime) -> None:
    gate = asyncio.Event()
    order: list[str] = []

    @with_conflict_resolution(pre_ecs=WAIT, cleanup=KEEP_EVERY_ZOMBIE)
    async def work(acct: Account, name: str) -> str:
        order.append(name)
        if name == "holder":
            await gate.wait()
        return name

    acct = Account()
    holder = asyncio.create_task(work(acct, "holder"))
    await _ticks(2)
    waiters = [asyncio.create_task(work(acct, f"w{i}")) for i in range(3)]
    await _ticks(3)
    waiters[1].cancel()
    await _ticks(2)
    gate.set()
    results = await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert results[0] == "holder" and results[1] == "w0" and results[3] == "w2"
    assert isinstance(results[2], asyncio.CancelledError)
    assert order == ["holder", "w0", "w2"]
    (record,) = await runtime.registry.zombies(acct.ecs_id)
    assert record.status is OperationStatus.CANCELLED
    assert runtime.backend.coordinator.in_flight() == 0
    assert _metric(runtime, "contend_staging_wait_seconds_count", outcome="cancelled") == 1


async def test_reject_and_wait_calls_share_a_window(runtime: Runtime) -> None:
    """Losers under reject are rejected; waiters of the same window are carried."""

    @with_conflict_resolution(cleanup="immediate")
    async def work(acct: Account, name: str) -> str:
        await asyncio.sleep(0)
        return name

    acct = Account()
    results = await asyncio.gather(
        work(acct, "a"),
        work.with_max_wait(1_000)(acct, "b"),
        work.with_priority(HIGH)(acct, "c"),
        work(acct, "d"),
        work.with_max_wait(1_000).with_priority(LOW)(acct, "e"),
        return_exceptions=True,
    )
    assert results[1:3] == ["b", "c"] and results[4] == "e"
    assert all(isinstance(results[i], OperationRejectedError) for i in (0, 3))


async def test_with_max_wait_zero_rejects_at_once_under_the_wait_policy(runtime: Runtime) -> None:
    @with_conflict_resolution(pre_ecs=WAIT, cleanup="immediate")
    async def work(acct: Account) -> int:
        await asyncio.sleep(0)
        return 1

    acct = Account()
    results = await asyncio.gather(
        work(acct), work.with_max_wait(0)(acct), work(acct), return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], OperationRejectedError)
    assert "waiting" not in str(results[1])


@pytest.mark.parametrize("bad", [-1, True, "5", 3_600_001, float("nan")])
def test_a_bad_per_call_wait_names_the_field(bad: Any) -> None:
    @with_conflict_resolution(runtime=Runtime())
    async def work(acct: Account) -> None:
        return None

    with pytest.raises(ConfigurationError) as info:
        work.with_max_wait(bad)
    assert info.value.field == "max_wait_ms"


async def test_waiting_in_a_timed_window(runtime: Runtime) -> None:
    order: list[str] = []

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(staging_timeout_ms=50, conflict_policy="wait", max_wait_ms=5_000),
        cleanup="immediate",
    )
    async def work(acct: Account, name: str) -> None:
        order.append(name)
        await asyncio.sleep(0.001)

    acct = Account()
    tasks = [asyncio.create_task(work(acct, "a"))]
    await _ticks(2)
    tasks.append(asyncio.create_task(work.with_priority(HIGH)(acct, "b")))
    tasks.append(asyncio.create_task(work(acct, "c")))
    await asyncio.gather(*tasks)
    assert order == ["b", "a", "c"]


def test_max_wait_ms_without_the_wait_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_wait_ms"):
        PreECSConfig(max_wait_ms=100)
    assert PreECSConfig(conflict_policy="WAIT", max_wait_ms=2.5).waits


async def test_a_coordinator_without_wait_support_refuses_the_policy_clearly() -> None:
    class Plain(LocalCoordinator):
        supports_wait = False

    class Backend(MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self._coordinator = Plain()

    rt = make_runtime(backend=Backend())

    @with_conflict_resolution(runtime=rt, pre_ecs=WAIT)
    async def work(acct: Account) -> None:
        return None

    with pytest.raises(ConfigurationError) as info:
        await work(Account())
    assert info.value.field == "pre_ecs.conflict_policy"
    assert "memory backend" in str(info.value)
    assert rt.backend.operation_count() == 0  # type: ignore[attr-defined]
    rejecting = with_conflict_resolution(runtime=rt)(work.__wrapped__)
    with pytest.raises(ConfigurationError):
        await rejecting.with_max_wait(10)(Account())
    await rejecting(Account())


# --- windows under 3.12's eager task factory ----------------------------------------------


def _task_factories() -> Iterator[Any]:
    yield pytest.param(None, id="default-tasks")
    eager = getattr(asyncio, "eager_task_factory", None)
    if eager is not None:
        yield pytest.param(eager, id="eager-tasks")


@pytest.mark.parametrize("factory", list(_task_factories()))
async def test_calls_created_in_one_tick_share_a_window_whatever_the_task_factory(
    runtime: Runtime, factory: Callable[..., Any] | None
) -> None:
    """Under `eager_task_factory` a task runs to its first suspension as it is created. A call
    made there still joins the window of the tick it was created in (the creating task may
    start more calls before the tick ends), so gathered calls compete as with ordinary tasks:
    one winner, the rest rejected, or, under the wait policy, run one after another."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(factory)
    try:
        runs: list[str] = []

        @with_conflict_resolution(cleanup="immediate")
        async def work(acct: Account, name: str) -> str:
            runs.append(name)
            return name

        acct = Account()
        plan = [("a", NORMAL), ("b", HIGH), ("c", NORMAL), ("d", LOW), ("e", HIGH)]
        tasks = [asyncio.create_task(work.with_priority(p)(acct, n)) for n, p in plan]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert runs == ["b"]
        assert sum(isinstance(r, OperationRejectedError) for r in results) == 4

        runs.clear()
        waiting = [
            asyncio.create_task(work.with_max_wait(1_000).with_priority(p)(acct, n))
            for n, p in plan
        ]
        assert await asyncio.gather(*waiting) == [n for n, _ in plan]
        assert runs == ["b", "e", "a", "c", "d"]

        runs.clear()
        assert await work(acct, "alone") == "alone"  # an uncontended call still runs
    finally:
        loop.set_task_factory(None)


async def test_the_readme_bank_example_runs_and_waiting_gets_every_transfer_through(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("waiting_transfers_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(example, "TRANSFERS", 800)
    assert await example.run(ConflictPolicy.REJECT) == (40, 760, 4_000)
    assert await example.run(ConflictPolicy.WAIT) == (800, 0, 4_000)
