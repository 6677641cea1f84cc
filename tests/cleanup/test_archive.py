"""The SQLite archive: every record that leaves the registry is in the file, and nothing else."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from contend import (
    CleanupConfig,
    CleanupStrategy,
    FakeClock,
    OperationCleanedEvent,
    OperationCompletedEvent,
    OperationRejectedError,
    OperationRejectedEvent,
    Runtime,
    cleanup_system_health_check,
    with_conflict_resolution,
)
from contend.cleanup import CleanupHandlerRegistry
from contend.cleanup.archive import (
    ARCHIVE_PATH_ENV,
    ArchiveCleanupHandler,
    ArchiveReader,
    ArchiveSink,
    install_archive,
)
from contend.testing import Account


def failing(cleanup: CleanupConfig, name: str = "fail") -> Callable[[Account], Awaitable[None]]:
    @with_conflict_resolution(cleanup=cleanup)
    async def fail(acct: Account) -> None:
        raise ValueError(name)

    return fail


DEFERRED_10 = CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=10)


async def test_archive_holds_exactly_the_zombies_that_left_the_registry(
    runtime: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite3"
    install_archive(runtime, path)
    zombies: set[UUID] = set()
    cleaned: list[UUID] = []
    runtime.events.subscribe(OperationRejectedEvent, lambda e: zombies.add(e.op_id))
    runtime.events.subscribe(
        OperationCompletedEvent,
        lambda e: zombies.add(e.op_id) if e.status != "succeeded" else None,
    )
    runtime.events.subscribe(OperationCleanedEvent, lambda e: cleaned.append(e.op_id))

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE))
    async def deposit(acct: Account) -> None:
        acct.balance += 1

    for _ in range(3):
        shared = Account()
        await asyncio.gather(*(deposit(shared) for _ in range(4)), return_exceptions=True)
    soon = failing(DEFERRED_10)
    later = failing(CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=60))
    capped = failing(CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=2))
    for fail in (soon, soon, soon, later, later):
        with pytest.raises(ValueError):
            await fail(Account())
    kept = Account()
    for _ in range(5):
        with pytest.raises(ValueError):
            await capped(kept)
    clock.advance(minutes=11)
    await runtime.cleanup.sweep()

    remaining = {z.ecs_id for z in await runtime.backend.zombies()}
    with ArchiveReader(path) as reader:
        archived = {r.op_id for r in reader.records()}
        assert reader.count(reason="immediate") == 9
        assert reader.count(reason="ttl") == 3
        assert reader.count(reason="cap") == 3
    assert len(zombies) == 9 + 5 + 5
    assert archived == set(cleaned)
    assert len(cleaned) == len(archived) == 15
    assert archived | remaining == zombies
    assert not archived & remaining


async def test_archived_record_carries_what_an_auditor_asks(
    runtime: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite3"
    install_archive(runtime, path)

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE))
    async def transfer(acct: Account) -> None:
        acct.balance += 1

    acct = Account()
    results = await asyncio.gather(
        transfer.with_priority(8)(acct), transfer.with_priority(3)(acct), return_exceptions=True
    )
    loser = results[1]
    assert isinstance(loser, OperationRejectedError)
    with ArchiveReader(path) as reader:
        record = reader.get(loser.op_id)
    assert record is not None
    assert record.function_name.endswith("transfer")
    assert record.target_entity_id == acct.ecs_id
    assert record.target_entity_ids == (acct.ecs_id,)
    assert record.target_type == "Account"
    assert record.priority == 3
    assert record.status == "rejected"
    assert record.winner_id == loser.winner_id
    assert "priority 3 vs winner 8" in (record.error_message or "")
    assert (record.removal_reason, record.removal_strategy) == ("immediate", "immediate")
    assert record.created_at == record.completed_at == record.removed_at == clock.now()


async def test_a_sweep_archives_its_due_batch_in_one_transaction(
    runtime: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite3"
    install_archive(runtime, path, inline_max_rows=0)
    fail = failing(DEFERRED_10)
    for _ in range(50):
        with pytest.raises(ValueError):
            await fail(Account())
    with ArchiveReader(path) as reader:
        assert reader.batches() == []
    clock.advance(minutes=10)
    assert await runtime.cleanup.sweep() == 50
    with ArchiveReader(path) as reader:
        assert reader.batches() == [(1, 50)]
        assert reader.count() == 50
    assert runtime.backend.zombie_count == 0


async def test_lazy_removals_are_archived_when_a_query_meets_them(
    runtime: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite3"
    install_archive(runtime, path)
    fail = failing(CleanupConfig(strategy=CleanupStrategy.LAZY, retention_minutes=5))
    acct = Account()
    for _ in range(2):
        with pytest.raises(ValueError):
            await fail(acct)
    clock.advance(minutes=6)
    assert await runtime.registry.zombies(acct.ecs_id) == []
    with ArchiveReader(path) as reader:
        assert reader.count(target_id=acct.ecs_id, reason="lazy") == 2
        assert [b for _, b in reader.batches()] == [2]


async def test_a_failed_archive_write_keeps_the_records_and_is_unhealthy(
    runtime: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite3"
    install_archive(runtime, path, busy_timeout_seconds=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        immediate = failing(CleanupConfig(strategy=CleanupStrategy.IMMEDIATE))
        with pytest.raises(ValueError):
            await immediate(Account())
        deferred = failing(DEFERRED_10)
        for _ in range(3):
            with pytest.raises(ValueError):
                await deferred(Account())
        clock.advance(minutes=10)
        assert await runtime.cleanup.sweep() == 0
        assert runtime.backend.zombie_count == 4
        report = await cleanup_system_health_check(runtime)
        assert report["status"] == "unhealthy"
        assert report["failed_cleanup_handlers_total"] == {"archive": 2}
        assert report["failed_cleanup_handlers"] == {"archive": 1}  # the last 5 minutes
        assert "database is locked" in report["last_cleanup_failure"]
        failures = runtime.metrics.registry.get_sample_value(
            "contend_cleanup_failures_total", {"strategy": "deferred"}
        )
        assert failures == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    clock.advance(seconds=60)
    assert await runtime.cleanup.sweep() == 3
    assert runtime.backend.zombie_count == 1
    with ArchiveReader(path) as reader:
        assert reader.count() == 3
        assert reader.count(reason="ttl") == 3


async def test_archive_handler_keeps_zombies_for_the_retention_then_archives_them(
    runtime: Runtime, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "from-env.sqlite3"
    monkeypatch.setenv(ARCHIVE_PATH_ENV, str(path))
    assert CleanupHandlerRegistry.get("archive") is ArchiveCleanupHandler
    fail = failing(
        CleanupConfig(
            strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="archive", retention_minutes=30
        )
    )
    acct = Account()
    for _ in range(2):
        with pytest.raises(ValueError):
            await fail(acct)
    assert runtime.backend.zombie_count == 2
    with ArchiveReader(path) as reader:
        assert reader.count() == 0

    clock.advance(minutes=30)
    assert await runtime.cleanup.sweep() == 2
    with ArchiveReader(path) as reader:
        records = reader.records(target_id=acct.ecs_id)
    assert len(records) == 2
    assert {(r.removal_reason, r.removal_strategy, r.cleanup_handler_name) for r in records} == {
        ("ttl", "custom", "archive")
    }
    assert all(
        r.removed_at - r.completed_at == timedelta(minutes=30) for r in records if r.completed_at
    )


async def test_archive_handler_with_zero_retention_archives_at_once(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "now.sqlite3"
    monkeypatch.setenv(ARCHIVE_PATH_ENV, str(path))
    fail = failing(
        CleanupConfig(
            strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="archive", retention_minutes=0
        )
    )
    with pytest.raises(ValueError):
        await fail(Account())
    assert runtime.backend.zombie_count == 0
    with ArchiveReader(path) as reader:
        assert [(r.removal_reason, r.status) for r in reader.records()] == [("custom", "failed")]


async def test_reader_filters_by_target_status_reason_and_time(
    runtime: Runtime, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "audit.sqlite3"
    install_archive(runtime, path)
    fail = failing(CleanupConfig(strategy=CleanupStrategy.IMMEDIATE))
    a, b = Account(), Account()
    start = clock.now()
    for acct in (a, a, b):
        with pytest.raises(ValueError):
            await fail(acct)
        clock.advance(minutes=1)
    with ArchiveReader(path) as reader:
        assert reader.count() == 3
        assert reader.count(target_id=a.ecs_id) == 2
        assert reader.count(status="failed") == 3
        assert reader.count(status="rejected") == 0
        assert reader.count(reason="ttl") == 0
        assert reader.count(since=start + timedelta(minutes=1)) == 2
        assert reader.count(until=start + timedelta(minutes=1)) == 1
        first, second = reader.records(limit=2)
        assert first.removed_at < second.removed_at
        assert [r.target_entity_id for r in reader.records(since=start + timedelta(minutes=2))] == [
            b.ecs_id
        ]


async def test_install_archive_gives_a_runtime_one_archive(
    runtime: Runtime, tmp_path: Path
) -> None:
    sink = install_archive(runtime, tmp_path / "a.sqlite3")
    assert install_archive(runtime) is sink
    assert install_archive(runtime, tmp_path / "a.sqlite3") is sink
    with pytest.raises(ValueError, match="already archives to"):
        install_archive(runtime, tmp_path / "b.sqlite3")
    sink.close()
    assert runtime.cleanup.removal_sinks == ()


def test_bad_arguments_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        ArchiveSink(tmp_path / "x.sqlite3", synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inline_max_rows"):
        ArchiveSink(tmp_path / "x.sqlite3", inline_max_rows=-1)
    with pytest.raises(ValueError, match="busy_timeout_seconds"):
        ArchiveSink(tmp_path / "x.sqlite3", busy_timeout_seconds=-1)
    with pytest.raises(ValueError, match="retention_minutes"):
        ArchiveCleanupHandler(retention_minutes=-5)
    with pytest.raises(FileNotFoundError, match="no archive file"):
        ArchiveReader(tmp_path / "missing.sqlite3")


CHILD = """
import sys
from datetime import UTC, datetime
from contend import ConflictResolutionOperation, OperationStatus
from contend.cleanup import ArchiveSink, Removal

sink = ArchiveSink(sys.argv[1])
now = datetime.now(UTC)
n = 0
while True:
    batch = [
        Removal(
            ConflictResolutionOperation(
                function_name="f", status=OperationStatus.REJECTED, completed_at=now
            ),
            "ttl",
            "deferred",
            now,
        )
        for _ in range(int(sys.argv[2]))
    ]
    sink.write(batch)
    n += 1
    print(n, flush=True)
"""


async def test_a_killed_writer_leaves_only_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite3"
    size = 1500
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), str(size), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    reported = 0
    try:
        while reported < 3:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the writer exited early"
            reported = int(line)
    finally:
        proc.kill()
        await proc.wait()

    with ArchiveReader(path) as reader:
        batches = reader.batches()
        total = reader.count()
    assert len(batches) >= reported
    assert all(n == size for _, n in batches)
    assert total == size * len(batches)
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        per_batch = dict(
            check.execute("SELECT batch_id, count(*) FROM archived_operations GROUP BY batch_id")
        )
    finally:
        check.close()
    assert per_batch == {b: size for b, _ in batches}


@pytest.mark.parametrize("inline_max_rows", [0, 64])
async def test_a_locked_archive_does_not_freeze_the_event_loop(
    runtime: Runtime, tmp_path: Path, inline_max_rows: int
) -> None:
    """Another writer holds the file's lock: the write waits for it off the loop, which keeps
    serving (it used to wait on the loop thread, up to busy_timeout_seconds per batch)."""
    path = tmp_path / "audit.sqlite3"
    install_archive(runtime, path, busy_timeout_seconds=5, inline_max_rows=inline_max_rows)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        call = asyncio.create_task(
            failing(CleanupConfig(strategy=CleanupStrategy.IMMEDIATE))(Account())
        )
        ticks = 0
        while ticks < 20:
            await asyncio.sleep(0.001)
            ticks += 1
        assert not call.done(), "the archive write did not wait for the lock"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with pytest.raises(ValueError):
        await asyncio.wait_for(call, 5)
    assert runtime.backend.zombie_count == 0
    with ArchiveReader(path) as reader:
        assert reader.count() == 1


def test_an_archive_that_cannot_be_opened_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "not-a-folder" / "audit.sqlite3"
    with pytest.raises(sqlite3.OperationalError, match="not-a-folder"):
        ArchiveSink(path)
