"""Pre-ECS staging across workers: one window per target in Redis, one winner, one lease.

The calls of this worker for one target submitted in the same event-loop tick travel together
(a batch: one join, then one resolve per wake-up). The batch's task exists from the moment the
first call is staged, so a caller cancelled at any point leaves nothing half-made behind; a
caller cancelled while staged is withdrawn from its window before the window is resolved (it
cannot win in place of the callers still waiting), and if it had already won, its lease goes
with its record's end.

A call keeps the submission number Redis gave it at its first join (`Call.seq`); joining a
later window again with it keeps its place among equal priorities (what a "wait" conflict
policy, which carries a loser into its target's next window, needs).
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
from contend.enums import OperationStatus
from contend.record import Record

if TYPE_CHECKING:
    from contend.backends.redis.connection import Connection
    from contend.backends.redis.entities import Entities
    from contend.backends.redis.leases import Call, Calls
    from contend.backends.redis.orphans import Orphans
    from contend.backends.redis.wakeups import Wakeups
    from contend.config import PreECSConfig

__all__ = ["Staging"]

log = logging.getLogger("contend.backends.redis")

_Member = tuple["Call", "asyncio.Task[Any] | None", int]


class _Batch:
    """Calls of this worker for one target submitted in the same event-loop tick."""

    __slots__ = ("after", "cancelled", "config", "joined", "members", "task")

    def __init__(
        self,
        config: PreECSConfig,
        loop: asyncio.AbstractEventLoop,
        after: asyncio.Future[None] | None,
    ) -> None:
        self.config = config
        self.members: list[_Member] = []
        self.cancelled: set[str] = set()
        self.joined: asyncio.Future[None] = loop.create_future()
        self.after = after
        """The join of this worker's previous batch for the target, if still on its way: this
        one is sent after it, so Redis numbers this worker's calls in their submission order."""
        self.task: asyncio.Task[dict[str, str]] | None = None

    def withdrawn(self) -> list[str]:
        """Members whose callers were cancelled (or are being cancelled) since they staged."""
        out = set(self.cancelled)
        for call, task, baseline in self.members:
            if task is not None and task.cancelling() > baseline:
                out.add(call.oid)
        return list(out)


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

    def in_flight(self) -> int:
        return len(set(self.calls.inflight.values()) | self._batches.keys())

    async def acquire(self, op: Record, config: PreECSConfig) -> Lost | None:
        """Join the cross-worker window of the primary target; None once `op` won it.

        Calls of this worker in the same tick go to Redis together (one round trip); the window
        lasts ``max(staging_timeout_ms, min_window_ms)`` so calls of other workers can join.
        """
        tid = op.target_entity_id
        if tid is None:
            return None
        key = str(tid)
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
        stage = batch.task
        if stage is None:  # pragma: no cover - set right after the batch is made
            raise RuntimeError("staging batch without a task")
        try:
            outcomes = await asyncio.shield(stage)
        except asyncio.CancelledError:
            batch.cancelled.add(call.oid)
            raise
        outcome = outcomes.get(call.oid, "X")
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
            winner = next((m[0].op for m in batch.members if m[0].oid == wid), None)
            return Lost(winner or _stub(wid, int(wprio), op))
        if outcome == "D":
            return Lost(
                None,
                f"this worker's heartbeat lapsed while the call waited in the window of target "
                f"{tid} (its event loop or Redis stalled longer than lease_ms={self.lease_ms})",
            )
        return Lost(None, f"staging outcome for target {tid} was lost (window expired)")

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
        """Report a window `winner` won against others (outcome ``W|contenders|loser ids``).

        Whichever worker resolved the window, the winner's worker reads this outcome once, so
        each contested window is reported once across workers, there.
        """
        if self.observe_window is None:
            return
        _, contenders, losers = outcome.split("|", 2)
        self.observe_window(
            winner, int(contenders), lambda: [uuid.UUID(i) for i in losers.split(",") if i]
        )

    async def _stage(self, key: str, batch: _Batch) -> dict[str, str]:
        try:
            try:
                if not loop_is_idle(asyncio.get_running_loop()):
                    await yield_once()  # the calls gathered in this tick join the same batch
            finally:
                if self._batches.get(key) is batch:
                    del self._batches[key]
            withdrawn = set(batch.withdrawn())
            live = [m[0] for m in batch.members if m[0].oid not in withdrawn]
            if not live:
                return {}
            return await self._join_and_resolve(key, batch, live)
        finally:
            if not batch.joined.done():
                batch.joined.set_result(None)

    async def _join_and_resolve(self, key: str, batch: _Batch, live: list[Call]) -> dict[str, str]:
        config = batch.config
        window = max(config.staging_timeout_ms, self.min_window_ms)
        ents = self.entities.versions(_targets(live))
        args: list[Any] = [self.lease_ms, self.out_ttl_ms, key, window]
        args += [config.max_pending_per_target, self.conn.owner, len(live)]
        for call in live:
            op = call.op
            self.calls.staged(call, key)
            targets = ",".join(str(t) for t in op.target_entity_ids)
            seq = "" if call.seq is None else call.seq
            args += [call.oid, op.priority, op.to_json(), targets, seq]
        args += ents
        await self.wakeups.ready()
        if batch.after is not None and not batch.after.done():
            await asyncio.shield(batch.after)
        fut = self.wakeups.watch(key)
        try:
            try:
                reply = await self._script("JOIN", args)
            finally:
                batch.joined.set_result(None)
            outcomes = dict.fromkeys(reply.get("f") or (), "F")
            outcomes.update(dict.fromkeys(reply.get("g") or (), "X"))
            numbers = dict(zip(reply.get("j") or (), reply.get("q") or (), strict=False))
            for call in live:
                number = numbers.get(call.oid)
                if call.seq is None and type(number) is int:
                    call.seq = number
            staged = [c.oid for c in live if c.oid in numbers]
            while reply["k"] != "R":
                ms = max(0, int(reply["ms"]))
                if reply["k"] == "T":
                    await asyncio.sleep(ms / 1000)
                else:
                    await self.wakeups.wait(fut, ms)
                self.wakeups.unwatch(key, fut)
                fut = self.wakeups.watch(key)
                gone = batch.withdrawn()
                staged = [i for i in staged if i not in gone]
                if not staged:
                    return outcomes  # every caller of the batch is gone; their ends withdraw them
                args = [self.lease_ms, self.out_ttl_ms, key, len(staged), *staged]
                args += [len(gone), *gone, *ents]
                reply = await self._script("RESOLVE", args)
        finally:
            self.wakeups.unwatch(key, fut)
        outcomes.update(zip(staged, reply.get("o") or (), strict=False))
        for call in live:
            outcome = outcomes.get(call.oid, "")
            if outcome[:1] != "W":
                continue
            if call.oid in batch.cancelled:
                self.conn.spawn(self._release_cancelled(call, key))
            else:
                self.calls.won(call)
        self.entities.refresh(reply.get("e") or ())
        return outcomes

    async def _script(self, name: str, args: list[Any]) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(await self.conn.run(name, *args))
        self.conn.repaired(reply.get("b"))
        claimed = reply.get("c") or ()
        if claimed:
            self.orphans.claimed(list(claimed))
        return reply

    async def _release_cancelled(self, call: Call, key: str) -> None:
        """A caller cancelled as its window made it the winner: the target goes at once (its
        record's end releases it too; whichever comes first)."""
        try:
            await self.conn.run("DISCARD", self.lease_ms, self.out_ttl_ms, call.oid, key, "")
        except Exception:
            log.debug("release of cancelled winner %s failed; its lease expires", call.oid)

    def reset(self) -> None:
        """Forget batches of a loop that has stopped (their callers can never resume)."""
        self._batches.clear()
        self._joining.clear()


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
