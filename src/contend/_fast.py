"""Every trick contend plays for speed, in one place, each with its reason.

The hot path (a decorated call that is staged, wins or loses, and ends) runs in every call of a
busy service; these shave what the plain spelling costs there. Nothing else in contend reads
asyncio's internals or builds objects behind their constructors' backs. Each trick stays correct
on every supported Python (3.11 to 3.13): where an internal is missing, the plain way is used.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import sys
import types
from collections.abc import Callable, Generator
from typing import Any, TypeVar
from uuid import UUID, SafeUUID

__all__ = [
    "REJECTED_TEXT",
    "construct_model",
    "current_task",
    "loop_is_idle",
    "new_id",
    "rejection_text",
    "yield_once",
]


# -- ids -------------------------------------------------------------------------------------------
# uuid4() reads os.urandom for every id (a system call, ~13,000 instructions); a record needs a
# random, unique id, not a cryptographic one. A generator seeded by the OS (reseeded in a forked
# child, so two processes never share a sequence) gives the same version-4 UUIDs for a third.

_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)
_new = object.__new__
_set_int = UUID.__dict__["int"].__set__
_set_safe = UUID.__dict__["is_safe"].__set__
_UNKNOWN = SafeUUID.unknown


def new_id() -> UUID:
    """A version-4 UUID from a per-process generator seeded by the OS."""
    u = _new(UUID)
    _set_int(u, (_rng.getrandbits(128) & _CLEAR) | _SET)
    _set_safe(u, _UNKNOWN)
    return u


# -- the current task ------------------------------------------------------------------------------
# On 3.11 `asyncio.current_task()` is Python code over a dict of the running task per loop; that
# dict's own `get` gives the same answer for a loop without a Python call. From 3.12 it is C (and
# the dict is gone), so it is used as it is.

_tasks_by_loop: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = (
    getattr(asyncio.tasks, "_current_tasks", None) if sys.version_info < (3, 12) else None
)

current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _tasks_by_loop.get if _tasks_by_loop is not None else asyncio.current_task
)
"""`asyncio.current_task(loop)`, with no Python frame on any version."""


# -- an idle loop ----------------------------------------------------------------------------------
# A zero-length staging window holds the calls submitted in the same event-loop tick. When nothing
# else is ready to run, no other call can join it, so a lone call may hold its target at once,
# without a trip through the loop (most calls of a service are uncontended). CPython's loops keep
# their ready callbacks in `_ready`; a loop without it (uvloop) always takes the trip. From 3.12 a
# task may run its first step eagerly (`eager_task_factory`) while the task creating it is still
# mid-tick and may create more calls: such a step always takes the trip too.

_eager_tasks: set[asyncio.Task[Any]] | None = getattr(asyncio.tasks, "_eager_tasks", None)


def loop_is_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """True when nothing else is ready to run in this tick of a CPython event loop."""
    ready = getattr(loop, "_ready", None)
    if type(ready) is not collections.deque or ready:
        return False
    return not _eager_tasks or current_task(loop) not in _eager_tasks


# -- one trip through the loop ---------------------------------------------------------------------
# What `await asyncio.sleep(0)` does, without its two coroutine frames and argument checks: a bare
# yield makes the task reschedule itself behind every callback already queued.


@types.coroutine
def yield_once() -> Generator[None, None, None]:
    """One trip through the event loop."""
    yield


# -- rejection messages ----------------------------------------------------------------------------
# The design's message for a lost window names both priorities. There are only 100 pairs: built
# once, a zombie record shares its message string instead of holding a copy of its own, and a
# rejection formats nothing (``REJECTED_TEXT[priority][winner_priority]``, or `rejection_text`).

REJECTED_TEXT: tuple[tuple[str, ...], ...] = tuple(
    tuple(
        f"Lost Pre-ECS priority conflict (priority {p} vs winner {w})" if p and w else ""
        for w in range(11)
    )
    for p in range(11)
)


def rejection_text(priority: int, winner_priority: int) -> str:
    """The design's message for a call of `priority` that lost to `winner_priority` (1..10)."""
    return REJECTED_TEXT[priority][winner_priority]


# -- dicts ---------------------------------------------------------------------------------------
# CPython 3.11+ keeps a plain object's attributes in "inline values", which attribute reads are
# specialised for; reading `obj.__dict__` once turns them into a real dict for good, and every
# later read of that object's attributes takes a slower path. Objects of the hot path (the
# runtime, the protected function, the coordinator) never have their `__dict__` read.


# -- models without validation ---------------------------------------------------------------------
# pydantic's `model_construct` still walks every field and its defaults (tens of microseconds for an
# operation record). A view of a record needs none of that: its values were validated when they
# were made, and every field is given.

M = TypeVar("M")
_fields_set_of: dict[type[Any], set[str]] = {}


def construct_model(cls: type[M], values: dict[str, Any], private: dict[str, Any] | None) -> M:
    """An instance of the pydantic model `cls` holding `values` (every field), unvalidated."""
    model = _new(cls)
    fields_set = _fields_set_of.get(cls)
    if fields_set is None:
        fields_set = _fields_set_of[cls] = set(cls.model_fields)  # type: ignore[attr-defined]
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", fields_set)
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", private)
    return model
