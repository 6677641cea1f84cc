"""Scenarios the Redis tests run on one node and on a cluster alike (redis_cluster.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    OperationRejectedError,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)
from contend.backends.redis import RedisBackend, RedisUnavailableError

__all__ = ["Account", "count_scripts", "waiters_through_a_restart"]

KEEP = CleanupConfig(
    strategy=CleanupStrategy.NONE, immediate_cleanup_priorities=[], debug_retention_priorities=[]
)


class Account(Entity):
    balance: int = 0


def count_scripts(backend: RedisBackend) -> dict[str, int]:
    """How many times each script is run from now on (a wrapper that counts, then runs it)."""
    counts: dict[str, int] = {}
    start = backend.conn.start

    def counted(name: str, *args: object) -> asyncio.Task[object]:
        counts[name] = counts.get(name, 0) + 1
        return start(name, *args)

    backend.conn.start = counted  # type: ignore[method-assign]
    return counts


async def waiters_through_a_restart(
    rt: Runtime, restart: Callable[[Account], Awaitable[None]]
) -> tuple[list[Any], Account]:
    """Four calls wait (wait policy) behind a holder of one account, two more are staged under
    the reject policy, and `restart(account)` restarts the Redis that holds it. The waiters
    wait through it and all go through; the rejecting ones are refused (rejected, or
    `RedisUnavailableError` if the restart came first; nothing written); a call after it goes
    through too and every write is in Redis. Returns each call's result and the account. Give
    `rt` a lease longer than the restart: a holder whose lease ran out while Redis was down is
    rightly refused its write."""
    entered = asyncio.Event()
    gate = asyncio.Event()

    @with_conflict_resolution(
        pre_ecs=PreECSConfig(conflict_policy="wait", max_wait_ms=20_000), cleanup=KEEP, runtime=rt
    )
    async def add(acct: Account, amount: int) -> int:
        if amount == 0:
            entered.set()
            await gate.wait()
        acct.balance += amount
        return amount

    acct = Account()
    await rt.registry.register(acct)
    holder = asyncio.ensure_future(add(acct, 0))
    await entered.wait()
    waiters = [asyncio.ensure_future(add(acct, 1)) for _ in range(4)]
    rejecting = add.with_max_wait(0)
    waiters += [asyncio.ensure_future(rejecting(acct, 1)) for _ in range(2)]
    await asyncio.sleep(0.05)
    await restart(acct)
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(holder, *waiters, return_exceptions=True), 15)
    assert results[:5] == [0, 1, 1, 1, 1], results
    # a rejecting call is refused: rejected at once if its join reached Redis before the
    # restart, else unavailable; either way nothing of it is written (the balance below)
    assert all(
        isinstance(r, (OperationRejectedError, RedisUnavailableError)) for r in results[5:]
    ), results
    assert await asyncio.wait_for(add(acct, 10), 5) == 10
    backend = rt.backend
    assert isinstance(backend, RedisBackend) and await backend.drain(5)
    stored = await backend.get_entity(acct.ecs_id, Account)
    assert isinstance(stored, Account) and stored.balance == 4 + 10
    return results, acct
