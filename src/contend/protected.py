"""A protected call's life: find its entities, record it, stage it, run it, end it.

`Protected` is the machinery behind one decorated function; `Protected.run` is one call. It is
the hot path of contend, so it runs in one coroutine frame (the one the caller awaits) and its
steps are plain methods: only what may suspend is awaited (the staging window, the function, a
remote backend, a cleanup handler). On a runtime with a synchronous store (the memory backend)
an uncontended call, and a window's losers, await nothing of contend's at all.

A rejected caller's traceback keeps `run`'s frame, and with it the frame's locals: nothing in
them may point back at the error (a reference cycle only the garbage collector frees), so the
error and the window's outcome (which lists the callers' tasks) are dropped as it is raised, and
the task is never kept in one. The call's record, entities and arguments are dropped too: a
gather of thousands of rejected calls keeps every error until it returns, and the garbage
collector walks whatever they keep on each of its passes.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast
from uuid import UUID

from contend._args import find_entities, substitute_call
from contend._fast import REJECTED_TEXT, current_task, rejection_text
from contend.config import MAX_WAIT_MS, ConflictResolutionConfig, EffectiveCleanup
from contend.entity import copy_state, shard_key_of
from contend.enums import CleanupStrategy, OperationStatus
from contend.errors import (
    ConfigurationError,
    CrossShardError,
    NestedCallError,
    OperationRejectedError,
)
from contend.events import OperationRejectedEvent, OperationStartedEvent
from contend.nesting import Scope, enclosing, scope_of
from contend.occ import run_with_occ
from contend.record import Record
from contend.runtime import Runtime, get_runtime

if TYPE_CHECKING:
    from contend.backends.base import Backend, Store
    from contend.entity import Entity
    from contend.staging import Lost

__all__ = ["Protected", "check_priority", "check_wait"]

log = logging.getLogger("contend.decorator")

P = ParamSpec("P")
R = TypeVar("R")

_PENDING = OperationStatus.PENDING
_EXECUTING = OperationStatus.EXECUTING
_REJECTED = OperationStatus.REJECTED
_IMMEDIATE = CleanupStrategy.IMMEDIATE
_running_loop = asyncio.get_running_loop


class Protected(Generic[P, R]):
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
        self.module, self.qualname = _name_of(fn)
        self.name = f"{self.module}.{self.qualname}"
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__  # an object with an async __call__
        )
        self.staging = config.pre_ecs.enabled
        self.pre_ecs = config.pre_ecs
        self.max_wait: float | None = config.pre_ecs.max_wait_ms if config.pre_ecs.waits else None
        self.occ = config.occ.enabled
        self.cleanup = config.cleanup
        self.warned_unguarded = False
        self._noted: weakref.ref[Runtime] | None = None

    async def run(self, priority: int, wait: float | None, /, *args: Any, **kwargs: Any) -> Any:
        """One call; `wait` is how long it may wait for its target in ms (None: reject)."""
        rt = self.runtime or get_runtime()
        loop = _running_loop()
        if rt.loop is not loop:
            rt.bind_loop()
        noted = self._noted
        if noted is None or noted() is not rt:
            self._note(rt)
        if wait is not None and self.staging:
            _check_waits(rt)
        passed = find_entities(args, kwargs)
        if passed:
            scope = enclosing.get()
            if scope is not None:
                scope = scope.open_for(rt)
                if scope is not None:
                    held = scope.held()
                    if not _holds_all(held, passed):
                        _refuse_partly_held(self.name, held, passed)
                    spawned = not scope.owned_by(current_task(loop))
                    if not spawned or scope.current_objects(passed):
                        return await self._run_joined(
                            rt, scope, spawned, priority, passed, args, kwargs
                        )
                    scope = None  # a failed attempt's copies: a call of its own
        if len(passed) > 1:  # a single entity's shard key is checked when first registered
            _check_shard_keys(self.name, passed, rt.backend)
        store = rt.store
        backend = rt.backend
        if store is not None:
            committed = self._registered(store, passed)
        else:
            committed = await self._registered_remotely(backend, passed)
        record = self._record(rt, priority, committed)
        staged = self.staging and bool(committed)
        if store is None:
            await backend.add_operation(record)
        elif not staged or len(committed) > 1:
            store.add_operation(record)  # a staged call's coordinator lists it by its first target
        if staged:
            try:
                if wait is None:
                    lost = await rt.coordinator.acquire(record, self.pre_ecs)
                else:
                    lost = await self._acquire_waiting(rt, record, wait)
            except BaseException as exc:
                await self._end(rt, record, exc)
                raise
            if lost is not None:
                errors = lost.errors
                if errors is None and lost.losers is not None and store is not None:
                    errors = lost.errors = _reject_together(rt, lost)
                error = errors.pop(record, None) if errors is not None else None
                if error is None:
                    error = await self._rejected(rt, record, lost, wait)
                try:
                    raise error
                finally:
                    # no cycle, and little kept: see the module docstring
                    del error, errors, lost, record, passed, committed, args, kwargs
        return await self._execute(rt, record, staged, committed, passed, args, kwargs)

    async def _execute(
        self,
        rt: Runtime,
        record: Record,
        staged: bool,
        committed: Sequence[Entity],
        passed: Sequence[Entity],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run the function on the committed entities (under OCC: on working copies, then one
        compare-and-set), record the write, hand the target on, and end the record."""
        clock = rt.clock
        store = rt.store
        scope = scope_of(current_task(_running_loop()))
        outer = scope.call
        end = None
        try:
            if store is not None:
                store.set_status(record, _EXECUTING, clock.now())
            else:
                rt.backend.set_status(record, _EXECUTING, clock.now())
            if rt.events.wants(OperationStartedEvent):
                await self._started(rt, record)
            if self.occ and committed:
                result = await run_with_occ(
                    rt, record, self.config.occ, self.fn, committed, passed, args, kwargs, scope
                )
            else:
                stale = committed is not passed
                if stale:
                    args, kwargs = substitute_call(args, kwargs, {c.ecs_id: c for c in committed})
                scope.call = (rt, record.target_entity_ids, None)
                result = self.fn(*args, **kwargs)
                if self.is_async:
                    result = await result
                if scope.running:
                    await scope.close()
                scope.call = None
                if committed:
                    end = clock.now()
                    if store is not None:
                        store.bump(committed, end)
                    else:
                        await rt.backend.bump(committed, end)
                    if stale:
                        _show_committed(passed, committed)
        except BaseException as exc:
            scope.call = outer
            if staged:
                rt.coordinator.release(record)
            await self._end(rt, record, exc)
            raise
        scope.call = outer
        if staged:
            rt.coordinator.release(record)
        cleanup = rt.cleanup
        if cleanup.leaves_at_once(self.cleanup):
            cleanup.end_success(record, end or clock.now())
        elif store is not None:
            await _standing(cleanup.succeeded_in_task(record, self.cleanup, end))
        else:
            await cleanup.succeeded(record, self.cleanup, end)
        return result

    # steps --------------------------------------------------------------------------------------
    def _note(self, rt: Runtime) -> None:
        """Count this function once per runtime it is called on (by its cleanup strategy)."""
        rt.note_function(self.name, self.cleanup.strategy)
        self._noted = weakref.ref(rt)

    def _registered(self, store: Store, passed: Sequence[Entity]) -> Sequence[Entity]:
        """The committed instance of each entity passed, registered on first use: `passed`
        itself when the caller passed the committed instances (the usual case)."""
        committed = passed
        for i, e in enumerate(passed):
            c = store.ensure_entity(e)
            if c is not e:
                committed = self._swap(committed, passed, i, c)
        return committed

    async def _registered_remotely(
        self, backend: Backend, passed: Sequence[Entity]
    ) -> Sequence[Entity]:
        """`_registered` through the backend's coroutines."""
        committed = passed
        for i, e in enumerate(passed):
            c = await backend.ensure_entity(e)
            if c is not e:
                committed = self._swap(committed, passed, i, c)
        return committed

    def _swap(
        self, committed: Sequence[Entity], passed: Sequence[Entity], i: int, c: Entity
    ) -> list[Entity]:
        """`committed` with its `i`-th entity replaced by the committed instance `c` (a copy of
        `passed` the first time)."""
        e = passed[i]
        if type(c) is not type(e):
            raise TypeError(
                f"{self.name}: entity {e.ecs_id} is registered as a {type(c).__name__}, but a "
                f"{type(e).__name__} with that ecs_id was passed; an ecs_id names one entity of "
                "one type"
            )
        swapped = list(passed) if committed is passed else cast("list[Entity]", committed)
        swapped[i] = c
        return swapped

    def _record(self, rt: Runtime, priority: int, committed: Sequence[Entity]) -> Record:
        """The call's PENDING record, under its targets (none for a call without entities)."""
        if not committed:
            return Record(self.name, (), "", priority, self.cleanup, rt.clock.now())
        first = committed[0]
        if len(committed) == 1:
            ids: tuple[UUID, ...] = (first.ecs_id,)
        else:
            ids = tuple([c.ecs_id for c in committed])
            if not self.occ and not self.warned_unguarded:
                self.warned_unguarded = True
                log.warning(
                    "%s writes %d entities with OCC off: calls are staged under the first one "
                    "only, so concurrent writes to the others can be lost; pass occ=OCCConfig() "
                    "(or occ=True) to guard every target",
                    self.name,
                    len(ids),
                )
        return Record(self.name, ids, type(first).__name__, priority, self.cleanup, rt.clock.now())

    async def _acquire_waiting(self, rt: Runtime, record: Record, wait: float) -> Lost | None:
        """Staging under the wait policy: the coordinator carries `record` from window to window
        until it wins or `wait` ms have passed; the time it took is observed, by outcome."""
        loop = _running_loop()
        start = loop.time()
        outcome = "error"
        try:
            lost = await rt.coordinator.acquire(
                record, self.pre_ecs, deadline=start + wait / 1000.0
            )
            outcome = "won" if lost is None else "rejected"
            return lost
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            rt.metrics.staging_waited(outcome, loop.time() - start)

    async def _rejected(
        self, rt: Runtime, record: Record, lost: Lost, wait: float | None = None
    ) -> OperationRejectedError:
        """A loser that `_settled` left to itself: buried one at a time (its strategy is not
        IMMEDIATE, someone listens, a removal sink is attached, or its caller is being
        cancelled), announced, and given its error."""
        winner = lost.winner
        winner_id: UUID | None = None
        if winner is not None:
            text = rejection_text(record.priority, winner.priority)
            if wait is not None:
                text = f"{text} after waiting max_wait_ms={wait:g}"
            winner_id = winner.ecs_id
        else:
            text = lost.reason or "rejected by staging"
        effective = await rt.cleanup.bury(record, _REJECTED, self.cleanup, text, winner_id)
        if log.isEnabledFor(logging.DEBUG):
            _log_rejection(record, winner, effective)
        if rt.events.wants(OperationRejectedEvent):
            await rt.events.emit(
                OperationRejectedEvent(
                    op_id=record.ecs_id,
                    target_entity_id=record.target_entity_id,
                    rejection_reason=text,
                    cleanup_strategy=effective.strategy.value,
                    winner_id=winner_id,
                )
            )
        return OperationRejectedError.lost(record, winner, text)

    async def _started(self, rt: Runtime, record: Record) -> None:
        await rt.events.emit(
            OperationStartedEvent(
                op_id=record.ecs_id,
                target_entity_id=record.target_entity_id,
                function_name=self.name,
                priority=record.priority,
            )
        )

    async def _run_joined(
        self,
        rt: Runtime,
        scope: Scope,
        spawned: bool,
        priority: int,
        passed: Sequence[Entity],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """A call made inside another protected call, on entities that call already holds.

        Staging it would wait for the enclosing call to release a target it holds until this
        call returns (a deadlock), and its own OCC commit would race the enclosing one. So it
        joins the enclosing call: it runs at once on the objects it was given (the enclosing
        call's working copies under OCC), and the enclosing call's staging and commit cover it;
        made from a task the enclosing call spawned, the enclosing call waits for it before
        committing. It still gets its own record.
        """
        if spawned:
            scope.enter()
        try:
            backend = rt.backend
            now = rt.clock.now()
            ids = tuple([e.ecs_id for e in passed])
            record = Record(self.name, ids, type(passed[0]).__name__, priority, self.cleanup, now)
            await backend.add_operation(record)
            try:
                backend.set_status(record, _EXECUTING, now)
                result = self.fn(*args, **kwargs)
                if self.is_async:
                    result = await result
            except BaseException as exc:
                await self._end(rt, record, exc)
                raise
            await rt.cleanup.succeeded(record, self.cleanup)
            return result
        finally:
            if spawned:
                scope.leave()

    async def _end(self, rt: Runtime, record: Record, exc: BaseException) -> None:
        """Give `record` its one terminal state after `exc`, without masking `exc`."""
        if isinstance(exc, asyncio.CancelledError):
            status, message = OperationStatus.CANCELLED, "cancelled by the caller"
        elif record.status is _PENDING:
            status = OperationStatus.REJECTED
            message = f"could not be staged: {type(exc).__name__}: {exc}"
        else:
            status, message = OperationStatus.FAILED, f"{type(exc).__name__}: {exc}"
        if record.is_terminal:
            return
        try:
            await rt.cleanup.bury(record, status, self.cleanup, message)
        except Exception:
            log.exception("could not finish the record of operation %s", record.ecs_id)
        if status is OperationStatus.FAILED:
            log.info(
                "operation %s (%s) on target %s failed: %s",
                record.ecs_id,
                self.name,
                record.target_entity_id,
                message,
            )


def _reject_together(rt: Runtime, lost: Lost) -> dict[Record, OperationRejectedError]:
    """Reject a window's losers in one pass; their errors, by record.

    Only what needs nothing awaited is done here: losers whose effective strategy is IMMEDIATE,
    with no removal sink and nobody subscribed to rejections or removals. Their records end and
    leave together, counted in one step per metric; the cleanup that applies is worked out once
    per config and priority, not per loser, and the winner's id is made only if someone reads
    it. Any other loser is left out and takes the one-at-a-time path (`Protected._rejected`)
    when it resumes; so is one whose caller has been asked to stop since it was staged, whose
    record then ends CANCELLED. The first loser to resume runs it, for all of them
    (`Lost.errors`).
    """
    settled: dict[Record, OperationRejectedError] = {}
    winner = lost.winner
    cleanup = rt.cleanup
    if winner is None or not cleanup.can_pass_through() or rt.events.wants(OperationRejectedEvent):
        return settled
    effectives: dict[int, EffectiveCleanup] = {}
    known: object = None
    batch: list[Record] = []
    effective = None
    winner_priority = winner.priority
    now = rt.clock.now()
    debug = log.isEnabledFor(logging.DEBUG)
    for record, task, cancelling in lost.losers or ():
        config = record.cleanup_config
        if (
            record is winner
            or config is None
            or record.status is not _PENDING
            or (task is not None and task.cancelling() > cancelling)
        ):
            continue
        if config is not known:
            effectives, known = {}, config
        priority = record.priority
        this = effectives.get(priority)
        if this is None:
            this = effectives[priority] = cleanup.effective(config, priority)
        if this.strategy is not _IMMEDIATE:
            continue
        if effective is not None and this != effective:
            cleanup.passed(batch, _REJECTED, effective)
            batch = []
        effective = this
        text = REJECTED_TEXT[priority][winner_priority]
        record.end(_REJECTED, now, text, winner, _IMMEDIATE)
        batch.append(record)
        if debug:
            _log_rejection(record, winner, this)  # (makes the id first: the error takes it)
        settled[record] = OperationRejectedError.lost(record, winner, text)
    if effective is not None:
        cleanup.passed(batch, _REJECTED, effective)
    return settled


def _log_rejection(record: Record, winner: Record | None, effective: EffectiveCleanup) -> None:
    log.debug(
        "operation %s (%s, priority %d) rejected on target %s: winner %s (priority %s); cleanup %s",
        record.ecs_id,
        record.function_name,
        record.priority,
        record.target_entity_id,
        winner and winner.ecs_id,
        winner and winner.priority,
        effective.strategy,
    )


def _holds_all(held: tuple[UUID, ...], passed: Sequence[Entity]) -> bool:
    """Every entity of a call is held already (a function of its own: a generator expression in
    `Protected.run` would give its frame a cell, made on every call)."""
    return all(e.ecs_id in held for e in passed)


def _refuse_partly_held(name: str, held: tuple[UUID, ...], passed: Sequence[Entity]) -> None:
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


def _check_shard_keys(name: str, passed: Sequence[Entity], backend: Any) -> None:
    """Every backend checks shard keys' values (an entity of a class with a shard key); one that
    places entities by shard key (Redis: it has ``shard_key(entity)``) also refuses a call whose
    entities have different ones, before anything is recorded."""
    placed = getattr(backend, "shard_key", None)
    keys = {e.ecs_id: (shard_key_of(e) if placed is None else placed(e)) for e in passed}
    if placed is not None and len(set(keys.values())) > 1:
        raise CrossShardError(name, keys, {e.ecs_id: type(e).__name__ for e in passed})


def _show_committed(passed: Sequence[Entity], committed: Sequence[Entity]) -> None:
    """The objects the caller passed hold the committed state (they were stale copies)."""
    for p, c in zip(passed, committed, strict=True):
        if p is not c:
            copy_state(p, c)


def _check_waits(rt: Runtime) -> None:
    """The wait policy needs a coordinator that carries losers between windows."""
    if not getattr(rt.coordinator, "supports_wait", False):
        raise ConfigurationError(
            "pre_ecs.conflict_policy",
            f"the {rt.backend.name} backend's staging coordinator does not support the 'wait' "
            "policy yet; use conflict_policy='reject' (the default) on this backend and retry "
            "rejected calls yourself",
        )


def check_priority(priority: Any, field: str = "priority") -> int:
    """A priority given by a caller: an int from 1 to 10."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 10:
        raise ConfigurationError(
            field, f"must be an int from 1 (BACKGROUND) to 10 (CRITICAL), got {priority!r}"
        )
    return int(priority)


def check_wait(max_wait_ms: Any) -> float | None:
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


def _name_of(fn: Callable[..., Any]) -> tuple[str, str]:
    """Module and qualified name of what a decorated callable runs: a function, the function of
    a partial, or the class of a callable object."""
    inner = fn.func if isinstance(fn, functools.partial) else fn
    qualname = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    module = getattr(inner, "__module__", None) or type(inner).__module__
    return module, qualname


async def _standing(end: asyncio.Task[None]) -> None:
    """Await the end of a call whose write stands. A caller cancelled meanwhile is cancelled (a
    TaskGroup or a shutdown must be able to stop it), while the end finishes in its own task."""
    await asyncio.shield(end)
