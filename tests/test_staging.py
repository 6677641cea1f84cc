"""Pre-ECS staging: windows per target, priority wins, no overlap, nobody left waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    NestedCallError,
    OperationConflictEvent,
    OperationPriority,
    OperationRejectedError,
    OperationRejectedEvent,
    OperationStatus,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)
from contend.testing import EventRecorder, make_runtime

NONE = CleanupStrategy.NONE
KEEP_EVERY_ZOMBIE = CleanupConfig(
    strategy=NONE, immediate_cleanup_priorities=[], debug_retention_priorities=[]
)


class Slot(Entity):
    value: int = 0


async def until(cond: Callable[[], bool], limit: float = 5.0) -> None:
    """Yield to the loop until `cond` holds (bounded, so a bug fails instead of hanging)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0)


async def test_five_gathered_calls_one_result_four_rejections(runtime: Runtime) -> None:
    ran: list[int] = []

    @with_conflict_resolution(cleanup=NONE)
    async def touch(slot: Slot, n: int) -> int:
        ran.append(n)
        slot.value += 1
        return n

    slot = Slot()
    results = await asyncio.gather(*(touch(slot, i) for i in range(5)), return_exceptions=True)

    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert won == [0]
    assert ran == [0]
    assert slot.value == 1
    assert len(lost) == 4
    winner = next(
        op
        for op in await runtime.registry.operations_for_target(slot.ecs_id)
        if op.status is OperationStatus.REJECTED
    ).winner_id
    assert winner is not None
    for exc in lost:
        assert isinstance(exc, OperationRejectedError)
        assert isinstance(exc, RuntimeError)
        assert exc.winner_id == winner
        assert exc.priority == OperationPriority.NORMAL
        assert exc.winner_priority == OperationPriority.NORMAL
        text = str(exc)
        assert str(winner) in text
        assert "priority 5 vs winner 5" in text
    rejected = await runtime.registry.operations_with_status(OperationStatus.REJECTED)
    assert len(rejected) == 4
    assert {op.ecs_id for op in rejected} == {e.op_id for e in lost}  # type: ignore[attr-defined]


async def test_high_priority_submitted_last_beats_normal_submitted_first(runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=NONE)
    async def touch(slot: Slot, label: str) -> str:
        return label

    slot = Slot()
    calls = [touch(slot, f"normal-{i}") for i in range(4)]
    calls.append(touch.with_priority(OperationPriority.HIGH)(slot, "high"))
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert results[4] == "high"
    for exc in results[:4]:
        assert isinstance(exc, OperationRejectedError)
        assert exc.priority == OperationPriority.NORMAL
        assert exc.winner_priority == OperationPriority.HIGH
        assert "priority 5 vs winner 8" in str(exc)


async def test_equal_priorities_go_to_the_earliest_submitted(runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=NONE)
    async def touch(slot: Slot, label: str) -> str:
        return label

    slot = Slot()
    calls = [
        touch.with_priority(OperationPriority.LOW)(slot, "low"),
        touch.with_priority(OperationPriority.HIGH)(slot, "high-first"),
        touch(slot, "normal"),
        touch.with_priority(OperationPriority.HIGH)(slot, "high-second"),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[1] == "high-first"
    assert all(isinstance(r, OperationRejectedError) for i, r in enumerate(results) if i != 1)


async def test_timed_window_collects_calls_submitted_at_different_ticks(runtime: Runtime) -> None:
    order: list[str] = []

    @with_conflict_resolution(pre_ecs=PreECSConfig(staging_timeout_ms=20), cleanup=NONE)
    async def touch(slot: Slot, label: str) -> str:
        order.append(label)
        return label

    slot = Slot()
    first = asyncio.create_task(touch(slot, "normal"))
    await until(lambda: len(runtime.backend.coordinator.pending(slot.ecs_id)) == 1)
    for _ in range(3):
        await asyncio.sleep(0)
    second = asyncio.create_task(touch.with_priority(OperationPriority.HIGH)(slot, "high"))
    done = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), timeout=5)
    assert done[1] == "high"
    assert isinstance(done[0], OperationRejectedError)
    assert order == ["high"]


async def test_zero_window_does_not_collect_calls_from_later_ticks(runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=NONE)
    async def touch(slot: Slot, label: str) -> str:
        return label

    slot = Slot()
    first = asyncio.create_task(touch(slot, "normal"))
    for _ in range(3):
        await asyncio.sleep(0)
    second = asyncio.create_task(touch.with_priority(OperationPriority.HIGH)(slot, "high"))
    assert await asyncio.gather(first, second) == ["normal", "high"]


@pytest.mark.parametrize("window_ms", [5, 20])
async def test_single_call_in_a_timed_window_runs_after_the_window(
    runtime: Runtime, window_ms: int
) -> None:
    @with_conflict_resolution(pre_ecs=PreECSConfig(staging_timeout_ms=window_ms))
    async def touch(slot: Slot) -> int:
        slot.value += 1
        return slot.value

    slot = Slot()
    assert await asyncio.wait_for(touch(slot), timeout=5) == 1
    assert await asyncio.wait_for(touch(slot), timeout=5) == 2
    assert runtime.backend.coordinator.in_flight() == 0


@pytest.mark.parametrize("window_ms", [0, 10])
async def test_call_arriving_while_winner_runs_is_resolved_in_next_window(
    runtime: Runtime, window_ms: int
) -> None:
    gate = asyncio.Event()
    started: list[str] = []

    @with_conflict_resolution(pre_ecs=PreECSConfig(staging_timeout_ms=window_ms), cleanup=NONE)
    async def work(slot: Slot, label: str) -> str:
        started.append(label)
        if label == "first":
            await gate.wait()
        return label

    slot = Slot()
    first = asyncio.create_task(work(slot, "first"))
    await until(lambda: started == ["first"])
    late = [
        asyncio.create_task(work(slot, "late-normal")),
        asyncio.create_task(work.with_priority(OperationPriority.HIGH)(slot, "late-high")),
        asyncio.create_task(work.with_priority(OperationPriority.LOW)(slot, "late-low")),
    ]
    for _ in range(20):
        await asyncio.sleep(0)
    if window_ms:
        await asyncio.sleep(window_ms / 1000 * 2)
    assert started == ["first"], "the next window resolved before the winner ended"
    assert not any(t.done() for t in late)

    gate.set()
    results = await asyncio.wait_for(
        asyncio.gather(first, *late, return_exceptions=True), timeout=5
    )
    assert results[0] == "first"
    assert results[2] == "late-high"
    assert isinstance(results[1], OperationRejectedError)
    assert isinstance(results[3], OperationRejectedError)
    assert started == ["first", "late-high"]
    assert runtime.backend.coordinator.in_flight() == 0


@pytest.mark.parametrize("window_ms", [0, 5])
async def test_winners_on_one_target_never_overlap_and_every_caller_finishes(
    runtime: Runtime, window_ms: int
) -> None:
    running: dict[UUID, int] = defaultdict(int)
    peak: dict[UUID, int] = defaultdict(int)

    @with_conflict_resolution(pre_ecs=PreECSConfig(staging_timeout_ms=window_ms), cleanup=NONE)
    async def work(slot: Slot) -> None:
        running[slot.ecs_id] += 1
        peak[slot.ecs_id] = max(peak[slot.ecs_id], running[slot.ecs_id])
        await asyncio.sleep(0.001)
        slot.value += 1
        running[slot.ecs_id] -= 1

    slots = [Slot(), Slot()]
    tasks: list[asyncio.Task[None]] = []
    for i in range(60):
        prio = OperationPriority.HIGH if i % 7 == 0 else OperationPriority.NORMAL
        tasks.append(asyncio.create_task(work.with_priority(prio)(slots[i % 2])))
        if i % 3 == 0:
            await asyncio.sleep(0)
        if i % 10 == 0:
            await asyncio.sleep(0.001)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)

    successes = sum(r is None for r in results)
    rejections = sum(isinstance(r, OperationRejectedError) for r in results)
    assert successes + rejections == 60
    assert successes >= 2
    assert set(peak.values()) == {1}
    assert sum(s.value for s in slots) == successes
    assert runtime.backend.coordinator.in_flight() == 0


async def test_twenty_targets_all_run_at_once(runtime: Runtime) -> None:
    """Each call waits until all 20 are inside: only possible if none waits for another."""
    inside = 0
    all_in = asyncio.Event()

    @with_conflict_resolution()
    async def work(slot: Slot) -> int:
        nonlocal inside
        inside += 1
        if inside == 20:
            all_in.set()
        await all_in.wait()
        return slot.value

    slots = [Slot(value=i) for i in range(20)]
    results = await asyncio.wait_for(asyncio.gather(*(work(s) for s in slots)), timeout=5)
    assert results == list(range(20))


async def test_full_window_rejects_extra_calls_with_a_reason(runtime: Runtime) -> None:
    @with_conflict_resolution(pre_ecs=PreECSConfig(max_pending_per_target=2), cleanup=NONE)
    async def touch(slot: Slot) -> int:
        return 1

    slot = Slot()
    results = await asyncio.gather(*(touch(slot) for _ in range(4)), return_exceptions=True)
    assert sum(r == 1 for r in results) == 1
    full = [
        r
        for r in results
        if isinstance(r, OperationRejectedError) and "max_pending_per_target" in str(r)
    ]
    assert len(full) == 2
    assert all(r.winner_id is None for r in full)


# --- cancellation ------------------------------------------------------------------------------


async def _records(rt: Runtime, slot: Slot) -> dict[OperationStatus, int]:
    counts: dict[OperationStatus, int] = defaultdict(int)
    for op in await rt.registry.operations_for_target(slot.ecs_id):
        counts[op.status] += 1
    return counts


@pytest.mark.parametrize("window_ms", [0, 20])
@pytest.mark.parametrize("victim", [0, 1, 2])
async def test_caller_cancelled_while_staged(runtime: Runtime, window_ms: int, victim: int) -> None:
    @with_conflict_resolution(pre_ecs=PreECSConfig(staging_timeout_ms=window_ms), cleanup=NONE)
    async def touch(slot: Slot, label: int) -> int:
        slot.value += 1
        return label

    slot = Slot()
    coord = runtime.backend.coordinator
    prios = [OperationPriority.NORMAL, OperationPriority.HIGH, OperationPriority.LOW]
    tasks = [asyncio.create_task(touch.with_priority(p)(slot, i)) for i, p in enumerate(prios)]
    await until(lambda: len(coord.pending(slot.ecs_id)) == 3)
    tasks[victim].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)

    assert isinstance(results[victim], asyncio.CancelledError)
    remaining = [i for i in range(3) if i != victim]
    expected_winner = max(remaining, key=lambda i: prios[i])
    assert results[expected_winner] == expected_winner
    for i in remaining:
        if i != expected_winner:
            assert isinstance(results[i], OperationRejectedError)
    assert slot.value == 1
    assert await _records(runtime, slot) == {
        OperationStatus.CANCELLED: 1,
        OperationStatus.REJECTED: 1,
    }
    assert coord.in_flight() == 0
    assert await asyncio.wait_for(touch(slot, 9), timeout=5) == 9


@pytest.mark.parametrize("window_ms", [0, 20])
async def test_every_staged_caller_cancelled_leaves_the_target_usable(
    runtime: Runtime, window_ms: int
) -> None:
    @with_conflict_resolution(pre_ecs=PreECSConfig(staging_timeout_ms=window_ms), cleanup=NONE)
    async def touch(slot: Slot) -> int:
        slot.value += 1
        return slot.value

    slot = Slot()
    coord = runtime.backend.coordinator
    tasks = [asyncio.create_task(touch(slot)) for _ in range(3)]
    await until(lambda: len(coord.pending(slot.ecs_id)) == 3)
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert await _records(runtime, slot) == {OperationStatus.CANCELLED: 3}
    assert coord.in_flight() == 0
    assert slot.value == 0
    assert await asyncio.wait_for(touch(slot), timeout=5) == 1


@pytest.mark.parametrize("window_ms", [0, 10])
async def test_caller_cancelled_while_executing_hands_target_to_next_window(
    runtime: Runtime, window_ms: int
) -> None:
    gate = asyncio.Event()
    started: list[str] = []

    @with_conflict_resolution(pre_ecs=PreECSConfig(staging_timeout_ms=window_ms), cleanup=NONE)
    async def work(slot: Slot, label: str) -> str:
        started.append(label)
        if label == "blocker":
            await gate.wait()
        return label

    slot = Slot()
    blocker = asyncio.create_task(work(slot, "blocker"))
    await until(lambda: started == ["blocker"])
    queued = asyncio.create_task(work(slot, "queued"))
    for _ in range(5):
        await asyncio.sleep(0)
    blocker.cancel()
    results = await asyncio.wait_for(
        asyncio.gather(blocker, queued, return_exceptions=True), timeout=5
    )
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == "queued"
    assert await _records(runtime, slot) == {OperationStatus.CANCELLED: 1}
    assert runtime.backend.coordinator.in_flight() == 0
    assert await asyncio.wait_for(work(slot, "after"), timeout=5) == "after"


async def test_winner_cancelled_after_winning_but_before_running(runtime: Runtime) -> None:
    """The window closed with a winner that never got to run: the target must be handed on."""
    ran: list[str] = []

    @with_conflict_resolution(cleanup=NONE)
    async def work(slot: Slot, label: str) -> str:
        ran.append(label)
        return label

    slot = Slot()
    normal = asyncio.create_task(work(slot, "normal"))
    high = asyncio.create_task(work.with_priority(OperationPriority.HIGH)(slot, "high"))

    def cancel_winner(event: OperationRejectedEvent) -> None:
        high.cancel()

    runtime.events.subscribe(OperationRejectedEvent, cancel_winner)
    results = await asyncio.wait_for(
        asyncio.gather(normal, high, return_exceptions=True), timeout=5
    )
    assert isinstance(results[0], OperationRejectedError)
    assert isinstance(results[1], asyncio.CancelledError)
    assert ran == []
    assert await _records(runtime, slot) == {
        OperationStatus.REJECTED: 1,
        OperationStatus.CANCELLED: 1,
    }
    assert runtime.backend.coordinator.in_flight() == 0
    assert await asyncio.wait_for(work(slot, "after"), timeout=5) == "after"


async def test_failed_winner_hands_target_to_next_window(runtime: Runtime) -> None:
    gate = asyncio.Event()

    @with_conflict_resolution(cleanup=NONE)
    async def work(slot: Slot, label: str) -> str:
        if label == "boom":
            await gate.wait()
            raise ValueError("boom")
        return label

    slot = Slot()
    boom = asyncio.create_task(work(slot, "boom"))
    await until(lambda: runtime.backend.coordinator.running(slot.ecs_id) is not None)
    queued = asyncio.create_task(work(slot, "queued"))
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(boom, queued, return_exceptions=True), 5)
    assert isinstance(results[0], ValueError)
    assert results[1] == "queued"
    assert await _records(runtime, slot) == {OperationStatus.FAILED: 1}


# --- random interleavings ----------------------------------------------------------------------

call_plan = st.tuples(
    st.integers(0, 2),  # target
    st.sampled_from([1, 2, 5, 8, 10]),  # priority
    st.integers(0, 3),  # ticks to wait before submitting
    st.integers(0, 2),  # ticks the function body awaits
    st.sampled_from([None, 0, 1, 3]),  # cancel after this many ticks (None: never)
    st.sampled_from([None, None, 0, 1, 5, 1_000]),  # per-call max wait in ms (None: reject)
)


@settings(max_examples=50, deadline=None, phases=[Phase.generate])
@given(window_ms=st.sampled_from([0, 0, 2]), plans=st.lists(call_plan, min_size=1, max_size=12))
def test_random_interleavings_keep_every_promise(
    window_ms: int, plans: list[tuple[int, int, int, int, int | None, int | None]]
) -> None:
    """Whatever the timing, with callers rejecting or waiting (some past their deadline): every
    caller finishes, winners never overlap, no slot leaks, every record ends as its caller was
    told, and a call rejected by a window always lost to a winner of at least its priority."""
    rt = make_runtime()
    conflicts = EventRecorder(rt, OperationConflictEvent).events
    slots = [Slot(), Slot(), Slot()]
    running: dict[UUID, int] = defaultdict(int)
    overlap: list[UUID] = []

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(staging_timeout_ms=window_ms), cleanup=KEEP_EVERY_ZOMBIE, runtime=rt
    )
    async def work(slot: Slot, body_ticks: int) -> None:
        running[slot.ecs_id] += 1
        if running[slot.ecs_id] > 1:
            overlap.append(slot.ecs_id)
        try:
            for _ in range(body_ticks):
                await asyncio.sleep(0)
        finally:
            running[slot.ecs_id] -= 1

    async def canceller(task: asyncio.Task[None], after: int) -> None:
        for _ in range(after):
            await asyncio.sleep(0)
        task.cancel()

    async def scenario() -> list[object]:
        tasks: list[asyncio.Task[None]] = []
        helpers: list[asyncio.Task[None]] = []
        for target, prio, before, body, cancel_after, max_wait in plans:
            for _ in range(before):
                await asyncio.sleep(0)
            call = work.with_priority(prio)
            if max_wait is not None:
                call = call.with_max_wait(max_wait)
            task = asyncio.create_task(call(slots[target], body))
            tasks.append(task)
            if cancel_after is not None:
                helpers.append(asyncio.create_task(canceller(task, cancel_after)))
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
        await asyncio.gather(*helpers)
        await asyncio.sleep(0.002)
        return results

    results = asyncio.run(scenario())
    assert overlap == []
    assert rt.backend.coordinator.in_flight() == 0
    assert rt.backend.coordinator._waiting == {}  # type: ignore[attr-defined]
    for r in results:
        assert r is None or isinstance(r, (OperationRejectedError, asyncio.CancelledError)), r
    records = [op for s in slots for op in asyncio.run(rt.registry.operations_for_target(s.ecs_id))]
    assert all(op.is_terminal for op in records)
    assert sum(isinstance(r, asyncio.CancelledError) for r in results) == sum(
        op.status is OperationStatus.CANCELLED for op in records
    )
    assert sum(isinstance(r, OperationRejectedError) for r in results) == sum(
        op.status is OperationStatus.REJECTED for op in records
    )
    if any(p[5] for p in plans):
        return  # a waiter ages: it may win a window against a higher priority, by design
    priority = {op.ecs_id: op.priority for op in records if op.status is OperationStatus.REJECTED}
    for event in conflicts:
        for loser in event.rejected_ids:
            if loser in priority:
                assert priority[loser] <= event.winner_priority


async def test_a_caller_that_once_swallowed_a_cancellation_still_wins_by_priority(
    runtime: Runtime,
) -> None:
    """Python 3.11 keeps task.cancelling() raised after a swallowed CancelledError; only a
    cancellation requested while the call is staged may cost it the window."""

    @with_conflict_resolution()
    async def deposit(a: Slot, x: int) -> Slot:
        a.value += x
        return a

    async def critical(a: Slot) -> Slot:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        assert task.cancelling() == 1
        return await deposit.with_priority(OperationPriority.CRITICAL)(a, 100)

    async def low(a: Slot) -> Slot:
        await asyncio.sleep(0)
        return await deposit.with_priority(OperationPriority.LOW)(a, 1)

    account = Slot()
    won, lost = await asyncio.gather(critical(account), low(account), return_exceptions=True)
    assert won is account
    assert isinstance(lost, OperationRejectedError) and lost.winner_priority == 10
    assert account.value == 100


async def test_a_nested_call_on_a_held_target_runs_inside_the_enclosing_call(
    runtime: Runtime,
) -> None:
    """Staging it would wait for a release that comes only after it returns."""

    @with_conflict_resolution()
    async def add(s: Slot, x: int) -> None:
        s.value += x

    @with_conflict_resolution()
    async def add_twice(s: Slot, x: int) -> None:
        await add(s, x)
        s.value += x

    slot = Slot()
    await asyncio.wait_for(add_twice(slot, 1), 5)
    assert slot.value == 2
    assert slot.version == 1  # one commit: the nested call is part of the enclosing one
    assert runtime.backend.coordinator.in_flight() == 0  # type: ignore[attr-defined]
    assert await runtime.registry.operations_for_target(slot.ecs_id) == []


@pytest.mark.parametrize("policy", ["reject", "wait"])
@pytest.mark.parametrize("cancel_after_ticks", [0, 1, 2])
async def test_a_contended_window_with_a_cancelled_caller_leaves_no_reference_cycle(
    runtime: Runtime, policy: str, cancel_after_ticks: int
) -> None:
    """Tasks, records and errors of a window where one caller was cancelled are freed when
    dropped, not left for the cycle collector (about 95 objects per call were)."""
    import gc
    import weakref

    pre_ecs = PreECSConfig(conflict_policy=policy, max_wait_ms=1_000) if policy == "wait" else None

    @with_conflict_resolution(pre_ecs=pre_ecs, cleanup="immediate")
    async def touch(slot: Slot) -> int:
        await asyncio.sleep(0)
        slot.value += 1
        return slot.value

    async def window() -> list[weakref.ref[asyncio.Task[int]]]:
        slot = Slot()
        tasks = [asyncio.create_task(touch(slot)) for _ in range(5)]
        for _ in range(cancel_after_ticks):
            await asyncio.sleep(0)
        tasks[2].cancel()
        await asyncio.wait(tasks)
        for t in tasks:
            if not t.cancelled():
                t.exception()
        return [weakref.ref(t) for t in tasks]

    await window()
    gc.collect()
    gc.disable()
    try:
        refs = await window()
        await asyncio.sleep(0)
        assert [r() for r in refs] == [None] * 5
        assert gc.collect() == 0
    finally:
        gc.enable()


@pytest.mark.parametrize("held_first", [True, False])
async def test_a_nested_call_on_a_held_and_an_unheld_entity_fails_at_once(
    runtime: Runtime, held_first: bool
) -> None:
    """With the held entity as its primary target it used to wait on itself forever; with the
    unheld one first, under OCC, its commit made the enclosing call conflict and each retry
    committed it again (account 96, fees 4 after one withdraw). Now it raises before running,
    and nothing is written."""
    from contend import OCCConfig

    @with_conflict_resolution(occ=OCCConfig(max_retries=3, base_delay_ms=0))
    async def charge_fee(a: Slot, b: Slot) -> None:
        account, fees = (a, b) if held_first else (b, a)
        account.value -= 1
        fees.value += 1

    account, fees = Slot(value=100), Slot()

    @with_conflict_resolution(occ=OCCConfig(max_retries=3, base_delay_ms=0))
    async def withdraw(account: Slot, amount: int) -> None:
        account.value -= amount
        await (charge_fee(account, fees) if held_first else charge_fee(fees, account))

    with pytest.raises(NestedCallError, match="holds 1 of its 2 entities"):
        await asyncio.wait_for(withdraw(account, 10), 2)
    assert (account.value, fees.value) == (100, 0)
    assert (account.version, fees.version) == (0, 0)
    (record,) = await runtime.registry.zombies(account.ecs_id)
    assert record.status is OperationStatus.FAILED
    assert "NestedCallError" in (record.error_message or "")
    assert runtime.backend.coordinator.in_flight() == 0  # type: ignore[attr-defined]


async def test_functions_decorated_per_request_are_not_kept_by_staging(runtime: Runtime) -> None:
    """The coordinator kept the staging config of every function ever called on it: a service
    decorating a function per request or per session (a tool built for each agent run) grew by
    ~0.7 KB per decoration, forever."""
    import gc
    import weakref

    def make_tool() -> Callable[[Slot], Any]:
        @with_conflict_resolution()
        async def tool(s: Slot) -> None:
            s.value += 1

        return tool

    slot = Slot()
    first = make_tool()
    await asyncio.gather(first(slot), first(slot), return_exceptions=True)
    config = weakref.ref(first.conflict_config.pre_ecs)
    del first
    for _ in range(1_500):
        tool = make_tool()
        await asyncio.gather(tool(slot), tool(slot), return_exceptions=True)
    del tool
    gc.collect()
    assert config() is None
    assert slot.value == 1_501
