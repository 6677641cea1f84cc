"""Records of dead workers: found by their passed in-flight deadline, ended by a live worker.

Every staged record sits in ``inflight`` scored by its deadline, which its worker renews with its
leases. Staging scripts and sweeps claim up to 16 records whose deadline passed (re-scored, so a
reaper that dies loses nothing); the claiming worker ends each through its own cleanup:
EXECUTING becomes FAILED, PENDING becomes CANCELLED, and any write of it still on its way to Redis
is voided first (it can no longer apply), so "failed" is true.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from contend.backends.redis.errors import RedisDataError, RedisUnavailableError
from contend.enums import OperationStatus

if TYPE_CHECKING:
    from contend.backends.redis.connection import Connection
    from contend.backends.redis.leases import Calls
    from contend.backends.redis.records import Records
    from contend.record import Record

__all__ = ["Orphans"]

log = logging.getLogger("contend.backends.redis")

_TERMINAL_FOR = {
    OperationStatus.PENDING: OperationStatus.CANCELLED,
    OperationStatus.EXECUTING: OperationStatus.FAILED,
}


class Orphans:
    """Reaping: claims come from staging replies and sweeps; this ends what was claimed."""

    def __init__(
        self, conn: Connection, calls: Calls, records: Records, *, lease_ms: int, out_ttl_ms: int
    ) -> None:
        self.conn = conn
        self.calls = calls
        self.records = records
        self.lease_ms = lease_ms
        self.out_ttl_ms = out_ttl_ms
        self.bury: Callable[[Record, OperationStatus, str], Awaitable[object]] | None = None
        """Ends a claimed record through the runtime's cleanup (see `Hooks.bury`)."""
        self.reaped = 0

    def claimed(self, bucket: int, ids: list[str]) -> None:
        """Staging replies carry claims: end them on the side, off the caller's path."""
        self.conn.spawn(self.reap(bucket, ids))

    async def reap_now(self) -> int:
        """Claim and end orphans now, in every bucket (a sweep does this: an orphan on a target
        nobody calls again still ends terminal)."""
        jobs = [(b, [self.lease_ms, self.out_ttl_ms]) for b in self.conn.keys.all()]
        replies = await self.conn.run_all("REAP", jobs)
        n = 0
        for (bucket, _), raw in zip(jobs, replies, strict=True):
            claimed = list(json.loads(raw).get("c") or ())
            if claimed:
                n += len(claimed)
                await self.reap(bucket, claimed)
        return n

    async def reap(self, bucket: int, ids: list[str]) -> None:
        bury = self.bury
        for oid in ids:
            if oid in self.calls.inflight:
                continue  # ours, alive: its deadline is renewed by the next renewal
            try:
                op = await self.records.get_operation(uuid.UUID(oid), bucket)
                if op is None or op.is_terminal or bury is None:
                    args = [self.lease_ms, self.out_ttl_ms, oid, "", ""]
                    await self.conn.run("DISCARD", bucket, *args)
                    continue
                status = _TERMINAL_FOR[op.status]
                call = self.calls.begin(op)
                call.key = None if op.target_entity_id is None else str(op.target_entity_id)
                call.unsettled = status is OperationStatus.FAILED
                log.warning(
                    "operation %s on target %s was orphaned (its worker stopped renewing its "
                    "lease); marking it %s",
                    oid,
                    op.target_entity_id,
                    status.value,
                )
                self.reaped += 1
                await bury(
                    op,
                    status,
                    f"orphaned: its worker stopped renewing its lease ({self.lease_ms} ms); "
                    "nothing it was writing was applied",
                )
            except (RedisUnavailableError, RedisDataError) as exc:
                log.debug("could not end orphaned operation %s: %s", oid, exc)
            except Exception:
                log.exception("could not end orphaned operation %s", oid)
