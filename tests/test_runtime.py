"""The runtime: state per runtime, current/default runtimes, loops that come and go."""

from __future__ import annotations

import asyncio
import threading

import pytest

from contend import (
    CleanupStrategy,
    Entity,
    FakeClock,
    OperationRejectedError,
    OperationStatus,
    Runtime,
    RuntimeBindingError,
    get_runtime,
    reset_runtime,
    set_runtime,
    use_runtime,
    with_conflict_resolution,
)
from contend.testing import make_runtime


class Box(Entity):
    value: int = 0


def test_two_asyncio_runs_in_one_process_both_work() -> None:
    rt = make_runtime()

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def bump(box: Box) -> int:
        await asyncio.sleep(0)
        box.value += 1
        return box.value

    box = Box()

    async def round_() -> list[object]:
        solo = await bump(box)
        crowd = await asyncio.gather(*(bump(box) for _ in range(5)), return_exceptions=True)
        return [solo, *crowd]

    first = asyncio.run(round_())
    second = asyncio.run(round_())
    assert first[0] == 1
    assert sum(isinstance(r, int) for r in first) == 2
    assert sum(isinstance(r, OperationRejectedError) for r in first) == 4
    assert second[0] == 3
    assert sum(isinstance(r, int) for r in second) == 2
    assert sum(isinstance(r, OperationRejectedError) for r in second) == 4
    assert box.value == 4


def test_two_asyncio_runs_with_timed_windows_and_the_default_runtime() -> None:
    rt = Runtime(memory_probe=lambda: 0.0)
    previous = set_runtime(rt)
    try:

        @with_conflict_resolution(pre_ecs={"staging_timeout_ms": 5}, occ=True)
        async def bump(box: Box) -> int:
            box.value += 1
            return box.value

        box = Box()
        assert asyncio.run(bump(box)) == 1
        assert asyncio.run(bump(box)) == 2
        assert rt.backend.coordinator.in_flight() == 0
    finally:
        if previous is not None:
            set_runtime(previous)


def test_second_loop_while_the_first_runs_is_refused_not_hung() -> None:
    rt = Runtime(memory_probe=lambda: 0.0)

    @with_conflict_resolution(runtime=rt)
    async def hold(box: Box, until: threading.Event) -> None:
        await asyncio.to_thread(until.wait, 5)

    inside = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    async def first_loop() -> None:
        task = asyncio.create_task(hold(Box(), release))
        await asyncio.sleep(0)
        inside.set()
        await task

    t = threading.Thread(target=lambda: asyncio.run(first_loop()))
    t.start()
    try:
        assert inside.wait(5)
        already = threading.Event()
        already.set()
        try:
            asyncio.run(hold(Box(), already))
        except RuntimeBindingError as exc:
            errors.append(exc)
    finally:
        release.set()
        t.join(5)
    assert len(errors) == 1
    assert "another running event loop" in str(errors[0])


def test_use_runtime_nests_and_restores() -> None:
    outer, inner = Runtime(), Runtime()
    before = get_runtime()
    with use_runtime(outer):
        assert get_runtime() is outer
        with use_runtime(inner):
            assert get_runtime() is inner
        assert get_runtime() is outer
    assert get_runtime() is before


async def test_tasks_created_inside_use_runtime_inherit_it() -> None:
    rt = Runtime()

    async def which() -> Runtime:
        await asyncio.sleep(0)
        return get_runtime()

    with use_runtime(rt):
        task = asyncio.create_task(which())
    assert await task is rt


def test_set_and_reset_runtime_replace_the_process_default() -> None:
    original = get_runtime()
    mine = Runtime()
    try:
        assert set_runtime(mine) is original
        assert get_runtime() is mine
        fresh = reset_runtime()
        assert fresh is not mine
        assert get_runtime() is fresh
    finally:
        set_runtime(original)
    assert get_runtime() is original


def test_reset_runtime_forgets_state() -> None:
    original = get_runtime()
    try:
        rt = reset_runtime()

        @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
        async def fail(box: Box) -> None:
            raise ValueError("x")

        box = Box()
        with pytest.raises(ValueError):
            asyncio.run(fail(box))
        assert rt.backend.zombie_count == 1
        fresh = reset_runtime()
        assert fresh.backend.zombie_count == 0
        assert asyncio.run(fresh.registry.get_entity(box.ecs_id)) is None
    finally:
        set_runtime(original)


async def test_runtimes_are_isolated(runtime: Runtime) -> None:
    other = make_runtime()
    gate = asyncio.Event()

    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def here(box: Box) -> str:
        await gate.wait()
        return "here"

    @with_conflict_resolution(runtime=other, cleanup=CleanupStrategy.NONE)
    async def there(box: Box) -> str:
        return "there"

    box = Box()
    held = asyncio.create_task(here(box))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(there(box), 5) == "there", "other runtime has its own staging"
    gate.set()
    assert await held == "here"
    assert other.metrics.registry is not runtime.metrics.registry


async def test_runtime_clock_stamps_records(runtime: Runtime, clock: FakeClock) -> None:
    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def fail(box: Box) -> None:
        raise ValueError("x")

    clock.advance(minutes=5)
    box = Box()
    with pytest.raises(ValueError):
        await fail(box)
    [op] = await runtime.registry.zombies(box.ecs_id)
    assert op.status is OperationStatus.FAILED
    assert op.created_at == clock.now()
    assert op.completed_at == clock.now()


async def test_aclose_stops_background_work(runtime: Runtime) -> None:
    @with_conflict_resolution(cleanup=CleanupStrategy.DEFERRED)
    async def fail(box: Box) -> None:
        raise ValueError("x")

    with pytest.raises(ValueError):
        await fail(Box())
    assert runtime.cleanup.sweeper_running
    await runtime.aclose()
    assert not runtime.cleanup.sweeper_running
