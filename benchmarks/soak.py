"""Soak: many contended calls with deferred cleanup on a fast fake clock; zombies and RSS must stay
bounded.

Each round gathers CONTENDERS calls on each of TARGETS accounts (one winner, the rest rejected;
one winner in FAIL_EVERY raises), then moves the FakeClock on by SECONDS_PER_ROUND, so records
fall due and the runtime's own sweeper removes them while calls go on. It prints the zombie count
and RSS as it goes and fails loudly (exit status 1) if

* the zombie count ever exceeds rate x (retention + check interval) + one round, capped by
  targets x max_zombie_count_per_target (what the configuration promises), or
* RSS after warm-up (the first fifth of the calls, and at least two retention periods) grows by
  more than 10 %.

    .venv/bin/python benchmarks/soak.py                # 1,000,000 calls
    .venv/bin/python benchmarks/soak.py --calls 50000

`run(calls)` returns the figures as a dict; tests/reliability/test_soak_small.py runs 10,000 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from typing import Any

import psutil

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    FakeClock,
    OperationRejectedError,
    Runtime,
    with_conflict_resolution,
)

TARGETS = 50
CONTENDERS = 5
FAIL_EVERY = 25
SECONDS_PER_ROUND = 15.0
RETENTION_MINUTES = 1
CHECK_INTERVAL_SECONDS = 10
CAP_PER_TARGET = 100
MEMORY_GROWTH_LIMIT = 0.10
SAMPLES = 40


class Account(Entity):
    balance: int = 0


class _Planned(Exception):
    """The failure a soak winner raises on purpose."""


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def _soak(calls: int, report: bool) -> dict[str, Any]:
    clock = FakeClock()
    rt = Runtime(clock=clock, memory_probe=lambda: 0.0, name="soak")
    cleanup = CleanupConfig(
        strategy=CleanupStrategy.DEFERRED,
        retention_minutes=RETENTION_MINUTES,
        cleanup_check_interval_seconds=CHECK_INTERVAL_SECONDS,
        max_zombie_count_per_target=CAP_PER_TARGET,
        force_cleanup_threshold=100_000,
        immediate_cleanup_priorities=[],
        debug_retention_priorities=[],
    )

    @with_conflict_resolution(runtime=rt, cleanup=cleanup)
    async def deposit(account: Account, amount: int, fail: bool) -> int:
        if fail:
            raise _Planned
        account.balance += amount
        return account.balance

    accounts = [Account() for _ in range(TARGETS)]
    per_round = TARGETS * CONTENDERS
    rounds = max(1, calls // per_round)
    zombies_per_round = TARGETS * (CONTENDERS - 1)
    rate = zombies_per_round / SECONDS_PER_ROUND
    zombie_bound = min(
        rate * (RETENTION_MINUTES * 60 + CHECK_INTERVAL_SECONDS) + zombies_per_round,
        TARGETS * CAP_PER_TARGET,
    )
    retention_rounds = int((RETENTION_MINUTES * 60 + CHECK_INTERVAL_SECONDS) / SECONDS_PER_ROUND)
    warm_rounds = min(rounds - 1, max(rounds // 5, 2 * retention_rounds + 2))
    sample_every = max(1, rounds // SAMPLES)

    rss_start = _rss()
    rss_warm: int | None = None
    rss_max_after_warm = 0
    zombie_max = 0
    succeeded = rejected = failed = 0
    samples: list[dict[str, float]] = []
    failures: list[str] = []
    started = time.perf_counter()
    if report:
        print(
            f"soak: {rounds * per_round:,} calls in {rounds:,} rounds of {TARGETS} targets x "
            f"{CONTENDERS}; deferred {RETENTION_MINUTES} min, clock +{SECONDS_PER_ROUND:.0f} s "
            f"per round; zombie bound {zombie_bound:,.0f}, warm-up {warm_rounds} rounds"
        )
        print(f"{'calls':>12} {'zombies':>8} {'rss MiB':>8} {'removed':>10}")

    for r in range(rounds):
        fail = r % FAIL_EVERY == 0
        outcomes = await asyncio.gather(
            *(
                deposit.with_priority(1 + (i + r) % 9)(a, 1, fail)
                for a in accounts
                for i in range(CONTENDERS)
            ),
            return_exceptions=True,
        )
        for o in outcomes:
            if isinstance(o, int):
                succeeded += 1
            elif isinstance(o, OperationRejectedError):
                rejected += 1
            elif isinstance(o, _Planned):
                failed += 1
            else:
                raise RuntimeError(f"soak: unexpected outcome {o!r}")
        clock.advance(SECONDS_PER_ROUND)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        zombies = rt.backend.zombie_count
        zombie_max = max(zombie_max, zombies)
        if zombies > zombie_bound and len(failures) < 5:
            failures.append(f"round {r}: {zombies} zombies > bound {zombie_bound:.0f}")
        if r == warm_rounds:
            gc.collect()
            rss_warm = _rss()
        if r % sample_every == 0 or r == rounds - 1:
            rss = _rss()
            if rss_warm is not None and r > warm_rounds:
                rss_max_after_warm = max(rss_max_after_warm, rss)
            done = (r + 1) * per_round
            removed = sum(rt.cleanup.removed.values())
            samples.append({"calls": done, "zombies": zombies, "rss": rss, "removed": removed})
            if report:
                print(f"{done:>12,} {zombies:>8,} {rss / 2**20:>8.1f} {removed:>10,}")

    elapsed = time.perf_counter() - started
    rss_end = _rss()
    if rss_warm is not None:
        rss_max_after_warm = max(rss_max_after_warm, rss_end)
    growth = (rss_max_after_warm / rss_warm - 1.0) if rss_warm else 0.0
    if growth > MEMORY_GROWTH_LIMIT:
        failures.append(
            f"RSS grew {growth:.1%} after warm-up ({rss_warm} -> {rss_max_after_warm} bytes), "
            f"limit {MEMORY_GROWTH_LIMIT:.0%}"
        )

    present = rt.backend.zombie_count
    removed_total = sum(rt.cleanup.removed.values())
    accounted = (
        removed_total + present == rejected + failed
        and rt.backend.operation_count() == present
        and rt.backend.coordinator.in_flight() == 0
        and sum(a.balance for a in accounts) == succeeded
    )
    if not accounted:
        failures.append(
            f"books do not balance: removed {removed_total} + present {present} != zombies "
            f"made {rejected + failed}, or records/in-flight/balances left over"
        )
    rt.cleanup.stop()
    return {
        "calls": rounds * per_round,
        "rounds": rounds,
        "seconds": elapsed,
        "calls_per_second": rounds * per_round / elapsed if elapsed else 0.0,
        "succeeded": succeeded,
        "rejected": rejected,
        "failed": failed,
        "removed": dict(rt.cleanup.removed),
        "zombies_end": present,
        "zombie_max": zombie_max,
        "zombie_bound": zombie_bound,
        "rss_start": rss_start,
        "rss_warm": rss_warm,
        "rss_max_after_warm": rss_max_after_warm,
        "rss_growth": growth,
        "accounted": accounted,
        "samples": samples,
        "failures": failures,
        "ok": not failures,
    }


def run(calls: int, *, report: bool = False) -> dict[str, Any]:
    """Soak `calls` calls (rounded down to whole rounds, at least one) in a fresh event loop."""
    return asyncio.run(_soak(calls, report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    result = run(args.calls, report=True)
    print(
        f"\n{result['calls']:,} calls in {result['seconds']:.1f} s "
        f"({result['calls_per_second']:,.0f}/s): {result['succeeded']:,} succeeded, "
        f"{result['rejected']:,} rejected, {result['failed']:,} failed; removed "
        f"{result['removed']}; zombies max {result['zombie_max']:,} (bound "
        f"{result['zombie_bound']:,.0f}), at the end {result['zombies_end']:,}"
    )
    warm = result["rss_warm"] or 0
    print(
        f"RSS start {result['rss_start'] / 2**20:.1f} MiB, after warm-up {warm / 2**20:.1f} MiB, "
        f"max after warm-up {result['rss_max_after_warm'] / 2**20:.1f} MiB "
        f"({result['rss_growth']:+.1%}, limit +{MEMORY_GROWTH_LIMIT:.0%})"
    )
    if not result["ok"]:
        print("\nSOAK FAILED:", file=sys.stderr)
        for failure in result["failures"]:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("soak ok: zombies and memory stayed within their bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
