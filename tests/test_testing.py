"""contend.testing: what a user's tests get from it."""

from __future__ import annotations

import asyncio

from contend import (
    FakeClock,
    OperationCleanedEvent,
    OperationRejectedEvent,
    OperationStatus,
    get_runtime,
    with_conflict_resolution,
)
from contend.testing import KEEP_EVERYTHING, Account, EventRecorder, make_runtime, runtime_in_use


async def test_a_runtime_in_use_is_current_on_a_fake_clock_and_calm() -> None:
    with runtime_in_use(memory_pressure=0.25) as rt:
        assert get_runtime() is rt
        assert isinstance(rt.clock, FakeClock)
        assert rt.memory.pressure() == 0.25
    assert get_runtime() is not rt
    assert not rt.cleanup.sweeper_running


async def test_make_runtime_uses_the_clock_given() -> None:
    clock = FakeClock()
    rt = make_runtime(clock=clock)
    assert rt.clock is clock and rt.memory.pressure() == 0.0


async def test_the_recorder_sees_the_events_of_its_types_until_closed() -> None:
    with runtime_in_use() as rt:

        @with_conflict_resolution(cleanup="immediate")
        async def touch(acct: Account) -> None:
            acct.balance += 1

        acct = Account()
        with EventRecorder(rt, OperationRejectedEvent, OperationCleanedEvent) as seen:
            await asyncio.gather(*(touch(acct) for _ in range(3)), return_exceptions=True)
        assert len(seen.of(OperationRejectedEvent)) == 2
        assert sorted(seen.ids(OperationCleanedEvent)) == sorted(seen.ids(OperationRejectedEvent))
        await asyncio.gather(*(touch(acct) for _ in range(3)), return_exceptions=True)
        assert len(seen) == 4, "closed: nothing more recorded"


async def test_keep_everything_keeps_every_record() -> None:
    with runtime_in_use(memory_pressure=1.0) as rt:

        @with_conflict_resolution(cleanup=KEEP_EVERYTHING, priority=10)
        async def touch(acct: Account) -> None:
            acct.balance += 1

        acct = Account()
        await asyncio.gather(*(touch(acct) for _ in range(3)), return_exceptions=True)
        rt.clock.advance(hours=48)
        await rt.cleanup.sweep()
        records = await rt.registry.operations_for_target(acct.ecs_id)
        assert sorted(r.status for r in records) == sorted(
            [OperationStatus.SUCCEEDED, OperationStatus.REJECTED, OperationStatus.REJECTED]
        )
        assert rt.cleanup.removed.total() == 0
