"""One Redis connection pool as the rest of the backend sees it: scripts, errors, outages.

Every command runs in a task of its own and the caller awaits it through ``asyncio.shield``: a
caller that is cancelled gets its ``CancelledError`` at once, on every Python version (redis-py
waits with ``asyncio.wait_for``, which on CPython 3.11 can swallow a cancellation that arrives
as its inner step completes), and the command itself still finishes, so its outcome can be
learnt. Failures become `RedisUnavailableError` (and an outage logged once, with counts, until
Redis answers again) or `RedisDataError` (a bad key, logged and counted once per key). Writes
that must happen eventually wait in a queue and are retried as soon as Redis answers.

The client is a single node's (``redis.asyncio.Redis``) or a cluster's (``RedisCluster``); a
client whose kind was left open is settled by asking Redis (``INFO cluster``) before the first
command, and a cluster client learns the slots then, once, before any concurrent use.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeAlias

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contend.backends.redis import scripts as lua
from contend.backends.redis.batching import Batcher
from contend.backends.redis.errors import RedisDataError, RedisUnavailableError
from contend.backends.redis.keys import Keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from prometheus_client import Counter

__all__ = ["UNAVAILABLE", "Client", "Connection", "Outage", "sleep_or_wake"]

log = logging.getLogger("contend.backends.redis")

Client: TypeAlias = "aioredis.Redis | RedisCluster"

UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
)
"""What redis-py raises when Redis cannot be reached or does not answer in time (on a cluster
also: no node reachable, a slot not served, the cluster down or resharding)."""

_NOT_SERVING = ("LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY")
"""Error replies of a Redis that cannot serve right now (loading, a replica, a script running
too long): an outage, not a bad key."""

OUTAGE_REPORT_SECONDS = 30.0
MAX_DEFERRED = 10_000
"""Writes kept for a Redis that does not answer; past it, the oldest are dropped and counted
(their records, if staged, are in flight in Redis and end as orphans)."""
RETRY_FIRST_DELAY = 0.02
RETRY_MAX_DELAY = 1.0
BAD_KEYS_REMEMBERED = 1024


async def sleep_or_wake(fut: asyncio.Future[None], seconds: float) -> None:
    """Wait until `fut` (a future of the caller's own) is done or `seconds` pass (no
    ``wait_for``: a timer completes the future)."""
    if fut.done():
        return
    handle = asyncio.get_running_loop().call_later(max(0.0, seconds), _complete, fut)
    try:
        await fut
    finally:
        handle.cancel()


def _complete(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Outage:
    """Logs an outage once when it starts, a summary every `report_seconds`, and its end."""

    def __init__(self, where: str, report_seconds: float = OUTAGE_REPORT_SECONDS) -> None:
        self.where = where
        self.report_seconds = report_seconds
        self.since: float | None = None
        self.failures = 0
        self.outages = 0
        self.total_failures = 0
        self.last_error = ""
        self._reported = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.total_failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.since is None:
            self.since = self._reported = now
            self.failures = 1
            self.outages += 1
            log.warning(
                "Redis at %s is unavailable (%s); calls fail with RedisUnavailableError (nothing "
                "written) until it answers; logged again every %d s while it lasts",
                self.where,
                self.last_error,
                self.report_seconds,
            )
            return
        self.failures += 1
        if now - self._reported >= self.report_seconds:
            self._reported = now
            log.warning(
                "Redis at %s still unavailable after %.1f s (%d failed commands; last: %s)",
                self.where,
                now - self.since,
                self.failures,
                self.last_error,
            )

    def answered(self) -> bool:
        """Redis answered: True when that ends an outage (logged with its length and count)."""
        if self.since is None:
            return False
        log.warning(
            "Redis at %s answers again after %.1f s (%d commands failed meanwhile)",
            self.where,
            time.monotonic() - self.since,
            self.failures,
        )
        self.since = None
        self.failures = 0
        return True


class Connection:
    """The client, the key layout, this worker's id and the scripts, with errors mapped.

    Scripts and commands go through a `Batcher`: those issued in one event-loop tick share one
    pipelined write. A script runs on one bucket (`keys.Keys`): its ``P`` (ARGV[1]) is the
    bucket's key prefix and its one KEYS entry a key of that bucket, for routing."""

    def __init__(
        self,
        client: Client,
        prefix: str,
        description: str,
        *,
        detect: Callable[[], Awaitable[Client]] | None = None,
        wait_timeout: float = 5.0,
    ) -> None:
        self.client = client
        self._settle_client: Callable[[], Awaitable[Client]] | None = detect
        """Decides the client before the first command (a cluster found behind a plain URL)."""
        if self._settle_client is None and isinstance(client, RedisCluster):
            self._settle_client = self._initialized
        self._settling: asyncio.Future[None] | None = None
        self.wait_timeout = wait_timeout
        self._limit: int | None = None
        """At most this many commands in flight (a cluster client's pool size), else None."""
        self._in_flight = 0
        self._turns: collections.deque[asyncio.Future[None]] = collections.deque()
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.p = f"{{{prefix}}}:"
        """The prefix's own tag (the release channel)."""
        self.description = description
        self.owner = uuid.uuid4().hex
        self.outage = Outage(description)
        self.bad_keys: collections.Counter[str] = collections.Counter()
        self.dropped_writes = 0
        self.bad_key_metric: Counter | None = None
        self._bad_seen: dict[str, None] = {}
        self._shas: dict[str, str] = {}
        self.batch = self._register_scripts()
        self._background: set[asyncio.Task[Any]] = set()
        self._deferred: collections.deque[tuple[str, Callable[[], Awaitable[None]]]] = (
            collections.deque()
        )
        self._retrier: asyncio.Task[None] | None = None
        self._retry_wake: asyncio.Future[None] | None = None
        self._drained: list[asyncio.Future[None]] = []
        self.closing = False
        self.on_answer: list[Callable[[], None]] = []
        """Run when Redis answers again after an outage (reconnect what waits for it)."""

    # the client ---------------------------------------------------------------------------------
    @property
    def cluster(self) -> bool:
        """Whether the client is a Redis Cluster's (settled by `ready` when it was left open)."""
        return isinstance(self.client, RedisCluster)

    def _register_scripts(self) -> Batcher:
        """The scripts for this client, and the batcher that sends them (a cluster client loads
        a script on every primary when one answers NOSCRIPT)."""
        sharded = isinstance(self.client, RedisCluster)
        sources = {name: _source(name, sharded) for name in lua.__all__}
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in sources.items()}
        self._limit = None
        if isinstance(self.client, RedisCluster):
            # redis-py's cluster pool raises at its limit instead of waiting for a connection:
            # at most that many commands are in flight at once, the others wait their turn
            kwargs = self.client.nodes_manager.connection_kwargs
            self._limit = int(kwargs.get("max_connections", 100))
        client: Any = self.client
        return Batcher(client, {self._shas[n]: src for n, src in sources.items()})

    def settle_with(self, detect: Callable[[], Awaitable[Client]]) -> None:
        """Let `detect` choose the client before the first command (it may return a new one)."""
        self._settle_client = detect

    async def _initialized(self) -> Client:
        client = self.client
        if isinstance(client, RedisCluster):
            await client.initialize()
        return client

    async def ready(self) -> None:
        """Settle the client before its first use (once; concurrent callers wait for it)."""
        if self._settle_client is None:
            return
        if self._settling is None:
            self._settling = self.spawn(self._settle_once())
        await asyncio.shield(self._settling)

    async def _settle_once(self) -> None:
        settle = self._settle_client
        try:
            client = await settle() if settle is not None else self.client
        except BaseException:
            self._settling = None  # the next command tries again
            raise
        if client is not self.client:
            old, self.client = self.client, client
            self.batch = self._register_scripts()
            with contextlib.suppress(Exception):
                await old.aclose()
        if isinstance(client, RedisCluster) and settle is not self._initialized:
            await client.initialize()
        self._settle_client = None

    # running commands ---------------------------------------------------------------------------
    def start(self, name: str, bucket: int, *args: Any) -> asyncio.Future[Any]:
        """Run script `name` on `bucket`: a future of its reply (errors mapped), settled when
        its pipeline is answered whether or not anyone still waits for it."""
        tag = self.keys.tag(bucket)
        sha = self._shas[name]
        return self._mapped(f"script {name}", self._sent("EVALSHA", sha, 1, tag, tag, *args))

    async def run(self, name: str, bucket: int, *args: Any) -> Any:
        """Run script `name` on `bucket`; a cancelled caller stops waiting at once, the script
        goes on."""
        return await asyncio.shield(self.start(name, bucket, *args))

    async def run_all(self, name: str, args: list[tuple[int, list[Any]]]) -> list[Any]:
        """Run script `name` once per (bucket, args), pipelined; replies in order."""
        return list(await asyncio.gather(*(self.run(name, b, *a) for b, a in args)))

    async def call(self, *command: Any) -> Any:
        """A plain command (a read), pipelined with the others of this tick, with the same
        cancellation and error handling."""
        return await asyncio.shield(self._mapped(str(command[0]), self._sent(*command)))

    def _sent(self, *command: Any) -> asyncio.Future[Any]:
        """`command` handed to the batcher: at once, or, before the client is settled or on a
        cluster with `_limit` commands in flight (redis-py's cluster pool raises at its limit
        instead of waiting), once it is settled and a command before it is answered."""
        if self._settle_client is None:
            if self._limit is None:
                return self.batch.send(*command)
            if self._in_flight < self._limit and not self._turns:
                return self._counted(self.batch.send(*command))
        return asyncio.ensure_future(self._send_in_turn(command))

    async def _send_in_turn(self, command: tuple[Any, ...]) -> Any:
        await self.ready()
        if self._limit is not None and (self._in_flight >= self._limit or self._turns):
            turn = asyncio.get_running_loop().create_future()
            self._turns.append(turn)
            try:
                async with asyncio.timeout(self.wait_timeout):
                    await turn
            finally:
                if not turn.done():
                    self._turns.remove(turn)
                    turn.cancel()
        sent = self.batch.send(*command)
        if self._limit is not None:
            self._counted(sent)
        return await sent

    def _counted(self, sent: asyncio.Future[Any]) -> asyncio.Future[Any]:
        self._in_flight += 1
        sent.add_done_callback(self._answered_one)
        return sent

    def _answered_one(self, _: asyncio.Future[Any]) -> None:
        """A command was answered: the longest waiting one may go (commands bound connections
        from above, since a pipeline carries many on one: a few over the limit are harmless)."""
        self._in_flight -= 1
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                break

    def _mapped(self, what: str, sent: asyncio.Future[Any]) -> asyncio.Future[Any]:
        out: asyncio.Future[Any] = sent.get_loop().create_future()
        sent.add_done_callback(functools.partial(self._settle, what, out))
        return out

    def _settle(self, what: str, out: asyncio.Future[Any], sent: asyncio.Future[Any]) -> None:
        if sent.cancelled():
            if not out.done():
                out.cancel()
            return
        exc = sent.exception()
        if exc is None:
            self.answered()
            if not out.done():
                out.set_result(sent.result())
            return
        mapped = self._error(what, exc)
        if not out.done():
            out.set_exception(mapped)
            out.exception()  # retrieved: its caller may have stopped waiting for it

    def _error(self, what: str, exc: BaseException) -> BaseException:
        """What a caller gets for a failed command: `RedisUnavailableError` (an outage, logged
        once) or `RedisDataError` (Redis refused it)."""
        mapped: BaseException = exc
        if isinstance(exc, UNAVAILABLE):
            if not self.closing:
                self.outage.failed(exc)
            mapped = self.unavailable(exc)
        elif isinstance(exc, ResponseError):
            if str(exc).startswith(_NOT_SERVING):
                if not self.closing:
                    self.outage.failed(exc)
                mapped = self.unavailable(exc)
            else:
                self.answered()
                mapped = self.bad("reply", what, f"Redis refused it: {exc}")
        if mapped is not exc:
            mapped.__cause__ = exc
        return mapped

    def unavailable(self, exc: BaseException) -> RedisUnavailableError:
        return RedisUnavailableError(
            f"Redis backend at {self.description} is unavailable "
            f"({type(exc).__name__}: {exc}); nothing was written"
        )

    def answered(self) -> None:
        if self.outage.answered():
            self._poke_retrier()
            for poke in self.on_answer:
                poke()

    # bad keys -----------------------------------------------------------------------------------
    def bad(self, kind: str, key: str, detail: str) -> RedisDataError:
        """Count a bad key (once per key and kind), log it once, and return the error for it."""
        seen = f"{kind}\0{key}"
        if seen not in self._bad_seen:
            self._bad_seen[seen] = None
            if len(self._bad_seen) > BAD_KEYS_REMEMBERED:
                del self._bad_seen[next(iter(self._bad_seen))]
            self.bad_keys[kind] += 1
            if self.bad_key_metric is not None:
                self.bad_key_metric.labels(kind).inc()
            log.error("bad %s key in Redis at %s: %s: %s", kind, self.description, key, detail)
        return RedisDataError(key, detail)

    def repaired(self, keys: list[str] | None) -> None:
        """Keys a script found malformed and repaired (reply field ``b``)."""
        for key in keys or ():
            self.bad("repaired", key, "malformed value replaced by the script that met it")

    # background work ----------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._settled)
        return task

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its caller may have stopped waiting for it

    def defer(self, what: str, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` once Redis answers (it raises RedisUnavailableError while it does not);
        actions run in the order they were deferred."""
        if len(self._deferred) >= MAX_DEFERRED:
            dropped, _ = self._deferred.popleft()
            self.dropped_writes += 1
            if self.dropped_writes == 1 or self.dropped_writes % 1000 == 0:
                log.error(
                    "dropped %d deferred Redis write(s) (%s first): more than %d waited for "
                    "Redis at %s; staged records among them end as orphans",
                    self.dropped_writes,
                    dropped,
                    MAX_DEFERRED,
                    self.description,
                )
        self._deferred.append((what, action))
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.get_running_loop().create_task(self._retry_forever())

    @property
    def deferred(self) -> int:
        return len(self._deferred)

    def _poke_retrier(self) -> None:
        wake = self._retry_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _retry_forever(self) -> None:
        delay = RETRY_FIRST_DELAY
        loop = asyncio.get_running_loop()
        while self._deferred:
            what, action = self._deferred[0]
            try:
                await action()
            except RedisUnavailableError:
                self._retry_wake = loop.create_future()
                await sleep_or_wake(self._retry_wake, delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            except Exception:
                log.exception("deferred Redis write (%s) failed; dropped", what)
            if self._deferred and self._deferred[0][1] is action:
                self._deferred.popleft()
            delay = RETRY_FIRST_DELAY
        for fut in self._drained:
            if not fut.done():
                fut.set_result(None)
        self._drained.clear()

    async def drain(self, seconds: float) -> bool:
        """Wait until the deferred writes are done (or `seconds` pass); True if none remain."""
        if self._deferred:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drained.append(fut)
            self._poke_retrier()
            await sleep_or_wake(fut, seconds)
        return not self._deferred

    def reset(self) -> None:
        """The event loop changed: tasks of the old one can never run again."""
        self._background.clear()
        self._retrier = None
        self._retry_wake = None
        self._drained.clear()
        self._settling = None
        self.batch.reset()
        client: Any = self.client
        if isinstance(client, RedisCluster):
            _forget_cluster_connections(client)
            self._turns.clear()  # futures of the old loop
            self._in_flight = 0
        else:
            client.connection_pool.reset()

    async def close(self) -> None:
        self.closing = True
        for task in (self._retrier, *self._background):
            if task is not None and not task.done():
                task.cancel()
        await self.client.aclose()


_NODE_CHANNEL = "local CHAN = string.match(P, '^(.*):%d+}:$') .. '}:released'"
_SHARD_CHANNEL = "local CHAN = P .. 'released'"


def _source(name: str, sharded: bool) -> str:
    """Script `name`'s Lua. On a cluster its releases are published on its bucket's own
    channel (``{prefix:bucket}:released``, in the slot of its keys) with ``SPUBLISH``, so they
    reach only the shard that holds the target, not every node (`wakeups.Wakeups`)."""
    source: str = getattr(lua, name)
    if not sharded or "'PUBLISH'" not in source:
        return source
    if _NODE_CHANNEL not in source:
        raise RuntimeError(f"script {name} publishes on a channel the cluster variant misses")
    return source.replace(_NODE_CHANNEL, _SHARD_CHANNEL).replace("'PUBLISH'", "'SPUBLISH'")


def _forget_cluster_connections(client: RedisCluster) -> None:
    """Drop a cluster client's connections of a dead event loop without closing them (they
    cannot be awaited any more); redis-py's cluster client has no public way to do it."""
    nodes: Any = client.nodes_manager
    for node in [*nodes.nodes_cache.values(), *nodes.startup_nodes.values()]:
        node._connections.clear()
        node._free.clear()
    guard: Any = client
    guard._lock = None
