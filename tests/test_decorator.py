"""`@with_conflict_resolution`: the design's example, targets, sync functions, exposed config."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import pickle
import sys
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import pytest

from contend import (
    ConflictResolutionMode,
    ConflictResolutionOperation,
    Entity,
    OCCConfig,
    OperationCompletedEvent,
    OperationPriority,
    OperationRejectedError,
    OperationStatus,
    PreECSConfig,
    Runtime,
    no_conflict_resolution,
    with_conflict_resolution,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "current_behavior.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("current_behavior_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Box(Entity):
    value: int = 0


async def _executing(rt: Runtime) -> ConflictResolutionOperation:
    [op] = await rt.registry.operations_with_status(OperationStatus.EXECUTING)
    return op


# --- the design's "Current Behavior" example -----------------------------------------------------


async def test_current_behavior_example_runs_with_only_its_import_changed(
    runtime: Runtime,
) -> None:
    example = _load_example()
    account = example.BankAccount(balance=100)
    result = await example.update_account(account, 50)
    assert account.balance == 150
    assert result is account

    results = await asyncio.gather(
        *(example.update_account(account, 10) for _ in range(5)), return_exceptions=True
    )
    assert sum(isinstance(r, example.BankAccount) for r in results) == 1
    assert sum(isinstance(r, OperationRejectedError) for r in results) == 4
    assert account.balance == 160
    assert example.update_account.conflict_config.mode is ConflictResolutionMode.BOTH
    assert example.update_account.conflict_config.occ.max_retries == 3
    zombies = await runtime.registry.zombies(account.ecs_id)
    assert [z.status for z in zombies] == [OperationStatus.REJECTED] * 4


async def test_current_behavior_example_helper_reports_the_outcome(runtime: Runtime) -> None:
    example = _load_example()
    account, won, rejected = await example.run_example()
    assert (won, rejected) == (1, 4)
    assert account.balance == 160


# --- targets -----------------------------------------------------------------------------------


async def test_entities_in_containers_become_targets_first_is_primary(runtime: Runtime) -> None:
    seen: list[ConflictResolutionOperation] = []

    @with_conflict_resolution()
    async def work(
        items: list[Box], pair: tuple[int, Box], named: dict[str, Any], *, kw: Box
    ) -> int:
        seen.append(await _executing(runtime))
        return len(items)

    a, b, c, d = Box(), Box(), Box(), Box()
    assert await work([a, b], (1, c), {"x": {"deep": [d]}, "n": 3}, kw=a) == 2
    [op] = seen
    assert op.target_entity_ids == (a.ecs_id, b.ecs_id, c.ecs_id, d.ecs_id)
    assert op.target_entity_id == a.ecs_id
    assert op.target_type == "Box"
    for e in (a, b, c, d):
        assert await runtime.registry.get_entity(e.ecs_id) is e


async def test_kwargs_entities_follow_positional_ones(runtime: Runtime) -> None:
    seen: list[ConflictResolutionOperation] = []

    @with_conflict_resolution()
    async def work(first: int, *, second: Box, third: Box) -> None:
        seen.append(await _executing(runtime))

    b, c = Box(), Box()
    await work(1, second=b, third=c)
    assert seen[0].target_entity_ids == (b.ecs_id, c.ecs_id)
    assert seen[0].target_entity_id == b.ecs_id


async def test_calls_sharing_only_a_secondary_target_are_not_staged_together(
    runtime: Runtime,
) -> None:
    @with_conflict_resolution()
    async def work(primary: Box, other: Box) -> str:
        await asyncio.sleep(0)
        return "ok"

    shared = Box()
    results = await asyncio.gather(work(Box(), shared), work(Box(), shared))
    assert results == ["ok", "ok"]


async def test_staging_is_per_primary_target(runtime: Runtime) -> None:
    @with_conflict_resolution()
    async def work(box: Box) -> int:
        return box.value

    a, b = Box(value=1), Box(value=2)
    results = await asyncio.gather(work(a), work(a), work(b), return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], OperationRejectedError)
    assert results[2] == 2


async def test_function_without_entity_argument_runs_and_conflicts_with_nothing(
    runtime: Runtime,
) -> None:
    running = 0
    peak = 0

    @with_conflict_resolution(occ=True)
    async def compute(x: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        return x * 2

    assert await asyncio.gather(*(compute(i) for i in range(5))) == [0, 2, 4, 6, 8]
    assert peak == 5
    assert await runtime.registry.operations_with_status(OperationStatus.EXECUTING) == []


# --- the wrapper -------------------------------------------------------------------------------


def test_wrapper_exposes_config_priority_and_identity() -> None:
    rt = Runtime()

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(staging_timeout_ms=7),
        occ=OCCConfig(max_retries=2),
        priority=OperationPriority.HIGH,
        runtime=rt,
    )
    async def named(box: Box) -> None:
        """Docstring kept."""

    assert named.__name__ == "named"
    assert named.__doc__ == "Docstring kept."
    assert named.priority == OperationPriority.HIGH
    cfg = named.conflict_config
    assert cfg.pre_ecs.staging_timeout_ms == 7
    assert cfg.occ.max_retries == 2
    assert cfg.mode is ConflictResolutionMode.BOTH
    assert asyncio.iscoroutinefunction(named.__wrapped__)


async def test_bare_decorator_stages_with_defaults(runtime: Runtime) -> None:
    @with_conflict_resolution
    async def work(box: Box) -> int:
        return 1

    cfg = work.conflict_config
    assert cfg.mode is ConflictResolutionMode.PRE_ECS
    assert not cfg.occ.enabled
    box = Box()
    results = await asyncio.gather(*(work(box) for _ in range(3)), return_exceptions=True)
    assert results.count(1) == 1


async def test_decoration_priority_is_the_default_and_with_priority_overrides(
    runtime: Runtime,
) -> None:
    @with_conflict_resolution(priority=OperationPriority.LOW)
    async def work(box: Box, label: str) -> str:
        return label

    box = Box()
    results = await asyncio.gather(
        work(box, "low"),
        work.with_priority(OperationPriority.NORMAL)(box, "normal"),
        return_exceptions=True,
    )
    assert results[1] == "normal"
    assert isinstance(results[0], OperationRejectedError)
    assert results[0].priority == OperationPriority.LOW
    assert results[0].winner_priority == OperationPriority.NORMAL


async def test_explicit_runtime_wins_over_the_current_one(runtime: Runtime) -> None:
    other = Runtime()

    @with_conflict_resolution(runtime=other)
    async def work(box: Box) -> None:
        box.value += 1

    box = Box()
    await work(box)
    assert await other.registry.get_entity(box.ecs_id) is box
    assert await runtime.registry.get_entity(box.ecs_id) is None


async def test_exception_in_function_reaches_the_caller_unchanged(runtime: Runtime) -> None:
    class Boom(Exception):
        pass

    @with_conflict_resolution()
    async def work(box: Box) -> None:
        raise Boom("exact")

    box = Box()
    with pytest.raises(Boom, match="exact"):
        await work(box)
    assert box.version == 0, "a failed call is not recorded as a write"


def test_no_conflict_resolution_leaves_the_function_as_written() -> None:
    def plain(box: Box) -> int:
        return box.value

    marked = no_conflict_resolution(plain)
    assert marked is plain
    assert marked.__contend_unprotected__ is True  # type: ignore[attr-defined]
    assert marked(Box(value=3)) == 3


# --- sync functions ----------------------------------------------------------------------------


def test_sync_function_works_from_sync_code() -> None:
    rt = Runtime()

    @with_conflict_resolution(runtime=rt, occ=True)
    def deposit(box: Box, amount: int) -> int:
        box.value += amount
        return box.value

    box = Box()
    assert deposit(box, 5) == 5
    assert deposit.with_priority(OperationPriority.HIGH)(box, 2) == 7
    assert box.value == 7
    assert box.version == 2


async def test_sync_function_called_inside_a_running_loop_raises_clearly(runtime: Runtime) -> None:
    calls = 0

    @with_conflict_resolution()
    def deposit(box: Box) -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(RuntimeError, match="running event loop"):
        deposit(Box())
    with pytest.raises(RuntimeError, match="running event loop"):
        deposit.with_priority(OperationPriority.HIGH)(Box())
    assert calls == 0


async def test_sync_function_body_runs_inside_the_loop_when_awaited_via_thread(
    runtime: Runtime,
) -> None:
    """From a worker thread there is no running loop: the sync wrapper runs its own."""
    other = Runtime()

    @with_conflict_resolution(runtime=other)
    def deposit(box: Box) -> int:
        box.value += 1
        return box.value

    box = Box()
    assert await asyncio.to_thread(deposit, box) == 1
    assert await asyncio.to_thread(deposit, box) == 2


class Wallet(Entity):
    balance: float = 0.0


async def test_multi_entity_calls_without_occ_warn_and_occ_guards_the_second_target(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """Staging serialises the primary target only; OCC is what guards the others."""

    def transfer_with(occ: bool) -> Any:
        @with_conflict_resolution(occ=occ)
        async def transfer(src: Wallet, dst: Wallet, amount: float) -> None:
            src_balance, dst_balance = src.balance, dst.balance
            await asyncio.sleep(0.01)
            src.balance = src_balance - amount
            dst.balance = dst_balance + amount

        return transfer

    @with_conflict_resolution(occ=True)
    async def deposit(w: Wallet, amount: float) -> None:
        w.balance += amount

    with caplog.at_level("WARNING", logger="contend.decorator"):
        a, b = Wallet(balance=100), Wallet(balance=100)
        await asyncio.gather(transfer_with(False)(a, b, 10), deposit(b, 1000))
    assert "OCC off" in caplog.text and "first one only" in caplog.text
    assert a.balance + b.balance == 200  # the unguarded transfer overwrote the deposit

    caplog.clear()
    with caplog.at_level("WARNING", logger="contend.decorator"):
        a, b = Wallet(balance=100), Wallet(balance=100)
        guarded = transfer_with(True)
        results = await asyncio.gather(guarded(a, b, 10), deposit(b, 1000), return_exceptions=True)
    assert "OCC off" not in caplog.text
    assert results == [None, None]
    assert a.balance + b.balance == 1200


# --- what a call leaves behind ------------------------------------------------------------------


async def test_entity_arguments_are_found_in_every_position(runtime: Runtime) -> None:
    seen: list[tuple[int, ...]] = []

    @with_conflict_resolution(pre_ecs=False)
    async def work(*args: Any) -> None:
        op = await _executing(runtime)
        seen.append(tuple(op.target_entity_ids.index(e.ecs_id) for e in args if isinstance(e, Box)))

    a, b = Box(), Box()
    for call in ((a,), (a, 5), (a, "note"), (a, None), (a, b), (a, a), (3, a), (a, 1, b)):
        await work(*call)
    assert seen == [(0,), (0,), (0,), (0,), (0, 1), (0, 0), (0,), (0, 1)]


async def test_a_rejected_call_leaves_no_reference_cycle(runtime: Runtime) -> None:
    """A busy service drops thousands of rejections; each must be freed when dropped, not
    left for the cycle collector."""
    import gc
    import weakref

    @with_conflict_resolution(cleanup="immediate")
    async def touch(box: Box) -> int:
        box.value += 1
        return box.value

    box = Box()
    tasks = [asyncio.create_task(touch(box)) for _ in range(5)]
    await asyncio.wait(tasks)
    errors = [t.exception() for t in tasks if t.exception() is not None]
    assert all(isinstance(e, OperationRejectedError) for e in errors)
    assert len(errors) == 4
    refs = [weakref.ref(e) for e in errors]
    assert all(e.__traceback__ is not None for e in errors)
    gc.disable()
    try:
        del tasks, errors
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()


async def test_a_memory_backend_subclass_sees_every_call_it_overrides() -> None:
    """The in-process fast path skips coroutines only for the stock MemoryBackend's methods."""
    from contend.backends.memory import MemoryBackend

    class Recording(MemoryBackend):
        def __init__(self) -> None:
            super().__init__()
            self.added: list[ConflictResolutionOperation] = []

        async def add_operation(self, op: ConflictResolutionOperation) -> None:
            self.added.append(op)
            await super().add_operation(op)

    rt = Runtime(Recording(), memory_probe=lambda: 0.0)

    @with_conflict_resolution(runtime=rt, cleanup="immediate")
    async def touch(box: Box) -> int:
        box.value += 1
        return box.value

    box = Box()
    results = await asyncio.gather(*(touch(box) for _ in range(3)), return_exceptions=True)
    assert sorted(map(type, results), key=str) == sorted(
        [int, OperationRejectedError, OperationRejectedError], key=str
    )
    backend = rt.backend
    assert isinstance(backend, Recording)
    assert len(backend.added) == 3
    assert all(op.is_terminal for op in backend.added)
    assert await rt.registry.operations_for_target(box.ecs_id) == []
    rt.cleanup.stop()


async def test_a_failed_call_leaves_no_reference_cycle(runtime: Runtime) -> None:
    import gc
    import weakref

    @with_conflict_resolution(cleanup="immediate")
    async def boom(box: Box) -> int:
        raise ValueError("no")

    task = asyncio.create_task(boom(Box()))
    await asyncio.wait([task])
    error = task.exception()
    assert isinstance(error, ValueError)
    ref = weakref.ref(task)
    gc.disable()
    try:
        del task, error
        assert ref() is None
    finally:
        gc.enable()


# --- a window's losers, rejected together ----------------------------------------------------


def _metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_losers_of_one_window_each_get_their_own_function_and_cleanup(
    runtime: Runtime,
) -> None:
    """Losers from two functions share a window: each error names its own function and the
    winner, IMMEDIATE losers leave, DEFERRED ones stay as zombies, and every end is counted."""
    from contend import CleanupConfig, CleanupStrategy

    @with_conflict_resolution(cleanup="immediate")
    async def quick(box: Box) -> str:
        return "quick"

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.DEFERRED))
    async def kept(box: Box) -> str:
        return "kept"

    box = Box()
    results = await asyncio.gather(
        quick(box),
        kept(box),
        quick.with_priority(OperationPriority.HIGH)(box),
        kept(box),
        quick(box),
        return_exceptions=True,
    )
    assert results[2] == "quick"
    errors = [r for r in results if isinstance(r, OperationRejectedError)]
    assert len(errors) == 4
    winner = await runtime.backend.get_operation(errors[0].winner_id)  # type: ignore[arg-type]
    assert winner is None  # a success leaves at once; the error still names it
    assert len({e.winner_id for e in errors}) == 1
    assert all(e.winner_priority == OperationPriority.HIGH for e in errors)
    names = [e.function_name.rsplit(".", 1)[-1] for e in errors]
    assert names == ["quick", "kept", "kept", "quick"]
    left = await runtime.registry.operations_for_target(box.ecs_id)
    assert sorted(op.ecs_id for op in left) == sorted(
        e.op_id for e in errors if e.function_name.endswith("kept")
    )
    assert all(op.status is OperationStatus.REJECTED for op in left)
    assert all(op.winner_id == errors[0].winner_id for op in left)
    assert _metric(runtime, "contend_removals_total", reason="immediate") == 2
    assert _metric(runtime, "contend_operations_total", outcome="rejected") == 4
    assert _metric(runtime, "contend_zombie_operations", target_type="Box") == 2


async def test_a_loser_cancelled_before_it_resumes_ends_cancelled_once(runtime: Runtime) -> None:
    """The winner cancels a loser after the window closed and before the losers resume: that
    caller sees CancelledError, its record ends CANCELLED, the other loser is rejected."""
    tasks: list[asyncio.Task[str]] = []

    @with_conflict_resolution(cleanup="immediate")
    async def act(box: Box, name: str) -> str:
        if name == "first":
            tasks[2].cancel()
        return name

    box = Box()
    tasks.extend(asyncio.create_task(act(box, n)) for n in ("first", "second", "third"))
    await asyncio.wait(tasks)
    assert tasks[0].result() == "first"
    assert isinstance(tasks[1].exception(), OperationRejectedError)
    assert tasks[2].cancelled()
    assert await runtime.registry.operations_for_target(box.ecs_id) == []
    assert _metric(runtime, "contend_removals_total", reason="immediate") == 2
    assert _metric(runtime, "contend_operations_total", outcome="cancelled") == 1
    assert _metric(runtime, "contend_operations_total", outcome="rejected") == 1


# --- quietly wrong, no more -------------------------------------------------------------------


def test_a_generator_function_is_refused_at_decoration() -> None:
    """An async generator used to be accepted: inside a loop it got a misleading "sync
    function" error, outside one it ran unprotected and still bumped the version."""
    from contend import ConfigurationError

    async def agen(box: Box):  # type: ignore[no-untyped-def]
        yield box

    def gen(box: Box):  # type: ignore[no-untyped-def]
        yield box

    for fn in (agen, gen):
        with pytest.raises(ConfigurationError) as info:
            with_conflict_resolution()(fn)
        assert info.value.field == "func"
        assert "generator" in str(info.value)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda b: defaultdict(list, {"k": b}), id="defaultdict"),
        pytest.param(lambda b: Pair(b, 1), id="namedtuple"),
        pytest.param(lambda b: Fields(b, 1), id="tuple-subclass"),
        pytest.param(lambda b: deque([b], maxlen=3), id="deque"),
        pytest.param(lambda b: [b], id="list"),
    ],
)
async def test_entities_in_any_container_are_guarded_under_occ(
    runtime: Runtime, wrap: Callable[[Box], Any]
) -> None:
    """A defaultdict or tuple subclass holding an entity failed under OCC with `TypeError: first
    argument must be callable or None`; a deque of entities was silently unprotected."""
    from contend import OCCConfig

    seen: list[Any] = []

    @with_conflict_resolution(occ=OCCConfig())
    async def bump(holder: Any) -> None:
        seen.append(holder)
        for b in _boxes(holder):
            b.value += 1

    box = Box()
    holder = wrap(box)
    await bump(holder)
    assert box.value == 1 and box.version == 1
    assert type(seen[0]) is type(holder)
    assert seen[0] is not holder  # the call ran on a working copy, inside a container like it
    if isinstance(holder, deque):
        assert seen[0].maxlen == 3
    if isinstance(holder, defaultdict):
        assert seen[0].default_factory is list
    results = await asyncio.gather(bump(holder), bump(holder), return_exceptions=True)
    assert sum(isinstance(r, OperationRejectedError) for r in results) == 1  # staged together


class Pair(NamedTuple):
    box: Box
    n: int


class Fields(tuple):  # type: ignore[type-arg]
    def __new__(cls, box: Box, n: int) -> Fields:
        return super().__new__(cls, (box, n))

    @property
    def box(self) -> Box:
        return self[0]  # type: ignore[no-any-return]


def _boxes(holder: Any) -> list[Box]:
    values = holder.values() if isinstance(holder, dict) else holder
    return [v for v in values if isinstance(v, Box)]


# --- methods ---------------------------------------------------------------------------------


class Teller:
    """A service object whose methods are decorated, as a request handler's dependencies are."""

    def __init__(self) -> None:
        self.served: list[str] = []

    @with_conflict_resolution(priority=OperationPriority.LOW)
    async def deposit(self, box: Box, label: str) -> str:
        """Deposit one; `label` is returned."""
        self.served.append(label)
        box.value += 1
        return label

    @with_conflict_resolution(occ=True)
    def deposit_sync(self, box: Box, label: str) -> str:
        self.served.append(label)
        box.value += 1
        return label


async def test_a_decorated_method_keeps_its_instance_through_per_call_overrides(
    runtime: Runtime,
) -> None:
    """`teller.deposit.with_priority(p)(box)` passed `box` as `self` (the override was taken
    from the unbound function), failing with a missing argument."""
    teller, box = Teller(), Box()
    results = await asyncio.gather(
        teller.deposit(box, "low"),
        teller.deposit.with_priority(OperationPriority.HIGH)(box, "high"),
        return_exceptions=True,
    )
    assert results[1] == "high"
    assert isinstance(results[0], OperationRejectedError)
    assert await teller.deposit.with_max_wait(50).with_priority(9)(box, "waited") == "waited"
    assert teller.served == ["high", "waited"] and box.value == 2
    assert teller.deposit.conflict_config is Teller.deposit.conflict_config
    assert teller.deposit.priority == OperationPriority.LOW
    assert teller.deposit.with_priority(9).priority == 9
    assert list(inspect.signature(teller.deposit).parameters) == ["box", "label"]
    assert inspect.iscoroutinefunction(teller.deposit)
    assert teller.deposit.__doc__ == Teller.deposit.__doc__ == "Deposit one; `label` is returned."
    assert not inspect.iscoroutinefunction(teller.deposit_sync)


def test_a_decorated_sync_method_keeps_its_instance_through_per_call_overrides() -> None:
    teller, box = Teller(), Box()
    assert teller.deposit_sync(box, "plain") == "plain"
    assert teller.deposit_sync.with_priority(9)(box, "high") == "high"
    assert teller.deposit_sync.with_max_wait(10)(box, "waited") == "waited"
    assert teller.served == ["plain", "high", "waited"] and box.value == 3


class Counter(Entity):
    """An entity whose own methods are its protected operations."""

    hits: int = 0

    @with_conflict_resolution(occ=True)
    async def hit(self, n: int) -> int:
        self.hits += n
        return self.hits


async def test_an_entitys_own_method_can_be_decorated(runtime: Runtime) -> None:
    """Decorating a method of an Entity subclass failed at class creation: pydantic took the
    decorated function for a field without an annotation."""
    counter = Counter()
    results = await asyncio.gather(*(counter.hit(1) for _ in range(3)), return_exceptions=True)
    assert results.count(1) == 1 and counter.hits == 1 and counter.version == 1
    assert await counter.hit.with_priority(9)(2) == 3
    assert "hit" not in Counter.model_fields
    assert Counter.model_validate({"hits": 4}).hits == 4


class _Handler:
    """A callable object, as a framework's handler or a tool of an agent often is."""

    async def __call__(self, box: Box, n: int) -> int:
        box.value += n
        return box.value


async def _add(box: Box, n: int) -> int:
    box.value += n
    return box.value


@pytest.mark.parametrize(
    ("fn", "name"),
    [(_Handler(), "_Handler"), (functools.partial(_add, n=2), "_add")],
    ids=["callable-object", "partial"],
)
async def test_a_callable_object_or_a_partial_can_be_decorated(
    runtime: Runtime, fn: Callable[..., Any], name: str
) -> None:
    """Decorating an object with an async __call__ or a functools.partial failed with
    AttributeError: no attribute '__qualname__'; the object is called (awaited) as it is."""
    work = with_conflict_resolution(occ=True)(fn)
    box = Box()
    results = await asyncio.gather(work(box, n=2), work(box, n=2), return_exceptions=True)
    assert results[0] == 2 and isinstance(results[1], OperationRejectedError)
    [loser] = await runtime.registry.zombies()
    assert loser.function_name == f"{__name__}.{name}"
    assert work.__name__ == name and name in repr(work)
    with pytest.raises(pickle.PicklingError, match=f"not the object named {__name__}.{name}"):
        pickle.dumps(work)


@with_conflict_resolution(occ=True)
def _deposit_sync(box: Box, n: int) -> int:
    box.value += n
    return box.value


def test_decorated_functions_and_methods_pickle_by_name_with_their_overrides() -> None:
    """A sync decorated function (or a decorated method) could not be pickled, so not handed to
    a process pool: "it's not the same object as ..."."""
    assert pickle.loads(pickle.dumps(_deposit_sync)) is _deposit_sync
    high = pickle.loads(pickle.dumps(_deposit_sync.with_priority(9).with_max_wait(5)))
    assert high.priority == 9 and high(Box(), 2) == 2
    teller = Teller()
    method = pickle.loads(pickle.dumps(teller.deposit.with_priority(8)))
    assert method.priority == 8 and isinstance(method.__self__, Teller)
    assert pickle.loads(pickle.dumps(teller.deposit_sync))(Box(), "x") == "x"


async def test_a_caller_cancelled_after_its_write_committed_is_cancelled_and_the_end_finishes(
    runtime: Runtime,
) -> None:
    """With an async OperationCompletedEvent subscriber (an audit log), a caller whose
    asyncio.timeout expires while the subscriber runs is cancelled, as asyncio requires (a
    TaskGroup or a shutdown that cancels must stop the task), but its write stands and the
    record's end runs to completion in a task of its own (it used to be cut short)."""
    audited: list[object] = []

    async def audit(event: OperationCompletedEvent) -> None:
        await asyncio.sleep(0.05)
        audited.append(event.op_id)

    runtime.events.subscribe(OperationCompletedEvent, audit)

    @with_conflict_resolution(occ=True)
    async def deposit(box: Box, n: int) -> int:
        box.value += n
        return box.value

    box = Box()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await deposit(box, 10)
    assert box.value == 10 and box.version == 1, "the write stands"
    task = asyncio.ensure_future(deposit(box, 5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert box.value == 15 and box.version == 2
    await asyncio.sleep(0.1)
    assert len(audited) == 2, "the subscriber still ran to its end"
