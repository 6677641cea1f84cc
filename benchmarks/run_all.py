"""Run every benchmark module in this folder and print one table (what `contend bench` does).

A module that is not there yet, or that raises, gives a row saying so; the rest still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import REFERENCE_CONTENDED_OPS_PER_S, REFERENCE_UNCONTENDED_US, Row, row  # noqa: E402
from _common import render as _render  # noqa: E402
from _common import write_json as _write_json  # noqa: E402

# (module, what it measures); soak takes a call count instead of `quick`.
MODULES: tuple[tuple[str, str], ...] = (
    ("core_latency", "uncontended staged call latency"),
    ("contended_throughput", "contended throughput"),
    ("occ_throughput", "OCC throughput under conflict"),
    ("cleanup_cost", "cleanup cost per strategy, deferred sweep at 100k vs 1M"),
    ("record_memory", "memory per retained record"),
    ("rss_calls", "RSS over 1M calls"),
    ("fresh_entities", "RSS over calls on fresh entities"),
    ("redis_throughput", "Redis backend throughput"),
    ("redis_peer", "Redis against a hand-written Lua script"),
    ("redis_shards", "Redis: one node against a cluster of 3 shards"),
    ("redis_fault_soak", "Redis under faults: a worker SIGKILLed, Redis restarted"),
    ("instructions", "instructions per call, counted by valgrind"),
    ("soak", "soak run"),
)
SOAK_CALLS = {True: 50_000, False: 500_000}


def load(name: str, folder: Path = HERE) -> ModuleType | None:
    path = folder / f"{name}.py"
    if not path.is_file():
        return None
    # Registered under its own name, as `python benchmarks/NAME.py` would import it, so
    # multiprocessing can pickle the module's functions by reference.
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _soak_rows(result: Any) -> list[Row]:
    if isinstance(result, list):
        return result
    if isinstance(result, dict) and "name" in result and "value" in result:
        return [result]
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        return list(result["rows"])
    if isinstance(result, dict):
        return [
            row(f"soak: {k}", v, "")
            for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
    return [row("soak", None, "", note=f"unexpected result {type(result).__name__}")]


def collect(
    quick: bool, only: Sequence[str] | None = None, progress: TextIO | None = None
) -> list[Row]:
    """Every figure of every available module, in MODULES order."""
    wanted = set(only or ())
    unknown = wanted - {m for m, _ in MODULES}
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {sorted(unknown)}; choose from {[m for m, _ in MODULES]}"
        )
    rows: list[Row] = []
    for name, what in MODULES:
        if wanted and name not in wanted:
            continue
        if progress is not None:
            progress.write(f"running {name} ({what})...")
            progress.flush()
        started = time.perf_counter()
        try:
            module = load(name)
        except Exception as exc:
            module = None
            rows.append(
                row(f"{name}: could not load", None, "", note=f"{type(exc).__name__}: {exc}")
            )
        if module is None:
            if not rows or not rows[-1]["name"].startswith(f"{name}:"):
                rows.append(
                    row(f"{name}: not available", None, "", note=f"benchmarks/{name}.py not found")
                )
        else:
            try:
                if name == "soak":
                    rows.extend(_soak_rows(module.run(SOAK_CALLS[quick])))
                else:
                    rows.extend(module.run(quick))
            except Exception as exc:
                last = traceback.extract_tb(exc.__traceback__)[-1]
                rows.append(
                    row(
                        f"{name}: failed",
                        None,
                        "",
                        ok=False,
                        note=f"{type(exc).__name__}: {exc} "
                        f"({Path(last.filename).name}:{last.lineno})",
                    )
                )
        if progress is not None:
            progress.write(f" {time.perf_counter() - started:.1f} s\n")
            progress.flush()
    return rows


def render(rows: Sequence[Row]) -> str:
    return (
        _render(rows)
        + f"\n\nreference implementation: {REFERENCE_UNCONTENDED_US:,.0f} µs per uncontended call, "
        f"{REFERENCE_CONTENDED_OPS_PER_S:,.0f} ops/s under 5-way contention"
    )


def write_json(rows: Sequence[Row], path: str, quick: bool) -> None:
    _write_json(rows, path, quick=quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--only", action="append", metavar="NAME", help="only this benchmark")
    args = parser.parse_args()
    rows = collect(args.quick, args.only, sys.stderr)
    print(render(rows))
    if args.json:
        write_json(rows, args.json, args.quick)


if __name__ == "__main__":
    main()
