"""The key layout of the Redis backend: keys hashed per target, in a fixed number of buckets.

Every key of a target (its entity, window, lease, the records staged on it, its zombie books)
lives in the target's **bucket**, and each bucket has its own copy of what used to be global
(submission counter, in-flight set, status sets, due set, zombie counts, heartbeats, the
sweeper lock). A bucket's keys share one Redis Cluster hash tag, ``{<prefix>:<bucket>}``, so
every script of a call touches one slot and independent targets spread over the shards.

- ``BUCKETS`` (256) is a constant of the deployment: every worker of a prefix must use the
  same count, or they would look for a target's keys in different places.
- A target's bucket is ``crc32(shard key) % BUCKETS``; the shard key is the target's id
  (``str(uuid)``) unless ``Keys.co_locate(entity_id, shard_key)`` gave it another one, so
  related entities can share a bucket (a call on several entities needs them in one bucket).
- ``Keys.bucket_of(shard_key)`` is the function the cluster plumbing uses to know which bucket
  (and so which slot: ``Keys.tag(bucket)``) a call needs; ``Keys.bucket_of_targets(ids)`` is
  the check a call makes: it raises `CrossBucketError` naming the targets when they fall in
  different buckets.
- Walks over every bucket (sweeps, health counts, the console's pages, orphan reaping) use
  ``Keys.all()``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from contend.errors import ContendError

if TYPE_CHECKING:
    from uuid import UUID

__all__ = ["BUCKETS", "CrossBucketError", "Keys"]

BUCKETS = 256
"""Buckets per prefix (a constant of the deployment: the same for every worker)."""


class CrossBucketError(ContendError, ValueError):
    """A call's targets fall in different buckets (so, on Redis Cluster, possibly different
    shards): one script cannot write them together. Give them a common shard key."""

    def __init__(self, buckets: dict[int, list[str]]) -> None:
        self.buckets = buckets
        named = "; ".join(f"bucket {b}: {', '.join(ids)}" for b, ids in sorted(buckets.items()))
        super().__init__(
            f"the call's targets fall in different key buckets ({named}); entities written "
            "together must share a shard key (see docs/redis.md, 'Key layout')"
        )


class Keys:
    """Where a prefix's keys live: a target's bucket, and a bucket's key prefix."""

    def __init__(self, prefix: str, buckets: int = BUCKETS) -> None:
        self.prefix = prefix
        self.buckets = buckets
        self._tags = [f"{{{prefix}:{b}}}:" for b in range(buckets)]
        self._shard_keys: dict[str, str] = {}
        self._of: dict[str, int] = {}

    def bucket_of(self, shard_key: str) -> int:
        """The bucket of a shard key (a target's id as text, unless co-located)."""
        return zlib.crc32(shard_key.encode()) % self.buckets

    def co_locate(self, entity_id: UUID | str, shard_key: str) -> None:
        """Put entity `entity_id` in the bucket of `shard_key` (every worker must say the same
        before its first use of the entity)."""
        eid = str(entity_id)
        self._shard_keys[eid] = shard_key
        self._of.pop(eid, None)

    def forget(self, entity_id: UUID | str) -> None:
        """Drop what `co_locate` said of entity `entity_id` (its instance is gone: a process
        keeps a shard key no longer than the entity it came from)."""
        eid = str(entity_id)
        self._shard_keys.pop(eid, None)
        self._of.pop(eid, None)

    def co_located(self) -> int:
        """How many entities this process has co-located and still remembers."""
        return len(self._shard_keys)

    def shard_key(self, entity_id: UUID | str) -> str | None:
        """The shard key `co_locate` gave entity `entity_id`, if any."""
        return self._shard_keys.get(str(entity_id))

    def of(self, target: UUID | str) -> int:
        """The bucket of a target (an entity id)."""
        tid = str(target)
        b = self._of.get(tid)
        if b is None:
            b = self.bucket_of(self._shard_keys.get(tid, tid))
            if len(self._of) > 100_000:
                self._of.clear()
            self._of[tid] = b
        return b

    def bucket_of_targets(self, targets: Iterable[UUID | str]) -> int:
        """The one bucket of a call's targets; `CrossBucketError` when they span several."""
        found: dict[int, list[str]] = {}
        for t in targets:
            found.setdefault(self.of(t), []).append(str(t))
        if len(found) > 1:
            raise CrossBucketError(found)
        return next(iter(found), 0)

    def tag(self, bucket: int) -> str:
        """The key prefix of a bucket, ``{<prefix>:<bucket>}:`` (the scripts' ``P``)."""
        return self._tags[bucket]

    def key(self, target: UUID | str, suffix: str) -> str:
        """A key of target `target`'s bucket: ``tag + suffix``."""
        return self._tags[self.of(target)] + suffix

    def all(self) -> range:
        """Every bucket, for walks (sweeps, counts, pages, reaping)."""
        return range(self.buckets)
