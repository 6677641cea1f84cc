"""Faults injected at every seam a user can plug into: cleanup handlers, event subscribers, the
decorated function itself and the memory probe.

Each test checks the same four promises: the callers are answered, the records are terminal, the
coordinator serves the next call on the same target, and the health check shows the fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictResolutionOperation,
    FakeClock,
    OperationCleanedEvent,
    OperationRejectedError,
    OperationRejectedEvent,
    OperationStartedEvent,
    OperationStatus,
    Runtime,
    cleanup_system_health_check,
    with_conflict_resolution,
)
from contend.testing import Account, EventRecorder, make_runtime


class Raising(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        raise RuntimeError("audit store unreachable")


class Hanging(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        await asyncio.Event().wait()


class Garbage(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> Any:
        return {"removed": True}


class Interrupt(BaseException):
    """What user code might raise to unwind everything (like KeyboardInterrupt or SystemExit)."""


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = make_runtime()
    yield runtime
    runtime.cleanup.stop()


@pytest.fixture
def handlers() -> Iterator[None]:
    CleanupHandlerRegistry.register("fault-raising", Raising)
    CleanupHandlerRegistry.register("fault-hanging", Hanging)
    CleanupHandlerRegistry.register("fault-garbage", Garbage)
    yield
    for name in ("fault-raising", "fault-hanging", "fault-garbage"):
        CleanupHandlerRegistry.unregister(name)


def _custom(name: str) -> CleanupConfig:
    return CleanupConfig(
        strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler=name, handler_timeout_seconds=0.05
    )


async def _all_records(rt: Runtime) -> list[ConflictResolutionOperation]:
    found: list[ConflictResolutionOperation] = []
    for status in OperationStatus:
        found += await rt.backend.operations_with_status(status)
    return found


async def _served_after(rt: Runtime, account: Account) -> None:
    """A plain call on the same target still runs and commits."""

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def deposit(a: Account) -> int:
        a.balance += 1
        return a.balance

    before = account.balance
    assert await deposit(account) == before + 1


# cleanup handlers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("fault-raising", "RuntimeError: audit store unreachable"),
        ("fault-hanging", "timed out after 0.05s"),
        ("fault-garbage", "TypeError"),
    ],
)
async def test_a_failing_cleanup_handler_keeps_the_record_and_is_reported(
    rt: Runtime, handlers: None, name: str, why: str
) -> None:
    @with_conflict_resolution(runtime=rt, cleanup=_custom(name))
    async def withdraw(a: Account, amount: int) -> int:
        a.balance -= amount
        return a.balance

    account = Account(balance=100)
    results = await asyncio.gather(
        withdraw.with_priority(8)(account, 10),
        withdraw.with_priority(3)(account, 20),
        withdraw.with_priority(4)(account, 30),
        return_exceptions=True,
    )

    assert results[0] == 90
    assert all(isinstance(r, OperationRejectedError) for r in results[1:])
    zombies = await rt.registry.zombies()
    assert sorted(z.priority for z in zombies) == [3, 4]
    assert all(z.status is OperationStatus.REJECTED for z in zombies)
    assert rt.backend.zombie_count == 2
    await _served_after(rt, account)
    assert account.balance == 91
    health = await cleanup_system_health_check(rt)
    assert health["status"] == "unhealthy"
    assert health["failed_cleanup_handlers"] == {name: 2}
    assert why in health["last_cleanup_failure"]
    assert health["total_zombie_operations"] == 2
    assert health["cleanup_failure_rate"] == 1.0


async def test_a_hanging_handler_does_not_hold_up_the_winner_or_the_target(
    rt: Runtime, handlers: None
) -> None:
    @with_conflict_resolution(runtime=rt, cleanup=_custom("fault-hanging"))
    async def touch(a: Account) -> str:
        return "done"

    account = Account()
    outcome = await asyncio.wait_for(
        asyncio.gather(touch(account), touch(account), return_exceptions=True), timeout=5
    )
    assert outcome[0] == "done"
    assert isinstance(outcome[1], OperationRejectedError)
    assert rt.cleanup.active_tasks == 0
    await _served_after(rt, account)


# event subscribers ------------------------------------------------------------------------------
def _raiser(kind: str) -> Callable[[Any], Awaitable[None] | None]:
    if kind == "sync":

        def sync_handler(event: Any) -> None:
            raise RuntimeError("subscriber bug")

        return sync_handler

    async def async_handler(event: Any) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("subscriber bug")

    return async_handler


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_raising_subscriber_never_breaks_the_call_that_emitted(
    rt: Runtime, kind: str
) -> None:
    for event_type in (OperationStartedEvent, OperationRejectedEvent, OperationCleanedEvent):
        rt.events.subscribe(event_type, _raiser(kind))
    cleaned = EventRecorder(rt, OperationCleanedEvent).events

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.IMMEDIATE)
    async def bump(a: Account) -> int:
        a.balance += 1
        return a.balance

    account = Account()
    results = await asyncio.gather(bump(account), bump(account), return_exceptions=True)

    assert results[0] == 1
    assert isinstance(results[1], OperationRejectedError)
    assert await _all_records(rt) == []
    assert rt.cleanup.removed == {"immediate": 1}
    assert [e.op_id for e in cleaned] == [results[1].op_id]
    await _served_after(rt, account)
    health = await cleanup_system_health_check(rt)
    assert health["event_subscriber_errors"] == 4
    assert health["total_zombie_operations"] == 0


# the decorated function -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (ValueError("bad amount"), OperationStatus.FAILED),
        (Interrupt("unwind"), OperationStatus.FAILED),
        (asyncio.CancelledError(), OperationStatus.CANCELLED),
    ],
    ids=["error", "base-exception", "cancelled-error"],
)
async def test_a_raising_winner_hands_the_target_to_the_call_waiting_behind_it(
    rt: Runtime, fault: BaseException, status: OperationStatus
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def transfer(a: Account, explode: bool) -> int:
        if explode:
            started.set()
            await release.wait()
            raise fault
        a.balance += 1
        return a.balance

    account = Account()
    first = asyncio.ensure_future(transfer(account, True))
    await started.wait()
    second = asyncio.ensure_future(transfer(account, False))
    await asyncio.sleep(0)
    release.set()
    outcome = await asyncio.gather(first, second, return_exceptions=True)

    if isinstance(fault, asyncio.CancelledError):
        assert isinstance(outcome[0], asyncio.CancelledError)
    else:
        assert outcome[0] is fault
    assert outcome[1] == 1
    (zombie,) = await rt.registry.zombies()
    assert zombie.status is status
    if status is OperationStatus.FAILED:
        assert zombie.error_message == f"{type(fault).__name__}: {fault}"
    assert rt.backend.coordinator.in_flight() == 0
    await _served_after(rt, account)
    health = await cleanup_system_health_check(rt)
    assert health["total_zombie_operations"] == 1
    assert health["zombie_counts_by_target"] == {str(account.ecs_id): 1}


@pytest.mark.parametrize("where", ["staged", "executing"])
async def test_a_caller_cancelled_while_staged_or_running_leaves_a_cancelled_record(
    rt: Runtime, where: str
) -> None:
    running = asyncio.Event()

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def slow(a: Account) -> None:
        running.set()
        await asyncio.Event().wait()

    account = Account()
    blocker = asyncio.ensure_future(slow(account))
    await running.wait()
    running.clear()
    victim = asyncio.ensure_future(slow(account)) if where == "staged" else blocker
    await asyncio.sleep(0)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    if where == "staged":
        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker

    zombies = await rt.registry.zombies()
    assert {z.status for z in zombies} == {OperationStatus.CANCELLED}
    assert len(zombies) == (2 if where == "staged" else 1)
    assert rt.backend.coordinator.in_flight() == 0
    await _served_after(rt, account)


def test_keyboard_interrupt_in_a_sync_function_reaches_the_caller_and_the_runtime_recovers() -> (
    None
):
    rt = make_runtime()

    @with_conflict_resolution(runtime=rt)
    def deposit(a: Account, interrupt: bool) -> int:
        if interrupt:
            raise KeyboardInterrupt
        a.balance += 1
        return a.balance

    account = Account()
    with pytest.raises(KeyboardInterrupt):
        deposit(account, True)
    assert deposit(account, False) == 1

    zombies = asyncio.run(rt.registry.zombies())
    assert [(z.status, z.error_message) for z in zombies] == [
        (OperationStatus.FAILED, "KeyboardInterrupt: ")
    ]
    rt.cleanup.stop()


def test_asyncio_run_interrupted_with_calls_in_flight_leaves_terminal_records_and_a_usable_runtime() -> (  # noqa: E501
    None
):
    """A KeyboardInterrupt unwinds asyncio.run, which cancels the calls still in flight (some
    staged, some running); a later asyncio.run must find every record terminal and the runtime
    working, though its sweeper was stranded on the closed loop."""
    rt = make_runtime()

    @with_conflict_resolution(runtime=rt)
    async def work(a: Account, interrupt: bool = False) -> int:
        if interrupt:
            raise KeyboardInterrupt
        await asyncio.Event().wait()
        return 0

    accounts = [Account(), Account()]

    async def main() -> None:
        running = [asyncio.ensure_future(work(a)) for a in accounts]
        await asyncio.sleep(0)
        staged = [asyncio.ensure_future(work(a)) for a in accounts]
        await asyncio.sleep(0)
        assert not any(t.done() for t in running + staged)
        await work(Account(), interrupt=True)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())

    async def after() -> tuple[list[ConflictResolutionOperation], int]:
        records = await _all_records(rt)

        @with_conflict_resolution(runtime=rt)
        async def deposit(a: Account) -> int:
            a.balance += 1
            return a.balance

        return records, await deposit(accounts[0])

    records, balance = asyncio.run(after())
    assert balance == 1
    assert len(records) == 5
    assert all(r.is_terminal for r in records)
    assert sorted(r.status.value for r in records) == ["cancelled"] * 4 + ["failed"]
    assert rt.backend.zombie_count == 5
    rt.cleanup.stop()


# the memory probe -------------------------------------------------------------------------------
async def test_a_raising_memory_probe_reads_as_no_pressure_and_degrades_health() -> None:
    def probe() -> float:
        raise OSError("cgroup file vanished")

    rt = Runtime(clock=FakeClock(), memory_probe=probe)

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def bump(a: Account) -> int:
        a.balance += 1
        return a.balance

    account = Account()
    results = await asyncio.gather(bump(account), bump(account), return_exceptions=True)

    assert results[0] == 1
    assert isinstance(results[1], OperationRejectedError)
    (zombie,) = await rt.registry.zombies()
    assert zombie.cleanup_strategy is CleanupStrategy.NONE
    await _served_after(rt, account)
    health = await cleanup_system_health_check(rt)
    assert health["status"] == "degraded"
    assert health["memory_pressure"] == 0.0
    assert any("cgroup file vanished" in issue for issue in health["issues"])
    assert rt.memory.failures >= 1
    rt.cleanup.stop()
