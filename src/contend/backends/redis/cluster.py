"""The commands of one tick on a Redis Cluster: one pipelined write per node that holds them.

redis-py's cluster pipeline treats a timeout or a lost connection on one node as a change of the
cluster: it closes the whole client (every node's connections) and learns the slots again from
the default node, so a node that is merely paused or slow fails the calls on every other node
too. Here each node's share of a tick's commands goes to that node alone, on one of its pooled
connections, and only that node's commands learn of its failure. A command Redis redirects
(``MOVED``, ``ASK``: a slot that moved) or refuses while the cluster changes is sent again through
redis-py's cluster client, which follows the redirection and refreshes its slot map.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

if TYPE_CHECKING:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

__all__ = ["exchange", "write_by_node"]

_REDIRECTED = (AskError, TryAgainError, ClusterDownError)
"""Replies of a node that does not (or no longer) serve a command's slot (MOVED is an AskError):
the command goes again through the cluster client."""

Command = tuple[Any, ...]


def key_of(command: Command) -> Any:
    """The key a command is routed by: ``EVALSHA sha numkeys key ...`` or ``CMD key ...``."""
    return command[3] if command[0] == "EVALSHA" else command[1]


async def write_by_node(
    client: RedisCluster, commands: list[Command], packed: Callable[[Command], bytes]
) -> list[Any]:
    """Each command's reply or error, in order: one write per node, the nodes in parallel; a
    node that fails fails its own commands only (with its error)."""
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    replies: list[Any] = [None] * len(commands)
    for i, command in enumerate(commands):
        node = client.get_node_from_key(key_of(command))
        if node is None:  # the slot map has a hole: the cluster client looks again
            replies[i] = ClusterDownError(f"no node known to serve {key_of(command)!r}")
            continue
        by_node.setdefault(node.name, (node, []))[1].append(i)
    groups = list(by_node.values())
    outs = await asyncio.gather(
        *(_write_to_node(node, [commands[i] for i in indices], packed) for node, indices in groups),
        return_exceptions=True,
    )
    for (_, indices), out in zip(groups, outs, strict=True):
        for k, i in enumerate(indices):
            replies[i] = out if isinstance(out, BaseException) else out[k]
    for i, reply in enumerate(replies):
        if isinstance(reply, _REDIRECTED):
            try:
                replies[i] = await client.execute_command(*commands[i])
            except ResponseError as exc:
                replies[i] = exc
    for reply in replies:
        if isinstance(reply, BaseException) and not isinstance(reply, Exception):
            raise reply  # a cancellation
    return replies


async def _write_to_node(
    node: ClusterNode, commands: list[Command], packed: Callable[[Command], bytes]
) -> list[Any]:
    try:
        return await _write_on(node, commands, packed)
    except (RedisConnectionError, ConnectionError):
        # a connection left stale (a restarted node): once more on a fresh one (every script is
        # idempotent); a timeout is not retried (the node is slow: the caller learns it at once)
        return await _write_on(node, commands, packed)


async def _write_on(
    node: ClusterNode, commands: list[Command], packed: Callable[[Command], bytes]
) -> list[Any]:
    conn = node.acquire_connection()
    try:
        return await exchange(conn, commands, packed)
    except AttributeError as exc:
        # the cluster client closed this node's connections under us (it re-reads the slots
        # after a failure and drops the nodes it had): a lost connection like any other
        raise RedisConnectionError(f"connection to {node.name} closed while in use") from exc
    finally:
        node.release(conn)


async def exchange(
    conn: Any, commands: list[Command], packed: Callable[[Command], bytes]
) -> list[Any]:
    """On one connection: the commands packed in one write, then each reply (or its error
    reply) read in order. A connection that fails on the way is closed (replies may be left
    unread on it) and the failure raised."""
    try:
        await conn.send_packed_command(b"".join([packed(c) for c in commands]), check_health=False)
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(await conn.read_response())
            except ResponseError as exc:
                out.append(exc)
        return out
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
