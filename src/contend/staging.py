"""Pre-ECS staging in one process: windows per target, highest priority wins, no polling."""

from __future__ import annotations

import asyncio
import collections
import logging
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from contend.backends.base import Lost

if TYPE_CHECKING:
    from contend.config import PreECSConfig
    from contend.operations import ConflictResolutionOperation

__all__ = ["LocalCoordinator", "WindowObserver"]

log = logging.getLogger("contend.staging")

WindowObserver = Callable[
    ["ConflictResolutionOperation", "list[ConflictResolutionOperation]"], None
]


class _Window:
    """Calls collected for one target; closed once, then every entry knows whether it won."""

    __slots__ = ("closed", "entries", "fast", "futures", "timer", "timer_fired", "winner")

    def __init__(self, fast: bool) -> None:
        self.entries: list[ConflictResolutionOperation] = []
        self.futures: dict[UUID, asyncio.Future[None]] = {}
        self.closed = False
        self.fast = fast
        self.winner: ConflictResolutionOperation | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_fired = False


class _Target:
    __slots__ = ("running", "window")

    def __init__(self) -> None:
        self.running: ConflictResolutionOperation | None = None
        self.window: _Window | None = None


@types.coroutine
def _yield_once() -> Any:
    """One trip through the event loop (what asyncio.sleep(0) does, minus its checks)."""
    yield


def _loop_is_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """True when nothing else is ready to run in this tick of a CPython event loop.

    A zero-length window holds the calls submitted in the same tick; when no other callback is
    queued, no other call can join, so the window may close without a trip through the loop.
    Loops without the `_ready` queue (uvloop) always take the trip.
    """
    ready = getattr(loop, "_ready", None)
    return type(ready) is collections.deque and not ready


class LocalCoordinator:
    """Staging for the in-memory backend.

    A call is staged under its primary target. The first call opens a window; with
    ``staging_timeout_ms=0`` it closes at the end of the current event-loop tick, otherwise on a
    timer. While a winner runs, new calls form the next window, which closes no earlier than that
    winner's release. Nothing polls: windows close on a timer, a tick or a release.
    """

    def __init__(self, on_window: WindowObserver | None = None) -> None:
        self._targets: dict[UUID, _Target] = {}
        self.on_window = on_window

    def in_flight(self) -> int:
        return len(self._targets)

    def reset(self) -> None:
        """Forget windows of a loop that has stopped (their callers can never resume)."""
        if self._targets:
            log.warning(
                "dropping staging state of %d target(s) from a stopped event loop",
                len(self._targets),
            )
        self._targets.clear()

    def running(self, target_id: UUID) -> ConflictResolutionOperation | None:
        st = self._targets.get(target_id)
        return st.running if st else None

    def pending(self, target_id: UUID) -> list[ConflictResolutionOperation]:
        st = self._targets.get(target_id)
        if st is None or st.window is None or st.window.closed:
            return []
        return list(st.window.entries)

    async def acquire(self, op: ConflictResolutionOperation, config: PreECSConfig) -> None:
        tid = op.target_entity_id
        if tid is None:
            return
        targets = self._targets
        st = targets.get(tid)
        if st is None:
            st = targets[tid] = _Target()
        w = st.window
        if w is None:
            timeout_ms = config.staging_timeout_ms
            if timeout_ms == 0 and st.running is None:
                loop = asyncio.get_running_loop()
                if _loop_is_idle(loop):
                    st.running = op
                    return
                w = st.window = _Window(fast=True)
            else:
                w = st.window = _Window(fast=False)
                if timeout_ms > 0:
                    w.timer = asyncio.get_running_loop().call_later(
                        timeout_ms / 1000.0, self._on_timer, tid, w
                    )
        if len(w.entries) >= config.max_pending_per_target:
            raise Lost(
                None,
                f"staging window for target {tid} is full "
                f"(max_pending_per_target={config.max_pending_per_target})",
            )
        w.entries.append(op)
        if w.fast:
            try:
                await _yield_once()
            except BaseException:
                self._abandon(tid, st, w, op)
                raise
            if not w.closed:
                self._close(tid, st, w)
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            w.futures[op.ecs_id] = fut
            try:
                await fut
            except BaseException:
                self._abandon(tid, st, w, op)
                raise
        if w.winner is not op:
            raise Lost(w.winner)

    def release(self, op: ConflictResolutionOperation) -> None:
        tid = op.target_entity_id
        if tid is None:
            return
        st = self._targets.get(tid)
        if st is None or st.running is not op:
            return
        st.running = None
        w = st.window
        if w is None:
            del self._targets[tid]
        elif w.timer is None or w.timer_fired:
            self._close(tid, st, w)

    def _on_timer(self, tid: UUID, w: _Window) -> None:
        w.timer_fired = True
        w.timer = None
        st = self._targets.get(tid)
        if st is not None and st.window is w and st.running is None:
            self._close(tid, st, w)

    def _close(self, tid: UUID, st: _Target, w: _Window) -> None:
        w.closed = True
        st.window = None
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None
        entries = w.entries
        if not entries:
            if st.running is None:
                self._targets.pop(tid, None)
            return
        best = entries[0]
        for candidate in entries:
            if candidate.priority > best.priority:
                best = candidate
        w.winner = best
        st.running = best
        for fut in w.futures.values():
            if not fut.done():
                fut.set_result(None)
        if len(entries) > 1 and self.on_window is not None:
            try:
                self.on_window(best, entries)
            except Exception:
                log.exception("window observer failed for target %s", tid)

    def _abandon(self, tid: UUID, st: _Target, w: _Window, op: ConflictResolutionOperation) -> None:
        """The caller of `op` was cancelled while staged: nobody may be left waiting on it."""
        if not w.closed:
            w.entries.remove(op)
            w.futures.pop(op.ecs_id, None)
            if not w.entries:
                if w.timer is not None:
                    w.timer.cancel()
                st.window = None
                if st.running is None:
                    self._targets.pop(tid, None)
        elif w.winner is op:
            self.release(op)
