"""The Redis backend under real faults: a sleeping or restarted redis-server, expired leases,
malformed keys, outages, cancellations. Each test names the item of issue 12 it covers.

Faults are real: ``DEBUG SLEEP`` blocks the server, ``kill``/``start`` stop and restart it (with
an append-only file, so acknowledged writes survive), keys are written directly. Where a fault
must hit one precise command, `_on_script` starts it from the backend's writes (`Batcher.execute`)
just before (or after) the write carrying that command; the command still goes to the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis_keys as rk
from redis_scenarios import waiters_through_a_restart
from redis_workers import RedisServer

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    FakeClock,
    OperationRejectedError,
    OperationStatus,
    OutcomeUnknownError,
    Runtime,
    cleanup_system_health_check,
    with_conflict_resolution,
)
from contend.backends.redis import (
    LeaseLostError,
    RedisBackend,
    RedisDataError,
    RedisUnavailableError,
    scripts,
)

NONE = CleanupConfig(
    strategy=CleanupStrategy.NONE, immediate_cleanup_priorities=[], debug_retention_priorities=[]
)
DEFERRED = CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=30)


class Account(Entity):
    balance: int = 0


def _worker(server: RedisServer, prefix: str, **kwargs: Any) -> Runtime:
    kwargs.setdefault("lease_ms", 2000)
    return Runtime(
        backend=RedisBackend.from_url(server.url, prefix=prefix, **kwargs),
        clock=FakeClock(),
        memory_probe=lambda: 0.0,
    )


def _redis(rt: Runtime) -> RedisBackend:
    assert isinstance(rt.backend, RedisBackend)
    return rt.backend


def _k(prefix: str, target: object, suffix: str) -> str:
    return rk.key(prefix, target, suffix)


def _debug_sleep(server: RedisServer, seconds: float) -> threading.Thread:
    """Block the server for `seconds` (DEBUG SLEEP from a thread of its own)."""

    def sleep() -> None:
        with contextlib.suppress(redis.RedisError):
            redis.Redis(port=server.port).execute_command("DEBUG", "SLEEP", str(seconds))

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    return thread


async def _server_asleep(server: RedisServer, seconds: float) -> threading.Thread:
    thread = _debug_sleep(server, seconds)
    await asyncio.sleep(0.05)  # the DEBUG SLEEP is running when this returns
    return thread


async def _on_script(
    rt: Runtime,
    when: Callable[[tuple[Any, ...]], bool],
    *,
    before: Callable[[], Awaitable[object]] | None = None,
    after: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Start a fault right before (or after) the first script call whose arguments match.

    Every script is loaded first, so the matching call is the one Redis runs (not a NOSCRIPT
    attempt that redis-py repeats after loading the script)."""
    batch = _redis(rt).conn.batch
    for name in scripts.__all__:
        await batch.client.script_load(getattr(scripts, name))
    original = batch.execute
    fired = False

    async def execute(commands: list[tuple[Any, ...]]) -> list[Any]:
        nonlocal fired
        hit = not fired and any(c[0] == "EVALSHA" and when(c[3:]) for c in commands)
        if hit:
            fired = True
            if before is not None:
                await before()
        out = await original(commands)
        if hit and after is not None:
            await after()
        return out

    batch.execute = execute  # type: ignore[method-assign]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A redis-server of this test's own, with an append-only file (it gets restarted)."""
    own = RedisServer(aof=True)
    own.start()
    yield own
    own.stop()


@pytest.fixture
async def worker(redis_server: RedisServer, prefix: str) -> AsyncIterator[Runtime]:
    rt = _worker(redis_server, prefix)
    yield rt
    rt.cleanup.stop()
    await rt.aclose()


# item 2 -------------------------------------------------------------------------------------------
async def test_a_refused_unguarded_write_leaves_no_stale_copy_behind(
    redis_server: RedisServer, prefix: str
) -> None:
    """Item 2: with OCC off, a write refused because the lease ran out must not leave this
    worker's copy changed, or its next call writes it over another worker's commit."""
    a, b = _worker(redis_server, prefix), _worker(redis_server, prefix)
    sync = redis_server.client()

    @with_conflict_resolution(occ=False, cleanup=NONE, runtime=b)
    async def add_on_b(acct: Account, amount: int) -> None:
        acct.balance += amount

    @with_conflict_resolution(occ=False, cleanup=NONE, runtime=a)
    async def add_on_a(acct: Account, amount: int) -> None:
        if amount == 1:  # the first call: its lease runs out while it works
            sync.pexpire(_k(prefix, acct.ecs_id, f"lease:{acct.ecs_id}"), 1)
            await add_on_b(b_acct, 10)  # another worker takes the target and commits
        acct.balance += amount

    acct = Account()
    await a.registry.register(acct)
    b_acct = await b.registry.register(Account(ecs_id=acct.ecs_id))
    assert isinstance(b_acct, Account)
    with pytest.raises(LeaseLostError):
        await add_on_a(acct, 1)
    await add_on_a(acct, 100)
    assert acct.balance == 110  # the refused +1 is gone, B's +10 is kept
    stored = await b.registry.get_entity(acct.ecs_id, Account)
    assert stored is not None
    assert stored.balance == 110
    await a.aclose()
    await b.aclose()


# item 3 -------------------------------------------------------------------------------------------
async def _deferred_zombies(rt: Runtime, n: int) -> list[uuid.UUID]:
    @with_conflict_resolution(cleanup=DEFERRED, runtime=rt)
    async def touch(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    results = await asyncio.gather(*(touch(acct) for _ in range(n + 1)), return_exceptions=True)
    return [r.op_id for r in results if isinstance(r, OperationRejectedError)]


async def test_a_sweep_meeting_an_unreadable_record_removes_and_counts_the_whole_batch(
    worker: Runtime, redis_server: RedisServer, prefix: str
) -> None:
    """Items 3 and 9: one record with unparsable JSON among the due ones."""
    ids = await _deferred_zombies(worker, 5)
    worker.cleanup.stop()
    redis_server.client().hset(
        rk.found(redis_server.client(), prefix, f"op:{ids[2]}"), "j", "{not json"
    )
    assert isinstance(worker.clock, FakeClock)
    worker.clock.advance(minutes=31)
    assert await worker.cleanup.sweep() == 5
    assert worker.cleanup.removed["ttl"] == 5
    assert await _redis(worker).refresh_zombie_count() == 0
    assert rk.total(redis_server.client(), prefix, "zcard", "due") == 0
    assert _redis(worker).conn.bad_keys["record"] == 1


async def test_a_sweep_whose_reply_is_lost_is_replayed_and_counted(
    redis_server: RedisServer, prefix: str
) -> None:
    """Item 3: the reply of a sweep batch arrives after the socket timeout; the batch is not
    lost: the next sweep counts it."""
    rt = _worker(redis_server, prefix, socket_timeout=0.2)
    await _deferred_zombies(rt, 4)
    rt.cleanup.stop()
    assert isinstance(rt.clock, FakeClock)
    rt.clock.advance(minutes=31)
    owner = _redis(rt).owner
    asleep: list[threading.Thread] = []

    async def block() -> None:
        asleep.append(await _server_asleep(redis_server, 1.0))

    await _on_script(rt, lambda args: len(args) > 2 and args[2] == owner, before=block)
    with pytest.raises(RedisUnavailableError):
        await rt.cleanup.sweep()
    await asyncio.to_thread(asleep[0].join)
    await _redis(rt).drain()  # Redis answers: the batch is replayed (or the next sweep does it)
    await rt.cleanup.sweep()
    assert rt.cleanup.removed["ttl"] == 4
    assert await _redis(rt).refresh_zombie_count() == 0
    assert rk.total(redis_server.client(), prefix, "zcard", "due") == 0
    await rt.aclose()


# item 6 -------------------------------------------------------------------------------------------
async def test_a_zombie_is_booked_with_its_due_time_and_expiry_in_one_step(
    server: RedisServer, prefix: str
) -> None:
    """Item 6: Redis dies right after the booking: the zombie has its due time and its key's
    expiry all the same, so a sweep (or the backstop) removes it."""
    rt = _worker(server, prefix)

    async def kill() -> None:
        server.kill()

    await _on_script(rt, lambda args: "rejected" in args, after=kill)
    ids = await _deferred_zombies(rt, 1)
    rt.cleanup.stop()
    server.start()
    sync = server.client()
    where = rk.found(sync, prefix, f"op:{ids[0]}")
    assert sync.zscore(where.replace(f"op:{ids[0]}", "due"), str(ids[0])) is not None
    assert sync.pttl(where) > 30 * 60 * 1000
    await rt.aclose()


# item 7 -------------------------------------------------------------------------------------------
async def _deposit_then_sleep(
    rt: Runtime, server: RedisServer, seconds: float
) -> tuple[Callable[[Account, int], Awaitable[None]], list[threading.Thread], Account]:
    """An OCC deposit that puts Redis to sleep for `seconds` just before its commit is sent."""
    asleep: list[threading.Thread] = []

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=rt)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount
        asleep.append(await _server_asleep(server, seconds))

    acct = Account()
    await rt.registry.register(acct)
    return deposit, asleep, acct


@pytest.mark.parametrize("attempt", range(3))
async def test_a_commit_whose_reply_comes_too_late_is_reported_as_what_happened(
    redis_server: RedisServer, prefix: str, attempt: int
) -> None:
    """Item 7: the commit reaches Redis while it sleeps; its reply comes after the socket
    timeout. The caller is told success only if it applied, "not applied" only if it did not,
    and the record agrees."""
    rt = _worker(redis_server, prefix, socket_timeout=0.2, settle_timeout=5.0)
    deposit, asleep, acct = await _deposit_then_sleep(rt, redis_server, 0.8)
    try:
        await deposit(acct, 7)
    except RedisUnavailableError:
        applied_said = False
    else:
        applied_said = True
    await asyncio.to_thread(asleep[0].join)
    other = _worker(redis_server, prefix)
    stored = await other.registry.get_entity(acct.ecs_id, Account)
    assert stored is not None
    assert (stored.balance == 7) is applied_said
    await _redis(rt).drain()
    failed = await other.registry.operations_with_status(OperationStatus.FAILED)
    assert len(failed) == (0 if applied_said else 1)
    await other.aclose()
    await rt.aclose()


async def test_an_outcome_redis_cannot_tell_in_time_is_unknown_and_settled_later(
    redis_server: RedisServer, prefix: str
) -> None:
    """Item 7: Redis stays silent past settle_timeout: OutcomeUnknownError (not a connection
    error, so retry helpers leave it alone); once Redis answers, the record is settled: a
    FAILED zombie only if the write did not apply."""
    rt = _worker(redis_server, prefix, socket_timeout=0.2, settle_timeout=0.3)
    deposit, asleep, acct = await _deposit_then_sleep(rt, redis_server, 1.5)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknownError) as info:
        await deposit(acct, 7)
    assert time.monotonic() - started < 1.4
    assert not isinstance(info.value, ConnectionError)
    assert "outcome unknown" in str(info.value)
    await asyncio.to_thread(asleep[0].join)
    assert await _redis(rt).drain()
    other = _worker(redis_server, prefix)
    stored = await other.registry.get_entity(acct.ecs_id, Account)
    assert stored is not None
    failed = await other.registry.operations_with_status(OperationStatus.FAILED)
    if stored.balance == 7:
        assert failed == []
    else:
        (record,) = failed
        assert record.ecs_id == info.value.op_id
        assert "outcome unknown" in (record.error_message or "")
    await other.aclose()
    await rt.aclose()


async def test_a_commit_is_the_calls_last_write(server: RedisServer, prefix: str) -> None:
    """Item 7: Redis dies right after the commit applied: the caller is told success (nothing
    else it needed could fail), and the target is free once Redis is back."""
    rt = _worker(server, prefix, socket_timeout=0.5, lease_ms=5000)

    async def kill() -> None:
        server.kill()

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=rt)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    acct = Account()
    await rt.registry.register(acct)
    await _on_script(
        rt, lambda args: str(acct.ecs_id) in args and '"balance":5' in str(args), after=kill
    )
    await deposit(acct, 5)
    assert acct.balance == 5
    server.start()
    started = time.monotonic()
    await asyncio.wait_for(deposit(acct, 1), 10)
    assert time.monotonic() - started < 2.0  # not held until the 5 s lease ran out
    assert acct.balance == 6
    await rt.aclose()


# item 8 -------------------------------------------------------------------------------------------
async def test_a_release_that_failed_is_retried_as_soon_as_redis_answers(
    server: RedisServer, prefix: str
) -> None:
    """Item 8: the winner's end (and so its release) cannot reach Redis; once Redis is back
    (restarted, with the lease still in its append-only file), the target is free at once, not
    after the lease runs out."""
    rt = _worker(server, prefix, socket_timeout=0.3, connect_timeout=0.2, lease_ms=8000)

    @with_conflict_resolution(cleanup=NONE, runtime=rt)
    async def fail(acct: Account) -> None:
        server.kill()
        raise ValueError("boom")

    @with_conflict_resolution(cleanup=NONE, runtime=rt)
    async def touch(acct: Account) -> str:
        return "ok"

    acct = Account()
    await rt.registry.register(acct)
    with pytest.raises(ValueError, match="boom"):
        await fail(acct)
    server.start()
    assert server.client().get(_k(prefix, acct.ecs_id, f"lease:{acct.ecs_id}")) is not None
    started = time.monotonic()
    assert await asyncio.wait_for(touch(acct), 15) == "ok"
    assert time.monotonic() - started < 3.0
    (zombie,) = await rt.registry.zombies(acct.ecs_id)
    assert zombie.status is OperationStatus.FAILED
    await rt.aclose()


# item 9 -------------------------------------------------------------------------------------------
async def test_a_non_uuid_field_in_the_zombie_counts_leaves_the_health_check_working(
    worker: Runtime, redis_server: RedisServer, prefix: str
) -> None:
    await _deferred_zombies(worker, 2)
    redis_server.client().hset(rk.everywhere(prefix, "zt")[0], "not-a-target", "3")
    report = await cleanup_system_health_check(worker)
    assert list(report["zombie_counts_by_target"].values()) == [2]
    assert _redis(worker).conn.bad_keys["count"] == 1
    assert any("Unreadable Redis keys" in i for i in report["issues"])


async def test_an_unreadable_record_is_left_out_of_listings_and_the_health_check(
    worker: Runtime, redis_server: RedisServer, prefix: str
) -> None:
    ids = await _deferred_zombies(worker, 3)
    sync = redis_server.client()
    sync.hset(rk.found(sync, prefix, f"op:{ids[0]}"), "j", "[1, 2")
    zombies = await worker.registry.zombies()
    assert {z.ecs_id for z in zombies} == set(ids[1:])
    report = await cleanup_system_health_check(worker)
    assert report["total_zombie_operations"] == 3
    assert _redis(worker).conn.bad_keys["record"] == 1
    with pytest.raises(RedisDataError, match=str(ids[0])):
        await worker.registry.get_operation(ids[0])


async def test_a_non_numeric_entity_version_fails_only_calls_on_that_entity(
    worker: Runtime, redis_server: RedisServer, prefix: str
) -> None:
    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=worker)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    broken, fine = Account(), Account()
    await deposit(broken, 1)
    redis_server.client().hset(_k(prefix, broken.ecs_id, f"e:{broken.ecs_id}"), "v", "one")
    with pytest.raises(RedisDataError, match=f"e:{broken.ecs_id}") as info:
        await deposit(broken, 1)
    assert "not a number" in str(info.value)
    await deposit(fine, 5)
    assert fine.balance == 5
    assert _redis(worker).conn.bad_keys["entity"] == 1


async def test_a_lease_without_ttl_blocks_no_longer_than_a_lease(
    redis_server: RedisServer, prefix: str
) -> None:
    rt = _worker(redis_server, prefix, lease_ms=300)

    @with_conflict_resolution(cleanup=NONE, runtime=rt)
    async def touch(acct: Account) -> str:
        return "ok"

    acct = Account()
    redis_server.client().set(_k(prefix, acct.ecs_id, f"lease:{acct.ecs_id}"), "someone-long-gone")
    started = time.monotonic()
    assert await asyncio.wait_for(touch(acct), 5) == "ok"
    assert time.monotonic() - started < 1.5
    assert _redis(rt).conn.bad_keys["repaired"] == 1
    await rt.aclose()


# item 10 ------------------------------------------------------------------------------------------
async def test_the_health_check_of_a_process_that_made_no_call_reads_the_total_from_redis(
    worker: Runtime, redis_server: RedisServer, prefix: str
) -> None:
    await _deferred_zombies(worker, 4)
    monitor = _worker(redis_server, prefix)
    report = await cleanup_system_health_check(monitor)
    assert report["total_zombie_operations"] == 4
    assert sum(report["zombie_counts_by_target"].values()) == 4
    await monitor.aclose()


async def test_the_health_check_reports_redis_down_instead_of_raising(prefix: str) -> None:
    own = RedisServer()
    own.start()
    rt = _worker(own, prefix, socket_timeout=0.2, connect_timeout=0.2)
    own.stop()
    report = await cleanup_system_health_check(rt)
    assert report["status"] == "unhealthy"
    assert any("unavailable" in i for i in report["issues"])
    await rt.aclose()


# item 11 ------------------------------------------------------------------------------------------
async def test_an_outage_is_logged_once_with_counts_and_its_end(
    caplog: pytest.LogCaptureFixture, prefix: str
) -> None:
    own = RedisServer()
    own.start()
    rt = _worker(own, prefix, socket_timeout=0.2, connect_timeout=0.2)

    @with_conflict_resolution(occ=True, cleanup=NONE, runtime=rt)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    accounts = [Account() for _ in range(20)]
    for a in accounts:
        await deposit(a, 1)
    own.stop()
    caplog.set_level(logging.INFO, logger="contend")
    caplog.clear()
    for _ in range(5):
        results = await asyncio.gather(*(deposit(a, 1) for a in accounts), return_exceptions=True)
        assert all(isinstance(r, RedisUnavailableError) for r in results)
    own.start()
    for a in accounts:
        await deposit(a, 1)
    assert await _redis(rt).drain()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.exc_info for r in records if r.exc_info] == []
    assert len(records) <= 3, [r.getMessage() for r in records]
    assert "unavailable" in records[0].getMessage()
    assert "answers again" in records[-1].getMessage()
    assert "commands failed" in records[-1].getMessage()
    await rt.aclose()
    own.stop()


# item 12 ------------------------------------------------------------------------------------------
async def test_a_worker_that_never_sweeps_keeps_nothing_per_record(
    redis_server: RedisServer, prefix: str
) -> None:
    rt = _worker(redis_server, prefix)
    sweeper = _worker(redis_server, prefix)
    for _ in range(25):
        await _deferred_zombies(rt, 3)
    rt.cleanup.stop()
    assert isinstance(sweeper.clock, FakeClock)
    sweeper.clock.advance(minutes=31)
    assert await sweeper.cleanup.sweep() == 75
    assert _redis(rt).footprint() == dict.fromkeys(_redis(rt).footprint(), 0)
    await rt.aclose()
    await sweeper.aclose()


# item 13 ------------------------------------------------------------------------------------------
async def test_a_cancelled_call_waiting_on_redis_is_always_cancelled(worker: Runtime) -> None:
    """Item 13: on CPython 3.11, redis-py's ``wait_for`` can swallow a cancellation that lands as
    a command is sent; contend's calls must be cancelled all the same, every time."""

    @with_conflict_resolution(pre_ecs=False, occ=True, cleanup=NONE, runtime=worker)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    accounts = [Account() for _ in range(8)]
    for a in accounts:
        await deposit(a, 0)
    rng = random.Random(13)
    ignored = requested = 0
    for i in range(400):
        task = asyncio.ensure_future(deposit(accounts[i % 8], 1))
        for _ in range(rng.randint(0, 6)):
            await asyncio.sleep(0)
        if task.cancel():
            requested += 1
        try:
            await task
        except asyncio.CancelledError:
            continue
        except Exception:
            continue
        ignored += task.cancelling() > 0
    assert requested > 100
    assert ignored == 0, f"{ignored} of {requested} cancellations ignored on {sys.version}"
    assert await asyncio.wait_for(deposit(accounts[0], 1), 5) is None


# the wait conflict policy -------------------------------------------------------------------------
async def test_waiters_wait_through_a_redis_restart_and_go_through(
    server: RedisServer, prefix: str
) -> None:
    """Calls waiting behind a holder when Redis restarts wait through the outage (their places
    are in Redis, their deadlines still hold) and all go through once it answers; the calls
    under the reject policy staged with them fail at once (`RedisUnavailableError`, nothing
    written); no record stays pending or executing."""
    rt = _worker(server, prefix, socket_timeout=0.3, connect_timeout=0.2, lease_ms=5000)

    async def restart(_: Any) -> None:
        server.kill()
        await asyncio.sleep(0.3)
        server.start()

    results, acct = await waiters_through_a_restart(rt, restart)
    sync = server.client()
    assert rk.total(sync, prefix, "scard", "os:pending") == 0
    assert rk.total(sync, prefix, "scard", "os:executing") == 0
    failed = [r for r in results if isinstance(r, Exception)]
    zombies = await rt.registry.zombies(acct.ecs_id)
    assert len(zombies) == len(failed)
    await rt.aclose()
