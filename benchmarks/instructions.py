"""Machine instructions per call, counted by valgrind: a speed figure the host's noise cannot move.

On a shared VM, wall-clock throughput moves by up to 2x between runs, which hides a 10 % change.
Here each workload runs twice under ``valgrind --tool=cachegrind`` (instruction counting only),
with a short and a long series of rounds; the difference over the extra calls is what one call
costs, start-up excluded. The rounds are those of `contended_throughput.py`: 5 calls gathered on
each of 1,000 accounts. Workloads:

- ``bare``: the undecorated coroutine (the baseline of every row);
- ``floor``: the least a staging window can do, written out by hand: a per-target list, one trip
  through the loop, the highest priority wins, the others raise. No record, no cleanup, no
  metrics; what the spec requires on top of this is contend's own cost;
- ``contend``: the decorated coroutine with IMMEDIATE cleanup (the figure of the target row);
- ``contend, default cleanup``: the same with ``CleanupConfig()``;
- ``uncontended``: sequential calls on one account (no window, no rejection), against
  ``bare-sequential``, the same awaits of the undecorated coroutine.

The runs go two at a time (valgrind is single-threaded). The three goals of the core redesign
(issue 15) are reported as ratios: a contended call against a bare gather (<= 2.4x), an
uncontended call against a bare await (<= 12x), both in instructions, and contended throughput
against the bare gather's in wall-clock time, measured in the same run outside valgrind (the
rounds of `contended_throughput.py`, alternating, median of the repetitions; >= 0.35x).

Needs ``valgrind`` on the PATH (Debian: ``apt-get install valgrind``); without it, one row says so.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import types
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Account, Row, deposit, instructions, main, median, row  # noqa: E402

TARGETS = 1_000
WAYS = 5
WORKLOADS = ("bare", "floor", "contend", "contend-default", "bare-sequential", "uncontended")


class _Lost(RuntimeError):
    pass


@types.coroutine
def _one_tick() -> Any:
    yield


def _floor() -> Callable[[Account, int], Awaitable[int]]:
    windows: dict[int, list[Any]] = {}

    async def staged(account: Account, amount: int, priority: int = 5) -> int:
        tid = account.ecs_id.int
        window = windows.get(tid)
        if window is None:
            window = windows[tid] = [[], None]
        me = (priority,)
        window[0].append(me)
        await _one_tick()
        if window[1] is None:
            best = window[0][0]
            for entry in window[0]:
                if entry[0] > best[0]:
                    best = entry
            window[1] = best
            del windows[tid]
        if window[1] is not me:
            raise _Lost("lost its window")
        account.balance += amount
        return account.balance

    return staged


async def _child(workload: str, rounds: int) -> None:
    from contend import CleanupConfig, CleanupStrategy, FakeClock, Runtime, with_conflict_resolution

    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
    fn: Callable[[Account, int], Awaitable[int]] = deposit
    if workload == "floor":
        fn = _floor()
    elif workload in ("contend", "uncontended"):
        fn = with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.IMMEDIATE)(deposit)
    elif workload == "contend-default":
        fn = with_conflict_resolution(runtime=rt, cleanup=CleanupConfig())(deposit)
    accounts = [Account() for _ in range(TARGETS)]
    if workload in ("uncontended", "bare-sequential"):
        one = accounts[0]
        for _ in range(rounds * TARGETS * WAYS):
            await fn(one, 1)
    else:
        for _ in range(rounds):
            await asyncio.gather(
                *[fn(a, 1) for a in accounts for _ in range(WAYS)], return_exceptions=True
            )
    rt.cleanup.stop()


def _instructions(workload: str, rounds: int) -> int:
    return instructions(Path(__file__).resolve(), "--child", workload, str(rounds))


def _per_call(workload: str, short: int, long: int) -> float:
    extra = _instructions(workload, long) - _instructions(workload, short)
    return extra / ((long - short) * TARGETS * WAYS)


def _wall_clock_ratio(quick: bool) -> tuple[float, float, float]:
    """Contended ops/s against the bare gather's, in this process: (ratio, contended, bare)."""
    from contended_throughput import _throughput

    from contend import CleanupStrategy, FakeClock, Runtime, with_conflict_resolution

    async def measure() -> tuple[float, float, float]:
        rounds, reps = (2, 3) if quick else (6, 5)
        rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
        fn = with_conflict_resolution(runtime=rt, cleanup=CleanupStrategy.IMMEDIATE)(deposit)
        accounts = [Account() for _ in range(TARGETS)]
        await _throughput(deposit, accounts, 1)
        await _throughput(fn, accounts, 1)
        bare: list[float] = []
        contended: list[float] = []
        for _ in range(reps):
            bare.append((await _throughput(deposit, accounts, rounds))[0])
            contended.append((await _throughput(fn, accounts, rounds))[0])
        rt.cleanup.stop()
        return median(contended) / median(bare), median(contended), median(bare)

    return asyncio.run(measure())


def run(quick: bool) -> list[Row]:
    if shutil.which("valgrind") is None:
        return [
            row(
                "instructions per contended call",
                None,
                "instr",
                note="valgrind is not installed (Debian: apt-get install valgrind)",
            )
        ]
    short, long = (1, 3) if quick else (2, 8)
    with ThreadPoolExecutor(max_workers=2) as pool:
        per = dict(
            zip(
                WORKLOADS,
                pool.map(lambda w: _per_call(w, short, long), WORKLOADS),
                strict=True,
            )
        )
    bare = per["bare"]
    spread = f"{long - short} rounds x {TARGETS * WAYS:,} calls, start-up excluded"
    wall, contended_rate, bare_rate = _wall_clock_ratio(quick)
    goals = [
        row(
            "goal: contended call / bare gather, instructions",
            per["contend"] / bare,
            "x",
            target="<= 2.4",
            note="5 calls gathered on each of 1,000 entities, IMMEDIATE cleanup",
        ),
        row(
            "goal: uncontended call / bare await, instructions",
            per["uncontended"] / per["bare-sequential"],
            "x",
            target="<= 12",
        ),
        row(
            "goal: contended / bare gather, wall-clock ops/s",
            wall,
            "x",
            target=">= 0.35",
            note=f"same run: {contended_rate:,.0f} vs {bare_rate:,.0f} ops/s",
        ),
    ]
    return [
        *goals,
        row("instructions per call, bare gather", bare, "instr", note=spread),
        row(
            "instructions per call, minimal window (floor)",
            per["floor"],
            "instr",
            baseline=bare,
            note="a hand-written window with no record, cleanup or metrics",
        ),
        row(
            "instructions per contended call (5-way x 1,000 targets)",
            per["contend"],
            "instr",
            baseline=bare,
            note=f"IMMEDIATE cleanup; {per['contend'] / per['floor']:.2f}x the floor",
        ),
        row(
            "instructions per contended call, default cleanup config",
            per["contend-default"],
            "instr",
            baseline=bare,
        ),
        row(
            "instructions per uncontended call (sequential)",
            per["uncontended"],
            "instr",
            baseline=per["bare-sequential"],
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        asyncio.run(_child(sys.argv[2], int(sys.argv[3])))
    else:
        main(run, __doc__ or "")
