"""The embedded default: everything in this process's memory, every lookup O(1) or O(result).

Indexes are keyed by ``uuid.int``: hashing a UUID runs Python code, hashing an int does not, and a
call touches these dicts a dozen times.
"""

from __future__ import annotations

import heapq
import math
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, KeysView, Sequence
from datetime import datetime
from functools import partial
from itertools import compress, repeat
from operator import attrgetter, is_not, itemgetter
from typing import Any, cast
from uuid import UUID

from contend.backends.base import Hooks, VersionConflict, Write
from contend.clock import utcnow
from contend.entity import Entity, copy_state, shard_key_of
from contend.enums import TERMINAL_STATUSES, OperationStatus
from contend.record import Record
from contend.staging import LocalCoordinator, Staged

__all__ = ["MemoryBackend", "MemoryStore"]

_TERMINAL = TERMINAL_STATUSES
_SUCCEEDED = OperationStatus.SUCCEEDED
_EMPTY: dict[int, Any] = {}
"""What a missing index bucket reads as; only ever popped with a default, never written."""
_INT = attrgetter("int")
_TARGETS = attrgetter("target_entity_ids")
_TARGET = attrgetter("target_entity_id")
_STATUS = attrgetter("status")
_FIRST = itemgetter(0)
_POP = cast("Callable[[dict[int, Any], int, object], Any]", dict.pop)
_GET = cast("Callable[[dict[int, Any], int], Any]", dict.get)
_ABSENT: Any = object()
_NO_REF: Any = type(None)
"""Called like a dead weak reference: returns None."""


class MemoryStore:
    """Entities and operation records in dicts, zombie removals on a due-time heap (the memory
    backend's `Store`: every method is synchronous).

    Records in flight (pending, executing) share one index, so starting a call touches no status
    index; a status query for them is O(calls in flight), for terminal statuses O(result). A
    record's entry in its status index holds its due time while it is scheduled for removal.
    A booked zombie is indexed under its primary target in the zombie index only, not also in the
    target index: removing it (a sweep removes thousands) then walks one per-target index, not two.
    """

    def __init__(self) -> None:
        self._entities: dict[int, weakref.KeyedRef[int, Entity]] = {}
        """Committed entities by id, held weakly: see `ensure_entity`."""
        entities = self._entities

        def forget(ref: weakref.KeyedRef[int, Entity]) -> None:
            if entities.get(ref.key) is ref:
                del entities[ref.key]

        self._forget = forget
        self._ops: dict[int, Record] = {}
        self._by_target: dict[int, dict[int, None]] = {}
        self._inflight: dict[int, float | None] = {}
        self._by_status: dict[OperationStatus, dict[int, float | None]] = {s: {} for s in _TERMINAL}
        self._zombies_by_target: dict[int, dict[int, None]] = {}
        self._zombie_count = 0
        self._buckets: dict[int, list[int]] = {}
        self._seconds: list[int] = []
        self._filed = 0
        self._scheduled = 0
        self._status_index: dict[OperationStatus, dict[int, float | None]] = {
            **dict.fromkeys(OperationStatus, self._inflight),
            **self._by_status,
        }

    @property
    def zombie_count(self) -> int:
        return self._zombie_count

    # entities ---------------------------------------------------------------------------------
    def ensure_entity(self, entity: Entity) -> Entity:
        """Register `entity` on first use; return the committed instance for its id.

        The registry holds an entity weakly: no longer than the application does, or a call
        in flight on it (its frame holds it). Memory is the only place an in-memory entity's
        committed state lives, so once nothing else holds the object nothing can read it
        either; keeping it would only grow the registry by every entity ever passed.
        """
        key = entity.ecs_id.int
        found: Entity | None = self._entities.get(key, _NO_REF)()
        if found is not None:
            return found
        if type(entity).__contend_shard_key__ is not None:
            shard_key_of(entity)  # a bad value is refused here, as on Redis (not placed here)
        self._entities[key] = weakref.KeyedRef(entity, self._forget, key)
        return entity

    def get_entity(self, entity_id: UUID) -> Entity | None:
        ref = self._entities.get(entity_id.int)
        return ref() if ref is not None else None

    def entity_count(self) -> int:
        """Entities registered and still alive."""
        return len(self._entities)

    def forget_entity(self, entity_id: UUID) -> bool:
        return self._entities.pop(entity_id.int, None) is not None

    def commit(self, writes: Sequence[Write], now: datetime) -> VersionConflict | None:
        for w in writes:
            if w.committed.version != w.expected:
                return VersionConflict(w.committed.ecs_id, w.expected, w.committed.version)
        for w in writes:
            committed = w.committed
            copy_state(committed, w.state)
            d = committed.__dict__
            d["version"] = w.expected + 1
            d["last_modified"] = now
        return None

    def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        for e in entities:
            d = e.__dict__
            d["version"] += 1
            d["last_modified"] = now

    # operation records ------------------------------------------------------------------------
    def add_operation(self, op: Record) -> None:
        oid = op.ecs_id.int
        self._ops[oid] = op
        by_target = self._by_target
        for t in op.target_entity_ids:
            tid = t.int
            bucket = by_target.get(tid)
            if bucket is None:
                by_target[tid] = {oid: None}
            else:
                bucket[oid] = None
        self._inflight[oid] = None

    def set_status(self, op: Record, status: OperationStatus, at: datetime) -> None:
        """Move `op` along the status machine. A record that ends and stays (a zombie, a
        retained success) is indexed from then on, if its coordinator held it so far."""
        op.transition(status, at)
        if status in _TERMINAL:
            oid = op.ecs_id.int
            due = self._inflight.pop(oid, _ABSENT)
            if due is not _ABSENT:
                self._by_status[status][oid] = due
            elif oid not in self._ops:
                self.add_operation(op)
                self._inflight.pop(oid, None)
                self._by_status[status][oid] = None

    def adopt(self, ops: Iterable[Record]) -> None:
        """Index the records of calls in flight that are not indexed yet (a query met them in
        their coordinator)."""
        registry = self._ops
        for op in ops:
            if op.ecs_id.int not in registry:
                self.add_operation(op)

    def end(self, ops: Sequence[Record], status: OperationStatus, at: datetime) -> None:
        """Give each record its terminal status and drop it from every index in one step.

        For records that leave the moment they end (succeeded, or IMMEDIATE cleanup): nothing
        runs in between, so the status index and zombie books are skipped. A record of a staged
        call was never indexed (its coordinator held it); one whose id nobody read cannot be.
        """
        for op in ops:
            op.transition(status, at)
        self.forget(ops)

    def forget(self, ops: Iterable[Record]) -> None:
        """Drop records that just ended from every index (see `end`)."""
        registry = self._ops
        inflight = self._inflight
        by_target = self._by_target
        unscheduled = 0
        for op in ops:
            if op.made_id is None:
                continue
            oid = op.ecs_id.int
            if registry.pop(oid, None) is None:
                continue
            if inflight.pop(oid, None) is not None:
                unscheduled += 1
            for t in op.target_entity_ids:
                tid = t.int
                bucket = by_target.get(tid)
                if bucket is not None:
                    bucket.pop(oid, None)
                    if not bucket:
                        del by_target[tid]
        if unscheduled:
            self._scheduled -= unscheduled
            self._maybe_compact()

    def get_operation(self, op_id: UUID) -> Record | None:
        return self._ops.get(op_id.int)

    def discard(self, op: Record) -> None:
        if op.made_id is not None:
            self._unindex(op.ecs_id.int)

    def add_zombie(self, op: Record, due: float | None, cap: int) -> list[Record]:
        """Book a terminal record; returns the oldest zombies of its target evicted past `cap`."""
        oid = op.ecs_id.int
        if oid not in self._ops:
            return []
        tid = _tkey(op)
        bucket = self._zombies_by_target.get(tid)
        if bucket is None:
            bucket = self._zombies_by_target[tid] = {}
        bucket[oid] = None
        self._zombie_count += 1
        listed = self._by_target.get(tid)
        if listed is not None and listed.pop(oid, 0) is None and not listed:
            del self._by_target[tid]
        if due is not None:
            self._push_due(op, oid, due)
        evicted: list[Record] = []
        while len(bucket) > cap:
            gone = self._unindex(next(iter(bucket)))
            if gone is not None:
                evicted.append(gone)
        return evicted

    def remove(self, op_id: UUID) -> Record | None:
        return self._unindex(op_id.int)

    def _unindex(self, oid: int) -> Record | None:
        """Take a record out of every index."""
        op = self._ops.pop(oid, None)
        if op is None:
            return None
        status = op.status
        due = self._status_index[status].pop(oid, None)
        booked = None
        zombies = self._zombies_by_target
        if zombies and status is not _SUCCEEDED:
            target = op.target_entity_id
            tkey = target.int if target is not None else -1
            zb = zombies.get(tkey)
            if zb is not None and zb.pop(oid, 0) is None:
                booked = tkey
                self._zombie_count -= 1
                if not zb:
                    del zombies[tkey]
        by_target = self._by_target
        for t in op.target_entity_ids:
            tid = t.int
            if tid == booked:
                continue
            bucket = by_target.get(tid)
            if bucket is not None:
                bucket.pop(oid, None)
                if not bucket:
                    del by_target[tid]
        if due is not None:
            self._scheduled -= 1
            self._maybe_compact()
        return op

    def _unindex_taken(self, oids: list[int], ops: list[Record]) -> list[Record]:
        """`_unindex` for the rest of a batch `_take` took out of the registry and status index.

        A sweep removes thousands of records; walking each index once for the whole batch, with
        no Python-level step per record, is what keeps it a few milliseconds.
        """
        if not ops:
            return ops
        targets = list(map(_TARGETS, ops))
        primaries = list(map(_TARGET, ops))
        simple = set(map(len, targets)) == {1} and primaries == list(map(_FIRST, targets))
        if simple:
            keys = list(map(_INT, primaries))
        else:
            keys = [t.int if t is not None else -1 for t in primaries]
        zombies = self._zombies_by_target
        booked: list[object] = [0] * len(oids)
        if zombies:
            booked = list(map(_POP, map(zombies.get, keys, repeat(_EMPTY)), oids, repeat(0)))
            count = booked.count(None)
            if count:
                self._zombie_count -= count
                _drop_empty(zombies, keys)
            if simple and count == len(oids):
                return ops
        unbooked = list(map(is_not, booked, repeat(None)))
        if simple:
            self._unlist(list(compress(keys, unbooked)), list(compress(oids, unbooked)))
        else:
            listed: list[tuple[int, int]] = []
            for oid, key, free, ts in zip(oids, keys, unbooked, targets, strict=True):
                listed += [(tid, oid) for tid in map(_INT, ts) if free or tid != key]
            self._unlist([t for t, _ in listed], [o for _, o in listed])
        return ops

    def _unlist(self, tids: list[int], oids: list[int]) -> None:
        """Take each `oids[i]` out of the target index of `tids[i]`."""
        by_target = self._by_target
        _drain(map(dict.pop, map(by_target.get, tids, repeat(_EMPTY)), oids, repeat(None)))
        _drop_empty(by_target, tids)

    def operations_for_target(self, target_id: UUID) -> list[Record]:
        ops = self._ops
        tid = target_id.int
        found = [ops[i] for i in self._by_target.get(tid, ())]
        zombies = self._zombies_by_target.get(tid)
        if zombies:
            found += [ops[i] for i in zombies]
        return found

    def operations_with_status(self, status: OperationStatus) -> list[Record]:
        ops = self._ops
        if status in _TERMINAL:
            return [ops[i] for i in self._by_status[status]]
        return [op for op in (ops[i] for i in self._inflight) if op.status is status]

    def zombies(self, target_id: UUID | None = None) -> list[Record]:
        ops = self._ops
        if target_id is not None:
            return [ops[i] for i in self._zombies_by_target.get(target_id.int, ())]
        return [ops[i] for bucket in self._zombies_by_target.values() for i in bucket]

    def zombie_counts_by_target(self) -> dict[UUID, int]:
        return {UUID(int=t): len(b) for t, b in self._zombies_by_target.items() if t >= 0}

    def top_zombie_targets(self, n: int) -> tuple[dict[UUID, int], int]:
        """The `n` targets with the most zombies, and how many targets have any."""
        buckets = self._zombies_by_target
        top = heapq.nlargest(n, ((len(b), t) for t, b in buckets.items() if t >= 0 and b))
        return {UUID(int=t): c for c, t in top}, len(buckets) - (-1 in buckets)

    def oldest_zombies(self) -> list[Record]:
        """The oldest zombie of each target (the overall oldest is among them)."""
        ops = self._ops
        return [ops[next(iter(b))] for b in self._zombies_by_target.values() if b]

    def operation_count(self) -> int:
        return len(self._ops)

    # due-time schedule --------------------------------------------------------------------------
    # Removals are filed in one bucket per second of due time, with a heap of those seconds:
    # records fall due in bursts (a retention after a burst of rejections), so a sweep takes a
    # bucket with a few passes in C instead of a heap pop per record, and a bucket is examined
    # only once it is due. A bucket holds ids only; a record's one current due time is the value
    # of its entry in the status index, which a removal takes out anyway, so an entry whose record
    # left, or was rescheduled into another second, is stale and dropped when its bucket comes up.
    def _push_due(self, op: Record, oid: int, due: float) -> None:
        index = self._status_index[op.status]
        if index.get(oid) is None:
            self._scheduled += 1
        index[oid] = due
        second = math.floor(due)
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = [oid]
            heapq.heappush(self._seconds, second)
        else:
            bucket.append(oid)
        self._filed += 1

    def _live(self, second: int, bucket: list[int]) -> tuple[list[int], list[float]]:
        """The entries of `bucket` still filed under `second`, once each, and their due times."""
        entries = list(dict.fromkeys(bucket))
        ops = self._ops
        found = list(map(ops.get, entries))
        if all(map(is_not, found, repeat(None))):
            records = cast("list[Record]", found)
            indexes = map(self._status_index.__getitem__, map(_STATUS, records))
            times = list(map(_GET, indexes, entries))
        else:
            index_of = self._status_index
            times = [
                None if op is None else index_of[op.status].get(oid)
                for oid, op in zip(entries, found, strict=True)
            ]
        if None in times or min(times) < second or max(times) >= second + 1:
            kept = [(oid, t) for oid, t in zip(entries, times, strict=True) if _within(t, second)]
            return [oid for oid, _ in kept], [t for _, t in kept]
        return entries, cast("list[float]", times)

    def _maybe_compact(self) -> None:
        if self._filed > 1024 and self._filed > 2 * self._scheduled:
            filed = 0
            for second in list(self._buckets):
                live, _ = self._live(second, self._buckets[second])
                if live:
                    self._buckets[second] = live
                    filed += len(live)
                else:
                    del self._buckets[second]
            self._seconds = list(self._buckets)
            heapq.heapify(self._seconds)
            self._filed = filed

    def schedule(self, op_id: UUID, due: float) -> None:
        oid = op_id.int
        op = self._ops.get(oid)
        if op is not None:
            self._push_due(op, oid, due)

    def pop_due(self, now: float, limit: int) -> list[UUID]:
        oids, ops = self._take(now, limit)
        index = self._status_index
        for oid, op in zip(oids, ops, strict=True):
            self._ops[oid] = op
            index[op.status][oid] = None
        return [op.ecs_id for op in ops]

    def take_due(self, now: float, limit: int) -> list[Record]:
        return self._unindex_taken(*self._take(now, limit))

    def _take(self, now: float, limit: int) -> tuple[list[int], list[Record]]:
        """Take up to `limit` records due by `now` out of the registry and their status index.

        The record and its due time come out in one pass each over a bucket; the rare entries
        that must stay (not due yet, no longer scheduled) are put back.
        """
        seconds, buckets, ops, index_of = (
            self._seconds,
            self._buckets,
            self._ops,
            self._status_index,
        )
        out: list[int] = []
        taken: list[Record] = []
        while seconds and seconds[0] <= now and len(out) < limit:
            second = seconds[0]
            bucket = buckets[second]
            room = limit - len(out)
            take = bucket if len(bucket) <= room else bucket[:room]
            found = list(map(ops.pop, take, repeat(None)))
            present = all(map(is_not, found, repeat(None)))
            if present:
                records = cast("list[Record]", found)
                indexes = list(map(index_of.__getitem__, map(_STATUS, records)))
                times = list(map(_POP, indexes, take, repeat(None)))
            else:
                indexes = [_EMPTY if op is None else index_of[op.status] for op in found]
                times = list(map(_POP, indexes, take, repeat(None)))
            later: list[int] = []
            before = len(out)
            if present and None not in times and max(times) <= now:
                out += take
                taken += records
            else:
                for oid, op, index, t in zip(take, found, indexes, times, strict=True):
                    if op is None:
                        continue
                    if t is not None and t <= now:
                        out.append(oid)
                        taken.append(op)
                        continue
                    ops[oid] = op
                    index[oid] = t
                    if t is not None and math.floor(t) == second:
                        later.append(oid)
            self._scheduled -= len(out) - before
            self._filed -= len(take) - len(later)
            rest = bucket[len(take) :] + later
            if rest:
                buckets[second] = rest
                if later and len(rest) == len(later):
                    break
            else:
                del buckets[second]
                heapq.heappop(seconds)
        return out, taken

    def next_due(self) -> float | None:
        seconds, buckets = self._seconds, self._buckets
        while seconds:
            second = seconds[0]
            bucket = buckets[second]
            live, times = self._live(second, bucket)
            self._filed -= len(bucket) - len(live)
            if live:
                buckets[second] = live
                return min(times)
            del buckets[second]
            heapq.heappop(seconds)
        return None

    def scheduled_count(self) -> int:
        return self._scheduled

    # ordered reads (the console's paged zombie browser) ------------------------------------------
    def zombie_keys(
        self, status: OperationStatus | None = None, target_id: UUID | None = None
    ) -> list[KeysView[int]]:
        """Live views of the zombie indexes, each in completion order (oldest first), for paging
        without copying: the zombies of `target_id` (primary target), else those of `status`,
        else one view per zombie status. Keys are ``uuid.int`` (read with `operation_at`); a
        view must not be iterated across an ``await``."""
        if target_id is not None:
            return [self._zombies_by_target.get(target_id.int, _EMPTY).keys()]
        statuses = [status] if status is not None else [s for s in _TERMINAL if s is not _SUCCEEDED]
        return [self._by_status[s].keys() for s in sorted(statuses)]

    def operation_at(self, key: int) -> Record | None:
        """The record whose id's ``uuid.int`` is `key`, if registered."""
        return self._ops.get(key)


class MemoryBackend:
    """The embedded backend: a `MemoryStore` behind the `Backend` coroutines, and a
    `LocalCoordinator` for staging.

    Records of staged calls stay with the coordinator until they end or something looks at
    them: a query that meets them has the store adopt them first, so from then on they are
    indexed like any other. Subclass it to observe calls: the runtime then calls these
    coroutines instead of the store (see `Runtime.store`).
    """

    name = "memory"

    def __init__(self) -> None:
        self.store = MemoryStore()
        self._coordinator = LocalCoordinator()

    def __repr__(self) -> str:
        return f"MemoryBackend({self.store.operation_count()} records)"

    @property
    def coordinator(self) -> LocalCoordinator:
        return self._coordinator

    @property
    def zombie_count(self) -> int:
        return self.store.zombie_count

    def attach(self, hooks: Hooks) -> None:
        """The runtime's window observer hears of every contested window."""
        observe = hooks.observe_window

        def on_window(winner: Record, entries: list[Staged], carried: Sequence[Record]) -> None:
            observe(
                winner, len(entries), partial(_rejected_ids, winner, entries, carried), len(carried)
            )

        self._coordinator.on_window = on_window

    def reset(self) -> None:
        """The runtime moved to a new event loop: staging of the old one is dropped."""
        self._coordinator.reset()

    # entities -------------------------------------------------------------------------------------
    async def ensure_entity(self, entity: Entity) -> Entity:
        return self.store.ensure_entity(entity)

    async def get_entity(self, entity_id: UUID, kind: type[Entity] | None = None) -> Entity | None:
        return self.store.get_entity(entity_id)

    def entity_count(self) -> int:
        """Entities registered and still alive."""
        return self.store.entity_count()

    def forget_entity(self, entity_id: UUID) -> bool:
        return self.store.forget_entity(entity_id)

    async def commit(self, writes: Sequence[Write], now: datetime) -> VersionConflict | None:
        return self.store.commit(writes, now)

    async def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        self.store.bump(entities, now)

    # operation records ----------------------------------------------------------------------------
    async def add_operation(self, op: Record) -> None:
        self.store.add_operation(op)

    def set_status(self, op: Record, status: OperationStatus, at: datetime | None = None) -> None:
        self.store.set_status(op, status, at or utcnow())

    async def get_operation(self, op_id: UUID) -> Record | None:
        found = self.store.get_operation(op_id)
        if found is None:
            found = self._coordinator.find(op_id)
            if found is not None:
                self.store.adopt((found,))
        return found

    async def discard(self, op: Record) -> None:
        self.store.discard(op)

    async def add_zombie(self, op: Record, due: float | None, cap: int) -> list[Record]:
        return self.store.add_zombie(op, due, cap)

    async def remove(self, op_id: UUID) -> Record | None:
        return self.store.remove(op_id)

    async def operations_for_target(self, target_id: UUID) -> list[Record]:
        staged = self._coordinator.records_for(target_id)
        if staged:
            self.store.adopt(staged)
        return self.store.operations_for_target(target_id)

    async def operations_with_status(self, status: OperationStatus) -> list[Record]:
        if status not in _TERMINAL:
            self.store.adopt(self._coordinator.records_in_flight())
        return self.store.operations_with_status(status)

    async def zombies(self, target_id: UUID | None = None) -> list[Record]:
        return self.store.zombies(target_id)

    async def zombie_counts_by_target(self) -> dict[UUID, int]:
        return self.store.zombie_counts_by_target()

    def top_zombie_targets(self, n: int) -> tuple[dict[UUID, int], int]:
        """The `n` targets with the most zombies, and how many targets have any."""
        return self.store.top_zombie_targets(n)

    async def oldest_zombies(self) -> list[Record]:
        return self.store.oldest_zombies()

    def operation_count(self) -> int:
        """Records in the store (not counting calls staged or running)."""
        return self.store.operation_count()

    # deferred removal -----------------------------------------------------------------------------
    async def schedule(self, op_id: UUID, due: float) -> None:
        self.store.schedule(op_id, due)

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        return self.store.pop_due(now, limit)

    async def take_due(self, now: float, limit: int) -> list[Record]:
        return self.store.take_due(now, limit)

    async def next_due(self) -> float | None:
        return self.store.next_due()

    def scheduled_count(self) -> int:
        return self.store.scheduled_count()

    async def close(self) -> None:
        return None

    # ordered reads (the console's paged zombie browser) -------------------------------------------
    def zombie_keys(
        self, status: OperationStatus | None = None, target_id: UUID | None = None
    ) -> list[KeysView[int]]:
        """See `MemoryStore.zombie_keys`."""
        return self.store.zombie_keys(status, target_id)

    def operation_at(self, key: int) -> Record | None:
        """The record whose id's ``uuid.int`` is `key`, if in the store."""
        return self.store.operation_at(key)


def _rejected_ids(
    winner: Record, entries: list[Staged], carried: Sequence[Record]
) -> Iterator[UUID]:
    """The ids of a window's rejected calls (read only when a conflict event is wanted)."""
    waiting = {id(c) for c in carried}
    for e in entries:
        record = e[0]
        if record is not winner and id(record) not in waiting:
            yield record.ecs_id


def _drain(it: Iterator[object]) -> None:
    deque(it, maxlen=0)


def _drop_empty(index: dict[int, dict[int, None]], keys: list[int]) -> None:
    """Delete the buckets of `keys` that a batch removal left empty."""
    for key in set(keys):
        if not index.get(key, True):
            del index[key]


def _within(due: float | None, second: int) -> bool:
    return due is not None and second <= due < second + 1


def _tkey(op: Record) -> int:
    """Zombie bucket key: the primary target, or -1 for calls without one."""
    t = op.target_entity_id
    return t.int if t is not None else -1
