"""Paged, filtered reads of the zombie books: what the browser and the sampler ask a backend.

A page costs O(records examined), capped by `scan_limit`, never O(registry): filters that match
rarely return a short page and a cursor to search on from where the scan stopped. A backend
offers this by having a `zombie_page` method of the `PagedZombies` shape (plain types only, so a
backend needs nothing from this package); the stock `MemoryBackend` is read through its ordered
index views (`MemoryZombies`); any other backend falls back to `ListedZombies`, which reads the
whole zombie list per page and logs once that it does.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter
from collections.abc import Iterator, KeysView, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from operator import attrgetter
from typing import Any, NamedTuple, Protocol, runtime_checkable
from uuid import UUID

from contend.backends.base import Backend
from contend.backends.memory import MemoryBackend
from contend.config import CleanupStrategy
from contend.enums import OperationStatus
from contend.record import Record

__all__ = [
    "ZOMBIE_STATUSES",
    "CursorError",
    "ListedZombies",
    "MemoryZombies",
    "Page",
    "PagedZombies",
    "StrategyCounts",
    "ZombieFilter",
    "ZombieReader",
    "count_by_strategy",
    "zombie_reader",
]

log = logging.getLogger("contend.console")

_STRATEGY = attrgetter("cleanup_strategy")

ZOMBIE_STATUSES = (OperationStatus.CANCELLED, OperationStatus.FAILED, OperationStatus.REJECTED)
_ZOMBIE = frozenset(ZOMBIE_STATUSES)


class CursorError(ValueError):
    """A paging cursor that this query did not hand out (edited, or from other filters)."""


@dataclass(frozen=True, slots=True)
class ZombieFilter:
    """What the browser filters on; None means any. `function` matches a substring, any case;
    `completed_before` / `completed_after` bound the completion time (an age range)."""

    target_id: UUID | None = None
    status: OperationStatus | None = None
    function: str | None = None
    priority: int | None = None
    completed_before: datetime | None = None
    completed_after: datetime | None = None
    _needle: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_needle", self.function.lower() if self.function else None)

    def matches(self, op: Record) -> bool:
        if self.target_id is not None and op.target_entity_id != self.target_id:
            return False
        if self.status is not None and op.status is not self.status:
            return False
        if self.priority is not None and op.priority != self.priority:
            return False
        needle = self._needle
        if needle is not None and needle not in op.function_name.lower():
            return False
        done = op.completed_at
        if self.completed_before is not None and (done is None or done > self.completed_before):
            return False
        return self.completed_after is None or (done is not None and done >= self.completed_after)


class Page(NamedTuple):
    """One page: its records (oldest first), the cursor of the next one (None at the end), how
    many records were examined to fill it, and the size of the set filtered (None: unknown)."""

    records: list[Record]
    cursor: str | None
    scanned: int
    total: int | None


@runtime_checkable
class PagedZombies(Protocol):
    """What a backend provides so the console can page through its zombies cheaply.

    `zombie_page` returns ``(records, next_cursor, scanned, total)``: up to `limit` zombies
    matching every given filter, in completion order (oldest first), after `cursor` (None: from
    the start); it examines at most `scan_limit` records and returns ``next_cursor`` (an opaque
    string) while any may remain; ``total`` is the size of the set the filters select from when
    that is known without a scan (else None). A cursor it did not hand out raises ValueError.
    """

    async def zombie_page(
        self,
        *,
        target_id: UUID | None,
        status: OperationStatus | None,
        function: str | None,
        priority: int | None,
        completed_before: datetime | None,
        completed_after: datetime | None,
        cursor: str | None,
        limit: int,
        scan_limit: int,
    ) -> tuple[list[Record], str | None, int, int | None]: ...


class ZombieReader(Protocol):
    """The console's side of `PagedZombies`."""

    async def page(
        self, filt: ZombieFilter, cursor: str | None, limit: int, scan_limit: int
    ) -> Page: ...


# the in-memory backend ------------------------------------------------------------------------
@dataclass(slots=True)
class _Source:
    """One ordered index being read: where this page started in it and what it consumed."""

    keys: KeysView[int]
    start: int
    it: Iterator[int] = field(init=False)
    head: Record | None = None
    head_key: int = 0
    taken: int = 0
    last_key: int = 0
    last_ms: int = 0
    last_done: datetime | None = None
    done: bool = False

    def __post_init__(self) -> None:
        self.it = islice(self.keys, self.start, None)


class MemoryZombies:
    """`ZombieReader` over a `MemoryBackend`'s zombie indexes, without copying them.

    The indexes keep completion order and only lose entries in the middle, so a cursor holds,
    per index, the position of the next record, its id and the id of the last record shown: the
    next page starts at that record wherever removals have moved it (found by a C-level walk of
    the entries before it), else right after the last one shown, else (both gone) after the
    last entry completed no later than the last one shown. Several indexes (no status or target
    filter) are merged by completion time.
    """

    def __init__(self, backend: MemoryBackend) -> None:
        self.backend = backend

    async def page(
        self, filt: ZombieFilter, cursor: str | None, limit: int, scan_limit: int
    ) -> Page:
        views = self.backend.zombie_keys(filt.status, filt.target_id)
        sources: list[_Source] = []
        scanned = 0
        for view, pos in zip(views, _parse_cursor(cursor, len(views)), strict=True):
            start, examined = self._resume(view, *pos, scan_limit)
            sources.append(_Source(view, start, last_key=pos[1], last_ms=pos[3]))
            scanned += examined
        records: list[Record] = []
        too_young = filt.completed_before
        heap: list[tuple[datetime, int, int]] = []
        for i, s in enumerate(sources):
            scanned += self._advance(s)
            if s.head is not None:
                heapq.heappush(heap, (_when(s.head), s.head_key, i))
        while heap and len(records) < limit and scanned < scan_limit:
            i = heapq.heappop(heap)[2]
            s = sources[i]
            op = s.head
            s.head = None
            if op is None:
                continue
            done = op.completed_at
            if too_young is not None and done is not None and done > too_young:
                s.done = True  # completion order: all after it is younger still; resume here
                continue
            s.taken += 1
            s.last_key, s.head_key = s.head_key, 0
            s.last_done = done
            if filt.matches(op):
                records.append(op)
            scanned += self._advance(s)
            if s.head is not None:
                heapq.heappush(heap, (_when(s.head), s.head_key, i))
        more = any(s.head is not None or not s.done for s in sources)
        total = sum(map(len, views)) if filt.status is None or filt.target_id is None else None
        return Page(records, _format_cursor(sources) if more else None, scanned, total)

    async def counts_by_strategy(
        self, scan_limit: int, chunk: int = 20_000
    ) -> tuple[dict[str, int], int]:
        """Zombies by cleanup strategy, and the records read to count them: each zombie index
        gets a share of `scan_limit` by its size and is extrapolated from the records read,
        in chunks that yield to the loop in between (a removal meanwhile may shift a chunk)."""
        views = self.backend.zombie_keys()
        total = sum(map(len, views)) or 1
        counts: Counter[str] = Counter()
        read = 0
        at = self.backend.operation_at
        for view in views:
            size = len(view)
            budget = size if total <= scan_limit else max(1, scan_limit * size // total)
            part: Counter[CleanupStrategy | None] = Counter()
            position = 0
            while position < budget:
                keys = list(islice(view, position, position + min(chunk, budget - position)))
                if not keys:
                    break
                position += len(keys)
                found = [op for op in map(at, keys) if op is not None]
                part.update(map(_STRATEGY, found))
                await asyncio.sleep(0)
            read += position
            scale = size / position if 0 < position < size else 1.0
            for strategy, n in part.items():
                counts[_strategy_name(strategy)] += round(n * scale)
        return dict(counts), read

    def _advance(self, s: _Source) -> int:
        """Load the next zombie of `s` into its head; returns the entries examined."""
        at = self.backend.operation_at
        examined = 0
        for key in s.it:
            examined += 1
            op = at(key)
            if op is None or op.status not in _ZOMBIE:
                s.taken += 1
                continue
            s.head, s.head_key = op, key
            return examined
        s.done = True
        return examined

    def _resume(
        self, keys: KeysView[int], offset: int, anchor: int, following: int, ms: int, budget: int
    ) -> tuple[int, int]:
        """Where a page starts now that was to start at `offset`, at the record `following`,
        right after `anchor` (the last one shown, completed at `ms`); and the records examined
        to find it (at most `budget`)."""
        if offset == 0 and anchor == 0:
            return 0, 0
        if following and next(islice(keys, offset, offset + 1), None) == following:
            return offset, 0
        head = list(islice(keys, offset + 1))
        if following in head:
            return head.index(following), 0
        if anchor in head:
            return head.index(anchor) + 1, 0
        head = head[:offset]
        if not anchor:
            return len(head), 0
        # the anchor left: step back over the entries that completed after it did
        position = len(head)
        examined = 0
        while position > 0 and examined < budget:
            op = self.backend.operation_at(head[position - 1])
            examined += 1
            if op is not None and _ms(op.completed_at) <= ms:
                break
            position -= 1
        return position, examined


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _when(op: Record) -> datetime:
    done: datetime | None = op.completed_at
    return done if done is not None else _EPOCH


def _ms(moment: datetime | None) -> int:
    return int(moment.timestamp() * 1000) if moment is not None else 0


def _format_cursor(sources: Sequence[_Source]) -> str:
    return ".".join(
        f"{s.start + s.taken}-{s.last_key:x}-{s.head_key:x}-"
        f"{_ms(s.last_done) if s.last_done is not None else s.last_ms}"
        for s in sources
    )


def _parse_cursor(cursor: str | None, n: int) -> list[tuple[int, int, int, int]]:
    if not cursor:
        return [(0, 0, 0, 0)] * n
    try:
        parts = [tuple(p.split("-")) for p in cursor.split(".")]
        parsed = [(int(a), int(b, 16), int(c, 16), int(d)) for a, b, c, d in parts]
    except ValueError:
        raise CursorError(f"not a cursor of this browser: {cursor[:80]!r}") from None
    if len(parsed) != n or any(v < 0 for p in parsed for v in p):
        raise CursorError("the cursor belongs to other filters; start again from the first page")
    return parsed


# any other backend --------------------------------------------------------------------------------
class ListedZombies:
    """`ZombieReader` for a backend without a paged query: reads the whole zombie list (of the
    target, when filtered by one) per page, sorted by completion. Correct, not cheap: it logs
    once, naming the backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        log.warning(
            "backend %r has no zombie_page(); the console reads every zombie on each page "
            "(see contend.console.query.PagedZombies)",
            backend.name,
        )

    async def page(
        self, filt: ZombieFilter, cursor: str | None, limit: int, scan_limit: int
    ) -> Page:
        ops = await self.backend.zombies(filt.target_id)
        ops.sort(key=lambda op: (_ms(op.completed_at), op.ecs_id.int))
        try:
            offset = int(cursor or 0)
        except ValueError:
            raise CursorError(f"not a cursor of this browser: {str(cursor)[:80]!r}") from None
        page: list[Record] = []
        for i in range(offset, len(ops)):
            if filt.matches(ops[i]):
                if len(page) == limit:
                    return Page(page, str(i), i - offset, len(ops))
                page.append(ops[i])
        return Page(page, None, len(ops) - offset, len(ops))


class _BackendPages:
    """`ZombieReader` over a backend's own `zombie_page`."""

    def __init__(self, backend: PagedZombies) -> None:
        self.backend = backend

    async def page(
        self, filt: ZombieFilter, cursor: str | None, limit: int, scan_limit: int
    ) -> Page:
        try:
            records, after, scanned, total = await self.backend.zombie_page(
                target_id=filt.target_id,
                status=filt.status,
                function=filt.function,
                priority=filt.priority,
                completed_before=filt.completed_before,
                completed_after=filt.completed_after,
                cursor=cursor,
                limit=limit,
                scan_limit=scan_limit,
            )
        except CursorError:
            raise
        except ValueError as exc:
            raise CursorError(str(exc)) from None
        return Page(list(records), after, scanned, total)


class _BackendCounts(_BackendPages):
    """`_BackendPages` of a backend that also counts its zombies by strategy itself
    (``zombie_counts_by_strategy(scan_limit) -> (counts, records read)``)."""

    async def counts_by_strategy(self, scan_limit: int) -> tuple[dict[str, int], int]:
        counts: tuple[dict[str, int], int] = await self.backend.zombie_counts_by_strategy(  # type: ignore[attr-defined]
            scan_limit
        )
        return counts


def zombie_reader(backend: Backend | Any) -> ZombieReader:
    """The cheapest reader this backend supports."""
    if isinstance(backend, PagedZombies):
        if hasattr(backend, "zombie_counts_by_strategy"):
            return _BackendCounts(backend)
        return _BackendPages(backend)
    if isinstance(backend, MemoryBackend):
        return MemoryZombies(backend)
    return ListedZombies(backend)


# zombies by strategy ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StrategyCounts:
    """Zombies by cleanup strategy; `estimated` when only the first `scanned` of `total` were
    read and the rest assumed alike."""

    counts: dict[str, int]
    scanned: int
    total: int
    estimated: bool


async def count_by_strategy(
    reader: ZombieReader, total: int, *, scan_limit: int, chunk: int = 5_000
) -> StrategyCounts:
    """Zombies by strategy from at most `scan_limit` records (the reader's own count when it
    has one, else its pages, `chunk` at a time, yielding to the loop between them)."""
    own = getattr(reader, "counts_by_strategy", None)
    if own is not None:
        counts, seen = await own(scan_limit)
        return StrategyCounts(counts, seen, max(total, seen), estimated=seen < total)
    counts, seen, done = await _count_pages(reader, scan_limit, chunk)
    if done or seen >= total:
        return StrategyCounts(counts, seen, seen, estimated=False)
    scale = total / seen if seen else 0.0
    scaled = {k: round(v * scale) for k, v in counts.items()}
    return StrategyCounts(scaled, seen, total, estimated=True)


async def _count_pages(
    reader: ZombieReader, scan_limit: int, chunk: int
) -> tuple[dict[str, int], int, bool]:
    counts: dict[str, int] = {}
    cursor: str | None = None
    seen = 0
    scanned = 0
    everything = ZombieFilter()
    while scanned < scan_limit:
        page = await reader.page(everything, cursor, chunk, chunk)
        scanned += page.scanned
        for op in page.records:
            key = _strategy_name(op.cleanup_strategy)
            counts[key] = counts.get(key, 0) + 1
        seen += len(page.records)
        cursor = page.cursor
        if cursor is None:
            return counts, seen, True
        await asyncio.sleep(0)
    return counts, seen, False


def _strategy_name(strategy: CleanupStrategy | None) -> str:
    return strategy.value if strategy is not None else "none"
