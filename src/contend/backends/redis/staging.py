"""Pre-ECS staging across workers: one window per target in Redis, one winner, one lease.

The calls of this worker for one target submitted in the same event-loop tick travel together
(a batch: one join, then one resolve per wake-up). The batch's task exists from the moment the
first call is staged, so a caller cancelled at any point leaves nothing half-made behind; a
caller cancelled while staged is withdrawn from its window before the window is resolved (it
cannot win in place of the callers still waiting), and if it had already won, its lease goes
with its record's end.

Under the wait conflict policy Redis carries a losing call into the target's next window
itself, in the script that resolves the window: its place (priority, windows lost, submission
number) lives with its window entry and its record, so it holds across workers and cannot be
overtaken between two round trips. Its batch keeps sleeping on the target's wake-ups; the
caller gives up at its deadline on this worker's clock, at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from contend._fast import current_task, loop_is_idle, yield_once
from contend.backends.base import Lost
from contend.backends.redis.errors import RedisUnavailableError
from contend.backends.redis.records import staged_json
from contend.enums import OperationStatus
from contend.record import Record

if TYPE_CHECKING:
    from contend.backends.redis.connection import Connection
    from contend.backends.redis.entities import Entities
    from contend.backends.redis.leases import Call, Calls
    from contend.backends.redis.orphans import Orphans
    from contend.backends.redis.wakeups import Interest, Wakeups
    from contend.config import CleanupConfig, PreECSConfig

__all__ = ["Staging"]

log = logging.getLogger("contend.backends.redis")

_Member = tuple["Call", "asyncio.Task[Any] | None", int]

GAVE_UP = "E"
"""The outcome of a waiting call whose deadline passed on this worker."""
OUTAGE_FIRST_DELAY_MS = 50
OUTAGE_MAX_DELAY_MS = 1000
"""How often waiting calls look again while Redis does not answer (and at once when it does:
the wake-ups' subscription coming back wakes every sleeper)."""


class _Batch:
    """Calls of this worker for one target submitted in the same event-loop tick."""

    __slots__ = (
        "after",
        "cancelled",
        "config",
        "decided",
        "holder",
        "joined",
        "left",
        "members",
        "outcomes",
        "task",
        "wake",
    )

    def __init__(
        self,
        config: PreECSConfig,
        loop: asyncio.AbstractEventLoop,
        after: asyncio.Future[None] | None,
    ) -> None:
        self.config = config
        self.members: list[_Member] = []
        self.outcomes: dict[str, asyncio.Future[str]] = {}
        """Each member's outcome, set once its window decided it (or it gave up)."""
        self.cancelled: set[str] = set()
        self.left: set[str] = set()
        """Members whose callers stopped waiting (gave up, or failed while Redis was away)."""
        self.decided: set[str] = set()
        """Members Redis gave an outcome (they are in no window any more)."""
        self.joined: asyncio.Future[None] = loop.create_future()
        self.after = after
        """The join of this worker's previous batch for the target, if still on its way: this
        one is sent after it, so Redis numbers this worker's calls in their submission order."""
        self.task: asyncio.Task[None] | None = None
        self.holder: str | None = None
        """The call holding the target as last seen ('id|priority'), for a waiter giving up."""
        self.wake: Interest | None = None
        """What the batch's task sleeps on (woken: look again)."""

    def withdrawn(self) -> list[str]:
        """Members still in a window whose callers were cancelled (or are being cancelled) or
        gave up waiting: they leave it (a member Redis decided is in no window)."""
        out = self.cancelled | self.left
        for call, task, baseline in self.members:
            if task is not None and task.cancelling() > baseline:
                out.add(call.oid)
        return list(out - self.decided)

    def decide(self, oid: str, outcome: str) -> None:
        """Redis decided `oid`: its caller gets `outcome` (unless it has gone already)."""
        self.decided.add(oid)
        fut = self.outcomes.get(oid)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    def end(self, exc: BaseException | None) -> None:
        """The batch's task is over: a member still without an outcome gets `exc` (or 'X')."""
        for fut in self.outcomes.values():
            if fut.done():
                continue
            if exc is None:
                fut.set_result("X")
            elif isinstance(exc, Exception):
                fut.set_exception(exc)
            else:
                fut.cancel()

    def look_again(self) -> None:
        """Wake the batch's task once no member waits for an outcome any more (it then ends,
        instead of sleeping until the lease's deadline)."""
        wake = self.wake
        if wake is not None and all(fut.done() for fut in self.outcomes.values()):
            wake.wake()

    def holding(self) -> str | None:
        """The call holding the target as last heard ('id|priority'), if any."""
        wake = self.wake
        if wake is not None and wake.holder is not None:
            return wake.holder
        return self.holder


class Staging:
    """The coordinator of the Redis backend (``backend.coordinator``)."""

    def __init__(
        self,
        conn: Connection,
        calls: Calls,
        entities: Entities,
        wakeups: Wakeups,
        orphans: Orphans,
        *,
        lease_ms: int,
        out_ttl_ms: int,
        min_window_ms: int,
    ) -> None:
        self.conn = conn
        self.calls = calls
        self.entities = entities
        self.wakeups = wakeups
        self.orphans = orphans
        self.lease_ms = lease_ms
        self.out_ttl_ms = out_ttl_ms
        self.min_window_ms = min_window_ms
        self.observe_window: Callable[..., None] | None = None
        """The runtime's window observer (see `Hooks.observe_window`)."""
        self._batches: dict[str, _Batch] = {}
        self._joining: dict[str, asyncio.Future[None]] = {}
        self._configs: dict[int, tuple[CleanupConfig, str]] = {}
        """Cleanup configs' JSON, written with each staged record (see `staged_json`)."""

    def in_flight(self) -> int:
        return len(set(self.calls.inflight.values()) | self._batches.keys())

    async def acquire(
        self, op: Record, config: PreECSConfig, deadline: float | None = None
    ) -> Lost | None:
        """Join the cross-worker window of the primary target; None once `op` won it.

        Calls of this worker in the same tick go to Redis together (one round trip); the window
        lasts ``max(staging_timeout_ms, min_window_ms)`` so calls of other workers can join.
        With a `deadline` (the loop's clock), a loss carries `op` into the next window (Redis
        does it) until the deadline, when `op` gets `Lost` at once naming the call holding the
        target; its record's end takes it out of the window.
        """
        tid = op.target_entity_id
        if tid is None:
            return None
        key = str(tid)
        if len(op.target_entity_ids) > 1:
            self.conn.keys.bucket_of_targets(op.target_entity_ids)
        call = self.calls.begin(op)
        loop = asyncio.get_running_loop()
        batch = self._batches.get(key)
        if batch is None:
            after = self._joining.get(key)
            batch = self._batches[key] = _Batch(config, loop, after)
            self._joining[key] = batch.joined
            batch.joined.add_done_callback(lambda fut: self._joined(key, fut))
            batch.task = loop.create_task(self._stage(key, batch))
        task = current_task(loop)
        batch.members.append((call, task, task.cancelling() if task is not None else 0))
        call.joined = batch.joined
        call.wait_until = deadline
        fut: asyncio.Future[str] = loop.create_future()
        batch.outcomes[call.oid] = fut
        timer = None
        if deadline is not None:
            timer = loop.call_at(deadline, _give_up, batch, call.oid)
        try:
            outcome = await fut
        except asyncio.CancelledError:
            batch.cancelled.add(call.oid)
            batch.look_again()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if outcome[:1] == "W":
            if outcome != "W":
                self._contested(op, outcome)
            return None
        if outcome == "F":
            return Lost(
                None,
                f"staging window for target {tid} is full "
                f"(max_pending_per_target={config.max_pending_per_target})",
            )
        if outcome.startswith("L|"):
            _, wid, wprio = outcome.split("|")
            return Lost(self._named(wid, int(wprio), op))
        if outcome == GAVE_UP:
            holder = batch.holding()
            if holder is not None:
                wid, wprio = holder.split("|")
                return Lost(self._named(wid, int(wprio), op))
            window = max(config.staging_timeout_ms, self.min_window_ms)
            return Lost(
                None,
                f"gave up waiting for target {tid} before its staging window closed (max_wait_ms "
                f"is shorter than the window, max(staging_timeout_ms, min_window_ms)={window} ms)",
            )
        if outcome == "D":
            return Lost(
                None,
                f"this worker's heartbeat lapsed while the call waited in the window of target "
                f"{tid} (its event loop or Redis stalled longer than lease_ms={self.lease_ms})",
            )
        return Lost(None, f"staging outcome for target {tid} was lost (window expired)")

    def _named(self, winner_id: str, priority: int, like: Record) -> Record:
        """The call `winner_id`: this worker's own if it is one, else a stub of another's."""
        call = self.calls.get(uuid.UUID(winner_id))
        return call.op if call is not None else _stub(winner_id, priority, like)

    def _joined(self, key: str, fut: asyncio.Future[None]) -> None:
        if self._joining.get(key) is fut:
            del self._joining[key]

    def release(self, op: Record) -> None:
        """Sync by protocol: the release rides on the record's end (a commit, a discard or a
        zombie booking), which follows at once; the lease is no longer renewed."""
        call = self.calls.get(op.ecs_id)
        if call is not None and not call.ended:
            call.released = True
            self.calls.drop(call)

    def _contested(self, winner: Record, outcome: str) -> None:
        """Report a window `winner` won against others (outcome ``W|contenders|carried|ids of
        the rejected``).

        Whichever worker resolved the window, the winner's worker reads this outcome once, so
        each contested window is reported once across workers, there.
        """
        if self.observe_window is None:
            return
        _, contenders, carried, losers = outcome.split("|", 3)
        self.observe_window(
            winner,
            int(contenders),
            lambda: [uuid.UUID(i) for i in losers.split(",") if i],
            carried=int(carried),
        )

    async def _stage(self, key: str, batch: _Batch) -> None:
        failure: BaseException | None = None
        try:
            try:
                if not loop_is_idle(asyncio.get_running_loop()):
                    await yield_once()  # the calls gathered in this tick join the same batch
            finally:
                if self._batches.get(key) is batch:
                    del self._batches[key]
            await self._join_and_resolve(key, batch)
        except BaseException as exc:
            failure = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            if not batch.joined.done():
                batch.joined.set_result(None)
            batch.end(failure)
            batch.wake = None
            del failure  # no cycle: the exception's traceback holds this frame

    async def _join_and_resolve(self, key: str, batch: _Batch) -> None:
        config = batch.config
        window = max(config.staging_timeout_ms, self.min_window_ms)
        gone = set(batch.withdrawn())
        live = [m[0] for m in batch.members if m[0].oid not in gone]
        if not live:
            return
        for call in live:
            self.calls.staged(call, key)
        ents = self.entities.versions(_targets(live))
        await self.wakeups.ready(self.conn.keys.of(key))
        if batch.after is not None and not batch.after.done():
            await asyncio.shield(batch.after)
        gone = set(batch.withdrawn())
        live = [c for c in live if c.oid not in gone]
        if not live:
            return
        args: list[Any] = [self.lease_ms, self.out_ttl_ms, key, window]
        quick = "1" if config.staging_timeout_ms == 0 else "0"
        args += [config.max_pending_per_target, self.conn.owner, len(live), quick]
        now = asyncio.get_running_loop().time()
        for call in live:
            op = call.op
            targets = ",".join(str(t) for t in op.target_entity_ids)
            until = call.wait_until
            wait = "" if until is None else max(1, int((until - now) * 1000))
            args += [call.oid, op.priority, staged_json(op, self._configs), targets, wait]
        args += ents
        interest = self.wakeups.watch(key, frozenset(c.oid for c in live))
        try:
            try:
                reply = await self._script("JOIN", key, args)
            finally:
                batch.joined.set_result(None)
            for oid in reply.get("f") or ():
                batch.decide(oid, "F")
            for oid in reply.get("g") or ():
                batch.decide(oid, "X")
            joined = set(reply.get("j") or ())
            staged = [c.oid for c in live if c.oid in joined]
            outage_ms = OUTAGE_FIRST_DELAY_MS
            while True:
                if reply["k"] == "R":
                    staged = self._resolved(key, batch, staged, reply)
                    if not staged:
                        return
                holder = reply.get("h")
                if holder:
                    batch.holder = holder
                    interest.holder = None
                ms = max(0, int(reply.get("ms", 1)))
                batch.wake = interest
                if reply["k"] == "T":
                    await asyncio.sleep(ms / 1000)
                else:
                    await self.wakeups.wait(interest, ms)
                if interest.holder is not None:
                    batch.holder = interest.holder
                self.wakeups.unwatch(key, interest)
                gone = set(batch.withdrawn())
                staged = [i for i in staged if i not in gone]
                interest = self.wakeups.watch(key, frozenset(staged))
                if not staged:
                    return  # every caller of the batch is gone; their ends withdraw them
                args = [self.lease_ms, self.out_ttl_ms, key, len(staged), *staged]
                args += [len(gone), *gone, *ents]
                try:
                    reply = await self._script("RESOLVE", key, args)
                    outage_ms = OUTAGE_FIRST_DELAY_MS
                except RedisUnavailableError as exc:
                    staged = self._through_outage(batch, staged, exc)
                    if not staged:
                        return
                    reply = {"k": "H", "ms": outage_ms}
                    outage_ms = min(2 * outage_ms, OUTAGE_MAX_DELAY_MS)
        finally:
            self.wakeups.unwatch(key, interest)

    def _through_outage(
        self, batch: _Batch, staged: list[str], exc: RedisUnavailableError
    ) -> list[str]:
        """Redis did not answer a staged batch: its calls under the wait policy wait on (their
        place is in Redis, and their deadlines still hold); the others fail with `exc`, nothing
        written (their records' ends take them out of the window once Redis answers)."""
        waiting = []
        for oid in staged:
            call = self.calls.get(uuid.UUID(oid))
            if call is not None and call.wait_until is not None:
                waiting.append(oid)
                continue
            batch.left.add(oid)
            fut = batch.outcomes.get(oid)
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        return waiting

    def _resolved(
        self, key: str, batch: _Batch, staged: list[str], reply: dict[str, Any]
    ) -> list[str]:
        """Hand out the outcomes of a resolved window; returns the members still waiting in
        the target's next window (carried there by Redis: wait policy)."""
        self.entities.refresh(reply.get("e") or ())
        waiting: list[str] = []
        for oid, outcome in zip(staged, reply.get("o") or (), strict=False):
            if outcome == "C":
                waiting.append(oid)
                continue
            if outcome[:1] == "W":
                call = self.calls.get(uuid.UUID(oid))
                fut = batch.outcomes.get(oid)
                if call is None or fut is None or fut.done() or oid in batch.cancelled:
                    # its caller is gone (cancelled, or gave up waiting): the target goes now
                    self.conn.spawn(self._release_won(oid, key))
                else:
                    self.calls.won(call)
            batch.decide(oid, outcome)
        return waiting

    async def _script(self, name: str, key: str, args: list[Any]) -> dict[str, Any]:
        bucket = self.conn.keys.of(key)
        reply: dict[str, Any] = json.loads(await self.conn.run(name, bucket, *args))
        self.conn.repaired(reply.get("b"))
        claimed = reply.get("c") or ()
        if claimed:
            self.orphans.claimed(bucket, list(claimed))
        return reply

    async def _release_won(self, oid: str, key: str) -> None:
        """A caller cancelled (or given up waiting) as its window made it the winner: the target
        goes at once (its record's end releases it too; whichever comes first)."""
        try:
            args = [self.lease_ms, self.out_ttl_ms, oid, key, ""]
            await self.conn.run("DISCARD", self.conn.keys.of(key), *args)
        except Exception:
            log.debug("release of cancelled winner %s failed; its lease expires", oid)

    def reset(self) -> None:
        """Forget batches of a loop that has stopped (their callers can never resume)."""
        self._batches.clear()
        self._joining.clear()


def _give_up(batch: _Batch, oid: str) -> None:
    """A waiting call's deadline (a timer): it loses at once; its record's end withdraws it."""
    fut = batch.outcomes.get(oid)
    if fut is not None and not fut.done():
        batch.left.add(oid)
        fut.set_result(GAVE_UP)
        batch.look_again()


def _targets(calls: list[Call]) -> list[uuid.UUID]:
    seen: dict[uuid.UUID, None] = {}
    for call in calls:
        for t in call.op.target_entity_ids:
            seen.setdefault(t)
    return list(seen)


def _stub(winner_id: str, priority: int, like: Record) -> Record:
    """The winner of another worker, as far as a loser needs it (id and priority)."""
    op = Record(
        like.function_name,
        like.target_entity_ids,
        like.target_type,
        priority,
        None,
        like.created_at,
        uuid.UUID(winner_id),
    )
    op.set_status(OperationStatus.EXECUTING)
    return op
