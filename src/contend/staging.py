"""Pre-ECS staging: the contract every coordinator keeps (`Coordinator`, `Lost`, `Staged`), and
`LocalCoordinator`, the in-process one: windows per target, highest priority wins, no polling.

No reference cycle: a caller cancelled while staged raises through `acquire`'s frames, its
exception's traceback keeps those frames and its task keeps the exception. A frame that still
held the task, or a window (whose entries hold every caller's task), would make a cycle leaving
the whole window's tasks, records and errors to the garbage collector; so they drop both first.
"""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable
from uuid import UUID

from contend._fast import current_task, loop_is_idle, yield_once

if TYPE_CHECKING:
    from contend.config import PreECSConfig
    from contend.errors import OperationRejectedError
    from contend.record import Record

__all__ = ["Coordinator", "LocalCoordinator", "Lost", "Staged", "WindowObserver"]

log = logging.getLogger("contend.staging")

_running_loop = asyncio.get_running_loop

Staged = tuple["Record", "asyncio.Task[Any] | None", int]
"""A staged call: its record, its caller's task and that task's `cancelling()` count when the call
was staged (a higher count means the caller has since been asked to stop)."""

WindowObserver = Callable[["Record", "list[Staged]", "Sequence[Record]"], None]
"""Told of every contested window: its winner, every call staged in it, and the losers carried
into the target's next window (wait policy) instead of rejected."""


class Lost:
    """What a coordinator returns to a call that did not win its window.

    A value, not an exception: most calls of a contended window lose, and raising through the
    coordinator's frames costs more than the rest of a rejection.
    """

    __slots__ = ("errors", "losers", "reason", "winner")

    def __init__(
        self,
        winner: Record | None,
        reason: str | None = None,
        losers: list[Staged] | None = None,
    ) -> None:
        self.winner = winner
        self.reason = reason
        self.losers = losers
        """The calls of the window, when the coordinator shares one `Lost` among its losers
        (the winner may be among them: skip it): the first loser to resume may then end them all
        in one pass (see `errors`)."""
        self.errors: dict[Record, OperationRejectedError] | None = None
        """What that pass left for each loser, by record (the decorator's business)."""

    def __repr__(self) -> str:
        winner = self.winner
        return f"Lost(winner={winner and winner.ecs_id}, reason={self.reason!r})"


@runtime_checkable
class Coordinator(Protocol):
    """Pre-ECS staging: one winner per window per target; winners on a target never overlap.

    The wait conflict policy is the coordinator's: the decorator passes a `deadline` only to a
    coordinator whose class sets ``supports_wait = True`` (and refuses the policy otherwise),
    and only learns "won" (None) or "lost" (`Lost`). Such a coordinator must:

    - carry a call that loses a window, while its deadline has not passed, into the target's
      next window instead of returning; there it is ordered before every call staged after
      it, and counts one priority higher (at most 10) for each window it has lost (ageing);
    - return None once it wins, as without a deadline (it then holds the target);
    - at the deadline, take it out of whatever window holds it and return at once a `Lost`
      naming the call holding the target (else the last one it lost to; else a reason);
    - when the caller is cancelled while waiting, forget the call (nobody waits on it; if it
      had just won, release the target);
    - report each contested window, with the losers it carried, to its window observer.
    """

    def acquire(
        self, op: Record, config: PreECSConfig, deadline: float | None = None
    ) -> Awaitable[Lost | None]:
        """Awaited: None once `op` won and holds its primary target, or `Lost` if it did not.

        `deadline` (the running loop's ``loop.time()``) asks for the wait policy; None rejects
        a loser of its first window. An ``async def`` satisfies this.
        """
        ...

    def release(self, op: Record) -> None:
        """`op` is done with its target; hand the target to the next window."""
        ...

    def in_flight(self) -> int:
        """Targets with a running winner or an open window."""
        ...


class _Won:
    """Awaited, None at once: a call that holds its target without waiting (no frame, no trip
    through the loop)."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


_WON = cast("Awaitable[None]", _Won())


async def _at_once(lost: Lost) -> Lost:
    return lost


class _Window(Lost):
    """Calls collected for one target; closed once, then every entry knows whether it won.

    A window closed with no call waiting (no wait policy) is itself the `Lost` its losers get,
    with every entry as `losers` (one object fewer per contested window); one where calls wait
    hands its losers `lost`.
    """

    __slots__ = ("closed", "entries", "fast", "futures", "lost", "timer", "timer_fired")

    def __init__(self, fast: bool) -> None:
        self.winner: Record | None = None
        self.reason = None
        self.losers = None
        self.errors = None
        self.entries: list[Staged] = []
        self.futures: dict[Record, asyncio.Future[None]] = {}
        self.closed = False
        self.fast = fast
        self.lost: Lost | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_fired = False


class _Waiter:
    """A call under the wait policy while it waits for its target (one per call, by record).

    `window` is the open window whose entries hold it; None once it won (`won`) or its deadline
    passed (`lost`). `aged` counts the windows it lost, its priority bonus when a window is
    decided (ageing: see `_pick_aged`); `winner` is the call it last lost to.
    """

    __slots__ = ("aged", "lost", "timer", "window", "winner", "won")

    def __init__(self, window: _Window) -> None:
        self.window: _Window | None = window
        self.aged = 0
        self.winner: Record | None = None
        self.won = False
        self.lost: Lost | None = None
        self.timer: asyncio.TimerHandle | None = None


def _pick_winner(entries: list[Staged]) -> Record:
    """Highest priority, ties to the earliest; a call whose caller is being cancelled cannot win.

    A cancellation requested in the tick the window closes has not reached its caller yet; letting
    that call win would reject everyone else in favour of a call that never runs.
    """
    best: Record | None = None
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


def _pick_aged(entries: list[Staged], waiting: dict[Record, _Waiter]) -> Record:
    """`_pick_winner` where a waiting call counts one priority higher for each window it lost,
    up to CRITICAL (10): a steady stream of higher priorities overtakes a waiter at most
    ``10 - priority`` times, after which only calls staged before it can still win first."""
    best: Record | None = None
    best_priority = 0
    for skip_cancelling in (True, False):
        for candidate, task, baseline in entries:
            if skip_cancelling and task is not None and task.cancelling() > baseline:
                continue
            waiter = waiting.get(candidate)
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


_MAX_CONFIGS = 1024


class LocalCoordinator:
    """Staging for the in-memory backend.

    A call is staged under its primary target. The first call opens a window; with
    ``staging_timeout_ms=0`` it closes at the end of the current event-loop tick, otherwise on a
    timer. While a winner runs, new calls form the next window, which closes no earlier than that
    winner's release. Nothing polls: windows close on a timer, a tick or a release.

    The records of staged and running calls live here, not in the store, until they end: the
    memory backend's queries ask `records_for` and `records_in_flight` for them.
    """

    supports_wait = True
    """`acquire` takes a deadline: the wait conflict policy (see `acquire`)."""

    def __init__(self, on_window: WindowObserver | None = None) -> None:
        self._running: dict[int, Record] = {}
        self._windows: dict[int, _Window] = {}
        self._waiting: dict[Record, _Waiter] = {}
        self._settings: dict[int, tuple[PreECSConfig, float, int]] = {}
        """Per staging config (by identity): its window length and window size limit, read once
        (a pydantic model's attribute read costs ten times a plain one). At most `_MAX_CONFIGS`,
        then forgotten all at once: a function decorated per request or session brings a
        config of its own each time, which this must not keep forever."""
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

    # what is staged ------------------------------------------------------------------------------
    def running(self, target_id: UUID) -> Record | None:
        return self._running.get(target_id.int)

    def pending(self, target_id: UUID) -> list[Record]:
        w = self._windows.get(target_id.int)
        return [e[0] for e in w.entries] if w is not None else []

    def records_for(self, target_id: UUID) -> list[Record]:
        """The records staged under `target_id`: the one holding it, then those waiting."""
        running = self._running.get(target_id.int)
        pending = self.pending(target_id)
        return pending if running is None else [running, *pending]

    def records_in_flight(self) -> list[Record]:
        """Every record staged or holding its target."""
        found = list(self._running.values())
        for w in self._windows.values():
            found += [e[0] for e in w.entries]
        return found

    def find(self, op_id: UUID) -> Record | None:
        """The staged record with id `op_id` (O(calls staged); only a record whose id has been
        read can be asked for)."""
        for record in self.records_in_flight():
            if record.made_id == op_id:
                return record
        return None

    # staging -------------------------------------------------------------------------------------
    def acquire(
        self, op: Record, config: PreECSConfig, deadline: float | None = None
    ) -> Awaitable[Lost | None]:
        """Stage `op`; awaited, None once it won its window and holds its target, else `Lost`.

        A lone call on an idle loop holds its target at once (nothing to await). With a
        `deadline` (the loop's clock, ``loop.time()``), a call that loses a window is carried
        into the target's next window instead, ahead of later calls of equal priority, one
        priority higher for each window it lost; at the deadline it leaves whatever window it
        waits in and gets `Lost` naming the call holding the target.
        """
        target = op.target_entity_id
        if target is None:
            return _WON
        tid = target.int
        loop = _running_loop()
        settings = self._settings.get(id(config))
        if settings is None or settings[0] is not config:
            if len(self._settings) >= _MAX_CONFIGS:
                self._settings.clear()
            settings = self._settings[id(config)] = (
                config,
                config.staging_timeout_ms,
                config.max_pending_per_target,
            )
        w = self._windows.get(tid)
        if w is None:
            timeout_ms = settings[1]
            if timeout_ms == 0 and tid not in self._running:
                if loop_is_idle(loop):
                    self._running[tid] = op
                    return _WON
                w = self._windows[tid] = _Window(fast=True)
            else:
                w = self._windows[tid] = _Window(fast=False)
                if timeout_ms > 0:
                    w.timer = loop.call_later(timeout_ms / 1000.0, self._on_timer, tid, w)
        if len(w.entries) >= settings[2]:
            return _at_once(
                Lost(
                    None,
                    f"staging window for target {target} is full "
                    f"(max_pending_per_target={config.max_pending_per_target})",
                )
            )
        task = current_task(loop)
        w.entries.append((op, task, task.cancelling() if task is not None else 0))
        if deadline is not None:
            return self._wait(tid, op, deadline, loop)
        if w.fast:
            return self._after_tick(tid, w, op)
        return self._until_closed(tid, w, op, loop)

    @types.coroutine
    def _after_tick(self, tid: int, w: _Window, op: Record) -> Generator[None, None, Lost | None]:
        """Wait one trip through the loop (`_fast.yield_once`'s bare yield, in this one frame),
        then close the window if no one has yet: every call of the tick is in it."""
        try:
            yield
        except BaseException:
            self._abandon(tid, w, op)
            del w  # no cycle: see the module docstring
            raise
        if not w.closed:
            self._close(tid, w)
        return None if w.winner is op else (w.lost or w)

    async def _until_closed(
        self, tid: int, w: _Window, op: Record, loop: asyncio.AbstractEventLoop
    ) -> Lost | None:
        """Wait for a timed window (or the next window behind a running winner) to close."""
        fut: asyncio.Future[None] = loop.create_future()
        w.futures[op] = fut
        try:
            await fut
        except BaseException:
            self._abandon(tid, w, op)
            del w, fut  # no cycle: see the module docstring
            raise
        return None if w.winner is op else (w.lost or w)

    def release(self, op: Record) -> None:
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
        carried: Sequence[Record] = ()
        if self._waiting:
            best, carried = self._decide_waiting(tid, w)
        else:
            best = w.winner = _pick_winner(entries)
            if len(entries) > 1:
                w.losers = entries
        self._running[tid] = best
        for fut in w.futures.values():
            if not fut.done():
                fut.set_result(None)
        if len(entries) > 1 and self.on_window is not None:
            try:
                self.on_window(best, entries, carried)
            except Exception:
                log.exception("window observer failed for target %s", best.target_entity_id)

    def _decide_waiting(self, tid: int, w: _Window) -> tuple[Record, list[Record]]:
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
        waiter = waiting.pop(best, None)
        if waiter is not None:
            waiter.won = True
            waiter.window = None
            if waiter.timer is not None:
                waiter.timer.cancel()
        return best, [e[0] for e in carried]

    def _carry(
        self, tid: int, w: _Window, best: Record, losers: list[Staged]
    ) -> tuple[list[Staged], list[Staged]]:
        """Move the waiting losers of `w` into the target's next window, in their order (so
        ahead of any later call), with the futures they sleep on: they are not woken for a
        window they did not win. Returns (the losers left to reject, those carried)."""
        waiting = self._waiting
        left: list[Staged] = []
        carried: list[Staged] = []
        nxt: _Window | None = None
        for e in losers:
            record = e[0]
            waiter = waiting.get(record)
            if waiter is None:
                left.append(e)
                continue
            if nxt is None:
                nxt = self._windows.get(tid)
                if nxt is None:
                    nxt = self._windows[tid] = _Window(fast=False)
            carried.append(e)
            fut = w.futures.pop(record, None)
            if fut is not None:
                nxt.futures[record] = fut
            waiter.window = nxt
            waiter.aged += 1
            waiter.winner = best
        if nxt is not None:
            nxt.entries[:0] = carried
        return left, carried

    async def _wait(
        self,
        tid: int,
        op: Record,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> Lost | None:
        """`acquire` for a call under the wait policy, just staged in the target's window."""
        w = self._windows[tid]
        waiter = self._waiting[op] = _Waiter(w)
        waiter.timer = loop.call_at(deadline, self._expire, tid, op)
        current: _Window | None = None
        fut: asyncio.Future[None] | None = None
        try:
            if w.fast:
                await yield_once()
                if not w.closed and waiter.lost is None:
                    self._close(tid, w)
            while not waiter.won and waiter.lost is None:
                current = waiter.window
                if current is None:
                    raise RuntimeError(f"staging lost track of operation {op.ecs_id}")
                fut = current.futures.get(op)
                if fut is None or fut.done():
                    fut = current.futures[op] = loop.create_future()
                await fut
        except BaseException:
            self._drop(tid, op, waiter)
            del w, waiter, current, fut  # no cycle: see the module docstring
            raise
        return waiter.lost

    def _expire(self, tid: int, op: Record) -> None:
        """A waiting call's deadline: it leaves its window and loses to whoever holds the target."""
        waiter = self._waiting.pop(op, None)
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

    def _leave(self, tid: int, w: _Window, op: Record) -> asyncio.Future[None] | None:
        """Take `op` out of the open window `w` (dropping `w` once empty); returns its future."""
        w.entries = [e for e in w.entries if e[0] is not op]
        fut = w.futures.pop(op, None)
        if not w.entries and self._windows.get(tid) is w:
            if w.timer is not None:
                w.timer.cancel()
                w.timer = None
            del self._windows[tid]
        return fut

    def _drop(self, tid: int, op: Record, waiter: _Waiter) -> None:
        """The caller of a waiting `op` was cancelled: nobody may be left waiting on it."""
        self._waiting.pop(op, None)
        if waiter.timer is not None:
            waiter.timer.cancel()
        if waiter.won:
            self.release(op)
        elif waiter.window is not None:
            self._leave(tid, waiter.window, op)
            waiter.window = None

    def _abandon(self, tid: int, w: _Window, op: Record) -> None:
        """The caller of `op` was cancelled while staged: nobody may be left waiting on it."""
        if not w.closed:
            w.entries = [e for e in w.entries if e[0] is not op]
            w.futures.pop(op, None)
            if not w.entries:
                if w.timer is not None:
                    w.timer.cancel()
                del self._windows[tid]
        elif w.winner is op:
            self.release(op)
