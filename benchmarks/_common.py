"""Shared helpers for the benchmark scripts: rows, statistics, the table, JSON and the CLI.

Every benchmark exposes ``run(quick: bool) -> list[dict]``; each dict is a row
``{name, value, unit, baseline, ratio, target, ok}`` (plus an optional ``note``). ``baseline`` is
the same figure for bare asyncio measured in the same run, ``ratio`` is ``value / baseline``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from contend import Entity


class Account(Entity):
    """The entity every benchmark contends over."""

    balance: int = 0


async def deposit(account: Account, amount: int) -> int:
    """The protected function of the benchmarks, and undecorated their bare baseline."""
    account.balance += amount
    return account.balance


Row = dict[str, Any]

# What the reference implementation this design came from measured (it polls every 50 ms).
REFERENCE_UNCONTENDED_US = 51_600.0
REFERENCE_CONTENDED_OPS_PER_S = 7_300.0

COLUMNS = ("figure", "value", "unit", "baseline", "ratio", "target", "ok")


def row(
    name: str,
    value: float | None,
    unit: str,
    *,
    baseline: float | None = None,
    target: str | None = None,
    ok: bool | None = None,
    note: str = "",
) -> Row:
    """One figure; `target` reads like "<= 15" or ">= 50000" and `ok` is checked against it."""
    ratio = value / baseline if value is not None and baseline else None
    if ok is None and target is not None and value is not None:
        ok = meets(value, target)
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "ok": ok,
        "note": note,
    }


def meets(value: float, target: str) -> bool:
    op, _, number = target.partition(" ")
    limit = float(number.replace(",", "").replace("_", ""))
    if op == "<=":
        return value <= limit
    if op == ">=":
        return value >= limit
    raise ValueError(f"target must look like '<= N' or '>= N', got {target!r}")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of unsorted `values` (q in 0..1)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return float(ordered[k])


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(load[0], 2),
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01 or value == 0:
            return f"{value:.2f}"
        return f"{value:.2e}"
    return str(value)


def render(rows: Sequence[Row], *, notes: bool = True) -> str:
    """The rows as a plain-text table, then their notes."""
    body = [
        [
            str(r.get("name", "?")),
            _fmt(r.get("value")),
            str(r.get("unit") or ""),
            _fmt(r.get("baseline")),
            "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x",
            str(r.get("target") or "-"),
            _fmt(r.get("ok")),
        ]
        for r in rows
    ]
    widths = [max(len(x) for x in col) for col in zip(COLUMNS, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [
            c.rjust(w) if i < 5 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells[1:], widths[1:], strict=True), start=1)
        ]
        return "  ".join([first, *rest]).rstrip()

    out = [line(COLUMNS), "  ".join("-" * w for w in widths), *(line(b) for b in body)]
    if notes:
        noted = [(r["name"], r["note"]) for r in rows if r.get("note")]
        if noted:
            out.append("")
            out.extend(f"- {name}: {note}" for name, note in noted)
    return "\n".join(out)


_INSTRUCTIONS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(script: str | os.PathLike[str], *args: str) -> int:
    """Machine instructions of ``python script *args``, counted by valgrind (cachegrind, no cache
    simulation), with a fixed hash seed so that runs compare."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            str(script),
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = _INSTRUCTIONS.search(done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {done.stderr[-300:]}")
    return int(found.group(1).replace(",", ""))


def write_json(rows: Sequence[Row], path: str | os.PathLike[str], **meta: Any) -> None:
    doc = {
        "machine": machine(),
        "reference": {
            "uncontended_call_us": REFERENCE_UNCONTENDED_US,
            "contended_ops_per_s": REFERENCE_CONTENDED_OPS_PER_S,
        },
        **meta,
        "rows": list(rows),
    }
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")


def main(run: Callable[[bool], list[Row]], description: str) -> None:
    """The `__main__` of every benchmark script: --quick, --json PATH, prints the table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    rows = run(args.quick)
    print(render(rows))
    m = machine()
    print(
        f"\n{m['cpus']} CPUs, Python {m['python']}, load average {m['load_average_1m']}; "
        f"reference implementation: {REFERENCE_UNCONTENDED_US:,.0f} µs per uncontended call, "
        f"{REFERENCE_CONTENDED_OPS_PER_S:,.0f} ops/s contended",
        file=sys.stderr,
    )
    if args.json:
        write_json(rows, args.json, quick=args.quick)
