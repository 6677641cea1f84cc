"""The registry: committed entities and operation records, looked up by id, target and status."""

from __future__ import annotations

import asyncio

import pytest

from contend import (
    CleanupStrategy,
    ConflictResolutionOperation,
    Entity,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)

S = OperationStatus


class Box(Entity):
    value: int = 0


async def _fail(rt: Runtime, *targets: Box) -> ConflictResolutionOperation:
    @with_conflict_resolution(cleanup=CleanupStrategy.NONE, runtime=rt)
    async def fail(*boxes: Box) -> None:
        raise ValueError("x")

    with pytest.raises(ValueError):
        await fail(*targets)
    found = await rt.registry.operations_for_target(targets[0].ecs_id)
    return found[-1]


async def test_entity_is_registered_on_first_use_and_committed_instance_kept(
    runtime: Runtime,
) -> None:
    @with_conflict_resolution()
    async def touch(box: Box) -> None:
        box.value += 1

    box = Box()
    assert await runtime.registry.get_entity(box.ecs_id) is None
    await touch(box)
    assert await runtime.registry.get_entity(box.ecs_id) is box
    copy = box.model_copy()
    await touch(copy)
    assert await runtime.registry.get_entity(box.ecs_id) is box
    assert box.value == 2


async def test_get_entity_with_a_kind_checks_the_class(runtime: Runtime) -> None:
    class Crate(Entity):
        items: int = 0

    box = Box()
    await runtime.registry.register(box)
    found: Box | None = await runtime.registry.get_entity(box.ecs_id, Box)
    assert found is box
    assert await runtime.registry.get_entity(Crate().ecs_id, Crate) is None
    with pytest.raises(TypeError, match=r"is a Box, not a Crate"):
        await runtime.registry.get_entity(box.ecs_id, Crate)


async def test_register_ahead_of_first_call(runtime: Runtime) -> None:
    box = Box(value=4)
    assert await runtime.registry.register(box) is box
    assert await runtime.registry.register(box.model_copy()) is box


async def test_lookups_by_id_target_and_status(runtime: Runtime) -> None:
    a, b, c = Box(), Box(), Box()
    op_ab = await _fail(runtime, a, b)
    op_c = await _fail(runtime, c)
    reg = runtime.registry

    assert await reg.get_operation(op_ab.ecs_id) is op_ab
    assert await reg.get_operation(op_c.ecs_id) is op_c
    assert await reg.operations_for_target(a.ecs_id) == [op_ab]
    assert await reg.operations_for_target(b.ecs_id) == [op_ab], "secondary targets are indexed"
    assert await reg.operations_for_target(c.ecs_id) == [op_c]
    failed = await reg.operations_with_status(S.FAILED)
    assert {op.ecs_id for op in failed} == {op_ab.ecs_id, op_c.ecs_id}
    assert await reg.operations_with_status(S.PENDING) == []
    assert reg.zombie_count == 2
    counts = await reg.zombie_counts_by_target()
    assert counts == {a.ecs_id: 1, c.ecs_id: 1}


async def test_status_index_follows_transitions(runtime: Runtime) -> None:
    gate = asyncio.Event()
    reg = runtime.registry

    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def work(box: Box) -> None:
        await gate.wait()

    box = Box()
    task = asyncio.create_task(work(box))
    for _ in range(5):
        await asyncio.sleep(0)
    [running] = await reg.operations_with_status(S.EXECUTING)
    assert running.target_entity_id == box.ecs_id
    assert await reg.operations_with_status(S.PENDING) == []
    gate.set()
    await task
    assert await reg.operations_with_status(S.EXECUTING) == []
    assert await reg.operations_with_status(S.SUCCEEDED) == [], "succeeded records leave"
    assert await reg.get_operation(running.ecs_id) is None


async def test_one_remove_takes_a_record_out_of_every_index(runtime: Runtime) -> None:
    a, b = Box(), Box()
    op = await _fail(runtime, a, b)
    keep = await _fail(runtime, a)
    reg = runtime.registry

    assert await reg.remove(op.ecs_id) is True
    assert await reg.get_operation(op.ecs_id) is None
    assert await reg.operations_for_target(a.ecs_id) == [keep]
    assert await reg.operations_for_target(b.ecs_id) == []
    assert await reg.operations_with_status(S.FAILED) == [keep]
    assert await reg.zombies() == [keep]
    assert await reg.zombies(a.ecs_id) == [keep]
    assert await reg.zombie_counts_by_target() == {a.ecs_id: 1}
    assert reg.zombie_count == 1
    assert runtime.cleanup.removed["manual"] == 1

    assert await reg.remove(op.ecs_id) is False, "a second remove finds nothing"
    assert reg.zombie_count == 1
    assert runtime.cleanup.removed["manual"] == 1


async def test_removing_a_record_in_flight_is_refused(runtime: Runtime) -> None:
    gate = asyncio.Event()

    @with_conflict_resolution()
    async def work(box: Box) -> None:
        await gate.wait()

    box = Box()
    task = asyncio.create_task(work(box))
    for _ in range(5):
        await asyncio.sleep(0)
    [running] = await runtime.registry.operations_with_status(S.EXECUTING)
    with pytest.raises(ValueError, match="executing"):
        await runtime.registry.remove(running.ecs_id)
    gate.set()
    await task


async def test_conflicting_operations_are_the_others_in_flight_on_any_target(
    runtime: Runtime,
) -> None:
    gates = {name: asyncio.Event() for name in ("ab", "b", "c")}
    reg = runtime.registry

    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def work(name: str, *boxes: Box) -> None:
        await gates[name].wait()

    a, b, c = Box(), Box(), Box()
    done = await _fail(runtime, b)
    tasks = [
        asyncio.create_task(work("ab", a, b)),
        asyncio.create_task(work("b", b)),
        asyncio.create_task(work("c", c)),
    ]
    for _ in range(10):
        await asyncio.sleep(0)
    running = {op.target_entity_ids: op for op in await reg.operations_with_status(S.EXECUTING)}
    op_ab = running[(a.ecs_id, b.ecs_id)]
    op_b = running[(b.ecs_id,)]
    op_c = running[(c.ecs_id,)]

    assert [op.ecs_id for op in await reg.conflicting_operations(op_ab)] == [op_b.ecs_id]
    assert [op.ecs_id for op in await reg.conflicting_operations(op_b)] == [op_ab.ecs_id]
    assert await reg.conflicting_operations(op_c) == []
    assert done.ecs_id not in {op.ecs_id for op in await reg.conflicting_operations(op_b)}

    for g in gates.values():
        g.set()
    await asyncio.gather(*tasks)
    assert await reg.conflicting_operations(op_ab) == []


async def test_pending_calls_show_up_as_conflicting(runtime: Runtime) -> None:
    gate = asyncio.Event()
    reg = runtime.registry

    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def work(box: Box) -> None:
        await gate.wait()

    box = Box()
    first = asyncio.create_task(work(box))
    for _ in range(5):
        await asyncio.sleep(0)
    second = asyncio.create_task(work(box))
    for _ in range(5):
        await asyncio.sleep(0)
    [pending] = await reg.operations_with_status(S.PENDING)
    [executing] = await reg.operations_with_status(S.EXECUTING)
    assert [op.ecs_id for op in await reg.conflicting_operations(executing)] == [pending.ecs_id]
    gate.set()
    await asyncio.gather(first, second)


async def test_the_registry_holds_an_entity_no_longer_than_the_application_does(
    runtime: Runtime,
) -> None:
    """Many calls on fresh entities the caller then drops: the registry must not keep them all
    (it did: every entity ever passed, +185 MiB over 300,000). One the application still holds,
    or a call in flight holds, stays registered and keeps its committed state."""
    import gc
    import weakref

    gate = asyncio.Event()

    @with_conflict_resolution(cleanup="immediate")
    async def touch(box: Box, wait: bool = False) -> int:
        if wait:
            await gate.wait()
        box.value += 1
        return box.value

    backend = runtime.backend
    kept = Box()
    await touch(kept)
    samples: list[weakref.ref[Box]] = []
    gc.disable()
    try:
        for i in range(5_000):
            fresh = Box()
            if i % 500 == 0:
                samples.append(weakref.ref(fresh))
            assert await touch(fresh) == 1
        del fresh
        assert [s() for s in samples] == [None] * len(samples)
        assert backend.entity_count() == 1  # type: ignore[attr-defined]
        assert await runtime.registry.get_entity(kept.ecs_id) is kept
        assert kept.value == 1

        in_flight = asyncio.create_task(touch(Box(), True))
        await asyncio.sleep(0)
        assert backend.entity_count() == 2  # type: ignore[attr-defined]
        gate.set()
        assert await in_flight == 1
        del in_flight
        assert backend.entity_count() == 1  # type: ignore[attr-defined]
    finally:
        gc.enable()
    copy = Box(ecs_id=kept.ecs_id, version=kept.version, value=kept.value)
    assert await touch(copy) == 2  # a second instance of a held entity still meets the first
    assert kept.value == 2 and kept.version == 2


async def test_registry_lookups_take_an_id_as_text(runtime: Runtime) -> None:
    """A str id raised AttributeError."""

    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def fail(box: Box) -> None:
        raise ValueError("no")

    box = Box()
    with pytest.raises(ValueError):
        await fail(box)
    registry = runtime.registry
    (op,) = await registry.zombies(str(box.ecs_id))
    assert await registry.get_entity(str(box.ecs_id)) is box
    assert (await registry.get_operation(str(op.ecs_id))) is op
    assert await registry.operations_for_target(str(box.ecs_id)) == [op]
    with pytest.raises(ValueError, match="op_id: not a UUID"):
        await registry.get_operation("not-an-id")
    with pytest.raises(TypeError, match="target_id"):
        await registry.zombies(42)  # type: ignore[arg-type]
    assert await registry.remove(str(op.ecs_id))


async def test_a_record_is_removed_by_hand_given_the_operation_a_query_returned(
    runtime: Runtime,
) -> None:
    """registry.remove(op) with the operation zombies() returned raised "expected a UUID or its
    text", though a cleanup handler's remove(op) takes just that."""

    @with_conflict_resolution(cleanup="none")
    async def touch(account: Box) -> None:
        account.value += 1

    account = Box()
    await asyncio.gather(*(touch(account) for _ in range(3)), return_exceptions=True)
    first, second = await runtime.registry.zombies()
    assert await runtime.registry.remove(first) is True
    assert await runtime.registry.remove(first) is False
    assert await runtime.registry.remove(str(second.ecs_id)) is True
    assert runtime.cleanup.removed == {"manual": 2} and runtime.registry.zombie_count == 0
