"""Waking calls that wait behind a lease: one pub/sub subscription per worker, never a poll.

A waiter registers its interest in a target before it asks Redis, so no release message can slip
by between the question and the wait; it sleeps until a message for its target arrives or the
lease's remaining time passes. A message that names the calls a window decided (a window that
carried waiting calls on, wait policy) wakes only the sleepers of those calls: the carried ones
sleep on behind the new winner, whom the message names, instead of all asking Redis again in
every window. When the subscription breaks (Redis restarted, a network blip)
every waiter is woken to look again, and the listener reconnects in the background; until it
has, waiters fall back to their deadlines, which a lease bounds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.exceptions import TimeoutError as RedisTimeoutError

from contend.backends.redis.connection import UNAVAILABLE, sleep_or_wake

if TYPE_CHECKING:
    from contend.backends.redis.connection import Connection

__all__ = ["Interest", "Wakeups"]

log = logging.getLogger("contend.backends.redis")

RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 0.5


class Interest:
    """A sleeper's interest in one target: woken (`fut`) by a message for the target that
    names one of its calls (`ids`), or by any message for it; `holder` is the call holding
    the target as the last message named it ('id|priority')."""

    __slots__ = ("fut", "holder", "ids")

    def __init__(self, fut: asyncio.Future[None], ids: frozenset[str]) -> None:
        self.fut = fut
        self.ids = ids
        self.holder: str | None = None

    def wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


class _Listener:
    """One pub/sub connection and the channels it serves: the single node's, or one cluster
    node's (sharded: ``SSUBSCRIBE``, one command per slot)."""

    def __init__(self, wakeups: Wakeups, node: Any) -> None:
        self.wakeups = wakeups
        self.node = node
        """The cluster node it listens to (None on a single node)."""
        self.channels: dict[str, asyncio.Future[None]] = {}
        """Each channel it serves, and a future done once the channel is subscribed."""
        self.pubsub: PubSub | None = None
        self.task: asyncio.Task[None] | None = None
        self.retry: asyncio.Future[None] | None = None
        self.rejoining = False
        """It lost its connection: once subscribed again, every waiter looks again."""

    def want(self, channel: str) -> asyncio.Future[None]:
        fut = self.channels.get(channel)
        if fut is None:
            fut = self.channels[channel] = asyncio.get_running_loop().create_future()
            pubsub = self.pubsub
            if pubsub is not None and self.task is not None and not self.task.done():
                self.task.get_loop().create_task(self._subscribe(pubsub, [channel]))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._listen_forever())
        return fut

    async def _subscribe(self, pubsub: PubSub, channels: list[str]) -> None:
        try:
            if self.node is None:
                await pubsub.subscribe(*channels)
            else:
                for channel in channels:  # a sharded subscription names channels of one slot
                    await pubsub.ssubscribe(channel)
        except UNAVAILABLE:
            self._poke()  # the listening loop meets the failure and starts over

    def _poke(self) -> None:
        if self.retry is not None and not self.retry.done():
            self.retry.set_result(None)

    async def _listen_forever(self) -> None:
        conn = self.wakeups.conn
        delay = RECONNECT_FIRST_DELAY
        while True:
            pubsub = self.wakeups.pubsub_for(self.node)
            self.pubsub = pubsub
            try:
                for channel, fut in list(self.channels.items()):
                    if fut.done():
                        self.channels[channel] = asyncio.get_running_loop().create_future()
                await self._subscribe_all(pubsub)
                conn.answered()
                delay = RECONNECT_FIRST_DELAY
                await self._listen(pubsub)
            except UNAVAILABLE as exc:
                if conn.closing:
                    return
                conn.outage.failed(exc)
                self.rejoining = True
                for fut in self.channels.values():
                    if not fut.done():
                        fut.set_result(None)  # the join that waits meets the outage itself
                self.wakeups.wake_all()
            self.pubsub = None
            await _close(pubsub)
            self.retry = asyncio.get_running_loop().create_future()
            await sleep_or_wake(self.retry, delay)  # or at once, when Redis answers a command
            delay = min(delay * 2, RECONNECT_MAX_DELAY)
            if self.node is not None:
                self.node = self.wakeups.moved(self)

    async def _subscribe_all(self, pubsub: PubSub) -> None:
        if self.node is None:
            await pubsub.subscribe(*self.channels)
        else:
            for channel in list(self.channels):
                await pubsub.ssubscribe(channel)

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            try:
                msg = await pubsub.get_message(timeout=None)
            except RedisTimeoutError:
                continue
            if msg is None:
                continue
            kind = msg.get("type")
            if kind in ("message", "smessage"):
                self.wakeups.deliver(msg["data"])
            elif kind in ("subscribe", "ssubscribe"):
                fut = self.channels.get(msg["channel"])
                if fut is not None and not fut.done():
                    fut.set_result(None)
                if self.rejoining:
                    self.rejoining = False
                    self.wakeups.wake_all()  # anything released while we were away: look again

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.pubsub is not None:
            await _close(self.pubsub)


class Wakeups:
    """The release channels of one worker: `ready`, then `watch`, then `wait`.

    On a single node one subscription serves every channel; on a Redis Cluster each channel is
    a sharded one (``SSUBSCRIBE``), served by the node that holds its slot, so a release is
    published (``SPUBLISH``) on the shard of the target it names and wake-ups spread with the
    keys. A listener per node; when a node fails, its waiters are woken to look again and its
    listener reconnects (to whichever node serves the slot by then).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.channel = f"{conn.p}released"
        self._waiters: dict[str, list[Interest]] = {}
        self._listeners: dict[str, _Listener] = {}
        """By node name ('' on a single node)."""
        conn.on_answer.append(self._reconnect_now)

    def watch(self, key: str, ids: frozenset[str]) -> Interest:
        """Interest in target `key` on behalf of the calls `ids`."""
        interest = Interest(asyncio.get_running_loop().create_future(), ids)
        self._waiters.setdefault(key, []).append(interest)
        return interest

    def unwatch(self, key: str, interest: Interest) -> None:
        interests = self._waiters.get(key)
        if interests is not None and interest in interests:
            interests.remove(interest)
            if not interests:
                del self._waiters[key]

    async def wait(self, interest: Interest, ms: int) -> None:
        """Sleep until a message wakes `interest` or `ms` pass, whichever is first."""
        await sleep_or_wake(interest.fut, (ms if ms > 0 else 1) / 1000 + 0.005)

    async def ready(self, bucket: int) -> None:
        """Make sure the release channel of `bucket` is subscribed before a join on it (the
        prefix's one channel on a single node, the bucket's own on a cluster); waits for the
        first subscription only, later reconnects happen in the background."""
        try:
            await self.conn.ready()
        except UNAVAILABLE:
            return  # the join that follows meets the outage itself
        channel = self.channel
        if self.conn.cluster:
            channel = self.conn.keys.tag(bucket) + "released"
        listener = self._listener_for(channel)
        subscribed = listener.want(channel)
        if not subscribed.done():
            await asyncio.shield(subscribed)

    def _listener_for(self, channel: str) -> _Listener:
        node = self._node_of(channel)
        name = "" if node is None else node.name
        listener = self._listeners.get(name)
        if listener is None:
            listener = self._listeners[name] = _Listener(self, node)
        return listener

    def _node_of(self, channel: str) -> Any:
        client = self.conn.client
        if isinstance(client, RedisCluster):
            return client.get_node_from_key(channel)
        return None

    def pubsub_for(self, node: Any) -> PubSub:
        """A pub/sub of its own connection: to the single node, or to one cluster node."""
        client = self.conn.client
        if node is None or not isinstance(client, RedisCluster):
            return client.pubsub(ignore_subscribe_messages=False)
        kwargs = dict(node.connection_kwargs)
        kwargs.pop("retry", None)
        pool = ConnectionPool(connection_class=node.connection_class, max_connections=2, **kwargs)
        return PubSub(pool, ignore_subscribe_messages=False)

    def moved(self, listener: _Listener) -> Any:
        """After a node failed: the channels of `listener` whose slot another node serves now
        go to that node's listener; the node it keeps listening to."""
        node = listener.node
        for channel in list(listener.channels):
            now = self._node_of(channel)
            if now is not None and node is not None and now.name != node.name:
                del listener.channels[channel]
                self._listener_for(channel).want(channel)
        return node

    def _reconnect_now(self) -> None:
        for listener in self._listeners.values():
            listener._poke()

    def wake_all(self) -> None:
        for interests in self._waiters.values():
            for interest in interests:
                interest.wake()

    def deliver(self, data: str) -> None:
        """A message: ``target``, or ``target|winner|priority|ids decided``."""
        key, _, named = data.partition("|")
        interests = self._waiters.get(key)
        if not interests:
            return
        if not named:
            for interest in interests:
                interest.wake()
            return
        winner, priority, decided = named.split("|", 2)
        ids = decided.split(",")
        for interest in interests:
            interest.holder = f"{winner}|{priority}"
            if not interest.ids.isdisjoint(ids):
                interest.wake()

    def reset(self) -> None:
        self._waiters.clear()
        self._listeners.clear()

    async def close(self) -> None:
        for listener in self._listeners.values():
            await listener.close()


async def _close(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:
        log.debug("closing a pub/sub connection failed", exc_info=True)
