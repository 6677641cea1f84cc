"""The `contend` command: demo, bench, health and serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from contend.errors import ConfigurationError

__all__ = ["build_parser", "main"]

DEMO_DEFAULT_SECONDS = 4.0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be within 0.05..3600 seconds, got {value}")
    return value


def _int_in(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low}..{high}, got {value}")
        return value

    return parse


def _strategies(text: str) -> tuple[str, ...]:
    from contend_demo import STRATEGIES

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown strategies {unknown}; choose from {','.join(STRATEGIES)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="contend",
        description="Priority staging, optimistic concurrency and zombie cleanup for asyncio.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="bank simulation, once per cleanup strategy",
        description=(
            "Simulate a bank: concurrent clients with mixed priorities deposit, withdraw and "
            "transfer through @with_conflict_resolution (staging + OCC), once per cleanup "
            "strategy on the same seeded workload. Prints a table, checks that no money was "
            "created or lost (exit status 1 if it was) and plots zombies over time."
        ),
    )
    demo.add_argument(
        "--duration",
        type=_positive_float,
        default=DEMO_DEFAULT_SECONDS,
        help=f"seconds per strategy (default {DEMO_DEFAULT_SECONDS:g})",
    )
    demo.add_argument("--accounts", type=_int_in(2, 100_000), default=32, help="default 32")
    demo.add_argument("--clients", type=_int_in(1, 10_000), default=64, help="default 64")
    demo.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    demo.add_argument(
        "--plot",
        default="contend-demo.png",
        metavar="PATH",
        help="PNG of zombies over time (default contend-demo.png; '' to skip)",
    )
    demo.add_argument(
        "--strategies",
        type=_strategies,
        default=None,
        help="comma-separated subset of none,immediate,deferred,lazy,custom (default: all)",
    )
    demo.add_argument(
        "--memory",
        choices=("rss", "tracemalloc"),
        default="rss",
        help="peak memory as RSS growth of a child process per strategy (default), or "
        "traced Python allocations in this process (exact but slows the run)",
    )
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on when stderr is a terminal)",
    )

    bench = sub.add_parser(
        "bench",
        help="run the benchmark suite",
        description=(
            "Run every benchmark in benchmarks/ and print one table: figure, value, unit, "
            "bare-asyncio baseline measured in the same run, ratio, target, ok."
        ),
    )
    bench.add_argument("--quick", action="store_true", help="fewer calls and repetitions")
    bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    bench.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    bench.add_argument(
        "--dir", metavar="PATH", help="the benchmarks folder (default: the repository's)"
    )

    health = sub.add_parser(
        "health",
        help="print the cleanup health check as JSON",
        description=(
            "Print the health-check JSON of a fresh runtime, optionally after a short demo run "
            "on it so there is something to report."
        ),
    )
    health.add_argument(
        "--demo-seconds",
        type=float,
        default=0.0,
        help="run the bank workload this long first (default 0: no run)",
    )
    health.add_argument(
        "--strategy",
        choices=("none", "immediate", "deferred", "lazy", "custom"),
        default="deferred",
        help="cleanup strategy of that run (default deferred)",
    )
    _redis_arguments(health)

    serve = sub.add_parser(
        "serve",
        help="serve /metrics, /healthz and the console over HTTP",
        description=(
            "Serve /metrics (Prometheus text), /healthz (JSON; 503 when unhealthy) and the "
            "operations console (/console/) for the default runtime of this process. A service "
            "exposes its own runtime by mounting contend.http.make_app() in its ASGI app, or by "
            "awaiting contend.http.serve() in its own event loop; see docs/observability.md."
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=_int_in(0, 65_535), default=9464, help="default 9464")
    serve.add_argument(
        "--console",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the operations console under /console (default on)",
    )
    serve.add_argument(
        "--console-token",
        default=None,
        metavar="TOKEN",
        help="turns the console's actions on and requires this token for them (at least 16 "
        "characters; default $CONTEND_CONSOLE_TOKEN; without one the console is read-only)",
    )
    serve.add_argument(
        "--protect-reads",
        action="store_true",
        help="require the console token to read the console too",
    )
    _redis_arguments(serve)
    return parser


def _redis_arguments(command: argparse.ArgumentParser) -> None:
    """--redis-url / --redis-prefix, defaulting to $CONTEND_REDIS_URL / $CONTEND_REDIS_PREFIX."""
    command.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help="report the shared state in this Redis (default: $CONTEND_REDIS_URL; unset: this "
        "process's own in-memory runtime)",
    )
    command.add_argument(
        "--redis-prefix",
        default=None,
        metavar="PREFIX",
        help="key prefix of the workers to report (default: $CONTEND_REDIS_PREFIX or contend)",
    )


def _redis_runtime(args: argparse.Namespace, name: str) -> Any:
    """A runtime on the Redis the arguments (or the environment) name, or None."""
    url = args.redis_url or os.environ.get("CONTEND_REDIS_URL", "").strip()
    if not url:
        return None
    from contend.backends.redis import RedisBackend
    from contend.runtime import Runtime

    prefix = args.redis_prefix or os.environ.get("CONTEND_REDIS_PREFIX", "contend")
    return Runtime(backend=RedisBackend.from_url(url, prefix=prefix), name=name)


# demo ---------------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from contend_demo import (
        STRATEGIES,
        TABLE_COLUMNS,
        DemoConfig,
        format_table,
        money_lines,
        run_demo,
        table_rows,
        write_plot,
    )

    cfg = DemoConfig(
        duration=args.duration,
        accounts=args.accounts,
        clients=args.clients,
        seed=args.seed,
        strategies=args.strategies or STRATEGIES,
        memory=args.memory,
    )
    print(
        f"contend demo: {cfg.accounts} accounts, {cfg.clients} clients, seed {cfg.seed}, "
        f"{cfg.duration:g} s per strategy ({len(cfg.strategies)} strategies); "
        f"deposits, withdrawals and transfers with mixed priorities, staging + OCC",
        flush=True,
    )
    show = sys.stderr.isatty() if args.progress is None else args.progress
    report = run_demo(cfg, sys.stderr if show else None)
    print()
    print(format_table(TABLE_COLUMNS, table_rows(report)))
    print()
    print("latency: per call, from the call to its result or exception (includes queueing)")
    print("zombies: rejected/failed records still in the registry; peak memory: " + cfg.memory)
    for r in report.results:
        if r.archived is not None:
            print(
                f"{r.strategy} ({r.handler}): {r.archived:,} records written to the SQLite "
                "archive before they left the registry"
            )
    print()
    print("money check (cents): initial + committed deposits - committed withdrawals")
    for line in money_lines(report):
        print("  " + line)
    if args.plot:
        path = write_plot(report, args.plot)
        print(f"\nzombies over time: {path}")
    if not report.money_ok:
        print("MONEY CHECK FAILED: money was created or lost", file=sys.stderr)
        return 1
    print("money check passed: no money created or lost")
    return 0


# bench --------------------------------------------------------------------------------------------
def _benchmarks_dir(given: str | None) -> Path | None:
    candidates = [Path(given)] if given else []
    candidates += [
        Path(__file__).resolve().parents[2] / "benchmarks",
        Path.cwd() / "benchmarks",
    ]
    for c in candidates:
        if (c / "run_all.py").is_file():
            return c
    return None


def _load_run_all(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "contend_benchmarks_run_all", folder / "run_all.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {folder / 'run_all.py'}")
    module = importlib.util.module_from_spec(spec)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec.loader.exec_module(module)
    return module


def _cmd_bench(args: argparse.Namespace) -> int:
    folder = _benchmarks_dir(args.dir)
    if folder is None:
        print(
            "benchmarks/ not available: run `contend bench` from a clone of the repository "
            "(or pass --dir PATH)",
            file=sys.stderr,
        )
        return 2
    run_all = _load_run_all(folder)
    rows = run_all.collect(quick=args.quick, only=args.only, progress=sys.stderr)
    print(run_all.render(rows))
    if args.json:
        run_all.write_json(rows, args.json, quick=args.quick)
        print(f"\nwrote {args.json}")
    return 0


# health and serve ---------------------------------------------------------------------------------
async def _health(args: argparse.Namespace) -> dict[str, Any]:
    from contend.clock import FakeClock
    from contend.runtime import Runtime
    from contend_demo import DemoConfig, simulate

    rt = _redis_runtime(args, "contend-health")
    if rt is None:
        rt = Runtime(clock=FakeClock(), name="contend-health")
    try:
        if args.demo_seconds > 0:
            cfg = DemoConfig(duration=args.demo_seconds, strategies=(args.strategy,), isolate=False)
            await simulate(rt, args.strategy, cfg)
        return await _health_json(rt)
    finally:
        await rt.aclose()


async def _health_json(rt: Any) -> dict[str, Any]:
    """The HTTP endpoint's body when contend.http is installed, else the plain health check."""
    try:
        http: ModuleType | None = importlib.import_module("contend.http")
    except ImportError:
        http = None
    builder = getattr(http, "health_json", None)
    if builder is not None:
        body = builder(rt)
        if inspect.isawaitable(body):
            body = await body
        if isinstance(body, tuple) and len(body) == 2:
            body = body[1]
        if isinstance(body, (bytes, str)):
            body = json.loads(body)
        if isinstance(body, dict):
            return body
    from contend.health import cleanup_system_health_check

    return await cleanup_system_health_check(rt)


def _cmd_health(args: argparse.Namespace) -> int:
    if not 0 <= args.demo_seconds <= 3600:
        print(f"--demo-seconds must be within 0..3600, got {args.demo_seconds}", file=sys.stderr)
        return 2
    if args.demo_seconds > 0 and (args.redis_url or os.environ.get("CONTEND_REDIS_URL")):
        print(
            "--demo-seconds runs the demo in this process only; it does not write demo data "
            "into a shared Redis (drop --redis-url / CONTEND_REDIS_URL to run it)",
            file=sys.stderr,
        )
        return 2
    try:
        body = asyncio.run(_health(args))
    except ConfigurationError as exc:
        print(f"contend health: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(body, indent=2, sort_keys=True, default=str))
    return 0 if body.get("status") != "unhealthy" else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        http = importlib.import_module("contend.http")
    except ImportError as exc:
        print(f"contend serve is not available: {exc}", file=sys.stderr)
        return 2
    try:
        rt = _redis_runtime(args, "contend-serve")
    except ConfigurationError as exc:
        print(f"contend serve: {exc}", file=sys.stderr)
        return 2
    console = None
    token = None
    if args.console:
        from contend.console import make_console

        token = args.console_token or os.environ.get("CONTEND_CONSOLE_TOKEN") or None
        try:
            console = make_console(rt, token=token, protect_reads=args.protect_reads)
        except ConfigurationError as exc:
            print(f"contend serve: console {exc}", file=sys.stderr)
            return 2
        if args.protect_reads and token is None:
            print("contend serve: --protect-reads needs a console token", file=sys.stderr)
            return 2

    async def serve() -> int:
        app = http.make_app(rt, console=console)
        try:
            server = await http.start_server(args.host, args.port, app=app)
        except OSError as exc:
            print(
                f"contend serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
        port = server.sockets[0].getsockname()[1] if server.sockets else args.port
        base = f"http://{args.host}:{port}"
        if console is not None:
            access = "actions on (token required)" if token else "read-only (no token)"
            print(f"console: {base}/console/ ({access})", file=sys.stderr)
            console.start()
        what = "this process's runtime" if rt is None else f"the workers sharing {rt.backend!r}"
        print(
            f"serving {base}/metrics and {base}/healthz for {what} (Ctrl-C to stop)",
            file=sys.stderr,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # whatever the disposition inherited (a parent may have left SIGINT ignored), Ctrl-C
            # and a supervisor's SIGTERM stop the server cleanly
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            async with server:
                await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            if console is not None:
                await console.aclose()
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "demo": _cmd_demo,
        "bench": _cmd_bench,
        "health": _cmd_health,
        "serve": _cmd_serve,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
