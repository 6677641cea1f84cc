"""Committed entity state in Redis, this worker's copies of it, and writes whose outcome is known.

A write (an OCC compare-and-set, or an unguarded write with OCC off) is one script that also ends
the call: it releases the target and ends the record, so a successful write is the call's last.
Each write carries a token (its operation's id); Redis keeps ``oc:<token>`` for a while, so a
write whose reply was lost is settled by asking (and voided if it has not applied, so it never
applies late). A caller is told "applied" only for an applied write, "not applied"
(`RedisUnavailableError`, `LeaseLostError`, `RedisDataError`) only when nothing was written, and
`OutcomeUnknownError` when Redis did not answer the question in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from contend.backends.base import VersionConflict, Write
from contend.backends.redis.errors import LeaseLostError, RedisUnavailableError
from contend.entity import Entity
from contend.errors import OutcomeUnknownError

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.redis.connection import Connection
    from contend.backends.redis.leases import Call, Calls

__all__ = ["Entities"]

log = logging.getLogger("contend.backends.redis")

SETTLE_FIRST_DELAY = 0.01
SETTLE_MAX_DELAY = 0.1


class Entities:
    """Entity state: loads, the per-worker cache, and fenced, settled writes."""

    def __init__(
        self,
        conn: Connection,
        calls: Calls,
        *,
        lease_ms: int,
        out_ttl_ms: int,
        outcome_ttl_ms: int,
        settle_timeout: float,
    ) -> None:
        self.conn = conn
        self.calls = calls
        self.lease_ms = lease_ms
        self.out_ttl_ms = out_ttl_ms
        self.outcome_ttl_ms = outcome_ttl_ms
        self.settle_timeout = settle_timeout
        self.cache: weakref.WeakValueDictionary[UUID, Entity] = weakref.WeakValueDictionary()
        """This worker's instance of each entity, held no longer than the application holds it
        (Redis has the state: a dropped entity is loaded again on its next use)."""
        self._loading: dict[UUID, asyncio.Future[Entity]] = {}
        self._stale: set[UUID] = set()

    # reading -------------------------------------------------------------------------------------
    async def ensure(self, entity: Entity) -> Entity:
        """First use in this worker loads Redis's state into the caller's instance.

        Later calls reuse that instance without a round trip; staging refreshes it when a call
        wins and an OCC conflict refreshes it before the retry. A copy that may differ from Redis
        (a write of it was refused or its outcome is unknown) is reloaded on its next use.
        """
        eid = entity.ecs_id
        known = self.cache.get(eid)
        if known is not None and eid not in self._stale:
            return known
        loading = self._loading.get(eid)
        if loading is not None:
            # Calls gathered together on a new entity share one load and resume in the same
            # tick, so they still stage together in one window.
            return await asyncio.shield(loading)
        fut: asyncio.Future[Entity] = asyncio.get_running_loop().create_future()
        self._loading[eid] = fut
        try:
            target = known if known is not None else entity
            sent = target.model_dump_json()
            bucket = self.conn.keys.of(eid)
            _, stored = await self.conn.run("ENSURE", bucket, str(eid), target.version, sent)
            if stored != sent:
                self.load(target, str(stored))
            self._stale.discard(eid)
            known = self.cache.setdefault(eid, target)
            fut.set_result(known)
            return known
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
            raise
        finally:
            self._loading.pop(eid, None)

    async def get(self, entity_id: UUID, kind: type[Entity] | None = None) -> Entity | None:
        """Redis's state of the entity, loaded into this worker's instance (see docs/redis.md)."""
        key = self.conn.keys.key(entity_id, f"e:{entity_id}")
        d = await self.conn.call("HGET", key, "d")
        if d is None:
            return None
        known = self.cache.get(entity_id)
        if known is not None:
            self.load(known, str(d))
            self._stale.discard(entity_id)
            return known
        try:
            if kind is None:
                state = json.loads(str(d))
                return Entity.model_validate(
                    {k: state[k] for k in Entity.model_fields if k in state}
                )
            return self.cache.setdefault(entity_id, kind.model_validate_json(str(d)))
        except (ValueError, TypeError) as exc:
            raise self.conn.bad("entity", key, f"unreadable state ({exc})") from exc

    def load(self, entity: Entity, data: str) -> None:
        """Load stored JSON into the class of the instance this worker holds."""
        try:
            fresh = type(entity).model_validate_json(data)
        except ValidationError as exc:
            key = self.conn.keys.key(entity.ecs_id, f"e:{entity.ecs_id}")
            detail = f"unreadable state ({exc.errors()[0]['msg']})"
            raise self.conn.bad("entity", key, detail) from exc
        entity.__dict__.update(fresh.__dict__)

    def refresh(self, states: Sequence[Sequence[Any]]) -> None:
        """Entities whose state a staging reply carried (their version differed from ours)."""
        for eid, d in states:
            known = self.cache.get(uuid.UUID(eid))
            if known is not None and d:
                try:
                    self.load(known, d)
                except Exception:
                    self._stale.add(known.ecs_id)
                else:
                    self._stale.discard(known.ecs_id)

    def versions(self, target_ids: Sequence[UUID]) -> list[Any]:
        """(id, version) pairs for a staging script: it returns the state of each that differs."""
        out: list[Any] = []
        for t in target_ids:
            known = self.cache.get(t)
            version = -1 if known is None or t in self._stale else known.version
            out += [str(t), version]
        return out

    def mark_stale(self, ids: Sequence[UUID]) -> None:
        """This worker's copies of `ids` may differ from Redis: reload them on their next use."""
        self._stale.update(i for i in ids if i in self.cache)

    # writing -------------------------------------------------------------------------------------
    async def commit(self, writes: Sequence[Write], now: datetime) -> VersionConflict | None:
        """One Lua compare-and-set over every target (and the lease, for a staged winner)."""
        entities = [w.committed for w in writes]
        call = self.calls.current(entities[0].ecs_id)
        args: list[Any] = [len(writes)]
        for w in writes:
            d = w.state.__dict__
            d["version"] = w.expected + 1
            d["last_modified"] = now
            args += [str(w.committed.ecs_id), w.expected, w.state.model_dump_json()]
        reply = await self._write("COMMIT", call, entities, args)
        kind = reply["k"]
        if kind == "OK":
            for w in writes:
                w.committed.__dict__.update(w.state.__dict__)
            return None
        if kind != "C":
            raise self._refused(reply)
        by_id = {str(w.committed.ecs_id): w.committed for w in writes}
        for eid, d in reply["e"]:
            if d:
                self.load(by_id[eid], d)
        bad = by_id[reply["id"]]
        expected = next(w.expected for w in writes if w.committed is bad)
        return VersionConflict(bad.ecs_id, expected, int(reply["v"]))

    async def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        """An unguarded write (OCC off). The copies change only once Redis has the write: a
        refused write must not leave a newer version in this worker's copy."""
        call = self.calls.current(entities[0].ecs_id) if entities else None
        args: list[Any] = [len(entities)]
        for e in entities:
            d = e.__dict__
            before = d["version"], d["last_modified"]
            d["version"], d["last_modified"] = before[0] + 1, now
            try:
                args += [str(e.ecs_id), before[0] + 1, e.model_dump_json()]
            finally:
                d["version"], d["last_modified"] = before
        reply = await self._write("BUMP", call, list(entities), args)
        if reply["k"] != "OK":
            raise self._refused(reply)
        for e in entities:
            d = e.__dict__
            d["version"] += 1
            d["last_modified"] = now

    async def _write(
        self, script: str, call: Call | None, entities: list[Entity], args: list[Any]
    ) -> dict[str, Any]:
        token = call.oid if call is not None else uuid.uuid4().hex
        bucket = self.conn.keys.bucket_of_targets(e.ecs_id for e in entities)
        head: list[Any] = [self.lease_ms, self.out_ttl_ms, token, self.outcome_ttl_ms]
        tail = self.calls.fences(e.ecs_id for e in entities)
        tail += call.end_args() if call is not None else ["", "", "", ""]
        task = self.conn.start(script, bucket, *head, *args, *tail)
        if call is not None:
            call.unsettled = True
            call.sent_at = time.monotonic()
        try:
            raw = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The write may still land after this caller stopped listening: the copies are
            # reloaded on their next use, and ending the record settles the write first.
            self.mark_stale([e.ecs_id for e in entities])
            raise
        except RedisUnavailableError as exc:
            self.mark_stale([e.ecs_id for e in entities])
            applied = await self.settle(token, bucket)
            if applied is None:
                raise OutcomeUnknownError(
                    call.op.ecs_id if call is not None else None,
                    f"the write's reply was lost ({exc}) and Redis at {self.conn.description} "
                    f"did not answer within settle_timeout={self.settle_timeout}s whether it "
                    "applied; outcome unknown (its record says so and is settled once Redis "
                    "answers)",
                ) from exc
            if not applied:
                if call is not None:
                    call.unsettled = False
                raise RedisUnavailableError(
                    f"the write's reply was lost ({exc}); Redis, asked again, says it was not "
                    "applied and never will be: nothing was written"
                ) from exc
            raw = '{"k": "OK"}'
        if call is not None:
            call.unsettled = False
        reply: dict[str, Any] = json.loads(raw)
        self.conn.repaired(reply.get("b"))
        if reply["k"] == "OK" and call is not None and call.key is not None:
            call.ended = True
            self.calls.drop(call)
        return reply

    def _refused(self, reply: dict[str, Any]) -> Exception:
        kind = reply["k"]
        if kind == "L":
            return LeaseLostError(
                f"lease on target {reply['t']} expired before the write (lease_ms="
                f"{self.lease_ms}); nothing was written"
            )
        if kind == "B":
            return self.conn.bad(
                "entity", reply["key"], f"version {reply['v']!r} is not a number; nothing written"
            )
        return RedisUnavailableError(
            "the write was settled as not applied by an earlier question; nothing was written"
        )

    async def settle(self, token: str, bucket: int) -> bool | None:
        """After a lost reply: ask Redis whether write `token` (on `bucket`) applied, voiding it
        if it has not (so it can never apply later); None if Redis does not answer within
        settle_timeout."""
        deadline = time.monotonic() + self.settle_timeout
        delay = SETTLE_FIRST_DELAY
        while True:
            try:
                return bool(await self.conn.run("SETTLE", bucket, token, self.outcome_ttl_ms))
            except RedisUnavailableError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, SETTLE_MAX_DELAY)
