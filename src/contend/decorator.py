"""`@with_conflict_resolution`: staging, OCC and cleanup around a function that takes entities."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload
from uuid import UUID

from pydantic import ValidationError

from contend._args import find_entities, substitute_call
from contend.backends.base import Lost
from contend.backends.memory import MemoryBackend
from contend.cleanup.policy import EffectiveCleanup, effective_cleanup
from contend.cleanup.registry import CleanupHandlerRegistry
from contend.config import (
    MAX_WAIT_MS,
    CleanupConfig,
    CleanupStrategy,
    ConflictResolutionConfig,
    ConflictResolutionMode,
    OCCConfig,
    PreECSConfig,
)
from contend.entity import Entity
from contend.errors import ConfigurationError, NestedCallError, OperationRejectedError
from contend.events import OperationRejectedEvent, OperationStartedEvent
from contend.occ import run_with_occ
from contend.operations import ConflictResolutionOperation, OperationPriority, OperationStatus
from contend.runtime import Runtime, get_runtime
from contend.staging import current_task

__all__ = ["ConflictResolved", "no_conflict_resolution", "with_conflict_resolution"]

log = logging.getLogger("contend.decorator")

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_EXECUTING = OperationStatus.EXECUTING
_REJECTED = OperationStatus.REJECTED
_PENDING = OperationStatus.PENDING
_IMMEDIATE = CleanupStrategy.IMMEDIATE
_running_loop = asyncio.get_running_loop
_REJECTED_TEXT: Mapping[tuple[int, int], str] = MappingProxyType(
    {
        (p, w): f"Lost Pre-ECS priority conflict (priority {p} vs winner {w})"
        for p in range(1, 11)
        for w in range(1, 11)
    }
)


class ConflictResolved(Protocol[P, R_co]):
    """A decorated function: call it as before; its config and a priority override hang on it."""

    conflict_config: ConflictResolutionConfig
    priority: int
    __wrapped__: Callable[..., Any]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def with_priority(self, priority: int) -> ConflictResolved[P, R_co]: ...

    def with_max_wait(self, max_wait_ms: float) -> ConflictResolved[P, R_co]:
        """The same function, waiting up to `max_wait_ms` for its target (0: rejected at once
        on losing), whatever the configured conflict policy."""
        ...


class _Raise:
    """A rejection travelling from `_Protected.run` to the wrapper, which raises it.

    Raised there, the caller's traceback holds one small frame instead of the whole call's
    (its record, entity lists and arguments), and a gather of many rejected calls leaves the
    garbage collector that much less to walk.
    """

    __slots__ = ("error",)

    def __init__(self, error: OperationRejectedError) -> None:
        self.error: OperationRejectedError | None = error

    def take(self) -> OperationRejectedError:
        """Hand the error over and forget it: the raising frame keeps this object, and the
        error's traceback keeps that frame, a cycle only the garbage collector could break."""
        error, self.error = self.error, None
        if error is None:
            raise RuntimeError("rejection already raised")
        return error


def _holds_all(held: tuple[UUID, ...], passed: list[Entity]) -> bool:
    """Every entity of a call is held already (a helper, so `run` keeps no cell variable)."""
    return all(e.ecs_id in held for e in passed)


def _refuse_partly_held(name: str, held: tuple[UUID, ...], passed: list[Entity]) -> None:
    """A nested call sharing some entities with the enclosing call cannot be run safely."""
    shared = [e.ecs_id for e in passed if e.ecs_id in held]
    if shared:
        others = [e.ecs_id for e in passed if e.ecs_id not in held]
        raise NestedCallError(
            f"{name} was called inside a protected call that holds {len(shared)} of its "
            f"{len(passed)} entities ({', '.join(map(str, shared))}) but not "
            f"{', '.join(map(str, others))}: a nested call joins the enclosing one only when "
            "that one holds all its entities (staged on its own it would wait for the enclosing "
            "call forever, or commit again on each OCC retry of it); pass the other entities "
            "to the enclosing call too, or make this call outside it"
        )


def _let_go(
    holding: dict[asyncio.Task[Any], tuple[UUID, ...]],
    task: asyncio.Task[Any] | None,
    outer: tuple[UUID, ...] | None,
) -> None:
    """The call running in `task` is done with its entities; an enclosing call's are back."""
    if task is None:
        return
    if outer is None:
        holding.pop(task, None)
    else:
        holding[task] = outer


def _check_priority(priority: Any, field: str = "priority") -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 10:
        raise ConfigurationError(
            field, f"must be an int from 1 (BACKGROUND) to 10 (CRITICAL), got {priority!r}"
        )
    return int(priority)


def _check_wait(max_wait_ms: Any) -> float | None:
    """A per-call wait in ms: 0 means reject at once (None), else up to MAX_WAIT_MS."""
    if (
        isinstance(max_wait_ms, bool)
        or not isinstance(max_wait_ms, (int, float))
        or not 0 <= max_wait_ms <= MAX_WAIT_MS
    ):
        raise ConfigurationError(
            "max_wait_ms", f"must be a number of ms from 0 to {MAX_WAIT_MS}, got {max_wait_ms!r}"
        )
    return float(max_wait_ms) if max_wait_ms > 0 else None


def _check_waits(rt: Runtime) -> None:
    """The wait policy needs a coordinator that carries losers between windows."""
    coordinator = rt.backend.coordinator
    if not getattr(coordinator, "supports_wait", False):
        raise ConfigurationError(
            "pre_ecs.conflict_policy",
            f"the {rt.backend.name} backend's staging coordinator does not support the 'wait' "
            "policy yet; use conflict_policy='reject' (the default) on this backend and retry "
            "rejected calls yourself",
        )


def _rejection_text(priority: int, winner_priority: int) -> str:
    """The design's message; shared strings keep a zombie record small."""
    return _REJECTED_TEXT[priority, winner_priority]


class _Protected(Generic[P, R]):
    """The machinery behind one decorated function."""

    def __init__(
        self,
        fn: Callable[P, Any],
        config: ConflictResolutionConfig,
        priority: int,
        runtime: Runtime | None,
    ) -> None:
        self.fn = fn
        self.config = config
        self.priority = priority
        self.runtime = runtime
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.is_async = inspect.iscoroutinefunction(fn)
        self.staging = config.pre_ecs.enabled
        self.max_wait: float | None = config.pre_ecs.max_wait_ms if config.pre_ecs.waits else None
        self.occ = config.occ.enabled
        self.cleanup = config.cleanup
        self.warned_unguarded = False

    async def run(
        self, priority: int, wait: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """One call; `wait` is how long it may wait for its target in ms (None: reject)."""
        rt = self.runtime or get_runtime()
        loop = _running_loop()
        if rt._loop is not loop:
            rt.bind_loop()
        if wait is not None and self.staging:
            _check_waits(rt)
        if self.name not in rt._functions:
            rt.note_function(self.name, self.cleanup.strategy)
        backend = rt.backend
        local = rt._local
        clock = rt.clock
        holding = rt._holding
        passed = find_entities(args, kwargs)
        if passed and holding:
            # not kept in a local: a rejected call's traceback keeps this frame, and a frame
            # holding its own task is a reference cycle only the garbage collector can free
            held = holding.get(current_task(loop))  # type: ignore[arg-type]
            if held is not None:
                if _holds_all(held, passed):
                    return await self._run_joined(rt, priority, passed, args, kwargs)
                _refuse_partly_held(self.name, held, passed)
        committed = passed
        stale = False
        if passed:
            for i, e in enumerate(passed):
                if local is not None:
                    c = local.ensure_entity_now(e)
                else:
                    c = await backend.ensure_entity(e)
                if c is not e:
                    if type(c) is not type(e):
                        raise TypeError(
                            f"{self.name}: entity {e.ecs_id} is registered as a "
                            f"{type(c).__name__}, but a {type(e).__name__} with that ecs_id was "
                            "passed; an ecs_id names one entity of one type"
                        )
                    if not stale:
                        committed = list(passed)
                        stale = True
                    committed[i] = c
            ids = tuple([c.ecs_id for c in committed])
            target_type = type(committed[0]).__name__
            if len(ids) > 1 and not self.occ and not self.warned_unguarded:
                self.warned_unguarded = True
                log.warning(
                    "%s writes %d entities with OCC off: calls are staged under the first one "
                    "only, so concurrent writes to the others can be lost; pass occ=OCCConfig() "
                    "(or occ=True) to guard every target",
                    self.name,
                    len(ids),
                )
        else:
            ids, target_type = (), ""
        op = ConflictResolutionOperation._start(
            self.name, ids, target_type, priority, self.cleanup, clock.now()
        )
        if local is not None:
            local.add_operation_now(op)
        else:
            await backend.add_operation(op)
        staged = self.staging and bool(ids)
        if staged:
            try:
                if wait is None:
                    lost = await backend.coordinator.acquire(op, self.config.pre_ecs)
                else:
                    lost = await self._acquire_waiting(rt, op, wait)
            except BaseException as exc:
                await self._end(rt, op, exc)
                raise
            if lost is not None:
                error = None
                if lost.losers is not None and local is not None:
                    settled = lost.errors
                    if settled is None:
                        settled = lost.errors = _settle(rt, local, lost)
                    error = settled.pop(op.ecs_id.int, None)
                if error is None:
                    error = await self._rejected(rt, op, lost, wait)
                return _Raise(error)
        end = None
        outer = None
        task = current_task(loop)
        if task is not None:
            outer = holding.get(task)
            holding[task] = ids
        try:
            backend.set_status(op, _EXECUTING, clock.now())
            if rt.events.wants(OperationStartedEvent):
                await rt.events.emit(
                    OperationStartedEvent(
                        op_id=op.ecs_id,
                        target_entity_id=op.target_entity_id,
                        function_name=self.name,
                        priority=priority,
                    )
                )
            if self.occ and committed:
                result = await run_with_occ(
                    rt, op, self.config.occ, self.fn, committed, passed, args, kwargs
                )
            else:
                if stale:
                    args, kwargs = substitute_call(args, kwargs, {c.ecs_id: c for c in committed})
                result = self.fn(*args, **kwargs)
                if self.is_async:
                    result = await result
                if committed:
                    end = clock.now()
                    if local is not None:
                        local.bump_now(committed, end)
                    else:
                        await backend.bump(committed, end)
                    if stale:
                        for p, c in zip(passed, committed, strict=True):
                            if p is not c:
                                p.__dict__.update(c.__dict__)
        except BaseException as exc:
            _let_go(holding, task, outer)
            task = None  # this frame goes into exc's traceback; it must not point at exc's task
            if staged:
                backend.coordinator.release(op)
            await self._end(rt, op, exc)
            raise
        _let_go(holding, task, outer)
        if staged:
            backend.coordinator.release(op)
        await rt.cleanup.succeeded(op, self.cleanup, end)
        return result

    async def _run_joined(
        self,
        rt: Runtime,
        priority: int,
        passed: list[Entity],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """A call made inside another protected call, on entities that call already holds.

        Staging it would wait for the enclosing call to release a target it holds until this
        call returns (a deadlock), and its own OCC commit would race the enclosing one. So it
        joins the enclosing call: it runs at once on the objects it was given (the enclosing
        call's working copies under OCC), and the enclosing call's staging and commit cover it.
        It still gets its own record.
        """
        backend = rt.backend
        now = rt.clock.now()
        ids = tuple([e.ecs_id for e in passed])
        op = ConflictResolutionOperation._start(
            self.name, ids, type(passed[0]).__name__, priority, self.cleanup, now
        )
        await backend.add_operation(op)
        try:
            backend.set_status(op, _EXECUTING, now)
            result = self.fn(*args, **kwargs)
            if self.is_async:
                result = await result
        except BaseException as exc:
            await self._end(rt, op, exc)
            raise
        await rt.cleanup.succeeded(op, self.cleanup)
        return result

    async def _end(self, rt: Runtime, op: ConflictResolutionOperation, exc: BaseException) -> None:
        """Give `op` its one terminal state after `exc`, without masking `exc`."""
        if isinstance(exc, asyncio.CancelledError):
            status, message = OperationStatus.CANCELLED, "cancelled by the caller"
        elif op.status is OperationStatus.PENDING:
            status = OperationStatus.REJECTED
            message = f"could not be staged: {type(exc).__name__}: {exc}"
        else:
            status, message = OperationStatus.FAILED, f"{type(exc).__name__}: {exc}"
        if op.is_terminal:
            return
        try:
            await rt.cleanup.bury(op, status, self.cleanup, message)
        except Exception:
            log.exception("could not finish the record of operation %s", op.ecs_id)
        if status is OperationStatus.FAILED:
            log.info(
                "operation %s (%s) on target %s failed: %s",
                op.ecs_id,
                self.name,
                op.target_entity_id,
                message,
            )

    async def _acquire_waiting(
        self, rt: Runtime, op: ConflictResolutionOperation, wait: float
    ) -> Lost | None:
        """Staging under the wait policy: the coordinator carries `op` from window to window
        until it wins or `wait` ms have passed; the time it took is observed, by outcome."""
        loop = _running_loop()
        start = loop.time()
        outcome = "error"
        try:
            lost = await rt.backend.coordinator.acquire(
                op, self.config.pre_ecs, deadline=start + wait / 1000.0
            )
            outcome = "won" if lost is None else "rejected"
            return lost
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            rt.metrics.staging_waited(outcome, loop.time() - start)

    async def _rejected(
        self, rt: Runtime, op: ConflictResolutionOperation, lost: Lost, wait: float | None = None
    ) -> OperationRejectedError:
        winner = lost.winner
        winner_id: UUID | None
        winner_priority: int | None
        if winner is not None:
            text = _rejection_text(op.priority, winner.priority)
            if wait is not None:
                text = f"{text} after waiting max_wait_ms={wait:g}"
            winner_id, winner_priority = winner.ecs_id, winner.priority
        else:
            text = lost.reason or "rejected by staging"
            winner_id, winner_priority = None, None
        eff = await rt.cleanup.bury(op, _REJECTED, self.cleanup, text, winner_id)
        if log.isEnabledFor(logging.DEBUG):
            _log_rejection(op, winner_id, winner_priority, eff)
        if rt.events.wants(OperationRejectedEvent):
            await rt.events.emit(
                OperationRejectedEvent(
                    op_id=op.ecs_id,
                    target_entity_id=op.target_entity_id,
                    rejection_reason=text,
                    cleanup_strategy=eff.strategy._value_,
                    winner_id=winner_id,
                )
            )
        return OperationRejectedError(
            op.ecs_id,
            op.target_entity_id,
            op.priority,
            winner_id,
            winner_priority,
            text,
            self.name,
        )


def _settle(rt: Runtime, local: MemoryBackend, lost: Lost) -> dict[int, OperationRejectedError]:
    """Reject a window's losers in one pass, for the first of them to resume; by record id.

    Only what needs nothing awaited is done here: losers whose effective strategy is IMMEDIATE,
    with no removal sink and nobody subscribed to rejections or removals. Their records end and
    leave together, counted in one step per metric. Any other loser is left out and takes the
    one-at-a-time path (`_Protected._rejected`) when it resumes; so is one whose caller has been
    asked to stop since it was staged, whose record then ends CANCELLED.
    """
    settled: dict[int, OperationRejectedError] = {}
    winner = lost.winner
    cleanup = rt.cleanup
    if winner is None or not cleanup.can_pass_through() or rt.events.wants(OperationRejectedEvent):
        return settled
    effs: dict[tuple[int, int], EffectiveCleanup] = {}
    batch: list[ConflictResolutionOperation] = []
    texts: list[str] = []
    eff = None
    wid, wprio = winner.ecs_id, winner.priority
    debug = log.isEnabledFor(logging.DEBUG)
    for op, task, cancelling in lost.losers or ():
        d = op.__dict__
        config = d["cleanup_config"]
        if (
            config is None
            or d["status"] is not _PENDING
            or (task is not None and task.cancelling() > cancelling)
        ):
            continue
        priority = d["priority"]
        key = (id(config), priority)
        this = effs.get(key)
        if this is None:
            this = effs[key] = effective_cleanup(config, op, rt)
        if this.strategy is not _IMMEDIATE:
            continue
        if eff is not None and this != eff:
            cleanup.pass_through(local, batch, _REJECTED, texts, wid, eff)
            batch, texts = [], []
        eff = this
        text = _REJECTED_TEXT[priority, wprio]
        batch.append(op)
        texts.append(text)
        settled[d["ecs_id"].int] = OperationRejectedError(
            d["ecs_id"], d["target_entity_id"], priority, wid, wprio, text, d["function_name"]
        )
        if debug:
            _log_rejection(op, wid, wprio, this)
    if eff is not None:
        cleanup.pass_through(local, batch, _REJECTED, texts, wid, eff)
    return settled


def _log_rejection(
    op: ConflictResolutionOperation,
    winner_id: UUID | None,
    winner_priority: int | None,
    eff: EffectiveCleanup,
) -> None:
    log.debug(
        "operation %s (%s, priority %d) rejected on target %s: winner %s (priority %s); cleanup %s",
        op.ecs_id,
        op.function_name,
        op.priority,
        op.target_entity_id,
        winner_id,
        winner_priority,
        eff.strategy,
    )


def _build_config(
    pre_ecs: PreECSConfig | bool | None,
    occ: OCCConfig | bool | None,
    cleanup: CleanupConfig | CleanupStrategy | str | dict[str, Any] | None,
    mode: ConflictResolutionMode | str | None,
    config: ConflictResolutionConfig | None,
) -> ConflictResolutionConfig:
    if config is not None:
        if not isinstance(config, ConflictResolutionConfig):
            raise ConfigurationError(
                "config", f"expected ConflictResolutionConfig, got {type(config).__name__}"
            )
        given = [
            n
            for n, v in (("pre_ecs", pre_ecs), ("occ", occ), ("cleanup", cleanup), ("mode", mode))
            if v is not None
        ]
        if given:
            raise ConfigurationError(
                "config", f"pass either config= or {', '.join(given)}=, not both"
            )
        return config
    if isinstance(cleanup, (CleanupStrategy, str)):
        try:
            strategy = CleanupStrategy(cleanup)
        except ValueError:
            allowed = ", ".join(s.value for s in CleanupStrategy)
            raise ConfigurationError(
                "cleanup", f"unknown strategy {cleanup!r} (allowed: {allowed})"
            ) from None
        try:
            cleanup = CleanupConfig(strategy=strategy)
        except ValidationError as exc:
            raise ConfigurationError(
                "cleanup",
                f"strategy {strategy.value!r} needs a CleanupConfig with its other fields "
                f"({_first_message(exc)})",
            ) from exc
    elif isinstance(cleanup, dict):
        try:
            cleanup = CleanupConfig(**cleanup)
        except ValidationError as exc:
            raise _located("cleanup", exc) from exc
    elif cleanup is not None and not isinstance(cleanup, CleanupConfig):
        raise ConfigurationError(
            "cleanup",
            "expected CleanupConfig, a dict of its fields or a strategy name, "
            f"got {type(cleanup).__name__}",
        )
    for name, value, kind in (("pre_ecs", pre_ecs, PreECSConfig), ("occ", occ, OCCConfig)):
        if value is not None and not isinstance(value, (bool, dict, kind)):
            raise ConfigurationError(
                name,
                f"expected {kind.__name__} (or a dict of its fields), True, False or None, "
                f"got {value!r}",
            )
    data: dict[str, Any] = {"pre_ecs": pre_ecs, "occ": occ}
    if cleanup is not None:
        data["cleanup"] = cleanup
    if mode is not None:
        try:
            data["mode"] = ConflictResolutionMode(mode)
        except ValueError:
            allowed = ", ".join(m.value for m in ConflictResolutionMode)
            raise ConfigurationError(
                "mode", f"unknown mode {mode!r} (allowed: {allowed})"
            ) from None
    try:
        return ConflictResolutionConfig(**data)
    except ValidationError as exc:
        raise _located("", exc) from exc


def _located(parent: str, exc: ValidationError) -> ConfigurationError:
    """The first error of `exc` as a ConfigurationError naming its field under `parent`."""
    first = exc.errors()[0]
    error = (first.get("ctx") or {}).get("error")
    path = [str(p) for p in first["loc"]]
    if isinstance(error, ConfigurationError):
        if not path or path[-1] != error.field:
            path.append(error.field)
        message = str(error).removeprefix(f"{error.field}: ")
    else:
        message = _first_message(exc)
    field = ".".join([parent, *path] if parent else path) or "config"
    return ConfigurationError(field, message)


def _first_message(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def _check_handlers(config: ConflictResolutionConfig) -> None:
    cleanup = config.cleanup
    if cleanup.strategy is CleanupStrategy.CUSTOM:
        name = cleanup.custom_cleanup_handler or ""
        if not CleanupHandlerRegistry.has(name):
            raise ConfigurationError(
                "cleanup.custom_cleanup_handler",
                f"no cleanup handler registered under {name!r} "
                f"(registered: {', '.join(CleanupHandlerRegistry.names())})",
            )


@overload
def with_conflict_resolution(func: Callable[P, R], /) -> ConflictResolved[P, R]: ...


@overload
def with_conflict_resolution(
    func: None = None,
    /,
    *,
    pre_ecs: PreECSConfig | bool | None = None,
    occ: OCCConfig | bool | None = None,
    cleanup: CleanupConfig | CleanupStrategy | str | dict[str, Any] | None = None,
    mode: ConflictResolutionMode | str | None = None,
    config: ConflictResolutionConfig | None = None,
    priority: int | None = None,
    runtime: Runtime | None = None,
) -> Callable[[Callable[P, R]], ConflictResolved[P, R]]: ...


def with_conflict_resolution(
    func: Callable[P, R] | None = None,
    /,
    *,
    pre_ecs: PreECSConfig | bool | None = None,
    occ: OCCConfig | bool | None = None,
    cleanup: CleanupConfig | CleanupStrategy | str | dict[str, Any] | None = None,
    mode: ConflictResolutionMode | str | None = None,
    config: ConflictResolutionConfig | None = None,
    priority: int | None = None,
    runtime: Runtime | None = None,
) -> ConflictResolved[P, R] | Callable[[Callable[P, R]], ConflictResolved[P, R]]:
    """Protect a function whose arguments include entities.

    Concurrent calls on the same primary target (the first Entity argument) are staged and the
    highest priority wins (`pre_ecs`, on unless disabled); commits can be guarded by version
    compare-and-set with retries (`occ`, off unless given); records of calls that end rejected,
    failed or cancelled are cleaned up by `cleanup` (default: deferred, 30 minutes).
    A call without any Entity argument conflicts with nothing: it runs at once.
    Everything is validated here, at decoration time.
    """
    if runtime is not None and not isinstance(runtime, Runtime):
        raise ConfigurationError("runtime", f"expected a contend Runtime, got {runtime!r}")
    resolved = _build_config(pre_ecs, occ, cleanup, mode, config)
    _check_handlers(resolved)
    default_priority = _default_priority(priority, resolved.pre_ecs.priority)

    def decorate(fn: Callable[P, R]) -> ConflictResolved[P, R]:
        if not callable(fn):
            raise ConfigurationError("func", f"expected a callable, got {fn!r}")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigurationError(
                "func",
                f"{fn.__qualname__} is a generator function: its body runs as it is iterated, "
                "after the call has returned, so nothing could stage or commit it; decorate a "
                "function that returns its result (collect the items into a list)",
            )
        protected: _Protected[P, R] = _Protected(fn, resolved, default_priority, runtime)
        return cast(
            "ConflictResolved[P, R]", _bound(protected, default_priority, protected.max_wait)
        )

    if func is not None:
        return decorate(func)
    return decorate


def _default_priority(given: Any, configured: int | None) -> int:
    """The decorator's priority=, else PreECSConfig.priority, else NORMAL; both, disagreeing,
    is an error."""
    if given is None:
        return configured if configured is not None else int(OperationPriority.NORMAL)
    checked = _check_priority(given)
    if configured is not None and configured != checked:
        raise ConfigurationError(
            "priority",
            f"given twice with different values: priority={checked} and "
            f"PreECSConfig(priority={configured}); give it in one place",
        )
    return checked


def _add_overrides(
    wrapper: Callable[..., Any], protected: _Protected[Any, Any], priority: int, wait: float | None
) -> None:
    """`wrapper.with_priority(p)` and `wrapper.with_max_wait(ms)`: the same function with one
    per-call setting changed; each returns a callable that has both again (they chain)."""

    def with_priority(p: int) -> Callable[..., Any]:
        return _bound(protected, _check_priority(p), wait)

    def with_max_wait(max_wait_ms: float) -> Callable[..., Any]:
        return _bound(protected, priority, _check_wait(max_wait_ms))

    setattr(wrapper, "with_priority", with_priority)  # noqa: B010
    setattr(wrapper, "with_max_wait", with_max_wait)  # noqa: B010


def _bound(
    protected: _Protected[Any, Any], priority: int, wait: float | None
) -> Callable[..., Any]:
    """The decorated function as callers see it, with its priority and wait (ms, None: reject)
    for every call, and `with_priority` / `with_max_wait` to change either."""
    call: Callable[..., Any]
    if protected.is_async:

        async def call_async(*args: Any, **kwargs: Any) -> Any:
            result = await protected.run(priority, wait, args, kwargs)
            if type(result) is _Raise:
                raise result.take()
            return result

        call = call_async
    else:

        def call_sync(*args: Any, **kwargs: Any) -> Any:
            return _run_sync(protected, priority, wait, args, kwargs)

        call = call_sync
    functools.update_wrapper(call, protected.fn)
    _add_overrides(call, protected, priority, wait)
    setattr(call, "conflict_config", protected.config)  # noqa: B010
    setattr(call, "priority", priority)  # noqa: B010
    return call


def _run_sync(
    protected: _Protected[Any, Any],
    priority: int,
    wait: float | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            f"{protected.name} is a sync function decorated with with_conflict_resolution and "
            "was called inside a running event loop, where it would block the loop; decorate an "
            "`async def` and await it, or call this function from synchronous code"
        )
    result = asyncio.run(protected.run(priority, wait, args, kwargs))
    if type(result) is _Raise:
        raise result.take()
    return result


F = TypeVar("F", bound=Callable[..., Any])


def no_conflict_resolution(func: F) -> F:
    """Mark a function as deliberately unprotected (it runs as written; nothing is staged)."""
    func.__contend_unprotected__ = True  # type: ignore[attr-defined]
    return func
