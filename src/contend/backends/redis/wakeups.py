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

from redis.exceptions import TimeoutError as RedisTimeoutError

from contend.backends.redis.connection import UNAVAILABLE, sleep_or_wake

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

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


class Wakeups:
    """The release channel of one worker: `watch`, then `wait`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.channel = f"{conn.p}released"
        self._waiters: dict[str, list[Interest]] = {}
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed: asyncio.Future[None] | None = None
        self._retry: asyncio.Future[None] | None = None
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

    async def ready(self) -> None:
        """Make sure the subscription is up before a window is joined (waits for the first
        subscription only; later reconnects happen in the background)."""
        if self._listener is None or self._listener.done():
            loop = asyncio.get_running_loop()
            self._subscribed = loop.create_future()
            self._listener = loop.create_task(self._listen_forever(self._subscribed))
        subscribed = self._subscribed
        if subscribed is not None and not subscribed.done():
            await asyncio.shield(subscribed)

    def _reconnect_now(self) -> None:
        retry = self._retry
        if retry is not None and not retry.done():
            retry.set_result(None)

    def _wake_all(self) -> None:
        for interests in self._waiters.values():
            for interest in interests:
                interest.wake()

    async def _listen_forever(self, subscribed: asyncio.Future[None]) -> None:
        delay = RECONNECT_FIRST_DELAY
        while True:
            pubsub = self.conn.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            try:
                await pubsub.subscribe(self.channel)
                self.conn.answered()
                if not subscribed.done():
                    subscribed.set_result(None)
                self._wake_all()  # anything released while we were away: look again
                delay = RECONNECT_FIRST_DELAY
                await self._listen(pubsub)
            except UNAVAILABLE as exc:
                if self.conn.closing:
                    return
                self.conn.outage.failed(exc)
                if not subscribed.done():
                    subscribed.set_result(None)  # the join that waits meets the outage itself
                self._wake_all()
            self._pubsub = None
            await _close(pubsub)
            self._retry = asyncio.get_running_loop().create_future()
            await sleep_or_wake(self._retry, delay)  # or at once, when Redis answers a command
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except RedisTimeoutError:
                continue
            if msg is not None and msg.get("type") == "message":
                self._deliver(msg["data"])

    def _deliver(self, data: str) -> None:
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
        self._listener = None
        self._subscribed = None
        self._pubsub = None

    async def close(self) -> None:
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()
        if self._pubsub is not None:
            await _close(self._pubsub)


async def _close(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except Exception:
        log.debug("closing a pub/sub connection failed", exc_info=True)
