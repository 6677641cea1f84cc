"""A bank under contention: the same seeded workload run once per cleanup strategy.

Clients (asyncio tasks) deposit, withdraw and transfer between accounts through
`@with_conflict_resolution` with staging and OCC. Each strategy gets a fresh runtime on an
accelerated `FakeClock`, so a one-minute retention passes in half a second of real time.
The report says what each strategy cost and checks that no money was created or lost.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import random
import tempfile
import time
import traceback
import tracemalloc
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

from contend import (
    ArchiveReader,
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictResolutionOperation,
    Entity,
    FakeClock,
    OCCConfig,
    OCCConflictError,
    OperationPriority,
    OperationRejectedError,
    OperationRetriedEvent,
    PreECSConfig,
    Runtime,
    install_archive,
    with_conflict_resolution,
)

__all__ = [
    "STRATEGIES",
    "TABLE_COLUMNS",
    "Account",
    "DemoConfig",
    "DemoReport",
    "DemoTallyHandler",
    "InsufficientFundsError",
    "StrategyResult",
    "format_table",
    "money_lines",
    "run_demo",
    "simulate",
    "table_rows",
    "write_plot",
]

STRATEGIES: tuple[str, ...] = ("none", "immediate", "deferred", "lazy", "custom")
INITIAL_BALANCE = 1_000
RETENTION_MINUTES = 1
CHECK_INTERVAL_SECONDS = 10
TALLY_HANDLER = "demo-tally"
ARCHIVE_HANDLER = "archive"
_PRIORITIES = (
    int(OperationPriority.LOW),
    int(OperationPriority.NORMAL),
    int(OperationPriority.NORMAL),
    int(OperationPriority.HIGH),
    int(OperationPriority.CRITICAL),
)


class Account(Entity):
    """A bank account; balances are whole cents so the money check is exact."""

    owner: str
    balance: int = INITIAL_BALANCE


class InsufficientFundsError(Exception):
    """An ordinary business failure: the call ends FAILED and becomes a zombie."""


class DemoTallyHandler(CleanupHandler):
    """The demo's custom strategy: tally each zombie by status, then remove it."""

    def __init__(self) -> None:
        self.tally: dict[str, int] = {}

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        key = operation.status.value
        self.tally[key] = self.tally.get(key, 0) + 1
        await self.remove(operation)


@dataclass(frozen=True)
class DemoConfig:
    """What to simulate; `acceleration` is fake-clock seconds per real second."""

    duration: float = 4.0
    accounts: int = 32
    clients: int = 64
    seed: int = 7
    strategies: tuple[str, ...] = STRATEGIES
    acceleration: float = 120.0
    sample_interval: float = 0.05
    memory: str = "rss"
    isolate: bool = True
    archive_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.05 <= self.duration <= 3600:
            raise ValueError(f"duration must be within 0.05..3600 seconds, got {self.duration}")
        if not 2 <= self.accounts <= 100_000:
            raise ValueError(f"accounts must be within 2..100000, got {self.accounts}")
        if not 1 <= self.clients <= 10_000:
            raise ValueError(f"clients must be within 1..10000, got {self.clients}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(
                f"strategies must be a non-empty subset of {', '.join(STRATEGIES)}, got {unknown}"
            )
        if self.memory not in ("tracemalloc", "rss"):
            raise ValueError(f"memory must be 'tracemalloc' or 'rss', got {self.memory!r}")


@dataclass
class StrategyResult:
    """What one strategy's run did; money figures are in cents."""

    strategy: str
    handler: str
    operations: int = 0
    winners: int = 0
    rejections: int = 0
    occ_retries: int = 0
    failed: int = 0
    zombies_end: int = 0
    peak_zombies: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    peak_memory_bytes: int = 0
    seconds: float = 0.0
    deposited: int = 0
    withdrawn: int = 0
    expected_total: int = 0
    actual_total: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    archived: int | None = None
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def money_ok(self) -> bool:
        return self.expected_total == self.actual_total


@dataclass
class DemoReport:
    config: DemoConfig
    results: list[StrategyResult]

    @property
    def money_ok(self) -> bool:
        return all(r.money_ok for r in self.results)


def _custom_handler_name() -> str:
    """The "archive" handler (contend's), else the demo's tally handler."""
    if CleanupHandlerRegistry.has(ARCHIVE_HANDLER):
        return ARCHIVE_HANDLER
    if not CleanupHandlerRegistry.has(TALLY_HANDLER):
        CleanupHandlerRegistry.register(TALLY_HANDLER, DemoTallyHandler)
    return TALLY_HANDLER


def _cleanup_config(strategy: str) -> CleanupConfig:
    """The named strategy, undiluted: no priority overrides, no pressure switch, caps at max.

    The per-target cap and the force threshold are raised to their maxima so NONE shows the
    unbounded growth it would have in production.
    """
    return CleanupConfig(
        strategy=CleanupStrategy(strategy),
        retention_minutes=RETENTION_MINUTES,
        cleanup_check_interval_seconds=CHECK_INTERVAL_SECONDS,
        aggressive_on_memory_pressure=False,
        immediate_cleanup_priorities=[],
        debug_retention_priorities=[],
        custom_cleanup_handler=_custom_handler_name() if strategy == "custom" else None,
        max_zombie_count_per_target=10_000,
        force_cleanup_threshold=100_000,
    )


_Call = Callable[..., Coroutine[Any, Any, int]]


def _bank(rt: Runtime, cleanup: CleanupConfig) -> dict[str, dict[int, _Call]]:
    """The three decorated operations, one callable per priority."""
    protect = with_conflict_resolution(
        pre_ecs=PreECSConfig(staging_timeout_ms=0),
        occ=OCCConfig(max_retries=3, base_delay_ms=0.2),
        cleanup=cleanup,
        runtime=rt,
    )

    @protect
    async def deposit(account: Account, amount: int) -> int:
        await asyncio.sleep(0)
        account.balance += amount
        return amount

    @protect
    async def withdraw(account: Account, amount: int) -> int:
        await asyncio.sleep(0)
        if account.balance < amount:
            raise InsufficientFundsError(f"balance {account.balance} < {amount}")
        account.balance -= amount
        return amount

    @protect
    async def transfer(source: Account, dest: Account, amount: int) -> int:
        if source.balance < amount:
            raise InsufficientFundsError(f"balance {source.balance} < {amount}")
        source.balance -= amount
        await asyncio.sleep(0)
        dest.balance += amount
        return amount

    return {
        name: {p: fn.with_priority(p) for p in set(_PRIORITIES)}
        for name, fn in (("deposit", deposit), ("withdraw", withdraw), ("transfer", transfer))
    }


class _Run:
    """The mutable books of one strategy's run."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.operations = 0
        self.winners = 0
        self.rejections = 0
        self.failed = 0
        self.retries = 0
        self.deposited = 0
        self.withdrawn = 0
        self.stop = False

    def on_retry(self, _event: OperationRetriedEvent) -> None:
        self.retries += 1


async def _timed(call: Coroutine[Any, Any, int]) -> tuple[int, int | Exception]:
    start = time.perf_counter_ns()
    try:
        outcome: int | Exception = await call
    except Exception as exc:
        outcome = exc
    return time.perf_counter_ns() - start, outcome


async def _client(
    index: int,
    cfg: DemoConfig,
    accounts: Sequence[Account],
    bank: dict[str, dict[int, _Call]],
    books: _Run,
) -> None:
    """One client: its own seeded stream of operations, so every strategy sees the same one."""
    rng = random.Random(cfg.seed * 100_003 + index)
    n = len(accounts)
    hot = max(2, n // 8)
    while not books.stop:
        pick = rng.randrange(hot) if rng.random() < 0.5 else rng.randrange(n)
        account = accounts[pick]
        burst = rng.choice((1, 1, 1, 2, 3)) if rng.random() < 0.3 else 1
        calls: list[tuple[str, Coroutine[Any, Any, int]]] = []
        for _ in range(burst):
            kind = rng.random()
            amount = rng.randint(1, 300)
            priority = rng.choice(_PRIORITIES)
            if kind < 0.45:
                calls.append(("deposit", bank["deposit"][priority](account, amount)))
            elif kind < 0.85:
                calls.append(("withdraw", bank["withdraw"][priority](account, amount)))
            else:
                other = accounts[(pick + 1 + rng.randrange(n - 1)) % n]
                calls.append(("transfer", bank["transfer"][priority](account, other, amount)))
        if burst == 1:
            timed = [await _timed(calls[0][1])]
        else:
            timed = await asyncio.gather(*(_timed(c) for _, c in calls))
        for (kind_name, _), (elapsed, outcome) in zip(calls, timed, strict=True):
            books.operations += 1
            books.latencies.append(elapsed)
            if isinstance(outcome, OperationRejectedError):
                books.rejections += 1
            elif isinstance(outcome, (InsufficientFundsError, OCCConflictError)):
                books.failed += 1
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                books.winners += 1
                if kind_name == "deposit":
                    books.deposited += outcome
                elif kind_name == "withdraw":
                    books.withdrawn += outcome


async def _auditor(rt: Runtime, accounts: Sequence[Account], books: _Run, period: float) -> None:
    """Reads a few accounts' operation histories now and then: what triggers LAZY cleanup."""
    i = 0
    per_round = max(1, len(accounts) // 8)
    while not books.stop:
        for _ in range(per_round):
            await rt.registry.operations_for_target(accounts[i % len(accounts)].ecs_id)
            i += 1
        await asyncio.sleep(period)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _percentile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[k])


async def simulate(
    rt: Runtime,
    strategy: str,
    cfg: DemoConfig,
    *,
    on_sample: Callable[[float, _Run, int], None] | None = None,
) -> StrategyResult:
    """Run the seeded workload on `rt` (which must use a FakeClock) with one cleanup strategy."""
    clock = rt.clock
    if not isinstance(clock, FakeClock):
        raise ValueError("simulate needs a runtime built with clock=FakeClock()")
    cleanup = _cleanup_config(strategy)
    bank = _bank(rt, cleanup)
    accounts = [Account(owner=f"client-{i:04d}") for i in range(cfg.accounts)]
    for a in accounts:
        await rt.registry.register(a)
    archive = None
    if cleanup.custom_cleanup_handler == ARCHIVE_HANDLER:
        folder = Path(cfg.archive_dir or tempfile.gettempdir())
        archive = install_archive(rt, folder / f"contend-demo-{os.getpid()}-{id(rt)}.sqlite3")
    books = _Run()
    unsubscribe = rt.events.subscribe(OperationRetriedEvent, books.on_retry)
    result = StrategyResult(strategy=strategy, handler=cleanup.custom_cleanup_handler or strategy)
    gc.collect()
    tracing = cfg.memory == "tracemalloc"
    if tracing:
        tracemalloc.start()
        tracemalloc.reset_peak()
        base_mem = tracemalloc.get_traced_memory()[0]
    else:
        base_mem = _rss()
    peak_mem = base_mem
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(_client(i, cfg, accounts, bank, books)) for i in range(cfg.clients)
    ]
    tasks.append(asyncio.create_task(_auditor(rt, accounts, books, cfg.sample_interval * 2)))
    last = started
    try:
        while True:
            await asyncio.sleep(cfg.sample_interval)
            now = time.perf_counter()
            clock.advance((now - last) * cfg.acceleration)
            last = now
            elapsed = now - started
            zombies = rt.backend.zombie_count
            result.timeline.append((elapsed, zombies))
            result.peak_zombies = max(result.peak_zombies, zombies)
            if not tracing:
                peak_mem = max(peak_mem, _rss())
            if on_sample is not None:
                on_sample(elapsed, books, zombies)
            if elapsed >= cfg.duration or any(t.done() for t in tasks):
                break
    finally:
        books.stop = True
        await asyncio.gather(*tasks)
        rt.cleanup.stop()  # the run is over: its books must not move while they are read
        if tracing:
            peak_mem = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        unsubscribe()
    result.seconds = time.perf_counter() - started
    await asyncio.sleep(0)
    zombies = rt.backend.zombie_count
    result.timeline.append((result.seconds, zombies))
    result.peak_zombies = max(result.peak_zombies, zombies)
    result.zombies_end = zombies
    result.operations = books.operations
    result.winners = books.winners
    result.rejections = books.rejections
    result.failed = books.failed
    result.occ_retries = books.retries
    result.deposited = books.deposited
    result.withdrawn = books.withdrawn
    result.peak_memory_bytes = max(0, peak_mem - base_mem)
    lat = sorted(books.latencies)
    result.p50_us = _percentile(lat, 0.50) / 1000.0
    result.p99_us = _percentile(lat, 0.99) / 1000.0
    result.removed = dict(rt.cleanup.removed)
    result.expected_total = INITIAL_BALANCE * cfg.accounts + books.deposited - books.withdrawn
    total = 0
    for a in accounts:
        committed = await rt.registry.get_entity(a.ecs_id)
        total += committed.balance if isinstance(committed, Account) else 0
    result.actual_total = total
    if archive is not None:
        archive.close()
        with ArchiveReader(archive.path) as reader:
            result.archived = reader.count()
        if cfg.archive_dir is None:
            archive.path.unlink(missing_ok=True)
    return result


class _Progress:
    """A one-line progress bar redrawn with carriage returns (no dependency)."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None, cfg: DemoConfig) -> None:
        self.stream = stream
        self.cfg = cfg
        self.index = 0
        self.strategy = ""

    def start(self, index: int, strategy: str) -> None:
        self.index, self.strategy = index, strategy
        self.sample(0.0, None, 0)

    def sample(self, elapsed: float, books: _Run | None, zombies: int) -> None:
        if self.stream is None:
            return
        cfg = self.cfg
        frac = min(1.0, elapsed / cfg.duration)
        done = int(frac * self.WIDTH)
        ops = books.operations if books is not None else 0
        self.stream.write(
            f"\r[{self.index + 1}/{len(cfg.strategies)}] {self.strategy:<9} "
            f"[{'#' * done}{'.' * (self.WIDTH - done)}] {frac:4.0%}  "
            f"ops {ops:>9,}  zombies {zombies:>8,}"
        )
        self.stream.flush()

    def finish(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


async def _one(strategy: str, cfg: DemoConfig, bar: _Progress) -> StrategyResult:
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0, name=f"demo-{strategy}")
    try:
        return await simulate(rt, strategy, cfg, on_sample=bar.sample)
    finally:
        await rt.aclose()


def _child(strategy: str, cfg: DemoConfig, bar: _Progress, conn: Connection) -> None:
    try:
        conn.send(("ok", asyncio.run(_one(strategy, cfg, bar))))
    except BaseException as exc:
        conn.send(("error", "".join(traceback.format_exception(exc))))
    finally:
        conn.close()


def _isolated(strategy: str, cfg: DemoConfig, bar: _Progress) -> StrategyResult:
    """Run one strategy in a forked child, so its memory figure is not masked by the last one's."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(strategy, cfg, bar, child), daemon=True)
    proc.start()
    child.close()
    try:
        kind, payload = parent.recv()
    except EOFError:
        kind, payload = "error", f"the demo process for {strategy!r} died (exit {proc.exitcode})"
    finally:
        proc.join()
        parent.close()
    if kind != "ok" or not isinstance(payload, StrategyResult):
        raise RuntimeError(f"demo strategy {strategy!r} failed:\n{payload}")
    return payload


def run_demo(cfg: DemoConfig | None = None, progress: TextIO | None = None) -> DemoReport:
    """Run every configured strategy in turn, each on a fresh runtime and event loop.

    With ``cfg.isolate`` (and a platform that can fork) each strategy runs in its own child
    process; progress is written to `progress`, which must then be a real file such as stderr.
    """
    cfg = cfg or DemoConfig()
    bar = _Progress(progress, cfg)
    isolate = cfg.isolate and "fork" in multiprocessing.get_all_start_methods()
    results: list[StrategyResult] = []
    for i, strategy in enumerate(cfg.strategies):
        bar.start(i, strategy)
        if isolate:
            results.append(_isolated(strategy, cfg, bar))
        else:
            results.append(asyncio.run(_one(strategy, cfg, bar)))
        bar.finish()
    return DemoReport(cfg, results)


def _fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.0f} KiB"


TABLE_COLUMNS = (
    "strategy",
    "operations",
    "winners",
    "rejections",
    "OCC retries",
    "failed",
    "zombies end",
    "peak zombies",
    "p50 µs",
    "p99 µs",
    "peak memory",
)


def table_rows(report: DemoReport) -> list[list[str]]:
    return [
        [
            r.strategy if r.handler == r.strategy else f"{r.strategy} ({r.handler})",
            f"{r.operations:,}",
            f"{r.winners:,}",
            f"{r.rejections:,}",
            f"{r.occ_retries:,}",
            f"{r.failed:,}",
            f"{r.zombies_end:,}",
            f"{r.peak_zombies:,}",
            f"{r.p50_us:,.0f}",
            f"{r.p99_us:,.0f}",
            _fmt_bytes(r.peak_memory_bytes),
        ]
        for r in report.results
    ]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def money_lines(report: DemoReport) -> list[str]:
    """One line per strategy: initial + deposits - withdrawals against the committed balances."""
    out = []
    initial = INITIAL_BALANCE * report.config.accounts
    for r in report.results:
        verdict = "OK" if r.money_ok else "MISMATCH"
        out.append(
            f"{r.strategy:<9} {initial:,} + {r.deposited:,} - {r.withdrawn:,} = "
            f"{r.expected_total:,}; balances sum to {r.actual_total:,}: {verdict}"
        )
    return out


def write_plot(report: DemoReport, path: str | Path) -> Path:
    """Zombie count over time, one line per strategy (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report.config
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    try:
        for r in report.results:
            xs = [t for t, _ in r.timeline]
            ys = [z for _, z in r.timeline]
            ax.plot(xs, ys, label=f"{r.strategy} (peak {r.peak_zombies:,})", linewidth=1.8)
        ax.set_xlabel("time since the strategy's start (s, real time)")
        ax.set_ylabel("zombie records in the registry")
        ax.set_title(
            f"contend demo: zombies per cleanup strategy "
            f"({cfg.accounts} accounts, {cfg.clients} clients, seed {cfg.seed}; "
            f"1 real s = {cfg.acceleration:g} clock s)",
            fontsize=9,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(title="strategy")
        top = max((r.peak_zombies for r in report.results), default=0)
        ax.set_ylim(bottom=-0.015 * max(top, 1))
        out = Path(path)
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
