"""Several worker processes on one real redis-server: the guarantees hold across processes."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
import redis
import redis_keys as rk
import redis_workers as w
from redis_workers import RedisServer

from contend import (
    CleanupConfig,
    CleanupStrategy,
    OperationCleanedEvent,
    Runtime,
    with_conflict_resolution,
)

SPAWN = mp.get_context("spawn")


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Four spawned workers, shared by this module's tests (spawning costs ~1 s each)."""
    with ProcessPoolExecutor(4, mp_context=SPAWN) as executor:
        yield executor


def _keys(server: RedisServer, prefix: str) -> redis.Redis:
    return redis.Redis(port=server.port, decode_responses=True)


async def _kill_a_lease_holder(server: RedisServer, prefix: str, lease_ms: int) -> tuple[str, str]:
    """A worker that wins a target and holds it, SIGKILLed; returns (target, its record id)."""
    target = str(uuid.uuid4())
    started = SPAWN.Event()
    proc = SPAWN.Process(
        target=w.hold_forever, args=(server.url, prefix, target, lease_ms, started)
    )
    proc.start()
    try:
        assert await asyncio.to_thread(started.wait, 30)
        orphan = _keys(server, prefix).get(rk.key(prefix, target, f"lease:{target}"))
        assert orphan is not None
        os.kill(proc.pid or 0, signal.SIGKILL)
        await asyncio.to_thread(proc.join, 10)
    finally:
        if proc.is_alive():
            proc.kill()
    return target, orphan


def test_four_workers_occ_deposits_lose_nothing(
    pool: ProcessPoolExecutor, redis_server: RedisServer, prefix: str
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(10)]
    futs = [pool.submit(w.deposits, redis_server.url, prefix, ids, 250, seed) for seed in range(4)]
    results = [f.result(timeout=120) for f in futs]

    r = _keys(redis_server, prefix)
    balances = [
        w.Account.model_validate_json(r.hget(rk.key(prefix, i, f"e:{i}"), "d") or "{}").balance
        for i in ids
    ]
    assert sum(balances) == sum(res["committed"] for res in results)
    for res in results:
        assert res["succeeded"] + res["failed"] == 250
        assert res["other"] == 0
    failed = sum(res["failed"] for res in results)
    assert rk.total(r, prefix, "scard", "os:failed") == failed
    assert rk.total(r, prefix, "scard", "os:pending") == 0
    assert rk.total(r, prefix, "scard", "os:executing") == 0
    assert rk.total(r, prefix, "get", "zc") == failed


def test_four_processes_one_window_exactly_one_winner(
    pool: ProcessPoolExecutor, redis_server: RedisServer, prefix: str
) -> None:
    target = str(uuid.uuid4())
    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(4)
        futs = [
            pool.submit(w.contend_once, redis_server.url, prefix, target, p, 400, barrier)
            for p in (2, 5, 8, 3)
        ]
        results = [f.result(timeout=60) for f in futs]
    assert [res["won"] for res in results] == [False, False, True, False]
    winners = {res["winner"] for res in results if not res["won"]}
    assert len(winners) == 1
    r = _keys(redis_server, prefix)
    assert rk.total(r, prefix, "scard", "os:rejected") == 3
    assert (
        w.Slot.model_validate_json(r.hget(rk.key(prefix, target, f"e:{target}"), "d") or "").value
        == 8
    )


async def test_killed_worker_blocks_only_until_its_lease_expires(
    redis_server: RedisServer, prefix: str
) -> None:
    target, orphan = await _kill_a_lease_holder(redis_server, prefix, lease_ms=800)
    r = _keys(redis_server, prefix)

    from contend.backends.redis import RedisBackend

    rt = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, lease_ms=800),
        memory_probe=lambda: 0.0,
    )
    slot = w.Slot(ecs_id=uuid.UUID(target))

    cleaned: asyncio.Queue[OperationCleanedEvent] = asyncio.Queue()
    rt.events.subscribe(OperationCleanedEvent, cleaned.put_nowait)

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.NONE), runtime=rt)
    async def write(s: w.Slot) -> str:
        s.value = 7
        return "done"

    assert await asyncio.wait_for(write(slot), 10) == "done"
    assert slot.value == 7
    # The orphan ran under IMMEDIATE cleanup: buried FAILED by this survivor, then removed.
    event = await asyncio.wait_for(cleaned.get(), 10)
    assert (str(event.op_id), event.status, event.reason) == (orphan, "failed", "immediate")
    assert await rt.backend.get_operation(uuid.UUID(orphan)) is None
    assert rt.cleanup.removed["immediate"] == 1
    assert r.zscore(rk.key(prefix, target, "inflight"), orphan) is None
    assert rk.total(r, prefix, "scard", "os:executing") == 0
    await rt.aclose()


def test_zombie_cap_holds_under_four_writers(
    pool: ProcessPoolExecutor, redis_server: RedisServer, prefix: str
) -> None:
    target = str(uuid.uuid4())
    futs = [pool.submit(w.make_zombies, redis_server.url, prefix, target, 25, 5) for _ in range(4)]
    rejected = sum(f.result(timeout=60) for f in futs)
    assert rejected >= 25 * 4 // 2
    r = _keys(redis_server, prefix)
    assert r.zcard(rk.key(prefix, target, f"zb:{target}")) == 5
    assert rk.total(r, prefix, "get", "zc") == 5
    assert rk.total(r, prefix, "scard", "os:rejected") == 5
    assert r.scard(rk.key(prefix, target, f"ot:{target}")) == 5


async def test_a_sweep_reaps_an_orphan_on_a_target_nobody_calls_again(
    redis_server: RedisServer, prefix: str
) -> None:
    target, orphan = await _kill_a_lease_holder(redis_server, prefix, lease_ms=500)
    r = _keys(redis_server, prefix)

    from contend.backends.redis import RedisBackend

    rt = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, lease_ms=500),
        memory_probe=lambda: 0.0,
    )
    deadline = asyncio.get_running_loop().time() + 10
    while r.zscore(rk.key(prefix, target, "inflight"), orphan) is not None:
        await rt.cleanup.sweep()  # no staging call on that target: the sweep reaps it
        assert asyncio.get_running_loop().time() < deadline, "the orphan was never reaped"
        await asyncio.sleep(0.1)
    assert rt.cleanup.removed["immediate"] == 1
    assert await rt.backend.get_operation(uuid.UUID(orphan)) is None
    assert rk.total(r, prefix, "scard", "os:executing") == 0
    await rt.aclose()


@pytest.mark.parametrize("wait_ms", [0, 60_000], ids=["reject", "wait"])
async def test_a_killed_workers_queued_call_does_not_win_after_its_lease(
    redis_server: RedisServer, prefix: str, wait_ms: int
) -> None:
    """Item 5: the killed worker also had a call waiting in the target's next window, at a
    higher priority (under the wait policy: carried from window to window for a minute); once
    its lease expires that call must not win (and take a fresh lease): the target is blocked
    for at most one lease after the kill."""
    from contend.backends.redis import RedisBackend

    lease_ms = 800
    target = str(uuid.uuid4())
    started = SPAWN.Event()
    proc = SPAWN.Process(
        target=w.hold_and_queue,
        args=(redis_server.url, prefix, target, lease_ms, started, wait_ms),
    )
    proc.start()
    r = _keys(redis_server, prefix)
    try:
        assert await asyncio.to_thread(started.wait, 30)
        for _ in range(1000):  # until the queued call has joined the next window
            if r.zcard(rk.key(prefix, target, f"wq:{target}")):
                break
            await asyncio.sleep(0.01)
        os.kill(proc.pid or 0, signal.SIGKILL)
        killed = asyncio.get_running_loop().time()
        await asyncio.to_thread(proc.join, 10)
    finally:
        if proc.is_alive():
            proc.kill()
    rt = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, lease_ms=lease_ms),
        memory_probe=lambda: 0.0,
    )

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.NONE), runtime=rt)
    async def write(s: w.Slot) -> str:
        return "done"

    assert await asyncio.wait_for(write(w.Slot(ecs_id=uuid.UUID(target))), 10) == "done"
    blocked = asyncio.get_running_loop().time() - killed
    assert blocked < 1.5 * lease_ms / 1000, f"blocked {blocked:.2f} s after the kill"
    deadline = asyncio.get_running_loop().time() + 10
    while rk.total(r, prefix, "zcard", "inflight"):
        await rt.backend.reap_orphans()  # type: ignore[attr-defined]
        assert asyncio.get_running_loop().time() < deadline, "orphans were never reaped"
        await asyncio.sleep(0.1)
    assert (
        rk.total(r, prefix, "scard", "os:pending")
        == rk.total(r, prefix, "scard", "os:executing")
        == 0
    )
    assert (
        rk.total(r, prefix, "scard", "os:failed") == 1
    )  # the hung winner; the queued call (priority
    # 10: immediate cleanup by default) ended cancelled and left at once
    assert rt.cleanup.removed["immediate"] == 1
    await rt.aclose()


def test_two_workers_waiting_on_one_target_get_every_call_through(
    pool: ProcessPoolExecutor, redis_server: RedisServer, prefix: str
) -> None:
    """The wait policy across processes: two workers, 60 transfers each out of one shared
    account; every call goes through (none rejected), the money is conserved, no record is
    left pending or executing."""
    source = str(uuid.uuid4())
    dests = [str(uuid.uuid4()) for _ in range(3)]
    r = _keys(redis_server, prefix)
    with SPAWN.Manager() as manager:
        barrier = manager.Barrier(2)
        futs = [
            pool.submit(w.waiting_transfers, redis_server.url, prefix, source, dests, 60, barrier)
            for _ in range(2)
        ]
        results = [f.result(timeout=120) for f in futs]
    assert [(res["succeeded"], res["rejected"], res["other"]) for res in results] == [
        (60, 0, 0),
        (60, 0, 0),
    ]

    def balance(i: str) -> int:
        return w.Account.model_validate_json(
            r.hget(rk.key(prefix, source, f"e:{i}"), "d") or "{}"
        ).balance

    moved = sum(res["moved"] for res in results)
    assert balance(source) == -moved
    assert sum(balance(d) for d in dests) == moved
    assert (
        rk.total(r, prefix, "scard", "os:pending")
        == rk.total(r, prefix, "scard", "os:executing")
        == 0
    )
    assert rk.total(r, prefix, "zcard", "inflight") == 0
    assert not r.exists(rk.key(prefix, source, f"wq:{source}"))
