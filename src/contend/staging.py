"""Pre-ECS staging in one process: windows per target, highest priority wins, no polling."""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
import types
from collections.abc import Callable
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
    ["ConflictResolutionOperation", "list[ConflictResolutionOperation]"], None
]


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


def _loop_is_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """True when nothing else is ready to run in this tick of a CPython event loop.

    A zero-length window holds the calls submitted in the same tick; when no other callback is
    queued, no other call can join, so the window may close without a trip through the loop.
    Loops without the `_ready` queue (uvloop) always take the trip.
    """
    ready = getattr(loop, "_ready", None)
    return type(ready) is collections.deque and not ready


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


class LocalCoordinator:
    """Staging for the in-memory backend.

    A call is staged under its primary target. The first call opens a window; with
    ``staging_timeout_ms=0`` it closes at the end of the current event-loop tick, otherwise on a
    timer. While a winner runs, new calls form the next window, which closes no earlier than that
    winner's release. Nothing polls: windows close on a timer, a tick or a release.
    """

    def __init__(self, on_window: WindowObserver | None = None) -> None:
        self._running: dict[int, ConflictResolutionOperation] = {}
        self._windows: dict[int, _Window] = {}
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
        self._running.clear()
        self._windows.clear()

    def running(self, target_id: UUID) -> ConflictResolutionOperation | None:
        return self._running.get(target_id.int)

    def pending(self, target_id: UUID) -> list[ConflictResolutionOperation]:
        w = self._windows.get(target_id.int)
        return [e[0] for e in w.entries] if w is not None else []

    async def acquire(self, op: ConflictResolutionOperation, config: PreECSConfig) -> Lost | None:
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
        if w.fast:
            try:
                await _yield_once()
            except BaseException:
                self._abandon(tid, w, op)
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
        best = _pick_winner(entries)
        w.winner = best
        if len(entries) > 1:
            w.lost = Lost(best, losers=[e for e in entries if e[0] is not best])
        self._running[tid] = best
        for fut in w.futures.values():
            if not fut.done():
                fut.set_result(None)
        if len(entries) > 1 and self.on_window is not None:
            try:
                self.on_window(best, [e[0] for e in entries])
            except Exception:
                log.exception("window observer failed for target %s", best.target_entity_id)

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
