"""Optimistic concurrency: run on working copies, commit with one compare-and-set, retry."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Callable, Sequence
from copy import Error as CopyError
from copy import deepcopy
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from contend._args import substitute, substitute_call
from contend.backends.base import Write
from contend.entity import Entity, copy_state
from contend.errors import OCCConflictError
from contend.events import OperationRetriedEvent

if TYPE_CHECKING:
    from contend.config import OCCConfig
    from contend.nesting import Scope
    from contend.record import Record
    from contend.runtime import Runtime

__all__ = ["run_with_occ", "working_copy"]

E = TypeVar("E", bound=Entity)

_IMMUTABLE = frozenset(
    {int, float, bool, str, bytes, type(None), UUID, datetime, date, time, timedelta, Decimal}
)
_new = object.__new__
_set = object.__setattr__


def working_copy(entity: E) -> E:
    """A deep copy of `entity` for one attempt: what `model_copy(deep=True)` gives, without
    running deepcopy over the immutable values most fields hold (the copy is most of an OCC
    call's cost otherwise)."""
    copy = _new(type(entity))
    try:
        _set(
            copy,
            "__dict__",
            {k: (v if type(v) in _IMMUTABLE else deepcopy(v)) for k, v in entity.__dict__.items()},
        )
        extra = entity.__pydantic_extra__
        _set(copy, "__pydantic_extra__", None if extra is None else deepcopy(extra))
        private = entity.__pydantic_private__
        _set(copy, "__pydantic_private__", None if private is None else deepcopy(private))
    except (TypeError, CopyError) as exc:
        raise _uncopyable(entity, exc) from exc
    _set(copy, "__pydantic_fields_set__", set(entity.__pydantic_fields_set__))
    return copy


def _uncopyable(entity: Entity, exc: Exception) -> TypeError:
    """What cannot be copied for an attempt, named (deepcopy's own error names only a type)."""
    places = [
        ("field", entity.__dict__),
        ("extra field", entity.__pydantic_extra__ or {}),
        ("private attribute", entity.__pydantic_private__ or {}),
    ]
    for kind, values in places:
        for name, value in values.items():
            try:
                deepcopy(value)
            except (TypeError, CopyError):
                return TypeError(
                    f"OCC runs each attempt on a deep copy of {type(entity).__name__} "
                    f"{entity.ecs_id}, but its {kind} {name!r} cannot be copied ({exc}): keep "
                    "objects such as locks, clients and connections out of entities, or turn OCC "
                    "off for this function"
                )
    return TypeError(f"OCC cannot copy {type(entity).__name__} {entity.ecs_id}: {exc}")


log = logging.getLogger("contend.occ")


async def run_with_occ(
    rt: Runtime,
    op: Record,
    config: OCCConfig,
    fn: Callable[..., Any],
    committed: Sequence[Entity],
    passed: Sequence[Entity],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    scope: Scope,
) -> Any:
    """Run `fn` on fresh copies of `committed` until one commit succeeds or retries run out.

    Each attempt copies the committed state with its version, runs the function on the copies,
    and commits them all at once only if every version is still as read. Nothing is written on a
    conflict. After success the instances the caller passed hold the committed state, and any
    working copy in the result is replaced by its committed instance.
    """
    backend = rt.backend
    metrics = rt.metrics
    attempt = 0
    while True:
        copies = [working_copy(c) for c in committed]
        read = [cp.version for cp in copies]
        by_id = {c.ecs_id: c for c in copies}
        a2, k2 = substitute_call(args, kwargs, by_id)
        scope.call = (rt, op.target_entity_ids, by_id)
        result = fn(*a2, **k2)
        if inspect.isawaitable(result):
            result = await result
        if scope.running:
            await scope.close()
        scope.call = None
        writes = [Write(c, cp, v) for c, cp, v in zip(committed, copies, read, strict=True)]
        conflict = await backend.commit(writes, rt.clock.now())
        if conflict is None:
            for p, c in zip(passed, committed, strict=True):
                if p is not c:
                    copy_state(p, c)
            return substitute(result, {c.ecs_id: c for c in committed})
        metrics.occ_conflicts.inc()
        if attempt >= config.max_retries:
            metrics.occ_exhausted.inc()
            raise OCCConflictError(
                op.ecs_id, conflict.entity_id, conflict.expected, conflict.actual, attempt + 1
            )
        delay = config.delay_seconds(attempt, random.random())
        attempt += 1
        op.retried(attempt)
        metrics.occ_retries.inc()
        log.debug(
            "operation %s: entity %s at version %d, expected %d; retry %d/%d in %.1f ms",
            op.ecs_id,
            conflict.entity_id,
            conflict.actual,
            conflict.expected,
            attempt,
            config.max_retries,
            delay * 1000,
        )
        if rt.events.wants(OperationRetriedEvent):
            await rt.events.emit(
                OperationRetriedEvent(
                    op_id=op.ecs_id,
                    target_entity_id=op.target_entity_id,
                    attempt=attempt,
                    entity_id=conflict.entity_id,
                    expected_version=conflict.expected,
                    actual_version=conflict.actual,
                    delay_ms=delay * 1000,
                )
            )
        await asyncio.sleep(delay)
