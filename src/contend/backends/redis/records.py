"""Operation records in Redis: their end, the zombie books, reads, and removals that are counted.

Ending a record is one script: a zombie is booked with its status, its target's book and cap, its
due time and its key's expiry at once (a worker or Redis dying between two steps cannot leave a
zombie that nothing removes), the call's target is released in the same script, and a write of
the call whose reply was lost is settled first. When Redis does not answer, the end is deferred
and written as soon as it does, in order. Removals and sweeps are idempotent: a retry after a
lost reply learns what the first attempt removed, so every removal is counted once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from contend.backends.redis.errors import RedisUnavailableError
from contend.clock import utcnow
from contend.config import CleanupConfig, CleanupStrategy
from contend.enums import OperationStatus
from contend.record import Record

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.redis.connection import Connection
    from contend.backends.redis.entities import Entities
    from contend.backends.redis.leases import Call, Calls

__all__ = ["Records"]

log = logging.getLogger("contend.backends.redis")

_EXECUTED = (OperationStatus.FAILED, OperationStatus.CANCELLED)
_ZOMBIE_STATUSES = (OperationStatus.CANCELLED, OperationStatus.FAILED, OperationStatus.REJECTED)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
PAGE_CHUNK = 2_000
"""Entries one page script examines at most (a page of a rare filter takes several)."""
IMMEDIATE_GRACE_SECONDS = 60.0
SETTLE_MARGIN_SECONDS = 5.0
"""A write is settled by its outcome key only while the key is sure to be there still."""

Removed = Callable[[Record, str | None], Awaitable[None]]


class Records:
    """Records of calls: written when staged or ended, read, removed, swept."""

    def __init__(
        self,
        conn: Connection,
        calls: Calls,
        entities: Entities,
        *,
        lease_ms: int,
        out_ttl_ms: int,
        outcome_ttl_ms: int,
        backstop_seconds: float,
        sweeper_lock_ms: int,
    ) -> None:
        self.conn = conn
        self.calls = calls
        self.entities = entities
        self.lease_ms = lease_ms
        self.out_ttl_ms = out_ttl_ms
        self.outcome_ttl_ms = outcome_ttl_ms
        self.backstop_seconds = backstop_seconds
        self.sweeper_lock_ms = sweeper_lock_ms
        self.clock: Callable[[], float] = time.time
        self.removed_late: Removed | None = None
        """Counts a removal learnt after the call that made it returned (the runtime's)."""
        self.sweep_later: Callable[[], Awaitable[object]] | None = None
        """Runs a sweep (the runtime's), to replay a sweep batch whose reply was lost."""
        self._zombie_count = 0
        self._counts: dict[int, tuple[int, int]] = {}
        """Per bucket: (sequence, zombie count) of the newest reply that carried its count."""
        self._dirty: dict[UUID, tuple[Record, str, float | None]] = {}
        """Records a handler may still change: the record, its JSON as written, its due time as
        booked. Written back (when changed) by `flush`, or by `schedule`; then forgotten."""
        self._flush_scheduled = False
        self._sweep_tokens: list[str] = []
        self._unacked: dict[UUID, tuple[Record | None, str, int | None]] = {}
        """Removals whose reply was lost, with their token (retried, then counted once)."""
        self._pending: set[UUID] = set()
        """Records whose booking waits for Redis to answer."""

    # counts ---------------------------------------------------------------------------------------
    @property
    def zombie_count(self) -> int:
        return self._zombie_count

    def _note(self, bucket: int, reply: dict[str, Any]) -> None:
        """Keep each bucket's newest count: replies on a connection pool can arrive out of
        order. The global count is their sum."""
        self.conn.repaired(reply.get("b"))
        if "zc" not in reply:
            return
        self._count(bucket, int(reply.get("zv", 0)), int(reply["zc"]))

    def _count(self, bucket: int, seq: int, count: int) -> None:
        old = self._counts.get(bucket)
        if old is None or seq >= old[0]:
            self._counts[bucket] = (seq, count)
            self._zombie_count += count - (old[1] if old is not None else 0)

    async def refresh_zombie_count(self) -> int:
        """The global zombie count, read from Redis now (every bucket's, pipelined)."""
        keys = self.conn.keys
        buckets = list(keys.all())
        raws = await asyncio.gather(*(self.conn.call("GET", keys.tag(b) + "zc") for b in buckets))
        for b, raw in zip(buckets, raws, strict=True):
            try:
                count = int(raw or 0)
            except ValueError:
                self.conn.bad("count", keys.tag(b) + "zc", f"zombie total {raw!r} is not a number")
                continue
            old = self._counts.get(b)
            self._count(b, old[0] if old is not None else 0, count)
        return self._zombie_count

    async def _json(self, script: str, bucket: int, *args: Any) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(await self.conn.run(script, bucket, *args))
        self._note(bucket, reply)
        return reply

    async def _json_all(
        self, script: str, jobs: list[tuple[int, list[Any]]]
    ) -> list[dict[str, Any]]:
        """Script `script` once per (bucket, args), pipelined."""
        return list(await asyncio.gather(*(self._json(script, b, *a) for b, a in jobs)))

    def _bucket(self, op: Record) -> int:
        """The bucket of a record: its primary target's (an untargeted record: its id's)."""
        tid = op.target_entity_id
        keys = self.conn.keys
        return keys.of(tid) if tid is not None else keys.bucket_of(str(op.ecs_id))

    async def _locate(self, op_id: UUID) -> int | None:
        """The bucket holding record `op_id`, looked for in every bucket (pipelined); None if
        it is in none."""
        keys = self.conn.keys
        buckets = list(keys.all())
        found = await asyncio.gather(
            *(self.conn.call("EXISTS", f"{keys.tag(b)}op:{op_id}") for b in buckets)
        )
        return next((b for b, n in zip(buckets, found, strict=True) if n), None)

    # records in flight ----------------------------------------------------------------------------
    def add_operation(self, op: Record) -> None:
        """Kept in this worker until the call stages (the join writes it) or ends."""
        self.calls.begin(op)

    def set_status(self, op: Record, status: OperationStatus, at: datetime | None = None) -> None:
        op.transition(status, at)
        if status is OperationStatus.SUCCEEDED:
            call = self.calls.get(op.ecs_id)
            if call is not None and call.retained:
                # A retained success has no record write of its own: its handler's schedule, or
                # the next flush, writes it.
                self.calls.finish(op.ecs_id)
                self._keep(op, "", None)

    async def get_operation(self, op_id: UUID, bucket: int | None = None) -> Record | None:
        """This worker's record if it has it, else Redis's (in `bucket` if known, else looked
        for in every bucket)."""
        call = self.calls.get(op_id)
        if call is not None:
            return call.op
        dirty = self._dirty.get(op_id)
        if dirty is not None:
            return dirty[0]
        keys = self.conn.keys
        buckets = list(keys.all()) if bucket is None else [bucket]
        found = await asyncio.gather(
            *(self.conn.call("HMGET", f"{keys.tag(b)}op:{op_id}", "j", "s") for b in buckets)
        )
        for b, (j, s) in zip(buckets, found, strict=True):
            if j is None:
                continue
            op = self._parse(str(op_id), str(j), None if s is None else str(s))
            if op is None:
                raise self.conn.bad("record", f"{keys.tag(b)}op:{op_id}", "unreadable record JSON")
            return op
        return None

    async def discard(self, op: Record) -> None:
        """A succeeded record leaves (its commit usually ended it in Redis already)."""
        call = self.calls.finish(op.ecs_id)
        if call is None or call.key is None or call.ended:
            return
        bucket = self.conn.keys.of(call.key)
        args = [self.lease_ms, self.out_ttl_ms, call.oid, call.key, "d"]
        try:
            await self._json("DISCARD", bucket, *args)
        except RedisUnavailableError:
            self.conn.defer(f"end {call.oid}", lambda: self._retry("DISCARD", bucket, args))

    async def _retry(self, script: str, bucket: int, args: list[Any]) -> None:
        await self._json(script, bucket, *args)

    # zombies ------------------------------------------------------------------------------------
    async def add_zombie(self, op: Record, due: float | None, cap: int) -> list[Record]:
        call = self.calls.finish(op.ecs_id)
        if call is not None and call.joined is not None and not call.joined.done():
            # A join carrying this call is on its way: end the record after it, or the join
            # could put back a call that has ended.
            await _quietly(call.joined)
        if op.status in _EXECUTED and op.started_at is not None:
            self.entities.mark_stale(op.target_entity_ids)
        due = self._due(op, due)
        token = self._settle_token(op, call)
        rec = op.to_json()
        try:
            reply = await self._book(op, rec, call, token, due, cap)
        except RedisUnavailableError:
            self._pending.add(op.ecs_id)
            self.conn.defer(f"book {op.ecs_id}", lambda: self._book_later(op, call, due, cap))
            return []
        return self._booked(op, rec, reply, due)

    def _due(self, op: Record, due: float | None) -> float | None:
        """The due time booked with the zombie: what the stock handlers will schedule."""
        if due is not None:
            return due
        strategy = op.cleanup_strategy
        if strategy is CleanupStrategy.DEFERRED:
            minutes = op.get_cleanup_config().retention_minutes
            op.plan_cleanup(CleanupStrategy.DEFERRED, op.due_after(minutes, utcnow()))
            at = op.cleanup_scheduled_at
            return at.timestamp() if at is not None else None
        if strategy is CleanupStrategy.IMMEDIATE and op.completed_at is not None:
            # Removed right after by its handler; booked due a little later in case that never
            # comes (its worker died in between): a sweep of any worker then removes it.
            return op.completed_at.timestamp() + IMMEDIATE_GRACE_SECONDS
        return None

    def _settle_token(self, op: Record, call: Call | None) -> str:
        """The token of a write of this call whose outcome is not known here ('' if none): the
        booking settles it first, while Redis is sure to still know it."""
        if call is None or not call.unsettled:
            return ""
        age = time.monotonic() - (call.sent_at or 0.0)
        if age < self.outcome_ttl_ms / 1000 - SETTLE_MARGIN_SECONDS:
            return call.oid
        if "outcome unknown" not in (op.error_message or ""):
            op.add_note("outcome unknown")
        return ""

    async def _book(
        self,
        op: Record,
        rec: str,
        call: Call | None,
        token: str,
        due: float | None,
        cap: int,
    ) -> dict[str, Any]:
        ttl = "" if due is None else self._ttl(due)
        tid = op.target_entity_id
        return await self._json(
            "ADD_ZOMBIE",
            self._bucket(op),
            self.lease_ms,
            self.out_ttl_ms,
            str(op.ecs_id),
            (call.key or "") if call is not None else "",
            rec,
            op.status.value,
            "" if tid is None else str(tid),
            ",".join(str(t) for t in op.target_entity_ids),
            cap,
            "" if due is None else repr(due),
            ttl,
            token,
            self.outcome_ttl_ms,
            _us(op.completed_at or utcnow()),
            op.function_name.lower(),
            op.priority,
            (op.cleanup_strategy or CleanupStrategy.NONE).value,
        )

    def _booked(
        self,
        op: Record,
        rec: str,
        reply: dict[str, Any],
        due: float | None,
    ) -> list[Record]:
        if reply.get("applied"):
            # A caller cancelled (or told "outcome unknown") while its write was on its way: the
            # write applied and ended the record as a success; nothing is booked.
            log.debug(
                "operation %s ended %s after its write had applied; its record ended with it",
                op.ecs_id,
                op.status.value,
            )
            return []
        if not reply.get("dup"):
            self._keep(op, rec, due)
        return self._rows(reply.get("ev"))

    async def _book_later(self, op: Record, call: Call | None, due: float | None, cap: int) -> None:
        token = self._settle_token(op, call)
        rec = op.to_json()
        reply = await self._book(op, rec, call, token, due, cap)
        self._pending.discard(op.ecs_id)
        self._dirty.pop(op.ecs_id, None)  # written just now, as it stands
        if reply.get("applied"):
            self._booked(op, rec, reply, due)
            return
        if self.removed_late is not None:
            for gone in self._rows(reply.get("ev")):
                await self.removed_late(gone, "cap")

    def _keep(self, op: Record, sent: str, due: float | None) -> None:
        """Remember `op` as written, so what its handler changes next is written back once."""
        self._dirty[op.ecs_id] = (op, sent, due)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.conn.spawn, self.flush())

    async def remove(self, op_id: UUID) -> Record | None:
        """Take a record out of every index; None if it was gone (or Redis did not answer: the
        removal is then retried, and counted when Redis says it happened)."""
        dirty = self._dirty.pop(op_id, None)
        pending = self._unacked.get(op_id)
        local = dirty[0] if dirty is not None else (pending[0] if pending else None)
        if local is None:
            call = self.calls.get(op_id)
            local = call.op if call is not None else None
        token = pending[1] if pending is not None else uuid.uuid4().hex
        bucket = pending[2] if pending is not None else None
        if bucket is None and local is not None:
            bucket = self._bucket(local)
        if op_id in self._pending and pending is None:
            # its booking waits for Redis: the removal goes after it, in order
            self._unacked[op_id] = (local, token, bucket)
            self.conn.defer(f"remove {op_id}", lambda: self._remove_later(op_id))
            return None
        try:
            if bucket is None:
                bucket = await self._locate(op_id)
                if bucket is None:
                    return None
            reply = await self._json("REMOVE", bucket, str(op_id), token, self.outcome_ttl_ms)
        except RedisUnavailableError:
            if pending is None:
                self._unacked[op_id] = (local, token, bucket)
                self.conn.defer(f"remove {op_id}", lambda: self._remove_later(op_id))
            return None
        self._unacked.pop(op_id, None)
        row = reply.get("r")
        if row:
            return self._row(row)
        if reply.get("mine"):
            return local if local is not None else _stub(str(op_id), "", "")
        return None

    async def _remove_later(self, op_id: UUID) -> None:
        if op_id not in self._unacked:
            return
        gone = await self.remove(op_id)
        if gone is not None and self.removed_late is not None:
            await self.removed_late(gone, _reason(gone.cleanup_strategy))

    # removal schedule ---------------------------------------------------------------------------
    async def schedule(self, op_id: UUID, due: float) -> None:
        """Book the due time and rewrite the record; its key expires `backstop_seconds` later."""
        entry = self._dirty.pop(op_id, None)
        op = entry[0] if entry is not None else None
        body = op.to_json() if op is not None else ""
        if entry is not None and body == entry[1]:
            body = ""
            if entry[2] == due:
                return  # booked with the zombie, in the same script
        fresh = entry is not None and not entry[1]
        args = [str(op_id), repr(due), body, self._ttl(due), *self._where(op if fresh else None)]
        if op is None:
            call = self.calls.get(op_id)
            op = call.op if call is not None else None
        try:
            bucket = self._bucket(op) if op is not None else await self._locate(op_id)
            if bucket is None:
                return
            await self._json("SCHEDULE", bucket, *args)
        except RedisUnavailableError:
            self.conn.defer(f"schedule {op_id}", lambda: self._schedule_later(op_id, op, args))

    async def _schedule_later(self, op_id: UUID, op: Record | None, args: list[Any]) -> None:
        bucket = self._bucket(op) if op is not None else await self._locate(op_id)
        if bucket is not None:
            await self._json("SCHEDULE", bucket, *args)

    def _ttl(self, due: float) -> str:
        return str(int((max(0.0, due - self.clock()) + self.backstop_seconds) * 1000) or 1)

    @staticmethod
    def _where(op: Record | None) -> list[str]:
        if op is None:
            return ["", "", ""]
        tid = op.target_entity_id
        targets = ",".join(str(t) for t in op.target_entity_ids)
        return [op.status.value, "" if tid is None else str(tid), targets]

    async def flush(self) -> None:
        """Write back records a handler changed since they were written (and retained successes
        not written yet)."""
        self._flush_scheduled = False
        while self._dirty:
            op_id, (op, sent, _) = self._dirty.popitem()
            body = op.to_json()
            if body == sent:
                continue
            # a record not written yet (a retained success) is created; one that was written is
            # only updated, never brought back once another worker removed it
            args = [str(op_id), "", body, "", *self._where(None if sent else op)]
            bucket = self._bucket(op)
            try:
                await self._json("SCHEDULE", bucket, *args)
            except RedisUnavailableError:
                self.conn.defer(
                    f"write {op_id}",
                    lambda b=bucket, a=args: self._retry("SCHEDULE", b, a),  # type: ignore[misc]
                )

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        """Due ids, only from buckets whose sweeper lock this worker holds (one sweeper per
        bucket across workers). They stay scheduled, claimed for a lock period, until removed:
        a sweep that stops half way loses none."""
        claim = now + self.sweeper_lock_ms / 1000
        jobs = [
            (b, [self.conn.owner, self.sweeper_lock_ms, repr(now), n, repr(claim)])
            for b, n in await self._due_buckets(now, limit)
        ]
        out: list[UUID] = []
        for reply in await self._json_all("POP_DUE", jobs):
            out += [uuid.UUID(i) for i in reply.get("ids") or ()]
        return out

    async def _due_buckets(self, now: float, limit: int) -> list[tuple[int, int]]:
        """(bucket, how many to take) for the buckets with records due by `now`, `limit` in
        all; one pipelined count over every bucket."""
        keys = self.conn.keys
        buckets = list(keys.all())
        counts = await asyncio.gather(
            *(self.conn.call("ZCOUNT", keys.tag(b) + "due", "-inf", repr(now)) for b in buckets)
        )
        out = []
        left = limit
        for b, n in zip(buckets, counts, strict=True):
            if n and left > 0:
                take = min(int(n), left)
                out.append((b, take))
                left -= take
        return out

    async def take_due(self, now: float, limit: int) -> list[Record]:
        """Take the records due by `now` out of every index, one script per bucket that has
        some. A batch whose reply was lost is replayed by the next sweep (its reply waits in
        Redis under the same token), never dropped."""
        # a sweep whose reply was lost keeps its token until one takes it up again; a sweep
        # running meanwhile has a token of its own (sharing one, it got the other's reply
        # replayed and counted those removals twice)
        token = self._sweep_tokens.pop() if self._sweep_tokens else uuid.uuid4().hex
        try:
            # a batch whose reply was lost is replayed from the buckets that still keep it
            keys = self.conn.keys
            buckets = list(keys.all())
            kept = await asyncio.gather(
                *(self.conn.call("EXISTS", f"{keys.tag(b)}r:{token}") for b in buckets)
            )
            todo = dict(await self._due_buckets(now, limit))
            for b, k in zip(buckets, kept, strict=True):
                if k:
                    todo.setdefault(b, 1)
            args = [self.conn.owner, self.sweeper_lock_ms, repr(now)]
            jobs = [(b, [*args, n, token, self.outcome_ttl_ms]) for b, n in todo.items()]
            replies = await self._json_all("TAKE_DUE", jobs)
        except RedisUnavailableError:
            self._sweep_tokens.append(token)
            if self.sweep_later is not None:
                self.conn.defer(f"sweep {token}", self._replay_sweep)
            raise
        out: list[Record] = []
        for (b, _), reply in zip(jobs, replies, strict=True):
            rows = reply.get("rows") or ()
            if rows:
                self.conn.spawn(self.conn.call("DEL", f"{keys.tag(b)}r:{token}"))
            out += self._rows(rows)
        return out

    async def _replay_sweep(self) -> None:
        if self._sweep_tokens and self.sweep_later is not None:
            await self.sweep_later()

    async def next_due(self) -> float | None:
        keys = self.conn.keys
        firsts = await asyncio.gather(
            *(self.conn.call("ZRANGE", keys.tag(b) + "due", 0, 0, "WITHSCORES") for b in keys.all())
        )
        due = [float(_pairs(f)[0][1]) for f in firsts if f]
        return min(due) if due else None

    # reads --------------------------------------------------------------------------------------
    async def read(self, suffix: str, book: str | None = None) -> list[Record]:
        """The records of an index: a target's (``ot:<id>``, ``zb:<id>``: its bucket) or a
        status set (``os:<status>``: every bucket)."""
        kind, _, target = suffix.partition(":")
        if kind == "os":
            jobs = [(b, [suffix, "s"]) for b in self.conn.keys.all()]
            return self._rows_of(await self._json_all("READ_SET", jobs))
        bucket = self.conn.keys.of(target)
        if book is None:
            reply = await self._json("READ_SET", bucket, suffix, "s")
        else:
            reply = await self._json("READ_SET", bucket, suffix, "z", book)
        return self._rows(reply.get("rows"))

    async def zombies_all(self) -> list[Record]:
        jobs: list[tuple[int, list[Any]]] = [(b, []) for b in self.conn.keys.all()]
        return self._rows_of(await self._json_all("ZOMBIES_ALL", jobs))

    async def oldest(self) -> list[Record]:
        jobs: list[tuple[int, list[Any]]] = [(b, []) for b in self.conn.keys.all()]
        return self._rows_of(await self._json_all("OLDEST", jobs))

    def _rows_of(self, replies: list[dict[str, Any]]) -> list[Record]:
        out: list[Record] = []
        for reply in replies:
            out += self._rows(reply.get("rows"))
        return out

    async def counts_by_target(self) -> dict[UUID, int]:
        keys = self.conn.keys
        buckets = list(keys.all())
        raws = await asyncio.gather(
            *(self.conn.call("HGETALL", keys.tag(b) + "zt") for b in buckets)
        )
        out: dict[UUID, int] = {}
        for b, raw in zip(buckets, raws, strict=True):
            for t, n in _pairs(raw):
                if not t:
                    continue
                try:
                    out[uuid.UUID(str(t))] = int(n)
                except ValueError:
                    key = keys.tag(b) + "zt"
                    self.conn.bad(
                        "count", f"{key} field {t!r}", f"not a target id and count ({n!r})"
                    )
        return {t: n for t, n in out.items() if n > 0}

    # console pages --------------------------------------------------------------------------------
    async def zombie_page(
        self,
        *,
        target_id: UUID | None,
        status: OperationStatus | None,
        function: str | None,
        priority: int | None,
        completed_before: datetime | None,
        completed_after: datetime | None,
        cursor: str | None,
        limit: int,
        scan_limit: int,
    ) -> tuple[list[Record], str | None, int, int | None]:
        """Zombies in completion order from the indexes by status (merged) or by target, at
        most `scan_limit` entries examined, in scripts of at most `PAGE_CHUNK` entries each (a
        rare filter does not hold Redis for long); see `contend.console.query.PagedZombies`."""
        if target_id is not None:
            sources = [f"zq:{target_id}"]
        elif status is not None:
            sources = [f"zs:{status.value}"]
        else:
            sources = [f"zs:{s.value}" for s in _ZOMBIE_STATUSES]
        needle = function.lower() if function else ""
        shape = [
            *sources,
            status.value if status is not None and target_id is not None else "",
            needle,
            "" if priority is None else str(priority),
            "" if completed_after is None else str(_us(completed_after)),
            "" if completed_before is None else str(_us(completed_before)),
        ]
        tag = f"{zlib.crc32(chr(0).join(shape).encode()):08x}"
        at = _parse_cursor(cursor, tag)
        rows: list[Record] = []
        scanned = 0
        total: int | None = None
        if target_id is None:
            return await self._page_merged(sources, at, limit, scan_limit, shape[-5:], tag, status)
        bucket = self.conn.keys.of(target_id)
        while True:
            budget = min(scan_limit - scanned, PAGE_CHUNK)
            args = [len(sources), *sources, *at, limit - len(rows), budget, *shape[-5:]]
            reply = await self._json("ZOMBIE_PAGE", bucket, *args)
            rows += self._rows(reply.get("rows"))
            scanned += int(reply.get("n") or 0)
            total = int(reply.get("total") or 0)
            after = reply.get("after")
            if not after:
                return rows, None, scanned, _total(total, target_id, status)
            at = [str(after[0]), str(after[1])]
            if len(rows) >= limit or scanned >= scan_limit:
                return rows, ".".join([*at, tag]), scanned, _total(total, target_id, status)

    async def _page_merged(
        self,
        sources: list[str],
        at: list[str],
        want: int,
        scan_limit: int,
        shape: list[str],
        tag: str,
        status: OperationStatus | None,
    ) -> tuple[list[Record], str | None, int, int | None]:
        """A page merged over every bucket, in (completion time, id) order: each bucket hands
        the entries after the cursor in short runs (ids, scores, whether each matches; no
        JSON), refilled when its run is used up; the merge examines entries in order until the
        page is full or `scan_limit` entries were examined, so a page examines what it shows,
        as on one bucket. The JSON of the records shown is read last."""
        keys = self.conn.keys
        buckets = list(keys.all())
        sizes = await asyncio.gather(
            *(self.conn.call("ZCARD", keys.tag(b) + src) for b in buckets for src in sources)
        )
        n = len(sources)
        per = {b: sum(sizes[i * n : (i + 1) * n]) for i, b in enumerate(buckets)}
        total = sum(per.values())
        live = [b for b in buckets if per[b]]
        run = max(2, -(-2 * min(want, scan_limit) // max(1, len(live))))
        runs: dict[int, collections.deque[tuple[int, str, int]]] = {
            b: collections.deque() for b in live
        }
        more: dict[int, list[str] | None] = {b: list(at) for b in live}
        shown: list[tuple[int, str]] = []
        scanned = 0
        last: tuple[int, str] | None = None
        while len(shown) < want and scanned < scan_limit:
            empty = [b for b in live if not runs[b] and more[b] is not None]
            if empty:
                jobs = []
                for b in empty:
                    here = more[b] or ["", ""]
                    jobs.append((b, [n, *sources, *here, run, run, *shape, "i"]))
                for (b, _), reply in zip(
                    jobs, await self._json_all("ZOMBIE_PAGE", jobs), strict=True
                ):
                    for row in reply.get("rows") or ():
                        runs[b].append((int(row[4]), str(row[0]), int(row[1])))
                    after = reply.get("after")
                    more[b] = [str(after[0]), str(after[1])] if after else None
            heads = [(runs[b][0], b) for b in live if runs[b]]
            if not heads:
                break
            (score, oid, match), b = min(heads)
            runs[b].popleft()
            scanned += 1
            last = (score, oid)
            if match:
                shown.append((b, oid))
        rows = await self._read_rows(shown)
        done = all(not runs[b] and more[b] is None for b in live)
        if done or last is None:
            return rows, None, scanned, _total(total, None, status)
        return rows, ".".join([str(last[0]), last[1], tag]), scanned, _total(total, None, status)

    async def _read_rows(self, where: list[tuple[int, str]]) -> list[Record]:
        """Records by (bucket, id), in that order (pipelined); one gone meanwhile is left out."""
        tags = self.conn.keys
        got = await asyncio.gather(
            *(self.conn.call("HMGET", f"{tags.tag(b)}op:{oid}", "j", "s") for b, oid in where)
        )
        return self._rows([(oid, j, s) for (_, oid), (j, s) in zip(where, got, strict=True) if j])

    async def counts_by_strategy(self, scan_limit: int) -> tuple[dict[str, int], int]:
        """Zombies by cleanup strategy, and the records read to count them: each status index
        of each bucket gets a share of `scan_limit` by its size and is extrapolated from what
        was read."""
        keys = self.conn.keys
        parts = [(b, f"zs:{s.value}") for b in keys.all() for s in _ZOMBIE_STATUSES]
        sizes = [
            int(n)
            for n in await asyncio.gather(
                *(self.conn.call("ZCARD", keys.tag(b) + key) for b, key in parts)
            )
        ]
        total = sum(sizes) or 1
        counts: dict[str, int] = {}

        async def count(bucket: int, key: str, size: int) -> int:
            budget = size if total <= scan_limit else max(1, scan_limit * size // total)
            part: dict[str, int] = {}
            position = 0
            while position < min(budget, size):
                n = min(PAGE_CHUNK, budget - position)
                reply = await self._json("ZOMBIE_COUNTS", bucket, key, position, n)
                got = int(reply.get("n") or 0)
                if not got:
                    break
                position += got
                for strategy, k in (reply.get("counts") or {}).items():
                    part[strategy] = part.get(strategy, 0) + int(k)
            scale = size / position if 0 < position < size else 1.0
            for strategy, k in part.items():
                counts[strategy] = counts.get(strategy, 0) + round(k * scale)
            return position

        read = sum(
            await asyncio.gather(
                *(count(b, key, n) for (b, key), n in zip(parts, sizes, strict=True) if n)
            )
        )
        return counts, read

    # parsing ------------------------------------------------------------------------------------
    def _rows(self, rows: Sequence[Sequence[Any]] | None) -> list[Record]:
        out = []
        for row in rows or ():
            op = self._row(row)
            if op is not None:
                out.append(op)
        return out

    def _row(self, row: Sequence[Any]) -> Record | None:
        """A row {id, json, status[, target]}; a record that does not parse is reported (and,
        from a removal, returned as a stub so its removal is still counted)."""
        oid, j, s = str(row[0]), row[1] or "", row[2] or None
        op = self._parse(oid, j, s)
        if op is None and len(row) > 3:
            return _stub(oid, s or "", str(row[3] or ""))
        return op

    def _parse(self, oid: str, j: str, s: str | None) -> Record | None:
        try:
            if j.startswith("["):
                return from_staged(oid, j, OperationStatus(s) if s else None)
            op = Record.from_json(j, OperationStatus(s) if s else None)
        except (ValidationError, ValueError, TypeError, IndexError) as exc:
            self.conn.bad("record", f"op:{oid}", f"unreadable record ({exc!s:.200})")
            return None
        return op

    def footprint(self) -> int:
        return len(self._dirty) + len(self._unacked) + len(self._pending)


def staged_json(op: Record, configs: dict[int, tuple[CleanupConfig, str]]) -> str:
    """What Redis keeps of a call while it is in flight: only what ending it as an orphan (or a
    query meeting it) needs, its function, targets, priority, creation time and cleanup config;
    a call that succeeds never has its full record written (a zombie's booking writes it).
    `configs` caches each cleanup config's JSON (configs are frozen and shared by calls)."""
    config = op.cleanup_config
    cfg: str | None = None
    if config is not None:
        known = configs.get(id(config))
        if known is None or known[0] is not config:
            if len(configs) > 1024:
                configs.clear()
            known = configs[id(config)] = (config, config.model_dump_json())
        cfg = known[1]
    return json.dumps(
        [
            1,
            op.function_name,
            [str(t) for t in op.target_entity_ids],
            op.target_type,
            int(op.priority),
            op.created_at.isoformat(),
            cfg,
        ]
    )


def from_staged(oid: str, text: str, status: OperationStatus | None) -> Record:
    """The record of a call in flight from `staged_json`'s text."""
    _, fn, targets, kind, priority, created, cfg = json.loads(text)
    config = None if cfg is None else CleanupConfig.model_validate_json(cfg)
    op = Record(
        fn,
        tuple(uuid.UUID(t) for t in targets),
        kind,
        priority,
        config,
        datetime.fromisoformat(created),
        uuid.UUID(oid),
    )
    if status is not None:
        op.set_status(status)
    return op


def _stub(oid: str, status: str, target: str) -> Record:
    """What is left of a record whose JSON does not parse: its id, status and target."""
    try:
        targets: tuple[UUID, ...] = (uuid.UUID(target),) if target else ()
    except ValueError:
        targets = ()
    op = Record("<unreadable record>", targets, "", 5, None, utcnow(), uuid.UUID(oid))
    try:
        op.set_status(OperationStatus(status))
    except ValueError:
        op.set_status(OperationStatus.FAILED)
    return op


def _us(moment: datetime) -> int:
    """A moment as whole microseconds since the epoch (exact: the zombie indexes' score)."""
    return (moment - _EPOCH) // _MICROSECOND


def _parse_cursor(cursor: str | None, tag: str) -> list[str]:
    """A page cursor (``score.id.tag``) as the script's (score, id); ValueError if it is not
    one this query handed out."""
    if not cursor:
        return ["", ""]
    parts = cursor.split(".")
    try:
        if len(parts) != 3:
            raise ValueError
        int(parts[0])
        uuid.UUID(parts[1])
    except ValueError:
        raise ValueError(f"not a cursor of this browser: {cursor[:80]!r}") from None
    if parts[2] != tag:
        raise ValueError("the cursor belongs to other filters; start again from the first page")
    return parts[:2]


def _total(size: int, target_id: UUID | None, status: OperationStatus | None) -> int | None:
    """The size of the set the filters select from, when the index read is that set."""
    return size if target_id is None or status is None else None


def _pairs(raw: Any) -> list[Any]:
    """A reply of pairs (ZRANGE WITHSCORES, HGETALL) as a list of pairs, whether the connection
    speaks RESP3 (pairs, or a map) or RESP2 (a flat list)."""
    if not raw:
        return []
    if isinstance(raw, dict):
        return list(raw.items())
    if isinstance(raw[0], (list, tuple)):
        return list(raw)
    return list(zip(raw[::2], raw[1::2], strict=True))


def _reason(strategy: CleanupStrategy | None) -> str:
    if strategy is CleanupStrategy.IMMEDIATE:
        return "immediate"
    if strategy is CleanupStrategy.CUSTOM:
        return "custom"
    return "manual"


async def _quietly(fut: asyncio.Future[None]) -> None:
    try:
        await asyncio.shield(fut)
    except Exception:
        return
