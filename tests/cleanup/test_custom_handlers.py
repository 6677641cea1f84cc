"""Custom handlers: the design's integration test, what a handler decides, and handler failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictResolutionOperation,
    Entity,
    FakeClock,
    OperationRejectedError,
    OperationStatus,
    Runtime,
    cleanup_system_health_check,
    use_runtime,
    with_conflict_resolution,
)
from contend.testing import make_runtime


@pytest.fixture(autouse=True)
def _registry_restored() -> Iterator[None]:
    """Handlers registered by a test leave with it (the registry is process-wide)."""
    before = set(CleanupHandlerRegistry.names())
    yield
    for name in set(CleanupHandlerRegistry.names()) - before:
        CleanupHandlerRegistry.unregister(name)


class TestEntity(Entity):
    __test__ = False  # an entity, not a test class
    value: int


class Item(Entity):
    n: int = 0


# fmt: off
# --- the design's integration test, verbatim (it runs on the runtime the fixture made current) --
async def test_decorator_cleanup_integration(runtime):
    """Test decorator with cleanup configuration."""

    cleanup_events = []

    class TestCleanupHandler(CleanupHandler):
        async def handle_operation_rejection(self, operation):
            cleanup_events.append(operation.ecs_id)

    CleanupHandlerRegistry.register("test", TestCleanupHandler)

    @with_conflict_resolution(
        cleanup=CleanupConfig(
            strategy=CleanupStrategy.CUSTOM,
            custom_cleanup_handler="test"
        )
    )
    async def test_operation(entity: TestEntity) -> TestEntity:
        entity.value += 1
        return entity

    entity = TestEntity(value=10)

    # Submit conflicting operations
    tasks = [
        asyncio.create_task(test_operation(entity))
        for _ in range(5)
    ]

    results = await asyncio.gather(*tasks, return_exceptions=True)

    # Verify cleanup was called for rejected operations
    successes = [r for r in results if isinstance(r, TestEntity)]
    failures = [r for r in results if isinstance(r, Exception)]

    assert len(successes) == 1
    assert len(failures) == 4
    assert len(cleanup_events) == 4  # All rejected operations cleaned up
# ----------------------------------------------------------------------------------------------
# fmt: on


async def test_integration_with_a_pressured_runtime_probe(clock: FakeClock) -> None:
    """The same scenario where memory pressure is high: the handler is bypassed, all cleaned."""
    seen: list[Any] = []

    class Recording(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            seen.append(operation.ecs_id)

    CleanupHandlerRegistry.register("recording", Recording)
    rt = make_runtime(clock=clock, memory_pressure=0.9)
    with use_runtime(rt):

        @with_conflict_resolution(
            cleanup=CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="recording"
            )
        )
        async def op(entity: TestEntity) -> TestEntity:
            entity.value += 1
            return entity

        entity = TestEntity(value=10)
        results = await asyncio.gather(*(op(entity) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(r, OperationRejectedError) for r in results) == 4
    assert seen == []
    assert rt.cleanup.removed == {"pressure": 4}
    assert entity.value == 11


def custom(rt: Runtime, name: str, timeout: float = 5.0) -> Callable[..., Any]:
    @with_conflict_resolution(
        cleanup=CleanupConfig(
            strategy=CleanupStrategy.CUSTOM,
            custom_cleanup_handler=name,
            handler_timeout_seconds=timeout,
        ),
        runtime=rt,
    )
    async def bump(item: Item) -> Item:
        item.n += 1
        return item

    return bump


async def test_register_works_as_a_class_decorator() -> None:
    @CleanupHandlerRegistry.register("as-decorator")
    class Decorated(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            return None

    assert Decorated.__name__ == "Decorated"
    assert CleanupHandlerRegistry.get("as-decorator") is Decorated
    assert isinstance(CleanupHandlerRegistry.create("as-decorator"), Decorated)
    with pytest.raises(ValueError, match="Unknown cleanup handler: 'missing'"):
        CleanupHandlerRegistry.get("missing")
    with pytest.raises(TypeError, match="handle_operation_rejection"):
        CleanupHandlerRegistry.register("not-a-handler", object)  # type: ignore[arg-type]


async def test_a_handler_that_removes(runtime: Runtime) -> None:
    @CleanupHandlerRegistry.register("remover")
    class Remover(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            await self.remove(operation)

    item = Item()
    await asyncio.gather(
        *(custom(runtime, "remover")(item) for _ in range(3)), return_exceptions=True
    )
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"custom": 2}
    assert (
        runtime.metrics.registry.get_sample_value(
            "contend_operations_cleaned_total", {"strategy": "custom"}
        )
        == 2
    )


async def test_a_handler_that_retains(runtime: Runtime, clock: FakeClock) -> None:
    @CleanupHandlerRegistry.register("retainer")
    class Retainer(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            await self.retain_for(operation, minutes=90)

    item = Item()
    await asyncio.gather(
        *(custom(runtime, "retainer")(item) for _ in range(3)), return_exceptions=True
    )
    clock.advance(minutes=89)
    for _ in range(10):
        await asyncio.sleep(0)
    assert runtime.registry.zombie_count == 2
    clock.advance(minutes=1)
    for _ in range(10):
        await asyncio.sleep(0)
    assert runtime.registry.zombie_count == 0
    assert runtime.cleanup.removed == {"ttl": 2}
    assert (
        runtime.metrics.registry.get_sample_value(
            "contend_operations_cleaned_total", {"strategy": "custom"}
        )
        == 2
    )


@pytest.mark.parametrize("minutes", [-1, float("nan"), float("inf"), 1e12])
async def test_retain_for_names_its_allowed_range(runtime: Runtime, minutes: float) -> None:
    """retain_for(minutes=inf) failed with "cannot convert float infinity to integer" and 1e12
    with "date value out of range"; the handler's failure now says what minutes may be."""
    retained: list[BaseException] = []

    @CleanupHandlerRegistry.register("retainer")
    class Retainer(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            try:
                await self.retain_for(operation, minutes=minutes)
            except ValueError as exc:
                retained.append(exc)

    item = Item()
    await asyncio.gather(
        *(custom(runtime, "retainer")(item) for _ in range(2)), return_exceptions=True
    )
    [error] = retained
    assert "retain_for: minutes must be a finite number of minutes >= 0" in str(error)
    assert repr(minutes) in str(error)
    assert runtime.registry.zombie_count == 1  # kept, nothing scheduled


async def test_a_handler_that_does_nothing(runtime: Runtime, clock: FakeClock) -> None:
    statuses: list[OperationStatus] = []

    @CleanupHandlerRegistry.register("bystander")
    class Bystander(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            statuses.append(operation.status)

    item = Item()
    await asyncio.gather(
        *(custom(runtime, "bystander")(item) for _ in range(3)), return_exceptions=True
    )
    clock.advance(hours=24)
    for _ in range(10):
        await asyncio.sleep(0)
    zombies = await runtime.registry.zombies(item.ecs_id)
    assert len(zombies) == 2
    assert {z.cleanup_handler_name for z in zombies} == {"bystander"}
    assert statuses == [OperationStatus.REJECTED] * 2
    assert runtime.cleanup.removed == {}


async def test_custom_handlers_see_failed_calls_too(runtime: Runtime) -> None:
    statuses: list[OperationStatus] = []

    @CleanupHandlerRegistry.register("status-recorder")
    class Recorder(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            statuses.append(operation.status)

    @with_conflict_resolution(
        cleanup=CleanupConfig(
            strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="status-recorder"
        ),
        runtime=runtime,
    )
    async def explode(item: Item) -> Item:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await explode(Item())
    assert statuses == [OperationStatus.FAILED]


class Raising(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        raise RuntimeError("audit store down")


class Slow(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        await asyncio.sleep(30)


class Garbage(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> Any:
        return "done!"


class Sync(CleanupHandler):
    def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:  # type: ignore[override]
        pass


class Plain:
    """Registered without subclassing CleanupHandler (the design's registry takes any class)."""

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> Any:
        return 0


class Cancelling(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        raise asyncio.CancelledError("handler gave up")


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        (Raising, "audit store down"),
        (Slow, "timed out after 0.05s"),
        (Garbage, "cleanup handler 'flaky' returned 'done!'"),
        (Plain, "cleanup handler 'flaky' returned 0"),
        (Sync, "flaky: handle_operation_rejection returned None, not an awaitable; define it"),
        (Cancelling, "CancelledError"),
    ],
)
async def test_a_failing_handler_is_counted_and_the_record_kept(
    runtime: Runtime, handler: type[CleanupHandler], why: str
) -> None:
    """Each failure names the handler as registered (a returned value was blamed on 'custom'),
    and a handler written with ``def`` says so (it was "object NoneType can't be used in
    'await' expression")."""
    CleanupHandlerRegistry.register("flaky", handler)
    bump = custom(runtime, "flaky", timeout=0.05)
    item = Item()
    results = await asyncio.gather(*(bump(item) for _ in range(3)), return_exceptions=True)
    assert isinstance(results[0], Item)
    assert all(isinstance(r, OperationRejectedError) for r in results[1:])
    assert runtime.registry.zombie_count == 2
    assert runtime.cleanup.handler_failures == 2
    assert runtime.cleanup.failed_handlers == {"flaky": 2}
    assert why in (runtime.cleanup.last_failure or "")
    assert (
        runtime.metrics.registry.get_sample_value(
            "contend_cleanup_failures_total", {"strategy": "custom"}
        )
        == 2
    )

    assert await bump(item) is item  # the coordinator still serves the target
    assert item.n == 2

    health = await cleanup_system_health_check(runtime)
    assert health["status"] == "unhealthy"
    assert health["failed_cleanup_handlers"] == {"flaky": 2}
    assert any("flaky" in issue for issue in health["issues"])


async def test_a_handler_unregistered_after_decoration_fails_softly(runtime: Runtime) -> None:
    CleanupHandlerRegistry.register("short-lived", Raising)
    bump = custom(runtime, "short-lived")
    CleanupHandlerRegistry.unregister("short-lived")
    item = Item()
    results = await asyncio.gather(*(bump(item) for _ in range(2)), return_exceptions=True)
    assert isinstance(results[1], OperationRejectedError)
    assert runtime.registry.zombie_count == 1
    assert runtime.cleanup.failed_handlers == {"short-lived": 1}
    assert "Unknown cleanup handler" in (runtime.cleanup.last_failure or "")


async def test_a_caller_cancelled_during_its_handler_leaves_the_handler_to_finish(
    runtime: Runtime,
) -> None:
    """The loser's caller is cancelled while its handler awaits: the caller sees CancelledError
    at once, and the handler still runs to the end and removes the record, failing nothing."""
    entered = asyncio.Event()
    gate = asyncio.Event()

    class Gated(CleanupHandler):
        async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
            entered.set()
            await gate.wait()
            await self.remove(operation)

    CleanupHandlerRegistry.register("gated", Gated)

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="gated")
    )
    async def touch(item: Item) -> int:
        item.n += 1
        return item.n

    item = Item()
    winner = asyncio.create_task(touch(item))
    loser = asyncio.create_task(touch(item))
    await entered.wait()
    loser.cancel()
    await asyncio.wait([winner, loser])
    assert winner.result() == 1
    assert loser.cancelled()
    [record] = await runtime.registry.zombies(item.ecs_id)
    assert record.status is OperationStatus.REJECTED
    gate.set()
    for _ in range(20):
        if runtime.cleanup.active_tasks == 0:
            break
        await asyncio.sleep(0)
    assert await runtime.registry.zombies(item.ecs_id) == []
    assert runtime.cleanup.removed["custom"] == 1
    assert runtime.cleanup.handler_failures == 0
    assert (await cleanup_system_health_check(runtime))["status"] == "healthy"
