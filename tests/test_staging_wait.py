"""The wait conflict policy, in-memory specifics: checks, eager tasks, the README example.

Its behaviour (carrying, order, ageing, deadline, cancellation) is in the backend conformance
suite, tests/backends/test_conformance.py, run on every backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contend import (
    ConfigurationError,
    ConflictPolicy,
    MemoryBackend,
    OperationPriority,
    OperationRejectedError,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)
from contend.staging import LocalCoordinator
from contend.testing import Account, make_runtime

WAIT = PreECSConfig(conflict_policy=ConflictPolicy.WAIT, max_wait_ms=5_000)
LOW, NORMAL, HIGH = OperationPriority.LOW, OperationPriority.NORMAL, OperationPriority.HIGH


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "waiting_transfers.py"


def _metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


async def _ticks(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.parametrize("bad", [-1, True, "5", 3_600_001, float("nan")])
def test_a_bad_per_call_wait_names_the_field(bad: Any) -> None:
    @with_conflict_resolution(runtime=Runtime())
    async def work(acct: Account) -> None:
        return None

    with pytest.raises(ConfigurationError) as info:
        work.with_max_wait(bad)
    assert info.value.field == "max_wait_ms"


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
