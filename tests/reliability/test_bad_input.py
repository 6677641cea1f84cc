"""Every row of docs/bad-input.md: bad input is refused early with the field named, or handled as
documented."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import annotated_types
import pydantic
import pytest

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConfigurationError,
    ConflictResolutionConfig,
    ConflictResolutionMode,
    ConflictResolutionOperation,
    CustomCleanupHandler,
    Entity,
    FakeClock,
    OCCConfig,
    OperationRejectedError,
    OperationRejectedEvent,
    OperationStatus,
    PreECSConfig,
    Runtime,
    cleanup_system_health_check,
    with_conflict_resolution,
)
from contend.testing import Account, make_runtime

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
MODELS: dict[str, type[pydantic.BaseModel]] = {
    "PreECSConfig": PreECSConfig,
    "OCCConfig": OCCConfig,
    "CleanupConfig": CleanupConfig,
}
# Fields whose bound is only valid together with another setting.
CONTEXT: dict[str, dict[str, Any]] = {
    "retention_minutes": {"strategy": CleanupStrategy.CUSTOM, "custom_cleanup_handler": "noop"},
    "base_delay_ms": {"max_delay_ms": 60_000.0},
    "max_delay_ms": {"base_delay_ms": 0.0},
    "max_wait_ms": {"conflict_policy": "wait"},
}
ROW = re.compile(r"^\| `(\w+)\.(\w+)` \| (int|float) \| (≥|>) ([\d.]+) \| ≤ ([\d.]+) \|$")


@dataclasses.dataclass(frozen=True)
class Bound:
    model: str
    field: str
    kind: str
    lower_op: str
    lower: float
    upper: float

    def value(self, x: float) -> float | int:
        return int(x) if self.kind == "int" else x

    @property
    def step(self) -> float:
        return 1 if self.kind == "int" else 0.001

    def build(self, value: Any) -> pydantic.BaseModel:
        return MODELS[self.model](**{self.field: value, **CONTEXT.get(self.field, {})})


def _doc_bounds() -> list[Bound]:
    rows = [ROW.match(line) for line in DOC.read_text().splitlines()]
    return [Bound(m[1], m[2], m[3], m[4], float(m[5]), float(m[6])) for m in rows if m is not None]


BOUNDS = _doc_bounds()


def _refused_at(exc: pytest.ExceptionInfo[pydantic.ValidationError], field: str) -> None:
    locs = [e["loc"] for e in exc.value.errors()]
    assert (field,) in locs, f"error does not name {field}: {exc.value}"


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = make_runtime()
    yield runtime
    runtime.cleanup.stop()


# the bounds table -------------------------------------------------------------------------------
def test_the_doc_table_covers_every_bounded_config_field() -> None:
    documented = {(b.model, b.field) for b in BOUNDS}
    bounded = {
        (name, field)
        for name, model in MODELS.items()
        for field, info in model.model_fields.items()
        if any(
            isinstance(m, annotated_types.Ge | annotated_types.Gt | annotated_types.Le)
            for m in info.metadata
        )
    }
    assert documented == bounded


@pytest.mark.parametrize("bound", BOUNDS, ids=lambda b: f"{b.model}.{b.field}")
def test_each_documented_bound_is_accepted_at_and_refused_past(bound: Bound) -> None:
    info = MODELS[bound.model].model_fields[bound.field]
    ge = [m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)]
    gt = [m.gt for m in info.metadata if isinstance(m, annotated_types.Gt)]
    assert (ge or gt) == [bound.lower]
    assert bool(gt) == (bound.lower_op == ">")

    top = bound.value(bound.upper)
    assert getattr(bound.build(top), bound.field) == top
    with pytest.raises(pydantic.ValidationError) as high:
        bound.build(bound.value(bound.upper + bound.step))
    _refused_at(high, bound.field)

    if bound.lower_op == "≥":
        bottom = bound.value(bound.lower)
        assert getattr(bound.build(bottom), bound.field) == bottom
        below = bound.value(bound.lower - bound.step)
    else:
        assert getattr(bound.build(bound.lower + bound.step), bound.field) > bound.lower
        below = bound.value(bound.lower)
    with pytest.raises(pydantic.ValidationError) as low:
        bound.build(below)
    _refused_at(low, bound.field)


def test_every_row_of_the_doc_names_a_test_in_this_file() -> None:
    named = set(re.findall(r"`(test_\w+)`", DOC.read_text()))
    here = set(re.findall(r"^(?:async )?def (test_\w+)", Path(__file__).read_text(), re.M))
    assert len(named) >= 25
    assert named <= here, f"rows without a test: {sorted(named - here)}"


# config values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (PreECSConfig, "staging_timeout_ms", "soon"),
        (PreECSConfig, "max_pending_per_target", [5]),
        (OCCConfig, "max_retries", 1.5),
        (OCCConfig, "jitter", "a little"),
        (CleanupConfig, "retention_minutes", None),
        (CleanupConfig, "immediate_cleanup_priorities", 10),
        (CleanupConfig, "aggressive_on_memory_pressure", "maybe"),
    ],
)
def test_wrong_types_are_refused_at_the_field(
    model: type[pydantic.BaseModel], field: str, value: Any
) -> None:
    with pytest.raises(pydantic.ValidationError) as exc:
        model(**{field: value})
    _refused_at(exc, field)


@pytest.mark.parametrize("model", list(MODELS.values()))
def test_unknown_config_fields_are_refused(model: type[pydantic.BaseModel]) -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted") as exc:
        model(retention=5)
    _refused_at(exc, "retention")


def test_unknown_strategy_lists_the_allowed_values() -> None:
    with pytest.raises(pydantic.ValidationError) as exc:
        CleanupConfig(strategy="sometimes")  # type: ignore[arg-type]
    _refused_at(exc, "strategy")
    for allowed in ("none", "immediate", "deferred", "lazy", "custom"):
        assert f"'{allowed}'" in str(exc.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("model", "field"),
    [
        (CleanupConfig, "memory_pressure_threshold"),
        (CleanupConfig, "handler_timeout_seconds"),
        (OCCConfig, "jitter"),
        (OCCConfig, "base_delay_ms"),
    ],
)
def test_nan_and_infinity_are_refused(
    model: type[pydantic.BaseModel], field: str, value: float
) -> None:
    with pytest.raises(pydantic.ValidationError) as exc:
        model(**{field: value})
    _refused_at(exc, field)


@pytest.mark.parametrize("strategy", list(CleanupStrategy))
def test_strategy_names_are_accepted_as_strings(strategy: CleanupStrategy) -> None:
    extra = {"custom_cleanup_handler": "noop"} if strategy is CleanupStrategy.CUSTOM else {}
    config = CleanupConfig(strategy=strategy.value, **extra)  # type: ignore[arg-type]
    assert config.strategy is strategy


def test_numeric_strings_are_read_as_numbers() -> None:
    assert PreECSConfig(staging_timeout_ms="250").staging_timeout_ms == 250  # type: ignore[arg-type]
    assert OCCConfig(jitter="0.25").jitter == 0.25  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["immediate_cleanup_priorities", "debug_retention_priorities"])
@pytest.mark.parametrize("priority", [0, 11, -3])
def test_priority_lists_are_range_checked(field: str, priority: int) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"allowed range 1\.\.10") as exc:
        CleanupConfig(**{field: [priority]})
    _refused_at(exc, field)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strategy": CleanupStrategy.CUSTOM}, "custom_cleanup_handler"),
        ({"strategy": CleanupStrategy.DEFERRED, "retention_minutes": 0}, "retention_minutes"),
        ({"strategy": CleanupStrategy.NONE, "retention_minutes": 1441}, "retention_minutes"),
        (
            {"immediate_cleanup_priorities": [10, 2], "debug_retention_priorities": [2]},
            "debug_retention_priorities",
        ),
        ({"strategy": CleanupStrategy.LAZY, "custom_cleanup_handler": "noop"}, "custom_cleanup"),
    ],
)
def test_invalid_combinations_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CleanupConfig(**kwargs)


def test_unknown_entity_fields_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError) as exc:
        Account(balanse=5)  # type: ignore[call-arg]
    _refused_at(exc, "balanse")
    assert Account(balance=5).balance == 5


def test_a_base_delay_above_the_ceiling_is_refused() -> None:
    with pytest.raises(ValueError, match=r"base_delay_ms: must be <= max_delay_ms \(10.0\)"):
        OCCConfig(base_delay_ms=5000, max_delay_ms=10)
    assert OCCConfig(base_delay_ms=10, max_delay_ms=10).delay_seconds(3, 0.5) <= 0.010


@pytest.mark.parametrize(
    ("text", "strategy"), [("LAZY", CleanupStrategy.LAZY), ("Immediate", CleanupStrategy.IMMEDIATE)]
)
def test_upper_case_strategy_names_are_accepted(text: str, strategy: CleanupStrategy) -> None:
    assert CleanupConfig(strategy=text).strategy is strategy  # type: ignore[arg-type]
    assert ConflictResolutionMode("BOTH") is ConflictResolutionMode.BOTH


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clock": 42}, "clock"),
        ({"memory_probe": "x"}, "memory_probe"),
        ({"backend": object()}, "backend"),
    ],
)
def test_runtime_arguments_are_checked(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        Runtime(**kwargs)
    assert exc.value.field == field


def test_a_backend_serves_one_runtime_at_a_time() -> None:
    """A second runtime on a backend would stage, reject and clean up the first one's calls."""
    from contend.backends.memory import MemoryBackend

    backend = MemoryBackend()
    first = Runtime(backend, name="first")
    with pytest.raises(ConfigurationError, match="already serves runtime 'first'") as exc:
        Runtime(backend, name="second")
    assert exc.value.field == "backend"
    assert first.backend is backend
    assert Runtime(MemoryBackend(), name="second").backend is not backend


# the decorator ----------------------------------------------------------------------------------
def test_unknown_handler_name_is_refused_at_decoration() -> None:
    config = CleanupConfig(strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="no-such-one")
    with pytest.raises(ConfigurationError, match="no-such-one") as exc:
        with_conflict_resolution(cleanup=config)
    assert exc.value.field == "cleanup.custom_cleanup_handler"
    assert "noop" in str(exc.value)


class Guarded(Entity):
    """An entity holding an object deepcopy refuses (a thread lock) beside its state."""

    balance: int = 0
    _lock: Any = pydantic.PrivateAttr(default_factory=threading.Lock)


async def test_an_entity_that_cannot_be_copied_is_named_with_what_cannot(
    runtime: Runtime,
) -> None:
    """An OCC call on it failed with deepcopy's "cannot pickle '_thread.lock' object", which
    names neither the entity nor the attribute."""

    @with_conflict_resolution(occ=True)
    async def deposit(g: Guarded) -> None:
        g.balance += 1

    guarded = Guarded()
    with pytest.raises(TypeError, match=r"Guarded .*private attribute '_lock' cannot be copied"):
        await deposit(guarded)
    assert guarded.balance == 0 and guarded.version == 0
    [failed] = await runtime.registry.zombies()
    assert failed.status is OperationStatus.FAILED and "_lock" in (failed.error_message or "")


class _NeedsAnArgument(CleanupHandler):
    def __init__(self, archive_path: str) -> None:
        self.archive_path = archive_path

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        await self.remove(operation)


class _SubclassOfTheWrapper(CustomCleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        await self.remove(operation)


@pytest.mark.parametrize(
    ("klass", "named"),
    [(_NeedsAnArgument, "archive_path"), (_SubclassOfTheWrapper, "subclass CleanupHandler")],
)
def test_a_handler_class_that_cannot_be_built_bare_is_refused_at_decoration(
    klass: type[CleanupHandler], named: str
) -> None:
    """contend builds a custom handler with no arguments: one that needs some (a subclass of
    CustomCleanupHandler needs `name`) failed on every zombie, each counted as a handler
    failure, instead of at decoration."""
    CleanupHandlerRegistry.register("bad-input-needs-args", klass)
    try:
        with pytest.raises(ConfigurationError, match=named) as exc:
            with_conflict_resolution(
                cleanup={"strategy": "custom", "custom_cleanup_handler": "bad-input-needs-args"}
            )
        assert exc.value.field == "cleanup.custom_cleanup_handler"
        assert klass.__qualname__ in str(exc.value)
    finally:
        CleanupHandlerRegistry.unregister("bad-input-needs-args")


class _Vanishing(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        await self.remove(operation)


async def test_a_handler_unregistered_after_decoration_counts_as_a_failure(rt: Runtime) -> None:
    CleanupHandlerRegistry.register("bad-input-vanishing", _Vanishing)
    try:

        @with_conflict_resolution(
            runtime=rt,
            cleanup=CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="bad-input-vanishing"
            ),
        )
        async def bump(a: Account) -> int:
            a.balance += 1
            return a.balance
    finally:
        CleanupHandlerRegistry.unregister("bad-input-vanishing")

    account = Account()
    results = await asyncio.gather(bump(account), bump(account), return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], OperationRejectedError)
    (zombie,) = await rt.registry.zombies()
    assert zombie.status is OperationStatus.REJECTED
    health = await cleanup_system_health_check(rt)
    assert health["status"] == "unhealthy"
    assert "bad-input-vanishing" in str(health["last_cleanup_failure"])


@pytest.mark.parametrize(
    ("kwargs", "field", "names"),
    [
        ({"pre_ecs": "yes"}, "pre_ecs", "PreECSConfig"),
        ({"occ": 3}, "occ", "OCCConfig"),
        ({"mode": "sometimes"}, "mode", "allowed: none, pre_ecs, occ, both"),
        ({"runtime": "default"}, "runtime", "Runtime"),
        ({"cleanup": "custom"}, "cleanup", "custom_cleanup_handler"),
        ({"cleanup": "sometimes"}, "cleanup", "deferred"),
        ({"cleanup": 42}, "cleanup", "CleanupConfig"),
        ({"config": ConflictResolutionConfig(), "pre_ecs": True}, "config", "not both"),
        ({"config": {"mode": "both"}}, "config", "ConflictResolutionConfig"),
    ],
)
def test_decorator_arguments_of_the_wrong_type(
    kwargs: dict[str, Any], field: str, names: str
) -> None:
    with pytest.raises(ConfigurationError, match=names) as exc:
        with_conflict_resolution(**kwargs)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"occ": {"max_retries": 500}}, "occ.max_retries", ">= 0 and <= 100, got 500"),
        ({"pre_ecs": {"staging_timeout_ms": -1}}, "pre_ecs.staging_timeout_ms", "<= 60000"),
        ({"occ": {"retries": 3}}, "occ.retries", "Extra inputs are not permitted"),
    ],
)
def test_a_bad_field_in_a_nested_config_dict_is_named_with_its_path(
    kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigurationError, match=allowed) as exc:
        with_conflict_resolution(**kwargs)
    assert exc.value.field == field
    with pytest.raises(pydantic.ValidationError) as invalid:
        ConflictResolutionConfig(**kwargs)
    assert ".".join(map(str, invalid.value.errors()[0]["loc"])) == field


@pytest.mark.parametrize("priority", [0, 11, -1, True, "high", 5.0])
def test_priorities_outside_one_to_ten_are_refused(priority: Any) -> None:
    with pytest.raises(ConfigurationError, match="from 1") as exc:
        with_conflict_resolution(priority=priority)
    assert exc.value.field == "priority"

    @with_conflict_resolution()
    async def fn(a: Account) -> None:
        return None

    with pytest.raises(ConfigurationError, match="from 1"):
        fn.with_priority(priority)


def test_decorating_a_non_callable_is_refused() -> None:
    with pytest.raises(ConfigurationError) as exc:
        with_conflict_resolution()(42)  # type: ignore[arg-type]
    assert exc.value.field == "func"


async def test_a_sync_function_refuses_to_block_a_running_loop(rt: Runtime) -> None:
    @with_conflict_resolution(runtime=rt)
    def deposit(a: Account) -> int:
        a.balance += 1
        return a.balance

    account = Account()
    with pytest.raises(RuntimeError, match="async def"):
        deposit(account)
    assert account.balance == 0
    assert rt.backend.operation_count() == 0


# call arguments ---------------------------------------------------------------------------------
async def test_calls_without_entities_run_at_once(rt: Runtime) -> None:
    inside = 0
    most = 0

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def compute(x: int) -> int:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0)
        inside -= 1
        return x * 2

    assert await asyncio.gather(*(compute(i) for i in range(5))) == [0, 2, 4, 6, 8]
    assert most == 5
    assert rt.backend.zombie_count == 0


class LooksLikeAnEntity(pydantic.BaseModel):
    ecs_id: UUID = pydantic.Field(default_factory=uuid4)
    version: int = 0


@dataclasses.dataclass
class PlainRecord:
    ecs_id: UUID


async def test_non_entity_arguments_are_not_targets(rt: Runtime) -> None:
    started: list[str] = []

    @with_conflict_resolution(runtime=rt)
    async def handle(thing: Any) -> str:
        started.append(type(thing).__name__)
        await asyncio.sleep(0)
        return "ok"

    lookalike, plain = LooksLikeAnEntity(), PlainRecord(uuid4())
    results = await asyncio.gather(
        handle(lookalike), handle(lookalike), handle(plain), handle(plain)
    )
    assert results == ["ok"] * 4
    assert await rt.registry.get_entity(lookalike.ecs_id) is None
    assert await rt.registry.get_entity(plain.ecs_id) is None


class TransferRequest(pydantic.BaseModel):
    """A request body bundling the entities a call changes, as a web handler receives it."""

    source: Account
    dest: Account
    amount: int


@dataclasses.dataclass
class Command:
    accounts: list[Account]


async def test_a_call_whose_entities_are_all_inside_a_model_is_refused(rt: Runtime) -> None:
    """transfer(TransferRequest(source=a, dest=b, ...)) found no entity among its arguments, so
    it ran unstaged and unguarded: five concurrent transfers of 10 from 100 left 90 + 50."""

    @with_conflict_resolution(runtime=rt, occ=True)
    async def transfer(request: Any) -> None:
        raise AssertionError("never runs")

    a, b = Account(balance=100), Account()
    with pytest.raises(TypeError, match=r"TransferRequest.source holds an Entity"):
        await transfer(TransferRequest(source=a, dest=b, amount=10))
    with pytest.raises(TypeError, match=r"Command.accounts holds an Entity"):
        await transfer(request=Command([a]))
    assert await rt.backend.operations_with_status(OperationStatus.FAILED) == []
    assert await rt.registry.get_entity(a.ecs_id) is None


async def test_entities_in_containers_are_targets(rt: Runtime) -> None:
    seen: list[tuple[UUID | None, tuple[UUID, ...]]] = []

    @with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.NONE)
    async def settle(batch: dict[str, list[Account]], extra: tuple[Account, ...]) -> None:
        (op,) = await rt.backend.operations_with_status(OperationStatus.EXECUTING)
        seen.append((op.target_entity_id, op.target_entity_ids))

    a, b, c = Account(), Account(), Account()
    await settle({"first": [a, b]}, extra=(c, a))
    assert seen == [(a.ecs_id, (a.ecs_id, b.ecs_id, c.ecs_id))]

    results = await asyncio.gather(
        settle({"first": [a]}, extra=()), settle({"x": [a, c]}, extra=()), return_exceptions=True
    )
    assert isinstance(results[1], OperationRejectedError)


async def test_entities_of_unseen_types_are_registered_on_first_use(rt: Runtime) -> None:
    class NeverSeen(Entity):
        count: int = 0

    @with_conflict_resolution(runtime=rt)
    async def bump(e: NeverSeen) -> int:
        e.count += 1
        return e.count

    first = NeverSeen()
    assert await rt.registry.get_entity(first.ecs_id) is None
    assert await bump(first) == 1
    committed = await rt.registry.get_entity(first.ecs_id)
    assert isinstance(committed, NeverSeen)
    assert committed.count == 1
    stale_copy = NeverSeen(ecs_id=first.ecs_id)
    assert await bump(stale_copy) == 2
    assert stale_copy.count == 2


async def test_an_ecs_id_reused_by_another_type_is_refused(rt: Runtime) -> None:
    class Customer(Entity):
        name: str = ""

    @with_conflict_resolution(runtime=rt)
    async def describe(x: Entity) -> str:
        return type(x).__name__

    account = Account()
    assert await describe(account) == "Account"
    impostor = Customer(ecs_id=account.ecs_id)
    with pytest.raises(TypeError, match=r"registered as a Account.*Customer"):
        await describe(impostor)
    assert rt.backend.operation_count() == 0
    assert await describe(account) == "Account"


# other public entry points ----------------------------------------------------------------------
def test_fake_clock_refuses_naive_times_and_going_back() -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 1, 1))
    clock = FakeClock()
    before = clock.time()
    with pytest.raises(ValueError, match=">= 0"):
        clock.advance(-1)
    assert clock.time() == before


@pytest.mark.parametrize("bad", [{"seconds": math.inf}, {"minutes": math.nan}, {"hours": 1e12}])
def test_fake_clock_refuses_infinite_and_nan_advances(bad: dict[str, float]) -> None:
    """advance(minutes=inf) said "cannot convert float infinity to integer", naming nothing."""
    clock = FakeClock()
    before = clock.time()
    with pytest.raises(ValueError, match=r"FakeClock.advance: delta must be a finite time >= 0"):
        clock.advance(**bad)
    assert clock.time() == before


@pytest.mark.parametrize("bad", [2, -0.1, math.nan, "0.5", True])
def test_make_runtime_refuses_a_memory_pressure_outside_zero_to_one(bad: Any) -> None:
    """A test's runtime read 2 or NaN as its memory pressure, quietly clamped by the monitor."""
    with pytest.raises(ConfigurationError, match="from 0 to 1") as exc:
        make_runtime(memory_pressure=bad)
    assert exc.value.field == "memory_pressure"


async def test_a_status_query_with_an_unknown_status_is_refused(rt: Runtime) -> None:
    """operations_with_status("rejectd") found nothing, silently, like a status with no calls."""
    with pytest.raises(ValueError, match=r"status: unknown status 'rejectd' \(allowed: pending"):
        await rt.registry.operations_with_status("rejectd")
    assert await rt.registry.operations_with_status("rejected") == []


def test_event_subscriptions_are_checked() -> None:
    """A subscriber that is not callable was accepted, then failed on every event it was sent."""
    bus = make_runtime().events
    with pytest.raises(TypeError, match="handler must be callable"):
        bus.subscribe(OperationRejectedEvent, "log it")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="event_type must be an event class"):
        bus.subscribe(OperationRejectedEvent(op_id=uuid4()), print)  # type: ignore[arg-type]
    assert not bus.wants(OperationRejectedEvent)


def test_handler_registry_refuses_bad_registrations() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        CleanupHandlerRegistry.register("", _Vanishing)
    with pytest.raises(TypeError, match="handle_operation_rejection"):
        CleanupHandlerRegistry.register("bad-input-not-a-class", 42)  # type: ignore[call-overload]
    assert not CleanupHandlerRegistry.has("bad-input-not-a-class")
    with pytest.raises(ValueError, match=r"registered: .*noop"):
        CleanupHandlerRegistry.get("bad-input-unknown")


async def test_removing_records_by_hand(rt: Runtime) -> None:
    running = asyncio.Event()
    release = asyncio.Event()

    @with_conflict_resolution(runtime=rt)
    async def hold(a: Account) -> None:
        running.set()
        await release.wait()

    task = asyncio.ensure_future(hold(Account()))
    await running.wait()
    (op,) = await rt.backend.operations_with_status(OperationStatus.EXECUTING)
    with pytest.raises(ValueError, match="only terminal records"):
        await rt.registry.remove(op.ecs_id)
    release.set()
    await task
    assert await rt.registry.remove(uuid4()) is False
    assert sum(rt.cleanup.removed.values()) == 0


@pytest.mark.parametrize(
    ("reading", "pressure", "failures"),
    [("high", 0.0, 1), (math.nan, 0.0, 1), (5.0, 1.0, 0), (-1.0, 0.0, 0)],
)
def test_memory_probe_garbage_is_clamped_or_counted(
    reading: Any, pressure: float, failures: int
) -> None:
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: reading)
    assert rt.memory.pressure() == pressure
    assert rt.memory.failures == failures


# OCC and non-OCC writers on one entity ----------------------------------------------------------
async def test_staged_writers_are_serialised_whatever_their_occ_setting(rt: Runtime) -> None:
    inside: list[str] = []
    overlaps = 0

    def writer(name: str, occ: bool) -> Any:
        @with_conflict_resolution(runtime=rt, occ=occ)
        async def add(a: Account, amount: int) -> None:
            nonlocal overlaps
            overlaps += bool(inside)
            inside.append(name)
            balance = a.balance
            await asyncio.sleep(0)
            a.balance = balance + amount
            inside.remove(name)

        return add

    plain, guarded = writer("plain", False), writer("occ", True)
    account = Account()
    calls = []
    for i in range(10):
        fn = plain if i % 2 else guarded
        calls.append(asyncio.ensure_future(fn(account, 2**i)))
        await asyncio.sleep(0)
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert overlaps == 0
    landed = [i for i, r in enumerate(results) if r is None]
    assert all(isinstance(r, OperationRejectedError) for r in results if r is not None)
    assert {i % 2 for i in landed} == {0, 1}, "both kinds of writer got through"
    assert account.balance == sum(2**i for i in landed)
    committed = await rt.registry.get_entity(account.ecs_id)
    assert committed is not None and committed.version == len(landed)


def _unguarded_and_occ(rt: Runtime, gate: asyncio.Event) -> tuple[Any, Any]:
    @with_conflict_resolution(runtime=rt, pre_ecs=False, occ=False)
    async def add_unguarded(a: Account, amount: int) -> None:
        balance = a.balance
        await gate.wait()
        a.balance = balance + amount

    @with_conflict_resolution(
        runtime=rt, pre_ecs=False, occ=OCCConfig(max_retries=3, base_delay_ms=0.0)
    )
    async def add_occ(a: Account, amount: int) -> None:
        balance = a.balance
        await gate.wait()
        a.balance = balance + amount

    return add_unguarded, add_occ


async def test_occ_retries_when_an_unguarded_writer_committed_first(rt: Runtime) -> None:
    occ_gate, free = asyncio.Event(), asyncio.Event()
    free.set()
    _, add_occ = _unguarded_and_occ(rt, occ_gate)
    add_unguarded, _ = _unguarded_and_occ(rt, free)
    account = Account()
    await rt.registry.register(account)

    occ_call = asyncio.ensure_future(add_occ(account, 1))
    await asyncio.sleep(0)
    await add_unguarded(account, 10)
    occ_gate.set()
    await occ_call

    assert account.balance == 11
    assert rt.metrics.registry.get_sample_value("contend_occ_retries_total") == 1


async def test_an_unguarded_read_modify_write_can_overwrite_an_occ_commit(rt: Runtime) -> None:
    unguarded_gate, free = asyncio.Event(), asyncio.Event()
    free.set()
    add_unguarded, _ = _unguarded_and_occ(rt, unguarded_gate)
    _, add_occ = _unguarded_and_occ(rt, free)
    account = Account()
    await rt.registry.register(account)

    unguarded = asyncio.ensure_future(add_unguarded(account, 10))
    await asyncio.sleep(0)
    await add_occ(account, 1)
    assert account.balance == 1
    unguarded_gate.set()
    await unguarded

    assert account.balance == 10, "the OCC commit of +1 was overwritten (documented hazard)"
