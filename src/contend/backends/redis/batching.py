"""Auto-pipelining: the commands issued in one event-loop tick go to Redis in one write.

redis-py's asyncio client spends about 300k instructions per round trip (taking a connection
from the pool, packing, the socket write, reading, putting it back), several times what Redis
spends running a script. Many tasks of one worker each sending one ``EVALSHA`` in the same tick
(the calls of a busy worker) share one pipeline instead: one connection, one write, the replies
read in order. Each command keeps its own reply or error, so what a caller learns of its own
command is the same as if it had been sent alone; a pipeline that fails on the way (a lost
connection, a timeout) fails each of its commands, and a write among them is settled through
its outcome key as a write sent alone would be.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hiredis import pack_command
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from contend.backends.redis.cluster import exchange, write_by_node

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["Batcher"]

MAX_BATCH = 512
"""Commands per pipeline at most (a longer tick sends several)."""


class Batcher:
    """Collects commands during a tick and sends them as one pipeline when the tick ends."""

    def __init__(self, client: aioredis.Redis, scripts: dict[str, str]) -> None:
        self.client = client
        self.scripts = scripts
        """sha -> source, to load a script Redis lost (a restart, SCRIPT FLUSH) and resend."""
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self.pipelines = 0
        self.commands = 0

    def send(self, *command: Any) -> asyncio.Future[Any]:
        """Queue `command`; its future gets its reply (or its error) once the pipeline is
        answered."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queue), MAX_BATCH):
            task = loop.create_task(self._send(queue[start : start + MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def reset(self) -> None:
        """The event loop changed: what was queued on the old one can never be sent."""
        self._queue.clear()
        self._scheduled = False
        self._sending.clear()

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        self.pipelines += 1
        self.commands += len(batch)
        try:
            replies = await self.execute([c for c, _ in batch])
        except BaseException as exc:
            for _, fut in batch:
                _fail(fut, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), out in zip(batch, replies, strict=True):
            if fut.done():
                continue
            if isinstance(out, Exception):
                fut.set_exception(out)
            else:
                fut.set_result(out)

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send `commands` in one write; each one's reply or error, in order. A script Redis
        does not know (NOSCRIPT) is loaded and its command sent again."""
        replies = await self._write(commands)
        again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if again:
            for i in again:
                await self._load(commands[i])
            for i, r in zip(again, await self._write([commands[i] for i in again]), strict=True):
                replies[i] = r
        return replies

    async def _write(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            try:
                return await self._write_on(pool, commands)
            except (RedisConnectionError, ConnectionError):
                # a connection left stale (a restart, an idle timeout): once more on a fresh
                # one, as redis-py's own retry would (every script is idempotent); a timeout
                # is not retried (Redis is slow: the caller learns it at once)
                return await self._write_on(pool, commands)
        cluster: Any = self.client  # a cluster client (it has no single pool): per node
        return await write_by_node(cluster, commands, _packed)

    async def _write_on(self, pool: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One connection of the pool: the commands packed by hiredis in one write, then the
        replies read in order (redis-py's pipeline does the same with ~3x the instructions)."""
        conn = await pool.get_connection()
        try:
            return await exchange(conn, commands, _packed)
        finally:
            await pool.release(conn)

    async def _load(self, command: tuple[Any, ...]) -> None:
        if command and command[0] == "EVALSHA":
            source = self.scripts.get(str(command[1]))
            if source is not None:
                await self.client.script_load(source)


def _packed(command: tuple[Any, ...]) -> bytes:
    try:
        return bytes(pack_command(command))
    except TypeError:  # an int or str subclass (an enum): as its plain value
        return bytes(pack_command(tuple(_plain(a) for a in command)))


def _plain(arg: Any) -> Any:
    if isinstance(arg, (bytes, float)):
        return arg
    if isinstance(arg, int):
        return int(arg)
    if isinstance(arg, str):
        return "".join((arg,))  # its characters, whatever its __str__ says
    return str(arg)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if fut.done():
        return
    if isinstance(exc, Exception):
        fut.set_exception(exc)
        fut.exception()
    else:
        fut.cancel()
