"""Paging through the zombie books: every zombie once, in completion order, at bounded cost.

Each test runs on both backends (`any_runtime`): the in-memory indexes (`MemoryZombies`) and
Redis's sorted sets (`RedisBackend.zombie_page`), each read through `zombie_reader`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from conftest import Account, book_zombies, contend_on, fail_on, keep, written
from contend import FakeClock, OperationStatus, Runtime
from contend.backends.memory import MemoryBackend
from contend.console.query import (
    CursorError,
    ListedZombies,
    MemoryZombies,
    ZombieFilter,
    count_by_strategy,
    zombie_reader,
)


async def all_pages(reader, filt, limit, scan_limit=10_000):
    seen, cursor, pages = [], None, 0
    while True:
        page = await reader.page(filt, cursor, limit, scan_limit)
        seen += page.records
        pages += 1
        cursor = page.cursor
        if cursor is None:
            return seen, pages


async def mixed(rt: Runtime, clock: FakeClock) -> list[Account]:
    """Rejections on 4 accounts and failures on one, in several clock steps."""
    accounts = [Account() for _ in range(4)]
    for _ in range(5):
        await contend_on(rt, accounts, 3, width=3)
        await fail_on(rt, accounts[0], 2, name="withdraw", message="insufficient funds")
        await contend_on(rt, accounts[1:2], 1, width=2, priority=8, name="urgent")
        clock.advance(seconds=7)
    await written(rt)
    return accounts


def by_completion(ops):
    return sorted(ops, key=lambda op: op.completed_at)


def assert_same_once_in_order(seen, expected):
    """The same records, each once, in completion order (ties in any order)."""
    ids = [op.ecs_id for op in seen]
    assert len(ids) == len(set(ids))
    assert set(ids) == {op.ecs_id for op in expected}
    times = [op.completed_at for op in seen]
    assert times == sorted(times)


async def test_every_zombie_exactly_once_in_completion_order(any_runtime, clock):
    runtime = any_runtime
    await mixed(runtime, clock)
    everything = await runtime.backend.zombies()
    assert len(everything) == 5 * (3 * 4 * 2 + 2 + 1)
    seen, pages = await all_pages(zombie_reader(runtime.backend), ZombieFilter(), limit=7)
    assert_same_once_in_order(seen, everything)
    assert pages == -(-len(everything) // 7)


FILTERS = [
    lambda accts, now: ZombieFilter(target_id=accts[0].ecs_id),
    lambda accts, now: ZombieFilter(status=OperationStatus.FAILED),
    lambda accts, now: ZombieFilter(target_id=accts[0].ecs_id, status=OperationStatus.REJECTED),
    lambda accts, now: ZombieFilter(function="WITHDR"),
    lambda accts, now: ZombieFilter(priority=5, status=OperationStatus.REJECTED),
    lambda accts, now: ZombieFilter(priority=8),
    lambda accts, now: ZombieFilter(completed_before=now - timedelta(seconds=14)),
    lambda accts, now: ZombieFilter(completed_after=now - timedelta(seconds=14)),
    lambda accts, now: ZombieFilter(
        target_id=accts[1].ecs_id,
        function="urg",
        completed_after=now - timedelta(seconds=21),
        completed_before=now - timedelta(seconds=7),
    ),
]


async def test_filters_match_what_a_full_scan_would(any_runtime, clock):
    accounts = await mixed(any_runtime, clock)
    everything = await any_runtime.backend.zombies()
    reader = zombie_reader(any_runtime.backend)
    for make_filter in FILTERS:
        filt = make_filter(accounts, clock.now())
        expected = by_completion([op for op in everything if filt.matches(op)])
        assert expected, filt
        seen, _ = await all_pages(reader, filt, limit=4)
        assert_same_once_in_order(seen, expected)
        listed, _ = await all_pages(ListedZombies(any_runtime.backend), filt, limit=4)
        assert_same_once_in_order(listed, expected)


async def test_a_page_examines_what_it_shows_not_the_registry(any_runtime, clock):
    await book_zombies(any_runtime, 4_000, targets=50, ties=7)
    reader = zombie_reader(any_runtime.backend)
    first = await reader.page(ZombieFilter(), None, 50, 20_000)
    assert len(first.records) == 50 and first.scanned <= 50 + 3
    assert first.total == 4_000
    deep = first
    for _ in range(30):
        deep = await reader.page(ZombieFilter(), deep.cursor, 50, 20_000)
        assert len(deep.records) == 50 and deep.scanned <= 50 + 3
    assert deep.records[0].completed_at >= first.records[-1].completed_at


async def test_a_rare_match_stops_at_the_scan_limit_and_searches_on(any_runtime, clock):
    targets = await book_zombies(any_runtime, 1_000, targets=20, ties=10)
    clock.advance(seconds=1)
    await fail_on(any_runtime, Account(ecs_id=targets[0]), 1, name="refund", message="gateway down")
    await written(any_runtime)
    reader = zombie_reader(any_runtime.backend)
    filt = ZombieFilter(function="refund")
    page = await reader.page(filt, None, 10, 300)
    assert page.records == [] and page.cursor is not None and page.scanned <= 303
    found, pages = await all_pages(reader, filt, 10, scan_limit=300)
    assert [op.function_name for op in found] == [found[0].function_name]
    assert "refund" in found[0].function_name and pages >= 4


async def test_removals_before_the_cursor_neither_skip_nor_repeat(any_runtime, clock):
    runtime = any_runtime
    accounts = [Account() for _ in range(10)]
    for _ in range(6):
        await contend_on(runtime, accounts, 2, width=3)
        clock.advance(seconds=1)
    await written(runtime)
    reader = zombie_reader(runtime.backend)
    first = await reader.page(ZombieFilter(), None, 30, 10_000)
    last_shown = first.records[-1]
    # remove shown records, including the anchor itself, and one not shown yet
    for op in first.records[5:]:
        await runtime.registry.remove(op.ecs_id)
    rest = by_completion(await runtime.backend.zombies())
    unseen = [op for op in rest if op.ecs_id not in {o.ecs_id for o in first.records}]
    seen = []
    cursor = first.cursor
    while cursor is not None:
        page = await reader.page(ZombieFilter(), cursor, 30, 10_000)
        seen += page.records
        cursor = page.cursor
    assert_same_once_in_order(seen, unseen)
    assert last_shown.ecs_id not in {op.ecs_id for op in seen}


async def test_a_cursor_survives_removals_that_leave_its_anchor(any_runtime, clock):
    runtime = any_runtime
    accounts = [Account() for _ in range(5)]
    for _ in range(4):
        await contend_on(runtime, accounts, 2, width=3)
        clock.advance(seconds=1)
    await written(runtime)
    reader = zombie_reader(runtime.backend)
    filt = ZombieFilter(status=OperationStatus.REJECTED)
    first = await reader.page(filt, None, 10, 10_000)
    for op in first.records[:3]:  # anchor stays, three entries before it leave
        await runtime.registry.remove(op.ecs_id)
    second = await reader.page(filt, first.cursor, 10, 10_000)
    shown = {op.ecs_id for op in first.records}
    assert not shown & {op.ecs_id for op in second.records}
    rest = [op for op in await runtime.backend.zombies() if op.ecs_id not in shown]
    assert len(second.records) == 10
    assert max(op.completed_at for op in first.records) <= second.records[0].completed_at
    assert {op.ecs_id for op in second.records} <= {op.ecs_id for op in rest}


async def test_a_cursor_from_other_filters_or_edited_is_refused(any_runtime, clock):
    await book_zombies(any_runtime, 30, targets=3)
    await book_zombies(any_runtime, 3, targets=1, status=OperationStatus.FAILED)
    reader = zombie_reader(any_runtime.backend)
    page = await reader.page(ZombieFilter(), None, 5, 1000)
    with pytest.raises(CursorError, match="other filters"):
        await reader.page(ZombieFilter(status=OperationStatus.FAILED), page.cursor, 5, 1000)
    with pytest.raises(CursorError, match="not a cursor"):
        await reader.page(ZombieFilter(), "<script>", 5, 1000)


async def test_age_filter_stops_at_the_first_record_too_young(any_runtime, clock):
    await book_zombies(any_runtime, 100, targets=10, ties=3)  # 100 old ones
    clock.advance(minutes=10)
    await book_zombies(any_runtime, 1_000, targets=10, ties=3)  # 1,000 young ones
    reader = zombie_reader(any_runtime.backend)
    page = await reader.page(
        ZombieFilter(completed_before=clock.now() - timedelta(minutes=5)), None, 500, 20_000
    )
    assert len(page.records) == 100 and page.cursor is None
    assert page.scanned <= 100 + 3


async def test_zombies_by_strategy_exact_or_estimated(any_runtime, clock):
    runtime = any_runtime
    accounts = [Account() for _ in range(10)]
    await contend_on(runtime, accounts, 30, width=2, cleanup=keep("none"), name="a")
    await contend_on(runtime, accounts, 10, width=2, cleanup=keep("deferred"), name="b")
    await written(runtime)
    reader = zombie_reader(runtime.backend)
    total = runtime.backend.zombie_count
    exact = await count_by_strategy(reader, total, scan_limit=10_000)
    assert exact.counts == {"none": 300, "deferred": 100} and not exact.estimated
    rough = await count_by_strategy(reader, total, scan_limit=100, chunk=50)
    assert rough.estimated and sum(rough.counts.values()) == total
    assert rough.scanned < total


def test_the_memory_backend_gets_the_indexed_reader():
    assert isinstance(zombie_reader(MemoryBackend()), MemoryZombies)


async def test_a_backend_with_its_own_zombie_page_is_used(runtime, clock):
    await mixed(runtime, clock)
    calls = []

    class Paged:
        name = "paged"

        async def zombie_page(self, **query):
            calls.append(query)
            return (await runtime.backend.zombies())[:2], "next", 2, None

    reader = zombie_reader(Paged())
    page = await reader.page(ZombieFilter(priority=5), "abc", 2, 100)
    assert len(page.records) == 2 and page.cursor == "next"
    assert calls[0]["priority"] == 5 and calls[0]["cursor"] == "abc" and calls[0]["limit"] == 2
