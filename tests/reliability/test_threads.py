"""A runtime belongs to one event loop at a time: a second loop (another thread) is refused with
RuntimeBindingError while the first still drives it, and the first loop's calls are untouched.
Several threads, each with a runtime of its own, run side by side."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from contend import (
    CleanupStrategy,
    OperationRejectedError,
    OperationStatus,
    Runtime,
    RuntimeBindingError,
    use_runtime,
    with_conflict_resolution,
)
from contend.testing import Account, make_runtime

WAIT = 10.0


def _deposit_fns(rt: Runtime | None) -> tuple[Any, Any]:
    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def deposit(a: Account, amount: int, hold: asyncio.Event | None = None) -> int:
        if hold is not None:
            await hold.wait()
        a.balance += amount
        return a.balance

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    def deposit_sync(a: Account, amount: int) -> int:
        a.balance += amount
        return a.balance

    return deposit, deposit_sync


def _in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_second_loop_is_refused_while_the_first_drives_the_runtime() -> None:
    rt = make_runtime()
    deposit, deposit_sync = _deposit_fns(rt)
    account, other = Account(), Account()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def first() -> list[Any]:
        hold = asyncio.Event()
        box["loop"], box["hold"] = asyncio.get_running_loop(), hold
        winner = asyncio.ensure_future(deposit(account, 1, hold))
        await asyncio.sleep(0)
        queued = asyncio.ensure_future(deposit(account, 10))
        done_elsewhere = await deposit(other, 100)
        await asyncio.sleep(0)
        box["in_flight"] = rt.backend.coordinator.in_flight()
        ready.set()
        return [done_elsewhere, *await asyncio.gather(winner, queued)]

    def run_first() -> None:
        box["results"] = asyncio.run(first())

    thread, errors = _in_thread(run_first)
    assert ready.wait(WAIT)
    records_before = rt.backend.operation_count()

    with pytest.raises(RuntimeBindingError, match="another running event loop"):
        asyncio.run(deposit(account, 1000))
    with pytest.raises(RuntimeBindingError, match="create a Runtime per event loop"):
        deposit_sync(account, 1000)
    assert rt.backend.operation_count() == records_before
    assert rt.backend.coordinator.in_flight() == box["in_flight"] == 1

    box["loop"].call_soon_threadsafe(box["hold"].set)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert box["results"] == [100, 1, 11]
    assert account.balance == 11
    assert rt.backend.operation_count() == 0
    assert rt.backend.zombie_count == 0
    assert rt.backend.coordinator.in_flight() == 0

    assert deposit_sync(account, 5) == 16, "the runtime moves on once the first loop is closed"


def test_threads_racing_for_one_runtime_bind_exactly_one_loop() -> None:
    rt = make_runtime()
    deposit, _ = _deposit_fns(rt)
    threads = 6
    start = threading.Barrier(threads)
    release = threading.Event()
    outcomes: list[str] = []
    lock = threading.Lock()

    async def contender(account: Account) -> None:
        start.wait(WAIT)
        try:
            hold = asyncio.Event()
            call = asyncio.ensure_future(deposit(account, 1, hold))
            await asyncio.sleep(0)
            if call.done():
                call.result()
            with lock:
                outcomes.append("bound")
            await asyncio.to_thread(release.wait, WAIT)
            hold.set()
            await call
        except RuntimeBindingError:
            with lock:
                outcomes.append("refused")
                # the holder lets go only once every other thread has tried, or a late thread
                # would find the first loop closed and (rightly) bind
                if outcomes.count("refused") == threads - 1:
                    release.set()

    started = [_in_thread(lambda: asyncio.run(contender(Account()))) for _ in range(threads)]
    for thread, _ in started:
        thread.join(WAIT)
    assert all(errors == [] for _, errors in started)
    assert sorted(outcomes) == ["bound"] + ["refused"] * (threads - 1)
    assert rt.backend.operation_count() == 0
    assert rt.backend.coordinator.in_flight() == 0


def test_a_paused_loop_with_staged_calls_keeps_the_runtime() -> None:
    rt = make_runtime()
    deposit, deposit_sync = _deposit_fns(rt)
    account = Account()
    loop = asyncio.new_event_loop()
    try:
        hold = asyncio.Event()
        winner = loop.create_task(deposit(account, 1, hold))
        loop.run_until_complete(asyncio.sleep(0))
        queued = loop.create_task(deposit(account, 10))
        loop.run_until_complete(asyncio.sleep(0))
        assert not winner.done() and not queued.done()

        thread, errors = _in_thread(lambda: deposit_sync(Account(), 1))
        thread.join(WAIT)
        assert len(errors) == 1
        assert isinstance(errors[0], RuntimeBindingError)
        assert "paused with calls still staged" in str(errors[0])

        hold.set()
        assert loop.run_until_complete(asyncio.gather(winner, queued)) == [1, 11]
        assert rt.backend.coordinator.in_flight() == 0
    finally:
        loop.close()
    assert deposit_sync(account, 5) == 16


def _own_runtime_workload(results: dict[str, Any], key: str) -> None:
    rt = make_runtime()
    with use_runtime(rt):
        deposit, deposit_sync = _deposit_fns(None)
        account = Account()

        async def contended() -> list[Any]:
            out: list[Any] = []
            for _ in range(50):
                out += await asyncio.gather(
                    deposit(account, 1), deposit(account, 1), return_exceptions=True
                )
            return out

        outcome = asyncio.run(contended())
        for _ in range(20):
            deposit_sync(account, 1)

        async def books() -> int:
            return len(await rt.registry.zombies())

        results[key] = {
            "rejected": sum(isinstance(o, OperationRejectedError) for o in outcome),
            "balance": account.balance,
            "zombies": asyncio.run(books()),
            "rejected_records": len(
                asyncio.run(rt.backend.operations_with_status(OperationStatus.REJECTED))
            ),
        }


def test_a_runtime_per_thread_runs_side_by_side() -> None:
    results: dict[str, Any] = {}
    started = [
        _in_thread(lambda k=f"t{i}": _own_runtime_workload(results, k))  # type: ignore[misc]
        for i in range(4)
    ]
    for thread, _ in started:
        thread.join(WAIT * 3)
    assert all(errors == [] for _, errors in started)
    assert len(results) == 4
    for r in results.values():
        assert r == {"rejected": 50, "balance": 70, "zombies": 50, "rejected_records": 50}
