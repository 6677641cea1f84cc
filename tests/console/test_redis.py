"""The console on RedisBackend: a standalone console (a runtime of its own, or `contend serve
--redis-url`) sees every worker's zombies in Redis, pages through them at the cost of what it
shows (sorted sets by status and by target, kept by the scripts that book and remove zombies),
and acts on them."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis_keys as rk
from redis_workers import RedisServer, free_port

from conftest import Account, book_zombies, call, contend_on, fail_on, keep, written
from contend import CleanupConfig, CleanupStrategy, FakeClock, Runtime
from contend.backends.redis import RedisBackend
from contend.console import make_console
from contend.console.query import PagedZombies, ZombieFilter, zombie_reader

TOKEN = "redis-console-test-token"
ROOT = Path(__file__).resolve().parents[2]


def _runtime(server: RedisServer, prefix: str, clock: FakeClock | None = None) -> Runtime:
    return Runtime(
        backend=RedisBackend.from_url(server.url, prefix=prefix, lease_ms=2000),
        clock=clock or FakeClock(),
        memory_probe=lambda: 0.0,
    )


@pytest.fixture
async def worker_and_console(redis_server: RedisServer) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """A worker's runtime and the console's own runtime, on one Redis prefix."""
    prefix = f"console{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    made = [_runtime(redis_server, prefix, clock) for _ in range(2)]
    yield made[0], made[1]
    for rt in made:
        rt.cleanup.stop()
        await rt.aclose()


def _rows(html: str) -> list[str]:
    return re.findall(r'href="[^"]*zombies/([0-9a-f-]{36})"', html)


async def test_a_standalone_console_sees_and_removes_a_workers_zombies(worker_and_console):
    worker, console_rt = worker_and_console
    account = Account()
    await contend_on(worker, [account], 1, width=4)  # 3 rejected, in Redis
    await written(worker)
    console = make_console(console_rt, token=TOKEN)
    assert isinstance(console_rt.backend, PagedZombies)
    listing = await call(console, f"/zombies?target={account.ecs_id}")
    assert listing.status == 200 and listing.text.count('class="open"') == 3
    overview = await call(console, "/")
    assert overview.status == 200 and str(account.ecs_id) in overview.text
    (op, *_) = await console_rt.backend.zombies(account.ecs_id)
    reply = await call(
        console,
        "/actions/remove",
        method="POST",
        form={"op": str(op.ecs_id)},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert reply.status == 303
    assert len(await worker.backend.zombies(account.ecs_id)) == 2
    assert console_rt.cleanup.removed["manual"] == 1
    listing = await call(console, f"/zombies?target={account.ecs_id}")
    assert listing.text.count('class="open"') == 2


async def test_the_browser_pages_through_thousands_of_a_workers_zombies_a_page_at_a_time(
    worker_and_console,
):
    """2,000 zombies a worker left in Redis: the console's browser shows them 100 to a page,
    every one once, each page examining only the 100 it shows; a filter that matches a few
    finds exactly those."""
    worker, console_rt = worker_and_console
    await book_zombies(worker, 2_000, targets=40, ties=9)
    refunds = Account()
    await fail_on(worker, refunds, 3, name="refund", message="gateway down", cleanup=keep())
    await written(worker)
    console = make_console(console_rt)
    seen: list[str] = []
    link: str | None = "/zombies?limit=100"
    pages = 0
    while link is not None:
        reply = await call(console, link.replace("&amp;", "&"))
        assert reply.status == 200, reply.text
        shown = _rows(reply.text)
        seen += shown
        pages += 1
        examined = re.search(r"([\d,]+) record\(s\) examined", reply.text)
        assert examined is not None
        assert int(examined.group(1).replace(",", "")) <= len(shown) + 1
        found = re.search(r'href="([^"]*)" id="next"', reply.text)
        link = found.group(1).split("/console", 1)[-1] if found else None
    assert len(seen) == len(set(seen)) == 2_003
    assert pages == 21
    reply = await call(console, "/zombies?function=REFUND&status=failed")
    assert len(_rows(reply.text)) == 3


async def test_a_cursor_holds_across_removals_among_equal_completion_times(worker_and_console):
    """500 zombies completed at one moment (ordered by id there): the record a page ended on and
    others around it are removed by another process before the next page; the rest are shown
    once each."""
    worker, console_rt = worker_and_console
    await book_zombies(worker, 500, targets=5, ties=500)
    reader = zombie_reader(console_rt.backend)
    first = await reader.page(ZombieFilter(), None, 40, 1_000)
    shown = {op.ecs_id for op in first.records}
    everything = await worker.backend.zombies()
    rest = sorted(
        (op for op in everything if op.ecs_id not in shown), key=lambda op: str(op.ecs_id)
    )
    for op in [*first.records[-3:], *rest[:2]]:
        assert await worker.registry.remove(op.ecs_id)
    left = {op.ecs_id for op in rest[2:]}
    seen = []
    cursor = first.cursor
    while cursor is not None:
        page = await reader.page(ZombieFilter(), cursor, 40, 1_000)
        assert page.scanned <= 41
        seen += [op.ecs_id for op in page.records]
        cursor = page.cursor
    assert len(seen) == len(set(seen)) and set(seen) == left


async def test_the_pages_follow_every_way_a_zombie_leaves(worker_and_console, redis_server):
    """Sweeps, cap evictions, manual removals and an expired record key (the backstop): the
    console's pages list what the books hold, nothing more."""
    worker, console_rt = worker_and_console
    clock = worker.clock
    assert isinstance(clock, FakeClock)
    worker.cleanup.stop()
    deferred = CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=5)
    capped = keep(max_zombie_count_per_target=3)
    accounts = [Account() for _ in range(3)]
    await contend_on(worker, accounts[:1], 2, width=3, cleanup=deferred)  # 4, swept below
    await contend_on(worker, accounts[1:2], 4, width=2, cleanup=capped)  # 4, capped at 3
    await contend_on(worker, accounts[2:], 1, width=4, cleanup=keep())  # 3, one removed by hand
    await written(worker)
    clock.advance(minutes=6)
    await worker.cleanup.sweep()  # or the worker's sweeper, woken by the clock, takes them first
    for _ in range(500):
        if worker.cleanup.removed["ttl"] == 4:
            break
        await asyncio.sleep(0.01)
    assert worker.cleanup.removed["ttl"] == 4
    (gone, *_) = await worker.backend.zombies(accounts[2].ecs_id)
    assert await worker.registry.remove(gone.ecs_id)
    reader = zombie_reader(console_rt.backend)
    assert (await reader.page(ZombieFilter(), None, 1, 1)).total == 3 + 2  # nothing stale
    (expired, *_) = await worker.backend.zombies(accounts[1].ecs_id)
    prefix = console_rt.backend.prefix  # type: ignore[attr-defined]
    redis_server.client().delete(rk.found(redis_server.client(), prefix, f"op:{expired.ecs_id}"))
    page = await reader.page(ZombieFilter(), None, 50, 1_000)
    ids = {op.ecs_id for op in page.records}
    assert ids == {op.ecs_id for op in await worker.backend.zombies()}
    assert len(ids) == 2 + 2 and expired.ecs_id not in ids
    for target in accounts:
        by_target = await reader.page(ZombieFilter(target_id=target.ecs_id), None, 50, 1_000)
        assert {op.ecs_id for op in by_target.records} == {
            op.ecs_id for op in await worker.backend.zombies(target.ecs_id)
        }
    assert (await reader.page(ZombieFilter(), None, 50, 1_000)).total == 4
    assert await console_rt.backend.refresh_zombie_count() == 4  # type: ignore[attr-defined]


def _http(url: str, *, form: dict[str, str] | None = None) -> tuple[int, str]:
    data = urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, headers={"authorization": f"Bearer {TOKEN}"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def _serve(port: int, url: str, prefix: str) -> subprocess.Popen[str]:
    """`contend serve` on the shared Redis, with the console and a token (flags, not env)."""
    argv = ["serve", "--port", str(port), "--redis-url", url, "--redis-prefix", prefix]
    return subprocess.Popen(
        [sys.executable, "-m", "contend", *argv, "--console-token", TOKEN],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "CONTEND_REDIS_URL"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_contend_serve_with_a_redis_url_sees_and_removes_another_workers_zombies(
    redis_server: RedisServer,
):
    prefix = f"serve{uuid.uuid4().hex[:8]}"
    worker = _runtime(redis_server, prefix)
    account = Account()
    await contend_on(worker, [account], 1, width=5)  # 4 rejected
    await written(worker)
    port = free_port()
    proc = _serve(port, redis_server.url, prefix)
    base = f"http://127.0.0.1:{port}/console"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, text = await asyncio.to_thread(
                    _http, f"{base}/zombies?target={account.ecs_id}"
                )
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "contend serve did not answer"
                await asyncio.sleep(0.1)
        assert status == 200
        listed = _rows(text)
        assert len(listed) == 4
        status, _ = await asyncio.to_thread(_http, f"{base}/actions/remove", form={"op": listed[0]})
        assert status == 303
        left = await worker.backend.zombies(account.ecs_id)
        assert {str(op.ecs_id) for op in left} == set(listed[1:])
        status, text = await asyncio.to_thread(_http, f"{base}/zombies?target={account.ecs_id}")
        assert len(_rows(text)) == 3
    finally:
        proc.terminate()
        proc.wait(10)
        await worker.aclose()
