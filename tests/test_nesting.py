"""Nested calls (contend.nesting): calls made inside a protected call, in its task or in tasks it
spawned, join it; they never wait for it, never commit twice, and never write to thrown-away
copies."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

import pytest

from contend import Entity, NestedCallError, OCCConfig, Runtime, with_conflict_resolution


class Slot(Entity):
    value: int = 0


def _account_ops(occ: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    @with_conflict_resolution(occ=occ)
    async def deposit(s: Slot, x: int) -> None:
        await asyncio.sleep(0)
        s.value += x

    @with_conflict_resolution(occ=occ)
    async def withdraw(s: Slot, x: int) -> None:
        await asyncio.sleep(0)
        s.value -= x

    return deposit, withdraw


@pytest.mark.parametrize("occ", [False, True])
@pytest.mark.parametrize("spawn", ["gather", "task_group", "create_task"])
async def test_nested_calls_in_tasks_the_enclosing_call_awaits_join_it(
    runtime: Runtime, occ: bool, spawn: str
) -> None:
    """``await asyncio.gather(withdraw(src, x), deposit(dst, x))`` inside a protected transfer
    waited forever: each nested call ran in a task of its own and was staged behind the transfer
    that held its target and awaited it (with OCC, the deposit committed before the hang). Tasks
    spawned inside a protected call now join it, as nested calls in its own task do."""
    deposit, withdraw = _account_ops(occ)

    @with_conflict_resolution(occ=occ)
    async def transfer(src: Slot, dst: Slot, x: int) -> None:
        if spawn == "gather":
            await asyncio.gather(withdraw(src, x), deposit(dst, x))
        elif spawn == "task_group":
            async with asyncio.TaskGroup() as group:
                group.create_task(withdraw(src, x))
                group.create_task(deposit(dst, x))
        else:
            await asyncio.create_task(withdraw(src, x))
            await asyncio.create_task(deposit(dst, x))

    src, dst = Slot(value=100), Slot()
    await asyncio.wait_for(transfer(src, dst, 10), 2)
    assert (src.value, dst.value) == (90, 10)
    assert (src.version, dst.version) == (1, 1)  # one commit: the transfer's
    assert runtime.backend.coordinator.in_flight() == 0  # type: ignore[attr-defined]
    assert await runtime.registry.zombies() == []


async def test_a_call_in_a_spawned_task_on_a_held_and_an_unheld_entity_fails_at_once(
    runtime: Runtime,
) -> None:
    @with_conflict_resolution(occ=True)
    async def move(a: Slot, b: Slot) -> None:
        a.value += 1
        b.value += 1

    @with_conflict_resolution(occ=True)
    async def outer(a: Slot) -> None:
        await asyncio.gather(move(a, elsewhere))

    held, elsewhere = Slot(), Slot()
    with pytest.raises(NestedCallError, match="holds 1 of its 2 entities"):
        await asyncio.wait_for(outer(held), 2)
    assert (held.value, elsewhere.value, held.version, elsewhere.version) == (0, 0, 0, 0)


@pytest.mark.parametrize("occ", [False, True])
async def test_a_joined_call_still_running_when_the_enclosing_function_returns_is_awaited(
    runtime: Runtime, occ: bool
) -> None:
    """A task spawned inside and not awaited joins while the enclosing call runs; its write
    lands in the enclosing commit, which waits for it (it would otherwise be lost with the
    working copies, or land on the entity after its release, unguarded)."""

    @with_conflict_resolution(occ=occ)
    async def slow_deposit(s: Slot, x: int) -> None:
        await asyncio.sleep(0.02)
        s.value += x

    spawned: list[asyncio.Task[None]] = []

    @with_conflict_resolution(occ=occ)
    async def open_account(s: Slot) -> None:
        spawned.append(asyncio.create_task(slow_deposit(s, 5)))
        await asyncio.sleep(0)  # the bonus deposit starts, and joins
        s.value += 1

    slot = Slot()
    await asyncio.wait_for(open_account(slot), 2)
    assert spawned[0].done()
    assert (slot.value, slot.version) == (6, 1)


async def test_a_task_spawned_inside_that_calls_after_the_enclosing_call_is_staged(
    runtime: Runtime,
) -> None:
    """Fire and forget: a task spawned inside that makes its call once the enclosing call has
    returned is a call of its own (its own window and commit), as before."""
    deposit, _ = _account_ops(True)
    later: list[asyncio.Task[None]] = []

    @with_conflict_resolution(occ=True)
    async def open_account(s: Slot) -> None:
        s.value += 1
        later.append(asyncio.create_task(deposit(s, 5)))  # starts after open_account returns

    slot = Slot()
    await asyncio.wait_for(open_account(slot), 2)
    assert (slot.value, slot.version) == (1, 1)
    await asyncio.wait_for(later[0], 2)
    assert (slot.value, slot.version) == (6, 2)


async def test_a_task_left_by_a_failed_attempt_makes_a_call_of_its_own(runtime: Runtime) -> None:
    """Under OCC, a task spawned by an attempt that then conflicts holds that attempt's working
    copies; calling while the retry runs, it must not join the retry (its write would go to
    copies that are thrown away, reported as a success): it makes a call of its own."""
    go, done = asyncio.Event(), asyncio.Event()
    left: list[asyncio.Task[None]] = []

    @with_conflict_resolution(pre_ecs=False, occ=True)
    async def interfere(s: Slot) -> None:
        s.value += 100

    @with_conflict_resolution(pre_ecs=False, occ=True)
    async def deposit(s: Slot, x: int) -> None:
        s.value += x

    async def deposit_later(s: Slot) -> None:
        await go.wait()
        await deposit(s, 5)
        done.set()

    @with_conflict_resolution(pre_ecs=False, occ=OCCConfig(max_retries=3, base_delay_ms=0))
    async def open_account(s: Slot) -> None:
        if not left:
            left.append(asyncio.create_task(deposit_later(s)))
            await asyncio.create_task(interfere(slot), context=outside)  # this attempt conflicts
        else:
            go.set()
            await done.wait()
        s.value += 1

    slot = Slot()
    outside = contextvars.copy_context()
    await asyncio.wait_for(open_account(slot), 2)
    await asyncio.wait_for(left[0], 2)
    assert slot.value == 106, "the interference, the left task's deposit and the retried call"
