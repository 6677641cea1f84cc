"""Nested calls: a protected call made while another one runs, in its task or in a task it spawned.

Each task that runs a protected call has a `Scope`, put once in a context variable, which tasks
created inside it copy. While the call's function runs, its scope is *open* and says what the
call holds. A call made in that context (in the same task, or in a task created inside it) on
entities all held there joins the enclosing call instead of being staged behind it (staged, it
would wait for the enclosing call, which waits for it). The enclosing call waits for the calls
joined from other tasks before it commits, and closes its scope first, so a call made after
that (a task left running) is a call of its own, unless its task has opened another call
holding those entities by then, which it joins. Under OCC a call from another task joins only
on the working copies of the attempt in progress: one holding a failed attempt's copies would
write to copies that are thrown away, so it makes a call of its own.

The scope is made once per task, not per call: setting a context variable costs a call more
than the rest of this module together.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

__all__ = ["Call", "Scope", "enclosing", "scope_of"]

Call = tuple[object, tuple[UUID, ...], Mapping[UUID, object] | None]
"""An open call: its runtime, the ids it holds, and under OCC its working copies by id."""


class Scope:
    """The protected call running in one task, as seen by calls made inside it."""

    __slots__ = ("_idle", "_task", "call", "parent", "running")

    def __init__(self, task: asyncio.Task[Any] | None, parent: Scope | None) -> None:
        self._task = weakref.ref(task) if task is not None else None
        """Weakly: the task's context holds the scope."""
        self.parent = parent
        """The scope the task inherited: a call of its own does not hide its creator's."""
        self.call: Call | None = None
        """The open call, while its function runs; None otherwise."""
        self.running = 0
        """Calls joined from other tasks that have not returned yet."""
        self._idle: asyncio.Future[None] | None = None

    def open_for(self, runtime: object) -> Scope | None:
        """The nearest scope, this one or one it inherited, with a call open on `runtime`."""
        scope: Scope | None = self
        while scope is not None:
            call = scope.call
            if call is not None:
                return scope if call[0] is runtime else None
            scope = scope.parent
        return None

    def held(self) -> tuple[UUID, ...]:
        """The ids the open call holds."""
        return self.call[1] if self.call is not None else ()

    def owned_by(self, task: asyncio.Task[Any] | None) -> bool:
        """`task` is the one this scope was made for (not a task that inherited it)."""
        return self._task is not None and self._task() is task

    def current_objects(self, passed: Sequence[Any]) -> bool:
        """Under OCC, `passed` are the working copies of the attempt in progress."""
        copies = self.call[2] if self.call is not None else None
        return copies is None or all(copies.get(e.ecs_id) is e for e in passed)

    def enter(self) -> None:
        """A call joined from another task starts."""
        self.running += 1

    def leave(self) -> None:
        """A call joined from another task ended."""
        self.running -= 1
        idle = self._idle
        if not self.running and idle is not None and not idle.done():
            idle.set_result(None)

    async def close(self) -> None:
        """Wait for the calls joined from other tasks, then take no more (the commit comes)."""
        while self.running:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        self._idle = None
        self.call = None


def scope_of(task: asyncio.Task[Any] | None) -> Scope:
    """The scope of `task`, made and put in its context on its first protected call."""
    scope = enclosing.get()
    if scope is None or not scope.owned_by(task):
        scope = Scope(task, scope)
        enclosing.set(scope)
    return scope


enclosing: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "contend_enclosing_call", default=None
)
"""The scope of the task that made this context (or of a task it was copied from)."""
