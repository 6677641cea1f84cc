"""The embedded default: everything in this process's memory, every lookup O(1) or O(result).

Indexes are keyed by ``uuid.int``: hashing a UUID runs Python code, hashing an int does not, and a
call touches these dicts a dozen times.
"""

from __future__ import annotations

import heapq
import math
import weakref
from collections import deque
from collections.abc import Callable, Iterator, KeysView, Sequence
from datetime import datetime
from itertools import compress, repeat
from operator import attrgetter, is_not, itemgetter
from typing import Any, cast
from uuid import UUID

from contend.backends.base import VersionConflict, Write
from contend.entity import Entity
from contend.operations import TERMINAL_STATUSES, ConflictResolutionOperation, OperationStatus
from contend.staging import LocalCoordinator

__all__ = ["MemoryBackend"]

_TERMINAL = TERMINAL_STATUSES
_SUCCEEDED = OperationStatus.SUCCEEDED
_EMPTY: dict[int, Any] = {}
"""What a missing index bucket reads as; only ever popped with a default, never written."""
_DICT = attrgetter("__dict__")
_INT = attrgetter("int")
_TARGETS = itemgetter("target_entity_ids")
_TARGET = itemgetter("target_entity_id")
_STATUS = itemgetter("status")
_FIRST = itemgetter(0)
_POP = cast("Callable[[dict[int, Any], int, object], Any]", dict.pop)
_GET = cast("Callable[[dict[int, Any], int], Any]", dict.get)
_ABSENT: Any = object()
_NO_REF: Any = type(None)
"""Called like a dead weak reference: returns None."""


class MemoryBackend:
    """Entities and operation records in dicts, zombie removals on a due-time heap.

    Records in flight (pending, executing) share one index, so starting a call touches no status
    index; a status query for them is O(calls in flight), for terminal statuses O(result). A
    record's entry in its status index holds its due time while it is scheduled for removal.
    A booked zombie is indexed under its primary target in the zombie index only, not also in the
    target index: removing it (a sweep removes thousands) then walks one per-target index, not two.
    """

    name = "memory"
    removes_unbooked = True
    """An immediate removal may skip the zombie books: nothing else runs in between."""

    def __init__(self) -> None:
        self._coordinator = LocalCoordinator()
        self._entities: dict[int, weakref.KeyedRef[int, Entity]] = {}
        """Committed entities by id, held weakly: see `ensure_entity_now`."""
        entities = self._entities

        def forget(ref: weakref.KeyedRef[int, Entity]) -> None:
            if entities.get(ref.key) is ref:
                del entities[ref.key]

        self._forget = forget
        self._ops: dict[int, ConflictResolutionOperation] = {}
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
    def coordinator(self) -> LocalCoordinator:
        return self._coordinator

    @property
    def zombie_count(self) -> int:
        return self._zombie_count

    # entities ---------------------------------------------------------------------------------
    async def ensure_entity(self, entity: Entity) -> Entity:
        return self.ensure_entity_now(entity)

    def ensure_entity_now(self, entity: Entity) -> Entity:
        """`ensure_entity` without a coroutine, for the decorator's hot path.

        The registry holds an entity weakly: no longer than the application does, or a call
        in flight on it (its frame holds it). Memory is the only place an in-memory entity's
        committed state lives, so once nothing else holds the object nothing can read it
        either; keeping it would only grow the registry by every entity ever passed.
        """
        key = entity.ecs_id.int
        found: Entity | None = self._entities.get(key, _NO_REF)()
        if found is not None:
            return found
        self._entities[key] = weakref.KeyedRef(entity, self._forget, key)
        return entity

    async def get_entity(self, entity_id: UUID, kind: type[Entity] | None = None) -> Entity | None:
        ref = self._entities.get(entity_id.int)
        return ref() if ref is not None else None

    def entity_count(self) -> int:
        """Entities registered and still alive."""
        return len(self._entities)

    def forget_entity(self, entity_id: UUID) -> bool:
        return self._entities.pop(entity_id.int, None) is not None

    async def commit(self, writes: Sequence[Write], now: datetime) -> VersionConflict | None:
        for w in writes:
            if w.committed.version != w.expected:
                return VersionConflict(w.committed.ecs_id, w.expected, w.committed.version)
        for w in writes:
            d = w.committed.__dict__
            d.update(w.state.__dict__)
            d["version"] = w.expected + 1
            d["last_modified"] = now
        return None

    async def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        self.bump_now(entities, now)

    def bump_now(self, entities: Sequence[Entity], now: datetime) -> None:
        for e in entities:
            d = e.__dict__
            d["version"] += 1
            d["last_modified"] = now

    # operation records ------------------------------------------------------------------------
    async def add_operation(self, op: ConflictResolutionOperation) -> None:
        self.add_operation_now(op)

    def add_operation_now(self, op: ConflictResolutionOperation) -> None:
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

    def set_status(
        self, op: ConflictResolutionOperation, status: OperationStatus, at: datetime | None = None
    ) -> None:
        op.transition(status, at)
        if status in _TERMINAL:
            oid = op.ecs_id.int
            due = self._inflight.pop(oid, _ABSENT)
            if due is not _ABSENT:
                self._by_status[status][oid] = due

    def end_unbooked(
        self, op: ConflictResolutionOperation, status: OperationStatus, at: datetime
    ) -> bool:
        """Give an in-flight record its terminal status and drop it from every index in one step.

        For records that leave the moment they end (succeeded, or IMMEDIATE cleanup): nothing
        runs in between, so the status index and zombie books are skipped. False if the record
        was not in the registry.
        """
        return bool(self.end_all_unbooked((op,), status, at))

    def end_all_unbooked(
        self, ops: Sequence[ConflictResolutionOperation], status: OperationStatus, at: datetime
    ) -> list[ConflictResolutionOperation]:
        """`end_unbooked` for a batch (a staging window's losers); returns the records that
        were registered, so removed."""
        registry = self._ops
        inflight = self._inflight
        by_target = self._by_target
        removed = []
        unscheduled = 0
        for op in ops:
            op.transition(status, at)
            d = op.__dict__
            oid = d["ecs_id"].int
            if registry.pop(oid, None) is None:
                continue
            removed.append(op)
            if inflight.pop(oid, None) is not None:
                unscheduled += 1
            for t in d["target_entity_ids"]:
                tid = t.int
                bucket = by_target.get(tid)
                if bucket is not None:
                    bucket.pop(oid, None)
                    if not bucket:
                        del by_target[tid]
        if unscheduled:
            self._scheduled -= unscheduled
            self._maybe_compact()
        return removed

    async def get_operation(self, op_id: UUID) -> ConflictResolutionOperation | None:
        return self._ops.get(op_id.int)

    async def discard(self, op: ConflictResolutionOperation) -> None:
        self._unindex(op.ecs_id.int)

    async def add_zombie(
        self, op: ConflictResolutionOperation, due: float | None, cap: int
    ) -> list[ConflictResolutionOperation]:
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
        evicted: list[ConflictResolutionOperation] = []
        while len(bucket) > cap:
            gone = self._unindex(next(iter(bucket)))
            if gone is not None:
                evicted.append(gone)
        return evicted

    async def remove(self, op_id: UUID) -> ConflictResolutionOperation | None:
        return self._unindex(op_id.int)

    def _unindex(self, oid: int) -> ConflictResolutionOperation | None:
        """Take a record out of every index."""
        op = self._ops.pop(oid, None)
        if op is None:
            return None
        d = op.__dict__
        status = d["status"]
        due = self._status_index[status].pop(oid, None)
        booked = None
        zombies = self._zombies_by_target
        if zombies and status is not _SUCCEEDED:
            target = d["target_entity_id"]
            tkey = target.int if target is not None else -1
            zb = zombies.get(tkey)
            if zb is not None and zb.pop(oid, 0) is None:
                booked = tkey
                self._zombie_count -= 1
                if not zb:
                    del zombies[tkey]
        by_target = self._by_target
        for t in d["target_entity_ids"]:
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

    def _unindex_taken(
        self, oids: list[int], ops: list[ConflictResolutionOperation]
    ) -> list[ConflictResolutionOperation]:
        """`_unindex` for the rest of a batch `_take` took out of the registry and status index.

        A sweep removes thousands of records; walking each index once for the whole batch, with
        no Python-level step per record, is what keeps it a few milliseconds.
        """
        if not ops:
            return ops
        dicts = list(map(_DICT, ops))
        targets = list(map(_TARGETS, dicts))
        primaries = list(map(_TARGET, dicts))
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

    async def operations_for_target(self, target_id: UUID) -> list[ConflictResolutionOperation]:
        ops = self._ops
        tid = target_id.int
        found = [ops[i] for i in self._by_target.get(tid, ())]
        zombies = self._zombies_by_target.get(tid)
        if zombies:
            found += [ops[i] for i in zombies]
        return found

    async def operations_with_status(
        self, status: OperationStatus
    ) -> list[ConflictResolutionOperation]:
        ops = self._ops
        if status in _TERMINAL:
            return [ops[i] for i in self._by_status[status]]
        return [op for op in (ops[i] for i in self._inflight) if op.status is status]

    async def zombies(self, target_id: UUID | None = None) -> list[ConflictResolutionOperation]:
        ops = self._ops
        if target_id is not None:
            return [ops[i] for i in self._zombies_by_target.get(target_id.int, ())]
        return [ops[i] for bucket in self._zombies_by_target.values() for i in bucket]

    async def zombie_counts_by_target(self) -> dict[UUID, int]:
        return {UUID(int=t): len(b) for t, b in self._zombies_by_target.items() if t >= 0}

    def top_zombie_targets(self, n: int) -> tuple[dict[UUID, int], int]:
        """The `n` targets with the most zombies, and how many targets have any."""
        buckets = self._zombies_by_target
        top = heapq.nlargest(n, ((len(b), t) for t, b in buckets.items() if t >= 0 and b))
        return {UUID(int=t): c for c, t in top}, len(buckets) - (-1 in buckets)

    async def oldest_zombies(self) -> list[ConflictResolutionOperation]:
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
    def _push_due(self, op: ConflictResolutionOperation, oid: int, due: float) -> None:
        index = self._status_index[op.__dict__["status"]]
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
            records = cast("list[ConflictResolutionOperation]", found)
            indexes = map(self._status_index.__getitem__, map(_STATUS, map(_DICT, records)))
            times = list(map(_GET, indexes, entries))
        else:
            index_of = self._status_index
            times = [
                None if op is None else index_of[op.__dict__["status"]].get(oid)
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

    async def schedule(self, op_id: UUID, due: float) -> None:
        oid = op_id.int
        op = self._ops.get(oid)
        if op is not None:
            self._push_due(op, oid, due)

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        oids, ops = self._take(now, limit)
        index = self._status_index
        for oid, op in zip(oids, ops, strict=True):
            self._ops[oid] = op
            index[op.__dict__["status"]][oid] = None
        return [op.ecs_id for op in ops]

    async def take_due(self, now: float, limit: int) -> list[ConflictResolutionOperation]:
        return self._unindex_taken(*self._take(now, limit))

    def _take(self, now: float, limit: int) -> tuple[list[int], list[ConflictResolutionOperation]]:
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
        taken: list[ConflictResolutionOperation] = []
        while seconds and seconds[0] <= now and len(out) < limit:
            second = seconds[0]
            bucket = buckets[second]
            room = limit - len(out)
            take = bucket if len(bucket) <= room else bucket[:room]
            found = list(map(ops.pop, take, repeat(None)))
            present = all(map(is_not, found, repeat(None)))
            if present:
                records = cast("list[ConflictResolutionOperation]", found)
                indexes = list(map(index_of.__getitem__, map(_STATUS, map(_DICT, records))))
                times = list(map(_POP, indexes, take, repeat(None)))
            else:
                indexes = [
                    _EMPTY if op is None else index_of[op.__dict__["status"]] for op in found
                ]
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

    async def next_due(self) -> float | None:
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

    async def close(self) -> None:
        return None

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

    def operation_at(self, key: int) -> ConflictResolutionOperation | None:
        """The record whose id's ``uuid.int`` is `key`, if registered."""
        return self._ops.get(key)


def _drain(it: Iterator[object]) -> None:
    deque(it, maxlen=0)


def _drop_empty(index: dict[int, dict[int, None]], keys: list[int]) -> None:
    """Delete the buckets of `keys` that a batch removal left empty."""
    for key in set(keys):
        if not index.get(key, True):
            del index[key]


def _within(due: float | None, second: int) -> bool:
    return due is not None and second <= due < second + 1


def _tkey(op: ConflictResolutionOperation) -> int:
    """Zombie bucket key: the primary target, or -1 for calls without one."""
    t = op.target_entity_id
    return t.int if t is not None else -1
