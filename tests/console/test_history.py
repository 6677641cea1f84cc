"""The last hour: samples on the runtime's clock, a bounded ring, per-minute increases."""

from __future__ import annotations

import asyncio

from conftest import Account, call, contend_on, keep
from contend import FakeClock
from contend.console import make_console
from contend.console.history import CONFLICTS, REJECTED
from contend.testing import make_runtime


async def tick(clock: FakeClock, seconds: float, times: int = 1) -> None:
    """Advance the fake clock in steps, letting the sampler run after each."""
    for _ in range(times):
        clock.advance(seconds=seconds)
        for _ in range(5):
            await asyncio.sleep(0)


async def test_the_sampler_runs_on_the_runtime_clock(runtime, clock):
    console = make_console(runtime, sample_interval_seconds=10)
    console.start()
    try:
        await tick(clock, 0)
        assert len(console.history.points) == 1
        await tick(clock, 10, times=6)
        points = console.history.points
        assert len(points) == 7
        assert [p.t - points[0].t for p in points] == [0, 10, 20, 30, 40, 50, 60]
    finally:
        await console.aclose()
    assert not console.history.running


async def test_the_ring_keeps_the_configured_span_only(runtime, clock):
    console = make_console(runtime, sample_interval_seconds=10, history_minutes=5)
    console.start()
    try:
        await tick(clock, 10, times=100)
        points = console.history.points
        assert len(points) == 31
        assert points[-1].t - points[0].t == 300
    finally:
        await console.aclose()


async def test_zombies_by_strategy_over_time_and_rejections_per_minute(runtime, clock):
    console = make_console(runtime, sample_interval_seconds=10)
    console.start()
    accounts = [Account() for _ in range(3)]
    try:
        await tick(clock, 0)
        await tick(clock, 60)  # minute 1: nothing
        made = await contend_on(runtime, accounts, 4, width=2, cleanup=keep("none"))
        await tick(clock, 60)  # minute 2: 12 rejections
        made_deferred = await contend_on(runtime, accounts, 2, width=3, cleanup=keep("deferred"))
        await tick(clock, 60)  # minute 3: 12 more
        history = console.history
        now = clock.time()
        per_minute = [v for _, v in history.per_minute(REJECTED, now) if v is not None]
        assert per_minute[-4:] == [0.0, float(made), float(made_deferred), 0.0]
        assert all(v == 0 for _, v in history.per_minute(CONFLICTS, now) if v is not None)
        last = history.points[-1]
        assert last.by_strategy == {"none": made, "deferred": made_deferred}
        assert last.zombies == made + made_deferred
        overview = await call(console, "/")
        assert 'class="line s-deferred"' in overview.text
        assert 'class="line s-none"' in overview.text
    finally:
        await console.aclose()


async def test_two_consoles_share_nothing():
    clocks = [FakeClock(), FakeClock()]
    runtimes = [make_runtime(clock=c) for c in clocks]
    consoles = [make_console(rt) for rt in runtimes]
    await contend_on(runtimes[0], [Account()], 1, width=5)
    for c in consoles:
        await c.history.sample()
    assert consoles[0].history.points[-1].zombies == 4
    assert consoles[1].history.points[-1].zombies == 0
