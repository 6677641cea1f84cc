"""Pre-ECS staging in one process: windows per target, highest priority wins, no polling.

No reference cycle: a caller cancelled while staged raises through `acquire`'s frames, its
exception's traceback keeps those frames and its task keeps the exception. A frame that still
held the task, or a window (whose entries hold every caller's task), would make a cycle leaving
the whole window's tasks, records and errors to the garbage collector; so they drop both first.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from contend.backends.base import Lost, Staged

if TYPE_CHECKING:
    from contend.config import PreECSConfig
    from contend.operations import ConflictResolutionOperation

__all__ = ["LocalCoordinator", "WindowObserver"]

log = logging.getLogger("contend.staging")

_running_loop = asyncio.get_running_loop

WindowObserver = Callable[
    [
        "ConflictResolutionOperation",
        "list[ConflictResolutionOperation]",
        "Sequence[ConflictResolutionOperation]",
    ],
    None,
]
"""Told of every contested window: its winner, every call in it, and the losers carried into
the target's next window (wait policy) instead of rejected."""


class _Window:
    """Calls collected for one target; closed once, then every entry knows whether it won."""

    __slots__ = ("closed", "entries", "fast", "futures", "lost", "timer", "timer_fired", "winner")

    def __init__(self, fast: bool) -> None:
        self.entries: list[Staged] = []
        self.futures: dict[int, asyncio.Future[None]] = {}
        self.closed = False
        self.fast = fast
        self.winner: ConflictResolutionOperation | None = None
        self.lost: Lost | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_fired = False


class _Waiter:
    """A call under the wait policy while it waits for its target (one per call, by record id).

    `window` is the open window whose entries hold it; None once it won (`won`) or its deadline
    passed (`lost`). `aged` counts the windows it lost, its priority bonus when a window is
    decided (ageing: see `_pick_aged`); `winner` is the call it last lost to.
    """

    __slots__ = ("aged", "lost", "timer", "window", "winner", "won")

    def __init__(self, window: _Window) -> None:
        self.window: _Window | None = window
        self.aged = 0
        self.winner: ConflictResolutionOperation | None = None
        self.won = False
        self.lost: Lost | None = None
        self.timer: asyncio.TimerHandle | None = None


@types.coroutine
def _yield_once() -> Any:
    """One trip through the event loop (what asyncio.sleep(0) does, minus its checks)."""
    yield


_tasks_by_loop: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = (
    getattr(asyncio.tasks, "_current_tasks", None) if sys.version_info < (3, 12) else None
)
"""On 3.11 `asyncio.current_task` is Python code over this dict; from 3.12 it is C (and later
versions keep the current task elsewhere), so the dict is read directly on 3.11 only."""


def current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    """`asyncio.current_task()` without its Python-level overhead on 3.11."""
    if _tasks_by_loop is not None:
        return _tasks_by_loop.get(loop)
    return asyncio.current_task(loop)


_eager_tasks: set[asyncio.Task[Any]] | None = getattr(asyncio.tasks, "_eager_tasks", None)
"""From 3.12, the tasks running their first step eagerly (`eager_task_factory`), as they are
created; absent before."""


def _loop_is_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """True when nothing else is ready to run in this tick of a CPython event loop.

    A zero-length window holds the calls submitted in the same tick; when no other callback is
    queued, no other call can join, so the window may close without a trip through the loop.
    Loops without the `_ready` queue (uvloop) always take the trip, and so does a call made in
    a task's eager first step (3.12's `eager_task_factory`): the task that created it is still
    running and may create more calls in this tick.
    """
    ready = getattr(loop, "_ready", None)
    if type(ready) is not collections.deque or ready:
        return False
    return not _eager_tasks or current_task(loop) not in _eager_tasks


def _pick_winner(entries: list[Staged]) -> ConflictResolutionOperation:
    """Highest priority, ties to the earliest; a call whose caller is being cancelled cannot win.

    A cancellation requested in the tick the window closes has not reached its caller yet; letting
    that call win would reject everyone else in favour of a call that never runs.
    """
    best: ConflictResolutionOperation | None = None
    for candidate, task, baseline in entries:
        if task is not None and task.cancelling() > baseline:
            continue
        if best is None or candidate.priority > best.priority:
            best = candidate
    if best is None:
        best = entries[0][0]
        for candidate, _, _ in entries:
            if candidate.priority > best.priority:
                best = candidate
    return best


def _pick_aged(entries: list[Staged], waiting: dict[int, _Waiter]) -> ConflictResolutionOperation:
    """`_pick_winner` where a waiting call counts one priority higher for each window it lost,
    up to CRITICAL (10): a steady stream of higher priorities overtakes a waiter at most
    ``10 - priority`` times, after which only calls staged before it can still win first."""
    best: ConflictResolutionOperation | None = None
    best_priority = 0
    for skip_cancelling in (True, False):
        for candidate, task, baseline in entries:
            if skip_cancelling and task is not None and task.cancelling() > baseline:
                continue
            waiter = waiting.get(candidate.ecs_id.int)
            priority = candidate.priority
            if waiter is not None:
                priority += waiter.aged
                if priority > 10:
                    priority = 10
            if priority > best_priority:
                best, best_priority = candidate, priority
        if best is not None:
            return best
    return entries[0][0]


class LocalCoordinator:
    """Staging for the in-memory backend.

    A call is staged under its primary target. The first call opens a window; with
    ``staging_timeout_ms=0`` it closes at the end of the current event-loop tick, otherwise on a
    timer. While a winner runs, new calls form the next window, which closes no earlier than that
    winner's release. Nothing polls: windows close on a timer, a tick or a release.
    """

    supports_wait = True
    """`acquire` takes a deadline: the wait conflict policy (see `acquire`)."""

    def __init__(self, on_window: WindowObserver | None = None) -> None:
        self._running: dict[int, ConflictResolutionOperation] = {}
        self._windows: dict[int, _Window] = {}
        self._waiting: dict[int, _Waiter] = {}
        self.on_window = on_window

    def in_flight(self) -> int:
        return len(self._running.keys() | self._windows.keys())

    def reset(self) -> None:
        """Forget windows of a loop that has stopped (their callers can never resume)."""
        if self._running or self._windows:
            log.warning(
                "dropping staging state of %d target(s) from a stopped event loop",
                self.in_flight(),
            )
        for waiter in self._waiting.values():
            if waiter.timer is not None:
                waiter.timer.cancel()
        self._running.clear()
        self._windows.clear()
        self._waiting.clear()

    def running(self, target_id: UUID) -> ConflictResolutionOperation | None:
        return self._running.get(target_id.int)

    def pending(self, target_id: UUID) -> list[ConflictResolutionOperation]:
        w = self._windows.get(target_id.int)
        return [e[0] for e in w.entries] if w is not None else []

    async def acquire(
        self, op: ConflictResolutionOperation, config: PreECSConfig, deadline: float | None = None
    ) -> Lost | None:
        """None once `op` won its window and holds its target; `Lost` if it did not win.

        With a `deadline` (the loop's clock, ``loop.time()``), a call that loses a window is
        carried into the target's next window instead, ahead of later calls of equal priority,
        one priority higher for each window it lost; at the deadline it leaves whatever window
        it waits in and gets `Lost` naming the call holding the target.
        """
        target = op.target_entity_id
        if target is None:
            return None
        tid = target.int
        loop = _running_loop()
        w = self._windows.get(tid)
        if w is None:
            timeout_ms = config.staging_timeout_ms
            if timeout_ms == 0 and tid not in self._running:
                if _loop_is_idle(loop):
                    self._running[tid] = op
                    return None
                w = self._windows[tid] = _Window(fast=True)
            else:
                w = self._windows[tid] = _Window(fast=False)
                if timeout_ms > 0:
                    w.timer = loop.call_later(timeout_ms / 1000.0, self._on_timer, tid, w)
        if len(w.entries) >= config.max_pending_per_target:
            return Lost(
                None,
                f"staging window for target {target} is full "
                f"(max_pending_per_target={config.max_pending_per_target})",
            )
        task = current_task(loop)
        w.entries.append((op, task, task.cancelling() if task is not None else 0))
        if deadline is not None:
            del w, task  # no cycle: see the module docstring
            return await self._wait(tid, op, deadline, loop)
        if w.fast:
            try:
                await _yield_once()
            except BaseException:
                self._abandon(tid, w, op)
                del w, task  # no cycle: see the module docstring
                raise
            if not w.closed:
                self._close(tid, w)
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            w.futures[op.ecs_id.int] = fut
            try:
                await fut
            except BaseException:
                self._abandon(tid, w, op)
                del w, task, fut  # no cycle: see the module docstring
                raise
        return None if w.winner is op else w.lost

    def release(self, op: ConflictResolutionOperation) -> None:
        target = op.target_entity_id
        if target is None:
            return
        tid = target.int
        if self._running.get(tid) is not op:
            return
        del self._running[tid]
        w = self._windows.get(tid)
        if w is not None and (w.timer is None or w.timer_fired):
            self._close(tid, w)

    def _on_timer(self, tid: int, w: _Window) -> None:
        w.timer_fired = True
        w.timer = None
        if self._windows.get(tid) is w and tid not in self._running:
            self._close(tid, w)

    def _close(self, tid: int, w: _Window) -> None:
        w.closed = True
        del self._windows[tid]
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        entries = w.entries
        if not entries:
            return
        carried: Sequence[ConflictResolutionOperation] = ()
        if self._waiting:
            best, carried = self._decide_waiting(tid, w)
        else:
            best = w.winner = _pick_winner(entries)
            if len(entries) > 1:
                w.lost = Lost(best, losers=[e for e in entries if e[0] is not best])
        self._running[tid] = best
        for fut in w.futures.values():
            if not fut.done():
                fut.set_result(None)
        if len(entries) > 1 and self.on_window is not None:
            try:
                self.on_window(best, [e[0] for e in entries], carried)
            except Exception:
                log.exception("window observer failed for target %s", best.target_entity_id)

    def _decide_waiting(
        self, tid: int, w: _Window
    ) -> tuple[ConflictResolutionOperation, list[ConflictResolutionOperation]]:
        """`_close`'s decision when calls wait: aged priorities pick the winner, the waiting
        losers are carried, the others lose; returns the winner and the calls carried."""
        entries = w.entries
        waiting = self._waiting
        best = w.winner = _pick_aged(entries, waiting)
        carried: list[Staged] = []
        if len(entries) > 1:
            losers, carried = self._carry(tid, w, best, [e for e in entries if e[0] is not best])
            if losers:
                w.lost = Lost(best, losers=losers)
        waiter = waiting.pop(best.ecs_id.int, None)
        if waiter is not None:
            waiter.won = True
            waiter.window = None
            if waiter.timer is not None:
                waiter.timer.cancel()
        return best, [e[0] for e in carried]

    def _carry(
        self, tid: int, w: _Window, best: ConflictResolutionOperation, losers: list[Staged]
    ) -> tuple[list[Staged], list[Staged]]:
        """Move the waiting losers of `w` into the target's next window, in their order (so
        ahead of any later call), with the futures they sleep on: they are not woken for a
        window they did not win. Returns (the losers left to reject, those carried)."""
        waiting = self._waiting
        left: list[Staged] = []
        carried: list[Staged] = []
        nxt: _Window | None = None
        for e in losers:
            oid = e[0].ecs_id.int
            waiter = waiting.get(oid)
            if waiter is None:
                left.append(e)
                continue
            if nxt is None:
                nxt = self._windows.get(tid)
                if nxt is None:
                    nxt = self._windows[tid] = _Window(fast=False)
            carried.append(e)
            fut = w.futures.pop(oid, None)
            if fut is not None:
                nxt.futures[oid] = fut
            waiter.window = nxt
            waiter.aged += 1
            waiter.winner = best
        if nxt is not None:
            nxt.entries[:0] = carried
        return left, carried

    async def _wait(
        self,
        tid: int,
        op: ConflictResolutionOperation,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> Lost | None:
        """`acquire` for a call under the wait policy, just staged in the target's window."""
        oid = op.ecs_id.int
        w = self._windows[tid]
        waiter = self._waiting[oid] = _Waiter(w)
        waiter.timer = loop.call_at(deadline, self._expire, tid, op)
        current: _Window | None = None
        fut: asyncio.Future[None] | None = None
        try:
            if w.fast:
                await _yield_once()
                if not w.closed and waiter.lost is None:
                    self._close(tid, w)
            while not waiter.won and waiter.lost is None:
                current = waiter.window
                if current is None:
                    raise RuntimeError(f"staging lost track of operation {op.ecs_id}")
                fut = current.futures.get(oid)
                if fut is None or fut.done():
                    fut = current.futures[oid] = loop.create_future()
                await fut
        except BaseException:
            self._drop(tid, op, waiter)
            del w, waiter, current, fut  # no cycle: see the module docstring
            raise
        return waiter.lost

    def _expire(self, tid: int, op: ConflictResolutionOperation) -> None:
        """A waiting call's deadline: it leaves its window and loses to whoever holds the target."""
        waiter = self._waiting.pop(op.ecs_id.int, None)
        if waiter is None or waiter.window is None:
            return
        fut = self._leave(tid, waiter.window, op)
        waiter.window = None
        holder = self._running.get(tid) or waiter.winner
        waiter.lost = Lost(
            holder,
            None
            if holder is not None
            else f"gave up waiting for target {op.target_entity_id} before its staging window"
            " closed (max_wait_ms is shorter than staging_timeout_ms)",
        )
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _leave(
        self, tid: int, w: _Window, op: ConflictResolutionOperation
    ) -> asyncio.Future[None] | None:
        """Take `op` out of the open window `w` (dropping `w` once empty); returns its future."""
        w.entries = [e for e in w.entries if e[0] is not op]
        fut = w.futures.pop(op.ecs_id.int, None)
        if not w.entries and self._windows.get(tid) is w:
            if w.timer is not None:
                w.timer.cancel()
                w.timer = None
            del self._windows[tid]
        return fut

    def _drop(self, tid: int, op: ConflictResolutionOperation, waiter: _Waiter) -> None:
        """The caller of a waiting `op` was cancelled: nobody may be left waiting on it."""
        self._waiting.pop(op.ecs_id.int, None)
        if waiter.timer is not None:
            waiter.timer.cancel()
        if waiter.won:
            self.release(op)
        elif waiter.window is not None:
            self._leave(tid, waiter.window, op)
            waiter.window = None

    def _abandon(self, tid: int, w: _Window, op: ConflictResolutionOperation) -> None:
        """The caller of `op` was cancelled while staged: nobody may be left waiting on it."""
        if not w.closed:
            w.entries = [e for e in w.entries if e[0] is not op]
            w.futures.pop(op.ecs_id.int, None)
            if not w.entries:
                if w.timer is not None:
                    w.timer.cancel()
                del self._windows[tid]
        elif w.winner is op:
            self.release(op)
