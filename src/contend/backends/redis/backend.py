"""`RedisBackend`: the parts of the Redis backend put together behind the Backend protocol."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, ResponseError

from contend.backends.redis.connection import Client, Connection
from contend.backends.redis.entities import Entities
from contend.backends.redis.keys import Keys
from contend.backends.redis.leases import Calls
from contend.backends.redis.orphans import Orphans
from contend.backends.redis.records import Records
from contend.backends.redis.staging import Staging
from contend.backends.redis.wakeups import Wakeups
from contend.entity import shard_key_of
from contend.errors import ConfigurationError

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.base import Hooks, Lost, VersionConflict, Write
    from contend.config import PreECSConfig
    from contend.entity import Entity
    from contend.enums import OperationStatus
    from contend.record import Record

__all__ = ["ENV_VAR", "RedisBackend", "backend_from_env"]

log = logging.getLogger("contend.backends.redis")

ENV_VAR = "CONTEND_REDIS_URL"
PREFIX_ENV_VAR = "CONTEND_REDIS_PREFIX"
CLOSE_DRAIN_SECONDS = 2.0
DEFAULT_MAX_CONNECTIONS = 100


def _check(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigurationError(field, f"must be between {low} and {high}, got {value}")


class RedisBackend:
    """Backend and staging coordinator on Redis (redis.asyncio with hiredis).

    Each step of a call is one Lua script (one round trip): joining a staging window, resolving
    it, a write (an OCC compare-and-set, or an unguarded write) that also releases the target and
    ends the record, and a zombie's booking (its books, cap, due time and the release in one).
    See docs/redis.md for guarantees, what each error means for the write, and recovery times.
    """

    name = "redis"

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "contend",
        lease_ms: int = 10_000,
        min_window_ms: int = 2,
        sweeper_lock_ms: int = 30_000,
        backstop_seconds: float = 3600.0,
        settle_timeout: float = 10.0,
        description: str = "redis",
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ConfigurationError("prefix", f"must be non-empty without braces, got {prefix!r}")
        _check("lease_ms", lease_ms, 100, 3_600_000)
        _check("min_window_ms", min_window_ms, 0, 1000)
        _check("sweeper_lock_ms", sweeper_lock_ms, 1000, 3_600_000)
        _check("backstop_seconds", backstop_seconds, 0, 30 * 86400)
        _check("settle_timeout", settle_timeout, 0, 600)
        self.prefix = prefix
        self.lease_ms = int(lease_ms)
        self.min_window_ms = int(min_window_ms)
        self.sweeper_lock_ms = int(sweeper_lock_ms)
        self.backstop_seconds = float(backstop_seconds)
        self.settle_timeout = float(settle_timeout)
        self.description = description
        out_ttl = max(60_000, 3 * self.lease_ms)
        outcome_ttl = max(120_000, 4 * self.lease_ms, int(2000 * self.settle_timeout))
        self.conn = Connection(client, prefix, description)
        self.calls = Calls(self.conn, self.lease_ms)
        self.wakeups = Wakeups(self.conn)
        self.entities = Entities(
            self.conn,
            self.calls,
            lease_ms=self.lease_ms,
            out_ttl_ms=out_ttl,
            outcome_ttl_ms=outcome_ttl,
            settle_timeout=self.settle_timeout,
        )
        self.records = Records(
            self.conn,
            self.calls,
            self.entities,
            lease_ms=self.lease_ms,
            out_ttl_ms=out_ttl,
            outcome_ttl_ms=outcome_ttl,
            backstop_seconds=self.backstop_seconds,
            sweeper_lock_ms=self.sweeper_lock_ms,
        )
        self.orphans = Orphans(
            self.conn, self.calls, self.records, lease_ms=self.lease_ms, out_ttl_ms=out_ttl
        )
        self.staging = Staging(
            self.conn,
            self.calls,
            self.entities,
            self.wakeups,
            self.orphans,
            lease_ms=self.lease_ms,
            out_ttl_ms=out_ttl,
            min_window_ms=self.min_window_ms,
        )
        self._hooks: Hooks | None = None

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
        cluster: bool | None = None,
        **kwargs: Any,
    ) -> RedisBackend:
        """Connect by URL: ``redis://[:password@]host:port/db``, ``rediss://`` for TLS,
        ``unix://`` for a socket; ``redis+cluster://host:port`` (or ``rediss+cluster://``) for
        a Redis Cluster, found from any one of its nodes.

        `cluster`: True or False says what the URL points at; None (the default) takes the
        scheme's word, else asks Redis (``INFO cluster``) before the first command. Both
        clients get the same timeouts, one resend of a command whose connection failed, and
        at most `max_connections` connections (per node on a cluster), a command waiting up to
        `socket_timeout` for a free one.
        """
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in _SCHEMES:
            raise ConfigurationError(
                "url",
                "must start with redis://, rediss://, unix://, redis+cluster:// or "
                f"rediss+cluster://, got {url[:16]!r}",
            )
        if scheme.endswith("+cluster"):
            if cluster is False:
                raise ConfigurationError("cluster", f"is False but the URL is {scheme}://")
            cluster, scheme = True, scheme.removesuffix("+cluster")
            url = f"{scheme}://{rest}"
        _check("socket_timeout", socket_timeout, 0.01, 600)
        _check("connect_timeout", connect_timeout, 0.01, 600)
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            # One resend on a connection error or timeout (a connection left stale by a
            # restart, a node that moved): every script is idempotent, so a resend never
            # applies anything twice.
            "retry": Retry(NoBackoff(), 1),
            "max_connections": max_connections or DEFAULT_MAX_CONNECTIONS,
        }
        detect = None
        if cluster:
            client: Client = _cluster_client(url, options)
            where = f"{scheme}+cluster://{_address(url)}"
        else:
            client = _node_client(url, options, socket_timeout)
            kw = client.connection_pool.connection_kwargs
            where = f"{scheme}://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
            if cluster is None and scheme != "unix":
                node = client
                detect = functools.partial(_settle_kind, node, url, options)
        backend = cls(
            client,
            prefix=prefix,
            lease_ms=lease_ms,
            min_window_ms=min_window_ms,
            description=where,
            **kwargs,
        )
        backend.conn.wait_timeout = socket_timeout
        if detect is not None:
            backend.conn.settle_with(detect)
        return backend

    def attach(self, hooks: Hooks) -> None:
        """Called by the runtime: its clock dates records, its cleanup ends orphans and counts
        removals learnt late, its metrics registry gets the bad-key counter."""
        first = self._hooks is None
        self._hooks = hooks
        self.staging.observe_window = hooks.observe_window
        self.orphans.bury = hooks.bury
        self.records.clock = hooks.clock.time
        self.records.removed_late = hooks.count_removal
        self.records.sweep_later = hooks.sweep
        if first:
            self.conn.bad_key_metric = Counter(
                "contend_redis_bad_keys_total",
                "Keys in Redis contend could not read (each counted once per worker), by kind",
                ["kind"],
                registry=hooks.metrics_registry,
            )

    @property
    def client(self) -> Client:
        """The redis-py client (a cluster's once a plain URL turned out to name a cluster node)."""
        return self.conn.client

    def __repr__(self) -> str:
        return f"RedisBackend({self.description}, prefix={self.prefix!r})"

    @property
    def coordinator(self) -> RedisBackend:
        """Itself: staging shares the backend's connections, calls and loop binding."""
        return self

    # staging ------------------------------------------------------------------------------------
    supports_wait = True
    """`acquire` takes a deadline: the wait conflict policy (Redis carries a loser on)."""

    async def acquire(
        self, op: Record, config: PreECSConfig, deadline: float | None = None
    ) -> Lost | None:
        return await self.staging.acquire(op, config, deadline)

    def release(self, op: Record) -> None:
        self.staging.release(op)

    def in_flight(self) -> int:
        return self.staging.in_flight()

    @property
    def keys(self) -> Keys:
        """The key layout: a target's bucket (``keys.of``), co-location (``keys.co_locate``)."""
        return self.conn.keys

    @property
    def owner(self) -> str:
        """This worker's id in Redis (its heartbeat, its records' owner field)."""
        return self.conn.owner

    # entities -----------------------------------------------------------------------------------
    @property
    def zombie_count(self) -> int:
        """The global zombie count as of this worker's last script reply."""
        return self.records.zombie_count

    async def refresh_zombie_count(self) -> int:
        """The global zombie count, read from Redis now (the health check uses it)."""
        return await self.records.refresh_zombie_count()

    def shard_key(self, entity: Entity) -> str:
        """Where `entity`'s keys live: the shard key its class names (`shard_key_of`), or
        one `keys.co_locate` gave it. A call's entities must share one (checked before the call
        begins, `CrossShardError`), so on Redis Cluster its compare-and-set is one script in one
        slot; the first sight of an entity of a class with a shard key co-locates it."""
        given = self.keys.shard_key(entity.ecs_id)
        if given is not None:
            return given
        key = shard_key_of(entity)
        if type(entity).__contend_shard_key__ is not None:
            self.keys.co_locate(entity.ecs_id, key)
            weakref.finalize(entity, self.keys.forget, entity.ecs_id)
        return key

    async def ensure_entity(self, entity: Entity) -> Entity:
        if type(entity).__contend_shard_key__ is not None:
            self.shard_key(entity)
        return await self.entities.ensure(entity)

    async def get_entity(self, entity_id: UUID, kind: type[Entity] | None = None) -> Entity | None:
        return await self.entities.get(entity_id, kind)

    async def commit(self, writes: Sequence[Write], now: datetime) -> VersionConflict | None:
        return await self.entities.commit(writes, now)

    async def bump(self, entities: Sequence[Entity], now: datetime) -> None:
        await self.entities.bump(entities, now)

    # operation records --------------------------------------------------------------------------
    async def add_operation(self, op: Record) -> None:
        self.records.add_operation(op)

    def set_status(self, op: Record, status: OperationStatus, at: datetime | None = None) -> None:
        self.records.set_status(op, status, at)

    async def get_operation(self, op_id: UUID) -> Record | None:
        return await self.records.get_operation(op_id)

    async def discard(self, op: Record) -> None:
        await self.records.discard(op)

    async def add_zombie(self, op: Record, due: float | None, cap: int) -> list[Record]:
        return await self.records.add_zombie(op, due, cap)

    async def remove(self, op_id: UUID) -> Record | None:
        return await self.records.remove(op_id)

    async def operations_for_target(self, target_id: UUID) -> list[Record]:
        return await self.records.read(f"ot:{target_id}")

    async def operations_with_status(self, status: OperationStatus) -> list[Record]:
        return await self.records.read(f"os:{status.value}")

    async def zombies(self, target_id: UUID | None = None) -> list[Record]:
        if target_id is None:
            return await self.records.zombies_all()
        return await self.records.read(f"zb:{target_id}", str(target_id))

    async def zombie_counts_by_target(self) -> dict[UUID, int]:
        return await self.records.counts_by_target()

    async def oldest_zombies(self) -> list[Record]:
        return await self.records.oldest()

    # the console --------------------------------------------------------------------------------
    async def zombie_page(self, **query: Any) -> tuple[list[Record], str | None, int, int | None]:
        """A page of zombies for the console, with the keyword arguments and reply of
        `contend.console.query.PagedZombies.zombie_page`: read from sorted sets by status and
        by target scored by completion time, kept by the scripts that book and remove zombies;
        a page costs the entries it examines."""
        return await self.records.zombie_page(**query)

    async def zombie_counts_by_strategy(self, scan_limit: int) -> tuple[dict[str, int], int]:
        """Zombies by cleanup strategy from at most `scan_limit` records read (extrapolated
        past that), and how many were read: the console's chart."""
        return await self.records.counts_by_strategy(scan_limit)

    # deferred removal ---------------------------------------------------------------------------
    async def schedule(self, op_id: UUID, due: float) -> None:
        await self.records.schedule(op_id, due)

    async def pop_due(self, now: float, limit: int) -> list[UUID]:
        await self.orphans.reap_now()
        return await self.records.pop_due(now, limit)

    async def take_due(self, now: float, limit: int) -> list[Record]:
        await self.orphans.reap_now()
        return await self.records.take_due(now, limit)

    async def next_due(self) -> float | None:
        return await self.records.next_due()

    async def reap_orphans(self) -> int:
        """Give records of dead workers (in flight past their deadline) their terminal state."""
        return await self.orphans.reap_now()

    async def flush(self) -> None:
        """Write back now what was left for later (records a handler changed)."""
        await self.records.flush()

    async def drain(self, seconds: float = 10.0) -> bool:
        """Wait up to `seconds` until writes deferred during an outage are done; True if none
        remain."""
        await self.records.flush()
        return await self.conn.drain(seconds)

    # health -------------------------------------------------------------------------------------
    def health_issues(self) -> list[str]:
        """What the health check should say about Redis (an outage, bad keys, lost writes)."""
        issues = []
        outage = self.conn.outage
        if outage.down:
            issues.append(
                f"Redis at {self.description} unavailable ({outage.failures} failed commands; "
                f"last: {outage.last_error})"
            )
        if self.conn.bad_keys:
            issues.append(f"Unreadable Redis keys: {dict(self.conn.bad_keys)} (see the log)")
        if self.conn.deferred:
            issues.append(f"{self.conn.deferred} Redis write(s) waiting for Redis to answer")
        if self.conn.dropped_writes:
            issues.append(f"{self.conn.dropped_writes} deferred Redis write(s) dropped")
        return issues

    def footprint(self) -> dict[str, int]:
        """What this worker keeps per call or record (each must fall back to 0 when idle)."""
        return {
            "calls": len(self.calls.calls),
            "leases": len(self.calls.held),
            "inflight": len(self.calls.inflight),
            "records": self.records.footprint(),
            "deferred": self.conn.deferred,
        }

    def reset(self) -> None:
        """The runtime moved to a new event loop: drop state and connections of the old one."""
        self.staging.reset()
        self.calls.reset()
        self.wakeups.reset()
        self.conn.reset()

    async def close(self) -> None:
        """Write what waits to be written (briefly, if Redis answers), then disconnect."""
        with contextlib.suppress(Exception):
            await self.records.flush()
        if self.conn.deferred and not self.conn.outage.down:
            await self.conn.drain(CLOSE_DRAIN_SECONDS)
        if self.conn.deferred:
            log.warning(
                "closing with %d Redis write(s) not done (Redis at %s did not answer); records "
                "they would have ended are ended by other workers as orphans",
                self.conn.deferred,
                self.description,
            )
        self.calls.stop()
        await self.wakeups.close()
        await self.conn.close()


_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def _node_client(url: str, options: dict[str, Any], wait: float) -> aioredis.Redis:
    # A command waits for a free connection of the pool (up to `wait`) instead of failing:
    # redis-py's plain pool raises at its limit, which would turn a burst of concurrent calls
    # on a healthy Redis into RedisUnavailableError.
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=wait, **options)
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def _cluster_client(url: str, options: dict[str, Any]) -> RedisCluster:
    try:
        return RedisCluster.from_url(url, **options)
    except RedisClusterException as exc:
        raise ConfigurationError("url", f"cannot serve a Redis Cluster: {exc}") from exc


def _address(url: str) -> str:
    return url.partition("://")[2].rpartition("@")[2].partition("/")[0] or "?"


async def _settle_kind(node: aioredis.Redis, url: str, options: dict[str, Any]) -> Client:
    """The client `url` needs: `node` itself, or a cluster client when the node says it is
    part of a Redis Cluster (a user whose ACL refuses ``INFO`` gets `node`: say
    ``cluster=True`` or ``redis+cluster://`` for a cluster then)."""
    try:
        info = await node.info("cluster")
    except ResponseError as exc:
        log.info("Redis at %s refused INFO (%s): taken as a single node", _address(url), exc)
        return node
    if not info.get("cluster_enabled"):
        return node
    log.info("Redis at %s is a cluster node: using a Redis Cluster client", _address(url))
    return _cluster_client(url, options)


def backend_from_env(prefix: str | None = None, **kwargs: Any) -> RedisBackend | None:
    """A RedisBackend for ``$CONTEND_REDIS_URL`` (prefix: ``$CONTEND_REDIS_PREFIX``), or None."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        return None
    return RedisBackend.from_url(
        url, prefix=prefix or os.environ.get(PREFIX_ENV_VAR, "contend"), **kwargs
    )
