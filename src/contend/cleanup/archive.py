"""An audit archive: records are written to a SQLite file before they leave the registry.

``install_archive(runtime, path)`` puts an ``ArchiveSink`` on the runtime's cleanup manager; from
then on every removal (immediate, ttl, lazy, cap, pressure, force, custom, manual) is written
first, one transaction per batch, and a failed write keeps the records in the registry. The
``"archive"`` cleanup handler (``CleanupConfig(strategy=CUSTOM,
custom_cleanup_handler="archive")``) installs the sink for its runtime and keeps each zombie for
``retention_minutes`` before it goes. ``ArchiveReader(path).records(...)`` reads it back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from uuid import UUID

from contend.cleanup.handlers import CleanupHandler, CleanupHandlerRegistry
from contend.cleanup.manager import CleanupManager

if TYPE_CHECKING:
    from collections.abc import Callable

    from contend.cleanup.sinks import Removal
    from contend.operations import ConflictResolutionOperation
    from contend.runtime import Runtime

__all__ = [
    "ARCHIVE_PATH_ENV",
    "ArchiveCleanupHandler",
    "ArchiveReader",
    "ArchiveSink",
    "ArchivedRecord",
    "install_archive",
]

ARCHIVE_PATH_ENV = "CONTEND_ARCHIVE_PATH"
DEFAULT_ARCHIVE_PATH = "contend-archive.sqlite3"
SCHEMA_VERSION = 1

Synchronous = Literal["NORMAL", "FULL", "EXTRA"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS archive_batches (
    batch_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    written_at TEXT NOT NULL,
    row_count  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS archived_operations (
    op_id                TEXT PRIMARY KEY,
    batch_id             INTEGER NOT NULL REFERENCES archive_batches(batch_id),
    function_name        TEXT NOT NULL,
    target_entity_id     TEXT,
    target_entity_ids    TEXT NOT NULL,
    target_type          TEXT NOT NULL,
    priority             INTEGER NOT NULL,
    status               TEXT NOT NULL,
    error_message        TEXT,
    winner_id            TEXT,
    retry_count          INTEGER NOT NULL,
    removal_reason       TEXT NOT NULL,
    removal_strategy     TEXT NOT NULL,
    cleanup_handler_name TEXT,
    created_at           TEXT NOT NULL,
    started_at           TEXT,
    completed_at         TEXT,
    cleanup_scheduled_at TEXT,
    removed_at           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS archived_operations_target
    ON archived_operations (target_entity_id, removed_at);
CREATE INDEX IF NOT EXISTS archived_operations_removed_at
    ON archived_operations (removed_at);
"""

_COLUMNS = (
    "op_id",
    "batch_id",
    "function_name",
    "target_entity_id",
    "target_entity_ids",
    "target_type",
    "priority",
    "status",
    "error_message",
    "winner_id",
    "retry_count",
    "removal_reason",
    "removal_strategy",
    "cleanup_handler_name",
    "created_at",
    "started_at",
    "completed_at",
    "cleanup_scheduled_at",
    "removed_at",
)
_INSERT = (
    f"INSERT INTO archived_operations ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))}) ON CONFLICT (op_id) DO NOTHING"
)

Row = tuple[Any, ...]


def _ts(moment: datetime | None) -> str | None:
    """Fixed-width UTC text, so that text order is time order in SQL."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"archive timestamps must be timezone-aware, got naive {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_ts(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text)


def _uuid_text(value: UUID | None) -> str | None:
    return str(value) if value is not None else None


def _row(removal: Removal) -> Row:
    """One archive row without its batch id (filled in when the batch is written)."""
    op: ConflictResolutionOperation = removal.operation
    return (
        str(op.ecs_id),
        op.function_name,
        _uuid_text(op.target_entity_id),
        json.dumps([str(t) for t in op.target_entity_ids]),
        op.target_type,
        op.priority,
        op.status.value,
        op.error_message,
        _uuid_text(op.winner_id),
        op.retry_count,
        removal.reason,
        removal.strategy,
        op.cleanup_handler_name,
        _ts(op.created_at),
        _ts(op.started_at),
        _ts(op.completed_at),
        _ts(op.cleanup_scheduled_at),
        _ts(removal.removed_at),
    )


def _connect(path: Path, synchronous: Synchronous, timeout: float) -> sqlite3.Connection:
    try:
        return _open(path, synchronous, timeout)
    except sqlite3.Error as exc:
        raise sqlite3.OperationalError(f"archive {str(path)!r}: cannot open it: {exc}") from exc


def _open(path: Path, synchronous: Synchronous, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


class ArchiveSink:
    """Writes each batch of removals to SQLite in one transaction, before the records go.

    Batches are written by one dedicated writer thread, so the event loop keeps serving while
    SQLite works, syncs or waits for another writer's lock (up to `busy_timeout_seconds`; then
    the write fails and the records stay). `inline_max_rows` > 0 lets batches up to that size
    try the loop thread first (about 20-70 us a row, against ~140 us for the hop to the
    thread), without waiting: if the file is locked, the batch goes to the thread.
    `synchronous="NORMAL"` (WAL) survives the process being killed; "FULL" also survives power
    loss, at an fsync per batch.
    """

    name = "archive"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "NORMAL",
        inline_max_rows: int = 0,
        busy_timeout_seconds: float = 5.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(
                f"ArchiveSink.synchronous: must be 'NORMAL', 'FULL' or 'EXTRA', got {synchronous!r}"
            )
        if isinstance(inline_max_rows, bool) or not isinstance(inline_max_rows, int):
            raise ValueError(
                f"ArchiveSink.inline_max_rows: must be an int >= 0, got {inline_max_rows!r}"
            )
        if inline_max_rows < 0:
            raise ValueError(f"ArchiveSink.inline_max_rows: must be >= 0, got {inline_max_rows}")
        if not 0 <= busy_timeout_seconds <= 600:
            raise ValueError(
                f"ArchiveSink.busy_timeout_seconds: must be 0..600, got {busy_timeout_seconds!r}"
            )
        self.path = Path(path)
        self.synchronous = synchronous
        self.inline_max_rows = inline_max_rows
        self.busy_timeout_ms = int(busy_timeout_seconds * 1000)
        self._conn: sqlite3.Connection | None = _connect(
            self.path, synchronous, float(busy_timeout_seconds)
        )
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._in_thread = 0
        self._detach: Callable[[], None] | None = None
        self.batches = 0
        self.rows = 0

    def __repr__(self) -> str:
        return f"ArchiveSink({str(self.path)!r}, synchronous={self.synchronous!r})"

    async def __call__(self, removals: Sequence[Removal]) -> None:
        if not removals:
            return
        if len(removals) <= self.inline_max_rows and self._in_thread == 0:
            rows = [_row(r) for r in removals]
            try:
                self.write_rows(rows, busy_timeout_ms=0)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="contend-archive")
        self._in_thread += 1
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self.write, list(removals)
            )
        finally:
            self._in_thread -= 1

    def write(self, removals: Sequence[Removal]) -> int:
        """Write `removals` now in one transaction; returns the rows added (repeats are skipped)."""
        return self.write_rows([_row(r) for r in removals])

    def write_rows(self, rows: Sequence[Row], busy_timeout_ms: int | None = None) -> int:
        """Write `rows` in one transaction, waiting at most `busy_timeout_ms` (default: the
        sink's `busy_timeout_seconds`) for another writer's lock."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError(f"archive {str(self.path)!r} is closed")
            wait = self.busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
            conn.execute(f"PRAGMA busy_timeout={int(wait)}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    "INSERT INTO archive_batches (written_at, row_count) VALUES (?, 0)",
                    (_ts(datetime.now(UTC)),),
                )
                batch_id = cur.lastrowid
                added = conn.executemany(_INSERT, [(r[0], batch_id, *r[1:]) for r in rows]).rowcount
                conn.execute(
                    "UPDATE archive_batches SET row_count = ? WHERE batch_id = ?", (added, batch_id)
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.batches += 1
            self.rows += added
            return added

    def close(self) -> None:
        """Stop receiving removals and close the file."""
        if self._detach is not None:
            self._detach()
            self._detach = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def install_archive(
    runtime: Runtime | CleanupManager,
    path: str | os.PathLike[str] | None = None,
    *,
    synchronous: Synchronous = "NORMAL",
    inline_max_rows: int = 0,
    busy_timeout_seconds: float = 5.0,
) -> ArchiveSink:
    """Archive every record `runtime` removes from now on; returns the runtime's ArchiveSink.

    A runtime has one archive: calling again returns the installed sink (a different `path` is an
    error). Without a path: ``$CONTEND_ARCHIVE_PATH``, else ``./contend-archive.sqlite3``. (A
    cleanup handler, which acts through the runtime's cleanup manager, may pass the manager.)
    """
    cleanup = runtime if isinstance(runtime, CleanupManager) else runtime.cleanup
    for sink in cleanup.removal_sinks:
        if isinstance(sink, ArchiveSink):
            if path is not None and Path(path).resolve() != sink.path.resolve():
                raise ValueError(
                    f"install_archive: runtime {cleanup.name!r} already archives to "
                    f"{str(sink.path)!r}, not {os.fspath(path)!r}"
                )
            return sink
    chosen = path if path is not None else os.environ.get(ARCHIVE_PATH_ENV, DEFAULT_ARCHIVE_PATH)
    sink = ArchiveSink(
        chosen,
        synchronous=synchronous,
        inline_max_rows=inline_max_rows,
        busy_timeout_seconds=busy_timeout_seconds,
    )
    sink._detach = cleanup.add_removal_sink(sink)
    return sink


@CleanupHandlerRegistry.register("archive")
class ArchiveCleanupHandler(CleanupHandler):
    """Keeps each zombie for the config's ``retention_minutes`` (0: removes it at once), and makes
    sure it is written to the runtime's archive before it goes.

    The archive file is the runtime's installed one, else the class attribute `path` (subclass
    and register under your own name to fix it), else ``$CONTEND_ARCHIVE_PATH``, else
    ``./contend-archive.sqlite3``. Opening the file fails the handler, and the record stays.
    """

    path: ClassVar[str | None] = None

    def __init__(self, retention_minutes: int | None = None) -> None:
        if retention_minutes is not None and not 0 <= retention_minutes <= 100_000:
            raise ValueError(
                "ArchiveCleanupHandler.retention_minutes: must be 0..100000, "
                f"got {retention_minutes}"
            )
        self.retention_minutes = retention_minutes
        self.sink: ArchiveSink | None = None

    def bind(self, cleanup: CleanupManager) -> None:
        super().bind(cleanup)
        self.sink = None

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        if self.sink is None:
            self.sink = install_archive(self._manager(), self.path)
        minutes = self.retention_minutes
        if minutes is None:
            minutes = operation.get_cleanup_config().retention_minutes
        if minutes <= 0:
            await self.remove(operation)
        else:
            await self.retain_for(operation, minutes)


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    """One archived operation record, as read back from the file."""

    op_id: UUID
    batch_id: int
    function_name: str
    target_entity_id: UUID | None
    target_entity_ids: tuple[UUID, ...]
    target_type: str
    priority: int
    status: str
    error_message: str | None
    winner_id: UUID | None
    retry_count: int
    removal_reason: str
    removal_strategy: str
    cleanup_handler_name: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    cleanup_scheduled_at: datetime | None
    removed_at: datetime

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> ArchivedRecord:
        created = _parse_ts(row["created_at"])
        removed = _parse_ts(row["removed_at"])
        if created is None or removed is None:
            raise ValueError(f"archive row {row['op_id']} lacks created_at or removed_at")
        return cls(
            op_id=UUID(row["op_id"]),
            batch_id=row["batch_id"],
            function_name=row["function_name"],
            target_entity_id=_parse_uuid(row["target_entity_id"]),
            target_entity_ids=tuple(UUID(t) for t in json.loads(row["target_entity_ids"])),
            target_type=row["target_type"],
            priority=row["priority"],
            status=row["status"],
            error_message=row["error_message"],
            winner_id=_parse_uuid(row["winner_id"]),
            retry_count=row["retry_count"],
            removal_reason=row["removal_reason"],
            removal_strategy=row["removal_strategy"],
            cleanup_handler_name=row["cleanup_handler_name"],
            created_at=created,
            started_at=_parse_ts(row["started_at"]),
            completed_at=_parse_ts(row["completed_at"]),
            cleanup_scheduled_at=_parse_ts(row["cleanup_scheduled_at"]),
            removed_at=removed,
        )


def _parse_uuid(text: str | None) -> UUID | None:
    return UUID(text) if text is not None else None


class ArchiveReader:
    """Read-only queries over an archive file (safe while a process is writing it)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ArchiveReader: no archive file at {str(self.path)!r}")
        self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        self._conn.row_factory = sqlite3.Row

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def records(
        self,
        *,
        target_id: UUID | None = None,
        status: str | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[ArchivedRecord]:
        """Archived records, oldest removal first; every filter is optional (`until` exclusive)."""
        return list(
            self.iter_records(
                target_id=target_id,
                status=status,
                reason=reason,
                since=since,
                until=until,
                limit=limit,
            )
        )

    def iter_records(
        self,
        *,
        target_id: UUID | None = None,
        status: str | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[ArchivedRecord]:
        where, params = _filters(target_id, status, reason, since, until)
        sql = f"SELECT * FROM archived_operations{where} ORDER BY removed_at, batch_id, op_id"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError(f"ArchiveReader.records: limit must be an int >= 0, got {limit!r}")
            sql += " LIMIT ?"
            params.append(limit)
        for row in self._conn.execute(sql, params):
            yield ArchivedRecord._from_row(row)

    def count(
        self,
        *,
        target_id: UUID | None = None,
        status: str | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        where, params = _filters(target_id, status, reason, since, until)
        (n,) = self._conn.execute(
            f"SELECT count(*) FROM archived_operations{where}", params
        ).fetchone()
        return int(n)

    def get(self, op_id: UUID) -> ArchivedRecord | None:
        row = self._conn.execute(
            "SELECT * FROM archived_operations WHERE op_id = ?", (str(op_id),)
        ).fetchone()
        return ArchivedRecord._from_row(row) if row is not None else None

    def batches(self) -> list[tuple[int, int]]:
        """(batch_id, rows written) of every committed batch, in order."""
        return [
            (int(b), int(n))
            for b, n in self._conn.execute(
                "SELECT batch_id, row_count FROM archive_batches ORDER BY batch_id"
            )
        ]


def _filters(
    target_id: UUID | None,
    status: str | None,
    reason: str | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if target_id is not None:
        clauses.append("target_entity_id = ?")
        params.append(str(target_id))
    if status is not None:
        clauses.append("status = ?")
        params.append(getattr(status, "value", status))
    if reason is not None:
        clauses.append("removal_reason = ?")
        params.append(reason)
    if since is not None:
        clauses.append("removed_at >= ?")
        params.append(_ts(since))
    if until is not None:
        clauses.append("removed_at < ?")
        params.append(_ts(until))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
