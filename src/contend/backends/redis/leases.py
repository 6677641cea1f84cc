"""The calls of this worker while they run: which target each holds, fencing, lease renewal.

A `Call` lives from the record's creation to its end and is then forgotten, so a worker keeps
nothing per record once its calls are done (a long-lived worker that never sweeps stays small).
The calls a task is running are found through a context variable: a commit knows its own call
(its token, its lease, how to end it) without the decorator passing it down.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from contend.backends.redis.errors import RedisDataError, RedisUnavailableError
from contend.config import CleanupStrategy

if TYPE_CHECKING:
    from contend.backends.redis.connection import Connection
    from contend.record import Record

__all__ = ["Call", "Calls"]

log = logging.getLogger("contend.backends.redis")

_RETAINING = (CleanupStrategy.DEFERRED, CleanupStrategy.LAZY, CleanupStrategy.NONE)
_running: contextvars.ContextVar[tuple[uuid.UUID, ...]] = contextvars.ContextVar(
    "contend_redis_calls", default=()
)


class Call:
    """One decorated call of this worker, from its record's creation to its end."""

    __slots__ = (
        "ended",
        "joined",
        "key",
        "lease",
        "oid",
        "op",
        "released",
        "sent_at",
        "unsettled",
        "wait_until",
    )

    def __init__(self, op: Record) -> None:
        self.op = op
        self.oid = str(op.ecs_id)
        self.key: str | None = None
        """The target it was staged on (its record is then in Redis), else None."""
        self.lease = False
        """It won its window and holds the target's lease (as far as this worker knows)."""
        self.released = False
        """The decorator released it; the release rides on the record's next write."""
        self.ended = False
        """Its last write (a commit) also released the target and ended the record in Redis."""
        self.unsettled = False
        """A write of it was sent whose outcome this worker does not know: ending the record
        settles it first (the record is not booked as a zombie if the write applied)."""
        self.sent_at: float | None = None
        """When (monotonic) that write was sent."""
        self.joined: asyncio.Future[None] | None = None
        """Done once the window join that carries it has been answered (or failed)."""
        self.wait_until: float | None = None
        """Under the wait policy, when (the loop's clock) it stops waiting for its target."""

    @property
    def retained(self) -> bool:
        config = self.op.cleanup_config
        return config is not None and config.retain_succeeded and config.strategy in _RETAINING

    def end_args(self) -> list[str]:
        """COMMIT/BUMP arguments that end the call in the same script: op, release, mode,
        targets."""
        if self.key is None:
            return [self.oid, "", "", ""]
        targets = ",".join(str(t) for t in self.op.target_entity_ids)
        return [self.oid, self.key if self.lease else "", "k" if self.retained else "d", targets]


class Calls:
    """This worker's running calls, its leases and in-flight records, and their renewal."""

    def __init__(self, conn: Connection, lease_ms: int) -> None:
        self.conn = conn
        self.lease_ms = lease_ms
        self.calls: dict[uuid.UUID, Call] = {}
        self.held: dict[str, str] = {}
        """Target -> id of the call of this worker holding its lease."""
        self.inflight: dict[str, str] = {}
        """Staged record id -> target, for records of this worker that Redis has in flight."""
        self.lost_leases = 0
        self._renewer: asyncio.Task[None] | None = None

    # calls --------------------------------------------------------------------------------------
    def begin(self, op: Record) -> Call:
        call = self.calls.get(op.ecs_id)
        if call is None:
            call = self.calls[op.ecs_id] = Call(op)
            _running.set((*_running.get(), op.ecs_id))
        return call

    def get(self, op_id: uuid.UUID) -> Call | None:
        return self.calls.get(op_id)

    def finish(self, op_id: uuid.UUID) -> Call | None:
        """The call is over: forget it (and its place in this task's running calls)."""
        call = self.calls.pop(op_id, None)
        running = _running.get()
        if op_id in running:
            _running.set(tuple(i for i in running if i != op_id))
        if call is not None:
            self.drop(call)
        return call

    def drop(self, call: Call) -> None:
        """Stop renewing what `call` held: its lease and its in-flight deadline."""
        if call.key is not None and self.held.get(call.key) == call.oid:
            del self.held[call.key]
        self.inflight.pop(call.oid, None)
        call.lease = False

    def current(self, target: uuid.UUID) -> Call | None:
        """The innermost call of this task whose primary target is `target`."""
        for op_id in reversed(_running.get()):
            call = self.calls.get(op_id)
            if call is not None and call.op.target_entity_id == target:
                return call
        return None

    def fences(self, targets: Iterable[uuid.UUID]) -> list[str]:
        """Leases this task holds on `targets`: a write is refused unless each is still held."""
        keys = {str(t) for t in targets}
        pairs: list[str] = []
        for op_id in _running.get():
            call = self.calls.get(op_id)
            if call is not None and call.lease and call.key in keys:
                pairs += [call.key, call.oid]
        return [str(len(pairs) // 2), *pairs]

    def won(self, call: Call) -> None:
        if call.key is not None:
            call.lease = True
            self.held[call.key] = call.oid

    def staged(self, call: Call, key: str) -> None:
        call.key = key
        self.inflight[call.oid] = key
        self.ensure_renewer()

    # renewal ------------------------------------------------------------------------------------
    def ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Every third of a lease, while this worker has calls in flight: its heartbeat, its
        leases and its in-flight deadlines, one script per bucket (pipelined)."""
        while self.inflight or self.held:
            await asyncio.sleep(self.lease_ms / 3000)
            await self.renew()

    async def renew(self) -> None:
        """Renew once: per bucket where this worker has calls in flight, its heartbeat there,
        its leases and its in-flight deadlines move together in one script."""
        keys = self.conn.keys
        per: dict[int, tuple[list[str], list[str]]] = {}
        for key, oid in self.held.items():
            per.setdefault(keys.of(key), ([], []))[0].extend((key, oid))
        for oid, key in self.inflight.items():
            per.setdefault(keys.of(key), ([], []))[1].append(oid)
        jobs = [
            (b, [self.lease_ms, self.conn.owner, len(pairs) // 2, *pairs, *ids])
            for b, (pairs, ids) in per.items()
        ]
        try:
            replies = await self.conn.run_all("RENEW", jobs)
        except (RedisUnavailableError, RedisDataError):
            return  # the outage is logged once by the connection
        lost: set[str] = set()
        for reply in replies:
            lost.update(json.loads(reply).get("lost") or ())
        # a lease released while the renewal was on its way is not lost (nor is one whose
        # record ended meanwhile: Redis tells only of calls still running)
        lost &= set(self.held.values())
        if not lost:
            return
        self.lost_leases += len(lost)
        log.warning(
            "%d operation(s) lost their lease before it was renewed (lease_ms=%d; Redis or "
            "this event loop stalled); their writes are refused, nothing of them is applied",
            len(lost),
            self.lease_ms,
        )
        for key, holder in list(self.held.items()):
            if holder in lost:
                del self.held[key]

    def reset(self) -> None:
        self._renewer = None
        self.held.clear()
        self.inflight.clear()
        self.calls.clear()

    def stop(self) -> None:
        if self._renewer is not None and not self._renewer.done():
            self._renewer.cancel()
