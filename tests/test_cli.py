"""The `contend` command: help everywhere, the demo end to end, bench aggregation, health."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contend import cli

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("demo", "bench", "health", "serve")


def _contend(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "contend", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def test_top_level_help_lists_every_subcommand() -> None:
    done = _contend("--help")
    assert done.returncode == 0
    for name in SUBCOMMANDS:
        assert name in done.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name: str) -> None:
    done = _contend(name, "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: contend {name}" in done.stdout


def test_installed_console_script_runs() -> None:
    script = Path(sys.executable).with_name("contend")
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert "usage: contend" in done.stdout


def test_bad_option_names_it_and_its_range() -> None:
    done = _contend("demo", "--accounts", "1")
    assert done.returncode == 2
    assert "--accounts" in done.stderr
    assert "2..100000" in done.stderr


def test_demo_prints_table_checks_money_and_writes_png(tmp_path: Path) -> None:
    plot = tmp_path / "demo.png"
    done = _contend(
        "demo",
        "--duration",
        "0.3",
        "--accounts",
        "5",
        "--clients",
        "8",
        "--seed",
        "1",
        "--plot",
        str(plot),
        "--progress",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    header = next(line for line in out.splitlines() if line.startswith("strategy"))
    for column in ("operations", "winners", "rejections", "OCC retries", "peak zombies", "p99"):
        assert column in header
    table = out[out.index(header) :].split("\n\n")[0].splitlines()[2:]
    assert [line.split()[0] for line in table] == [
        "none",
        "immediate",
        "deferred",
        "lazy",
        "custom",
    ]
    assert "money check passed" in out
    assert out.count(": OK") == 5
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "[1/5] none" in done.stderr, "the progress bar is drawn on stderr"
    assert "[5/5] custom" in done.stderr


def test_bench_reports_missing_and_failing_modules_without_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    for name in ("_common.py", "run_all.py"):
        (bench / name).write_text((ROOT / "benchmarks" / name).read_text())
    (bench / "core_latency.py").write_text(
        "from _common import row\n"
        "def run(quick):\n"
        "    return [row('fake latency', 3.0, 'µs', baseline=1.5, target='<= 15')]\n"
    )
    (bench / "occ_throughput.py").write_text("def run(quick):\n    raise RuntimeError('boom')\n")
    out_json = tmp_path / "out.json"
    code = cli.main(
        [
            "bench",
            "--quick",
            "--dir",
            str(bench),
            "--only",
            "core_latency",
            "--only",
            "occ_throughput",
            "--only",
            "soak",
            "--json",
            str(out_json),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "fake latency" in printed
    assert "occ_throughput: failed" in printed
    assert "soak: not available" in printed
    doc = json.loads(out_json.read_text())
    rows = {r["name"]: r for r in doc["rows"]}
    fake = rows["fake latency"]
    assert fake["baseline"] == 1.5
    assert fake["ratio"] == pytest.approx(2.0)
    assert fake["ok"] is True
    assert rows["occ_throughput: failed"]["ok"] is False
    assert "boom" in rows["occ_throughput: failed"]["note"]
    assert doc["machine"]["cpus"] >= 1


def test_health_prints_json_after_a_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["health", "--demo-seconds", "0.2", "--strategy", "none"])
    body = json.loads(capsys.readouterr().out)
    assert code == 0
    assert body["status"] in ("healthy", "degraded")
    assert body["total_zombie_operations"] > 0
    assert sum(body["zombie_counts_by_target"].values()) == body["total_zombie_operations"]


def test_health_without_a_run_is_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["health"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["total_zombie_operations"] == 0


def test_demo_draws_no_progress_bar_into_a_pipe(tmp_path: Path) -> None:
    done = _contend(
        "demo",
        "--duration",
        "0.2",
        "--accounts",
        "3",
        "--clients",
        "4",
        "--strategies",
        "none",
        "--plot",
        str(tmp_path / "p.png"),
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "money check passed" in done.stdout


def test_serve_on_a_busy_port_says_so_without_claiming_to_serve() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _contend("serve", "--port", str(port), timeout=30)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "serving" not in done.stderr
    assert "Traceback" not in done.stderr
