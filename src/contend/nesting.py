"""Nested calls: a protected call made while another one runs, in its task or in a task it spawned.

While a winning call's function runs, it is the *enclosing call* of its context: a `Scope` in a
context variable, which tasks created inside the function copy. A call made in that context on
entities the scope holds joins the enclosing call instead of being staged behind it (staged, it
would wait for the enclosing call, which waits for it). Calls joined from tasks other than the
enclosing call's are counted, and the enclosing call waits for them before it commits, so that
their writes are part of its commit; then the scope closes, and a call made later (by a task left
running) is a call of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any
from uuid import UUID

__all__ = ["Scope", "enclosing"]


class Scope:
    """The enclosing call of a context: its runtime, the entities it holds, the task running it."""

    __slots__ = ("_idle", "held", "open", "running", "runtime", "task")

    def __init__(self, runtime: object, held: tuple[UUID, ...], task: asyncio.Task[Any] | None):
        self.runtime = runtime
        self.held = held
        self.task = task
        self.open = True
        self.running = 0
        """Calls joined from other tasks that have not returned yet."""
        self._idle: asyncio.Future[None] | None = None

    def takes(self, runtime: object) -> bool:
        """A call on `runtime` made in this context may join (the enclosing call still runs)."""
        return self.open and self.runtime is runtime

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
        self.shut()

    def shut(self) -> None:
        """Take no more calls; forget the task (a scope outlives it in tracebacks)."""
        self.open = False
        self.task = None
        self._idle = None

    def renewed(self) -> Scope:
        """A fresh scope for the enclosing call's next attempt (OCC retry), made current.

        Tasks of the failed attempt keep the old, closed scope: their calls would write to that
        attempt's discarded working copies, so they run as calls of their own.
        """
        scope = Scope(self.runtime, self.held, asyncio.current_task())
        enclosing.set(scope)
        return scope


enclosing: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "contend_enclosing_call", default=None
)
"""The protected call whose function is running in this context, if any."""
