"""Redis backend: several worker processes share staging, OCC and cleanup through one Redis.

Select it in code, ``Runtime(backend=RedisBackend.from_url("redis://host:6379/0"))``, or with the
environment variable ``CONTEND_REDIS_URL`` and :func:`backend_from_env`. Entities and operation
records are stored as JSON (pydantic); function arguments and results never leave the process.
See docs/redis.md for guarantees, lease semantics, key layout and limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from contend.backends import redis_scripts as lua
from contend.backends.base import Lost, VersionConflict, Write
from contend.entity import Entity
from contend.errors import ConfigurationError, ContendError
from contend.operations import ConflictResolutionOperation, OperationStatus
from contend.staging import _loop_is_idle, _yield_once

if TYPE_CHECKING:
    from uuid import UUID

    from redis.commands.core import AsyncScript

    from contend.config import PreECSConfig
    from contend.runtime import Runtime

__all__ = ["ENV_VAR", "LeaseLostError", "RedisBackend", "RedisUnavailableError", "backend_from_env"]

log = logging.getLogger("contend.backends.redis")

ENV_VAR = "CONTEND_REDIS_URL"
_EXECUTING = OperationStatus.EXECUTING
_TERMINAL_FOR = {
    OperationStatus.PENDING: OperationStatus.CANCELLED,
    OperationStatus.EXECUTING: OperationStatus.FAILED,
}
_held: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "contend_redis_leases", default=()
)


class RedisUnavailableError(ContendError, ConnectionError):
    """Redis could not be reached (or did not answer within the socket timeout)."""


class LeaseLostError(ContendError, RuntimeError):
    """A winner's lease on its target expired before it wrote; its write was refused."""


class _Batch:
    """Calls of this process for one target submitted in the same event-loop tick."""

    __slots__ = ("cancelled", "config", "ops", "task")

    def __init__(self, config: PreECSConfig) -> None:
        self.config = config
        self.ops: list[ConflictResolutionOperation] = []
        self.cancelled: set[str] = set()
        self.task: asyncio.Task[dict[str, str]] | None = None


def _check(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigurationError(field, f"must be between {low} and {high}, got {value}")


class RedisBackend:
    """Backend and staging coordinator on Redis (redis.asyncio with hiredis).

    Each step of a call is one Lua script (one round trip): joining a staging window, resolving
    it, an OCC compare-and-set over all targets, and ending a record (release + discard, or
    release + zombie booking with the per-target cap trimmed in the same script).
    """

    name = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "contend",
        lease_ms: int = 10_000,
        min_window_ms: int = 2,
        sweeper_lock_ms: int = 30_000,
        backstop_seconds: float = 3600.0,
        description: str = "redis",
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ConfigurationError("prefix", f"must be non-empty without braces, got {prefix!r}")
        _check("lease_ms", lease_ms, 100, 3_600_000)
        _check("min_window_ms", min_window_ms, 0, 1000)
        _check("sweeper_lock_ms", sweeper_lock_ms, 1000, 3_600_000)
        _check("backstop_seconds", backstop_seconds, 0, 30 * 86400)
        self.client = client
        self.prefix = prefix
        self.lease_ms = int(lease_ms)
        self.min_window_ms = int(min_window_ms)
        self.sweeper_lock_ms = int(sweeper_lock_ms)
        self.backstop_seconds = float(backstop_seconds)
        self.description = description
        self.owner = uuid.uuid4().hex
        self.coordinator = self
        self.on_window: Any = None
        self._p = f"{{{prefix}}}:"
        self._route = f"{self._p}seq"
        self._out_ttl = max(60_000, 2 * self.lease_ms)
        self._rt: Runtime | None = None
        self._zombie_count = 0
        self._zombie_count_seq = 0
        self._entities: dict[UUID, Entity] = {}
        self._loading: dict[UUID, asyncio.Future[Entity]] = {}
        self._local: dict[UUID, ConflictResolutionOperation] = {}
        self._written: set[UUID] = set()
        self._buried: dict[UUID, str] = {}
        self._releases: dict[UUID, str] = {}
        self._batches: dict[str, _Batch] = {}
        self._inflight: dict[str, str] = {}
        self._leases: dict[str, str] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribing: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._flush_scheduled = False
        self._scripts: dict[str, AsyncScript] = {}
        self._load_scripts()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "contend",
        lease_ms: int = 10_000,
        min_window_ms: int = 2,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_connections: int | None = None,
        **kwargs: Any,
    ) -> RedisBackend:
        """Connect by URL: ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS."""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError(
                "url", f"must start with redis://, rediss:// or unix://, got {url[:16]!r}"
            )
        _check("socket_timeout", socket_timeout, 0.01, 600)
        _check("connect_timeout", connect_timeout, 0.01, 600)
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 1),
            max_connections=max_connections,
        )
        kw = client.connection_pool.connection_kwargs
        where = f"{url.split('://', 1)[0]}://{kw.get('host', '?')}:{kw.get('port', '?')}"
        where += f"/{kw.get('db', 0)}"
        return cls(
            client,
            prefix=prefix,
            lease_ms=lease_ms,
            min_window_ms=min_window_ms,
            description=where,
            **kwargs,
        )

    def attach(self, runtime: Runtime) -> None:
        """Called by the runtime: its clock dates records, its cleanup buries orphans."""
        self._rt = runtime

    def __repr__(self) -> str:
        return f"RedisBackend({self.description}, prefix={self.prefix!r})"

    # plumbing -----------------------------------------------------------------------------------
    def _load_scripts(self) -> None:
        names = (
            "ENSURE COMMIT BUMP JOIN RESOLVE DISCARD ADD_ZOMBIE SCHEDULE REMOVE POP_DUE READ_SET "
            "ZOMBIES_ALL OLDEST RENEW REAP"
        )
        self._scripts = {n: self.client.register_script(getattr(lua, n)) for n in names.split()}

    async def _run(self, name: str, *args: Any) -> Any:
        try:
            return await self._scripts[name](keys=[self._route], args=[self._p, *args])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> RedisUnavailableError:
        return RedisUnavailableError(
            f"Redis backend at {self.description} is unavailable "
            f"({type(exc).__name__}: {exc}); the call could not be completed"
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _now(self) -> datetime:
        if self._rt is not None:
            return self._rt.clock.now()
        from contend.clock import utcnow

        return utcnow()

    def reset(self) -> None:
        """The runtime moved to a new event loop: drop state and connections of the old one."""
        self._batches.clear()
        self._waiters.clear()
        self._listener = self._renewer = self._subscribing = None
        self._pubsub = None
        self._background.clear()
        self._flush_scheduled = False
        pool: Any = self.client.connection_pool
        pool.reset()

    # entities ------------------------------------------------------------------------------------
    @property
    def zombie_count(self) -> int:
        """The global zombie count as of this process's last script reply."""
        return self._zombie_count

    async def ensure_entity(self, entity: Entity) -> Entity:
        """First use in this process loads Redis's state into the caller's instance.

        Later calls reuse that instance without a round trip; staging refreshes it when the call
        wins and an OCC conflict refreshes it before the retry, so a stale copy costs at most one
        retry, never a lost update.
        """
        known = self._entities.get(entity.ecs_id)
        if known is not None:
            return known
        loading = self._loading.get(entity.ecs_id)
        if loading is not None:
            # Calls gathered together on a new entity share one load and resume in the same
            # tick, so they still stage together in one window.
            return await asyncio.shield(loading)
        fut: asyncio.Future[Entity] = asyncio.get_running_loop().create_future()
        self._loading[entity.ecs_id] = fut
        try:
            sent = entity.model_dump_json()
            _, stored = await self._run("ENSURE", str(entity.ecs_id), entity.version, sent)
            if stored != sent:
                _load_into(entity, stored)
            known = self._entities.setdefault(entity.ecs_id, entity)
            fut.set_result(known)
            return known
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()
            raise
        finally:
            self._loading.pop(entity.ecs_id, None)

    async def get_entity(self, entity_id: UUID, kind: type[Entity] | None = None) -> Entity | None:
        """Redis's state of the entity, loaded into this process's instance.

        An entity this process has not seen is loaded into `kind`, which becomes this process's
        instance; without `kind`, a plain `Entity` with the fields every entity has is returned
        (Redis stores state, not classes) and nothing is registered.
        """
        try:
            d = await self.client.hget(f"{self._p}e:{entity_id}", "d")
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if d is None:
            return None
        known = self._entities.get(entity_id)
        if known is not None:
            _load_into(known, str(d))
            return known
        if kind is None:
            state = json.loads(str(d))
            return Entity.model_validate({k: state[k] for k in Entity.model_fields if k in state})
        return self._entities.setdefault(entity_id, kind.model_validate_json(str(d)))

    def _fences(self, entities: Sequence[Entity]) -> list[str]:
        ids = {str(e.ecs_id) for e in entities}
        pairs = [p for p in _held.get() if p[0] in ids]
        out = [str(len(pairs))]
        for tid, op in pairs:
            out += [tid, op]
        return out

    async def commit(self, writes: Sequence[Write], now: datetime) -> VersionConflict | None:
        """One Lua compare-and-set over every target (and the lease, for a staged winner)."""
        args: list[Any] = [len(writes)]
        for w in writes:
            d = w.state.__dict__
            d["version"] = w.expected + 1
            d["last_modified"] = now
            args += [str(w.committed.ecs_id), w.expected, w.state.model_dump_json()]
        args += self._fences([w.committed for w in writes])
        reply = json.loads(await self._run("COMMIT", *args))
        kind = reply["k"]
        if kind == "OK":
            for w in writes:
                w.committed.__dict__.update(w.state.__dict__)
            return None
        if kind == "L":
            raise LeaseLostError(
                f"lease on target {reply['t']} expired before the commit (lease_ms="
                f"{self.lease_ms}); nothing was written"
            )
        by_id = {str(w.committed.ecs_id): w.committed for w in writes}
        for eid, d in reply["e"]:
            if d:
                _load_into(by_id[eid], d)
        bad = by_id[reply["id"]]
        return VersionConflict(bad.ecs_id, _expected(writes, bad), int(reply["v"]))

    async def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        args: list[Any] = [len(entities)]
        for e in entities:
            d = e.__dict__
            d["version"] += 1
            d["last_modified"] = now
            args += [str(e.ecs_id), d["version"], e.model_dump_json()]
        args += self._fences(entities)
        lost = await self._run("BUMP", *args)
        if lost:
            raise LeaseLostError(
                f"lease on target {lost} expired before the write (lease_ms={self.lease_ms}); "
                "nothing was written"
            )

    # operation records ---------------------------------------------------------------------------
    async def add_operation(self, op: ConflictResolutionOperation) -> None:
        """Kept in this process until the call stages or ends (written with that round trip)."""
        self._local[op.ecs_id] = op

    def set_status(
        self, op: ConflictResolutionOperation, status: OperationStatus, at: datetime | None = None
    ) -> None:
        op.transition(status, at)

    async def get_operation(self, op_id: UUID) -> ConflictResolutionOperation | None:
        local = self._local.get(op_id)
        if local is not None:
            return local
        try:
            j, s = await self.client.hmget(f"{self._p}op:{op_id}", ["j", "s"])
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return None if j is None else _record(str(j), None if s is None else str(s))

    def _take_release(self, op: ConflictResolutionOperation) -> str:
        return self._releases.pop(op.ecs_id, "")

    async def discard(self, op: ConflictResolutionOperation) -> None:
        oid = op.ecs_id
        self._local.pop(oid, None)
        rel = self._take_release(op)
        written = oid in self._written
        self._written.discard(oid)
        if rel or written:
            await self._run(
                "DISCARD", self.lease_ms, self._out_ttl, str(oid), rel, "1" if written else "0"
            )

    async def add_zombie(
        self, op: ConflictResolutionOperation, due: float | None, cap: int
    ) -> list[ConflictResolutionOperation]:
        oid = op.ecs_id
        key = str(oid)
        self._inflight.pop(key, None)
        self._local.pop(oid, None)
        rec = op.model_dump_json()
        reply = json.loads(
            await self._run(
                "ADD_ZOMBIE",
                self.lease_ms,
                self._out_ttl,
                key,
                self._take_release(op),
                rec,
                op.status.value,
                _tid(op),
                ",".join(str(t) for t in op.target_entity_ids),
                cap,
            )
        )
        self._written.add(oid)
        self._note_zombie_count(reply)
        if due is not None:
            await self.schedule(oid, due)
        else:
            self._buried[oid] = rec
            self._local[oid] = op
            self._schedule_flush()
        return [_record(j, None) for j in reply["ev"] or ()]

    async def remove(self, op_id: UUID) -> ConflictResolutionOperation | None:
        self._buried.pop(op_id, None)
        local = self._local.pop(op_id, None)
        self._written.discard(op_id)
        reply = json.loads(await self._run("REMOVE", str(op_id)))
        self._note_zombie_count(reply)
        if reply["j"]:
            return _record(reply["j"], None)
        return local if local is not None and local.is_terminal else None

    async def take_due(self, now: float, limit: int) -> list[ConflictResolutionOperation]:
        await self.reap_orphans()
        gone = [await self.remove(i) for i in await self.pop_due(now, limit)]
        return [op for op in gone if op is not None]

    async def reap_orphans(self) -> int:
        """Give records of dead workers (in flight past their deadline) their terminal state.

        Staging calls do this on the side; a sweep does it too, so an orphan on a target nobody
        calls again still ends terminal and is cleaned as its config says.
        """
        reply = json.loads(await self._run("REAP", self.lease_ms, self._out_ttl))
        claimed = list(reply.get("c") or ())
        if claimed:
            await self._reap(claimed)
        return len(claimed)

    def _note_zombie_count(self, reply: dict[str, Any]) -> None:
        """Keep the newest count: replies on a connection pool can arrive out of order."""
        seq = int(reply.get("zv", 0))
        if seq >= self._zombie_count_seq:
            self._zombie_count_seq = seq
            self._zombie_count = int(reply["zc"])

    async def operations_for_target(self, target_id: UUID) -> list[ConflictResolutionOperation]:
        return await self._read_set(f"ot:{target_id}", "s")

    async def operations_with_status(
        self, status: OperationStatus
    ) -> list[ConflictResolutionOperation]:
        return await self._read_set(f"os:{status.value}", "s")

    async def zombies(self, target_id: UUID | None = None) -> list[ConflictResolutionOperation]:
        if target_id is None:
            rows = json.loads(await self._run("ZOMBIES_ALL"))
        else:
            rows = json.loads(await self._run("READ_SET", f"zb:{target_id}", "z"))
        return [_record(j, s) for j, s in rows or ()]

    async def _read_set(self, suffix: str, kind: str) -> list[ConflictResolutionOperation]:
        rows = json.loads(await self._run("READ_SET", suffix, kind))
        return [_record(j, s) for j, s in rows or ()]

    async def zombie_counts_by_target(self) -> dict[UUID, int]:
        try:
            raw = await self.client.hgetall(f"{self._p}zt")
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return {uuid.UUID(str(t)): int(n) for t, n in raw.items() if t and int(n) > 0}

    async def oldest_zombies(self) -> list[ConflictResolutionOperation]:
        rows = json.loads(await self._run("OLDEST"))
        return [_record(j, s) for j, s in rows or ()]

    # deferred removal ----------------------------------------------------------------------------
    async def schedule(self, op_id: UUID, due: float) -> None:
        """Book the due time and rewrite the record; its key expires `backstop_seconds` later."""
        rec = self._buried.pop(op_id, None)
        op = self._local.pop(op_id, None)
        now = self._rt.clock.time() if self._rt is not None else due
        ttl = int((max(0.0, due - now) + self.backstop_seconds) * 1000) or 1
        body = op.model_dump_json() if op is not None else ""
        if body and body == rec:
            body = ""
        await self._run("SCHEDULE", str(op_id), repr(due), body, ttl)

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        """Due ids, only while this process holds the sweeper lock (one sweeper across workers)."""
        ids = await self._run("POP_DUE", self.owner, self.sweeper_lock_ms, repr(now), limit)
        return [uuid.UUID(i) for i in ids]

    async def next_due(self) -> float | None:
        try:
            first = await self.client.zrange(f"{self._p}due", 0, 0, withscores=True)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return float(first[0][1]) if first else None

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn, self._flush())

    async def flush(self) -> None:
        """Write back now what sync steps left for later (releases, records a handler changed)."""
        await self._flush()

    async def _flush(self) -> None:
        """Write what a sync step left behind: releases, and records a handler changed."""
        self._flush_scheduled = False
        try:
            while self._releases:
                oid, tid = self._releases.popitem()
                await self._run("DISCARD", self.lease_ms, self._out_ttl, str(oid), tid, "0")
            while self._buried:
                oid, rec = self._buried.popitem()
                op = self._local.pop(oid, None)
                if op is not None:
                    body = op.model_dump_json()
                    if body != rec:
                        await self._run("SCHEDULE", str(oid), "", body, "")
        except RedisUnavailableError:
            log.warning("could not write back to Redis; leases expire on their own", exc_info=True)

    async def close(self) -> None:
        for task in (self._listener, self._renewer, *self._background):
            if task is not None and not task.done():
                task.cancel()
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception:
                log.debug("pubsub close failed", exc_info=True)
        await self.client.aclose()

    # staging -------------------------------------------------------------------------------------
    def in_flight(self) -> int:
        return len(set(self._inflight.values()))

    async def acquire(self, op: ConflictResolutionOperation, config: PreECSConfig) -> Lost | None:
        """Join the cross-process window of the primary target; return once `op` won.

        Calls of this process in the same tick go to Redis together (one round trip); the window
        lasts ``max(staging_timeout_ms, min_window_ms)`` so calls of other processes can join.
        """
        tid = op.target_entity_id
        if tid is None:
            return None
        key = str(tid)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch(config)
            batch.ops.append(op)
            if not _loop_is_idle(asyncio.get_running_loop()):
                await _yield_once()
            batch.task = asyncio.get_running_loop().create_task(self._stage(key, batch))
        else:
            batch.ops.append(op)
            while batch.task is None:
                await _yield_once()
        oid = str(op.ecs_id)
        try:
            outcomes = await asyncio.shield(batch.task)
        except asyncio.CancelledError:
            batch.cancelled.add(oid)
            raise
        outcome = outcomes.get(oid, "X")
        if outcome[:1] == "W":
            _held.set((*_held.get(), (key, oid)))
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
            winner = next((o for o in batch.ops if str(o.ecs_id) == wid), None)
            return Lost(winner or _stub(wid, int(wprio), op))
        return Lost(None, f"staging outcome for target {tid} was lost (window expired)")

    def _contested(self, winner: ConflictResolutionOperation, outcome: str) -> None:
        """Report a window `winner` won against others (outcome ``W|contenders|loser ids``).

        Whichever process resolved the window, the winner's process reads this outcome once, so
        each contested window is reported once across workers, there.
        """
        if self._rt is None:
            return
        _, contenders, losers = outcome.split("|", 2)
        self._rt.observe_window(
            winner, int(contenders), (uuid.UUID(i) for i in losers.split(",") if i)
        )

    async def _stage(self, key: str, batch: _Batch) -> dict[str, str]:
        if self._batches.get(key) is batch:
            del self._batches[key]
        ops = batch.ops
        config = batch.config
        window = max(config.staging_timeout_ms, self.min_window_ms)
        ents = self._entity_versions(ops)
        args: list[Any] = [self.lease_ms, self._out_ttl, key, window]
        args += [config.max_pending_per_target, len(ops)]
        for op in ops:
            self._local.pop(op.ecs_id, None)
            self._written.add(op.ecs_id)
            self._inflight[str(op.ecs_id)] = key
            targets = ",".join(str(t) for t in op.target_entity_ids)
            args += [str(op.ecs_id), op.priority, op.model_dump_json(), targets]
        args += ents
        await self._ensure_listener()
        self._ensure_renewer()
        ids = [str(op.ecs_id) for op in ops]
        fut = self._watch(key)
        try:
            reply = await self._staging_script("JOIN", args)
            outcomes = {i: "F" for i in reply.get("f") or ()}
            staged = [i for i in ids if i not in outcomes]
            while reply["k"] != "R":
                ms = max(0, int(reply["ms"]))
                if reply["k"] == "T":
                    await asyncio.sleep(ms / 1000)
                else:
                    await self._wait_release(fut, ms)
                self._unwatch(key, fut)
                fut = self._watch(key)
                reply = await self._staging_script("RESOLVE", self._resolve_args(key, staged, ents))
        except BaseException:
            for i in ids:
                self._inflight.pop(i, None)
            raise
        finally:
            self._unwatch(key, fut)
        outcomes.update(zip(staged, reply["o"] or (), strict=False))
        for i in ids:
            if outcomes.get(i, "")[:1] == "W":
                self._leases[key] = i
                if i in batch.cancelled:
                    self._spawn(self._release_cancelled(next(o for o in ops if str(o.ecs_id) == i)))
            else:
                self._inflight.pop(i, None)
        for eid, d in reply.get("e") or ():
            known = self._entities.get(uuid.UUID(eid))
            if known is not None and d:
                _load_into(known, d)
        return outcomes

    def _resolve_args(self, key: str, ids: list[str], ents: list[Any]) -> list[Any]:
        return [self.lease_ms, self._out_ttl, key, len(ids), *ids, *ents]

    def _entity_versions(self, ops: list[ConflictResolutionOperation]) -> list[Any]:
        out: list[Any] = []
        seen: set[UUID] = set()
        for op in ops:
            for t in op.target_entity_ids:
                if t not in seen:
                    seen.add(t)
                    known = self._entities.get(t)
                    out += [str(t), known.version if known is not None else -1]
        return out

    async def _release_cancelled(self, op: ConflictResolutionOperation) -> None:
        key = str(op.target_entity_id)
        if self._leases.get(key) == str(op.ecs_id):
            del self._leases[key]
            self._inflight.pop(str(op.ecs_id), None)
            await self._run("DISCARD", self.lease_ms, self._out_ttl, str(op.ecs_id), key, "0")

    def release(self, op: ConflictResolutionOperation) -> None:
        """Sync by protocol: the release rides on the record's next write (discard/zombie)."""
        key = str(op.target_entity_id)
        oid = str(op.ecs_id)
        if self._leases.get(key) != oid:
            return
        del self._leases[key]
        self._inflight.pop(oid, None)
        _held.set(tuple(p for p in _held.get() if p[1] != oid))
        self._releases[op.ecs_id] = key
        self._schedule_flush()

    # waking waiters: pub/sub, never a polling loop ---------------------------------------------
    def _watch(self, key: str) -> asyncio.Future[None]:
        """Register interest in `key` before asking Redis, so no release message can slip by."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(fut)
        return fut

    def _unwatch(self, key: str, fut: asyncio.Future[None]) -> None:
        futs = self._waiters.get(key)
        if futs is not None and fut in futs:
            futs.remove(fut)
            if not futs:
                del self._waiters[key]

    async def _staging_script(self, script: str, args: list[Any]) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(await self._run(script, *args))
        claimed = reply.get("c") or ()
        if claimed:
            self._spawn(self._reap(list(claimed)))
        return reply

    async def _wait_release(self, fut: asyncio.Future[None], pttl_ms: int) -> None:
        """Sleep until the holder releases (pub/sub) or its lease runs out, whichever is first."""
        timeout = (pttl_ms if pttl_ms > 0 else 1) / 1000 + 0.005
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def _ensure_listener(self) -> None:
        """One pub/sub connection per process, subscribed before any window is joined."""
        if self._listener is not None and not self._listener.done():
            return
        if self._subscribing is None:
            self._subscribing = asyncio.get_running_loop().create_task(self._subscribe())
        try:
            await asyncio.shield(self._subscribing)
        finally:
            if self._subscribing is not None and self._subscribing.done():
                self._subscribing = None

    async def _subscribe(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(f"{self._p}released")
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise self._unavailable(exc) from exc
        self._pubsub = pubsub
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub))

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            while True:
                try:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                except RedisTimeoutError:
                    continue
                if msg is not None and msg.get("type") == "message":
                    for fut in self._waiters.get(msg["data"], ()):
                        if not fut.done():
                            fut.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "lost the pub/sub connection (%s); waiters fall back to lease timeouts",
                exc,
            )
            for futs in self._waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)
            self._listener = None

    # leases and orphans ------------------------------------------------------------------------
    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        """Extend held leases and in-flight deadlines every third of a lease, while any exist."""
        while self._inflight or self._leases:
            await asyncio.sleep(self.lease_ms / 3000)
            args: list[Any] = [self.lease_ms, len(self._leases)]
            for key, oid in self._leases.items():
                args += [key, oid]
            args += list(self._inflight)
            try:
                lost = await self._run("RENEW", *args)
            except RedisUnavailableError:
                log.warning("lease renewal failed; leases expire in %d ms", self.lease_ms)
                continue
            for oid in lost or ():
                log.warning("operation %s lost its lease (expired before renewal)", oid)

    async def _reap(self, ids: list[str]) -> None:
        """Give orphaned records (their worker died) a terminal state through normal cleanup."""
        rt = self._rt
        for oid in ids:
            if oid in self._inflight:
                continue
            try:
                op = await self.get_operation(uuid.UUID(oid))
                if op is None or op.is_terminal or rt is None:
                    await self._run("DISCARD", self.lease_ms, self._out_ttl, oid, "", "0")
                    continue
                status = _TERMINAL_FOR[op.status]
                self._written.add(op.ecs_id)
                log.warning(
                    "operation %s on target %s was orphaned (its worker's lease expired); "
                    "marking it %s",
                    oid,
                    op.target_entity_id,
                    status.value,
                )
                await rt.cleanup.bury(
                    op,
                    status,
                    op.get_cleanup_config(),
                    f"orphaned: its worker stopped renewing its lease ({self.lease_ms} ms)",
                )
            except Exception:
                log.exception("could not finish orphaned operation %s", oid)


def _tid(op: ConflictResolutionOperation) -> str:
    tid = op.target_entity_id
    return "" if tid is None else str(tid)


def _expected(writes: Sequence[Write], entity: Entity) -> int:
    return next(w.expected for w in writes if w.committed is entity)


def _load_into(entity: Entity, data: str) -> None:
    """Load stored JSON into the class of the instance this process already holds."""
    fresh = type(entity).model_validate_json(data)
    entity.__dict__.update(fresh.__dict__)


def _record(j: str, status: str | None) -> ConflictResolutionOperation:
    op = ConflictResolutionOperation.model_validate_json(j)
    if status and status != op.status.value:
        op.__dict__["status"] = OperationStatus(status)
    return op


def _stub(
    winner_id: str, priority: int, like: ConflictResolutionOperation
) -> ConflictResolutionOperation:
    """The winner of another process, as far as a loser needs it (id and priority)."""
    op = ConflictResolutionOperation._start(
        like.function_name,
        like.target_entity_ids,
        like.target_type,
        priority,
        None,
        like.created_at,
    )
    op.__dict__["ecs_id"] = uuid.UUID(winner_id)
    op.__dict__["status"] = _EXECUTING
    return op


def backend_from_env(prefix: str | None = None, **kwargs: Any) -> RedisBackend | None:
    """A RedisBackend for ``$CONTEND_REDIS_URL`` (prefix: ``$CONTEND_REDIS_PREFIX``), or None."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        return None
    return RedisBackend.from_url(
        url, prefix=prefix or os.environ.get("CONTEND_REDIS_PREFIX", "contend"), **kwargs
    )
