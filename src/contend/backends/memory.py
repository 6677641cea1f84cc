"""The embedded default: everything in this process's memory, every lookup O(1) or O(result)."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from contend.backends.base import VersionConflict, Write
from contend.entity import Entity
from contend.operations import ConflictResolutionOperation, OperationStatus
from contend.staging import LocalCoordinator

__all__ = ["MemoryBackend"]

_ZOMBIE_STATUSES = frozenset(
    {OperationStatus.FAILED, OperationStatus.REJECTED, OperationStatus.CANCELLED}
)


class MemoryBackend:
    """Entities and operation records in dicts, zombie removals on a due-time heap."""

    name = "memory"

    def __init__(self) -> None:
        self.coordinator = LocalCoordinator()
        self._entities: dict[UUID, Entity] = {}
        self._ops: dict[UUID, ConflictResolutionOperation] = {}
        self._by_target: dict[UUID, dict[UUID, None]] = {}
        self._by_status: dict[OperationStatus, dict[UUID, None]] = {s: {} for s in OperationStatus}
        self._zombies_by_target: dict[UUID | None, dict[UUID, None]] = {}
        self._zombie_count = 0
        self._heap: list[tuple[float, int, UUID]] = []
        self._due: dict[UUID, float] = {}
        self._seq = itertools.count()

    @property
    def zombie_count(self) -> int:
        return self._zombie_count

    # entities ---------------------------------------------------------------------------------
    async def ensure_entity(self, entity: Entity) -> Entity:
        return self._entities.setdefault(entity.ecs_id, entity)

    async def get_entity(self, entity_id: UUID) -> Entity | None:
        return self._entities.get(entity_id)

    def entity_count(self) -> int:
        return len(self._entities)

    def forget_entity(self, entity_id: UUID) -> bool:
        return self._entities.pop(entity_id, None) is not None

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
        for e in entities:
            d = e.__dict__
            d["version"] += 1
            d["last_modified"] = now

    # operation records ------------------------------------------------------------------------
    async def add_operation(self, op: ConflictResolutionOperation) -> None:
        oid = op.ecs_id
        self._ops[oid] = op
        by_target = self._by_target
        for tid in op.target_entity_ids:
            bucket = by_target.get(tid)
            if bucket is None:
                by_target[tid] = {oid: None}
            else:
                bucket[oid] = None
        self._by_status[op.status][oid] = None

    def set_status(
        self, op: ConflictResolutionOperation, status: OperationStatus, at: datetime | None = None
    ) -> None:
        before = op.status
        op.transition(status, at)
        if op.ecs_id in self._ops:
            del self._by_status[before][op.ecs_id]
            self._by_status[status][op.ecs_id] = None

    async def get_operation(self, op_id: UUID) -> ConflictResolutionOperation | None:
        return self._ops.get(op_id)

    async def discard(self, op: ConflictResolutionOperation) -> None:
        self._unindex(op.ecs_id)

    async def add_zombie(
        self, op: ConflictResolutionOperation, due: float | None, cap: int
    ) -> list[ConflictResolutionOperation]:
        oid = op.ecs_id
        if oid not in self._ops:
            return []
        tid = op.target_entity_id
        bucket = self._zombies_by_target.get(tid)
        if bucket is None:
            bucket = self._zombies_by_target[tid] = {}
        bucket[oid] = None
        self._zombie_count += 1
        if due is not None:
            self._push_due(oid, due)
        evicted: list[ConflictResolutionOperation] = []
        while len(bucket) > cap:
            oldest = next(iter(bucket))
            gone = self._unindex(oldest)
            if gone is not None:
                evicted.append(gone)
        return evicted

    async def remove(self, op_id: UUID) -> ConflictResolutionOperation | None:
        return self._unindex(op_id)

    def _unindex(self, oid: UUID) -> ConflictResolutionOperation | None:
        op = self._ops.pop(oid, None)
        if op is None:
            return None
        for tid in op.target_entity_ids:
            bucket = self._by_target.get(tid)
            if bucket is not None:
                bucket.pop(oid, None)
                if not bucket:
                    del self._by_target[tid]
        self._by_status[op.status].pop(oid, None)
        tid0 = op.target_entity_id
        zb = self._zombies_by_target.get(tid0)
        if zb is not None and zb.pop(oid, 0) is None:
            self._zombie_count -= 1
            if not zb:
                del self._zombies_by_target[tid0]
        if self._due.pop(oid, None) is not None:
            self._maybe_compact()
        return op

    async def operations_for_target(self, target_id: UUID) -> list[ConflictResolutionOperation]:
        ops = self._ops
        return [ops[i] for i in self._by_target.get(target_id, ())]

    async def operations_with_status(
        self, status: OperationStatus
    ) -> list[ConflictResolutionOperation]:
        ops = self._ops
        return [ops[i] for i in self._by_status[status]]

    async def zombies(self, target_id: UUID | None = None) -> list[ConflictResolutionOperation]:
        ops = self._ops
        if target_id is not None:
            return [ops[i] for i in self._zombies_by_target.get(target_id, ())]
        return [ops[i] for bucket in self._zombies_by_target.values() for i in bucket]

    async def zombie_counts_by_target(self) -> dict[UUID, int]:
        return {t: len(b) for t, b in self._zombies_by_target.items() if t is not None}

    async def oldest_zombies(self) -> list[ConflictResolutionOperation]:
        """The oldest zombie of each target (the overall oldest is among them)."""
        ops = self._ops
        return [ops[next(iter(b))] for b in self._zombies_by_target.values() if b]

    def operation_count(self) -> int:
        return len(self._ops)

    # due-time schedule --------------------------------------------------------------------------
    def _push_due(self, oid: UUID, due: float) -> None:
        self._due[oid] = due
        heapq.heappush(self._heap, (due, next(self._seq), oid))

    def _maybe_compact(self) -> None:
        heap = self._heap
        if len(heap) > 1024 and len(heap) > 2 * len(self._due):
            due = self._due
            self._heap = [e for e in heap if due.get(e[2]) == e[0]]
            heapq.heapify(self._heap)

    async def schedule(self, op_id: UUID, due: float) -> None:
        if op_id in self._ops:
            self._push_due(op_id, due)

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        heap, due = self._heap, self._due
        out: list[UUID] = []
        while heap and heap[0][0] <= now and len(out) < limit:
            t, _, oid = heapq.heappop(heap)
            if due.get(oid) == t:
                del due[oid]
                out.append(oid)
        return out

    async def next_due(self) -> float | None:
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def scheduled_count(self) -> int:
        return len(self._due)

    async def close(self) -> None:
        return None
