"""The bank demo: one row per strategy, money conserved, zombies behave per strategy, a real PNG."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from contend import Runtime
from contend.testing import make_runtime
from contend_demo import (
    STRATEGIES,
    TABLE_COLUMNS,
    DemoConfig,
    DemoReport,
    format_table,
    money_lines,
    run_demo,
    simulate,
    table_rows,
    write_plot,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report() -> DemoReport:
    """One tiny in-process run of every strategy, shared by the read-only checks below."""
    cfg = DemoConfig(duration=0.3, accounts=6, clients=12, seed=3, isolate=False)
    return run_demo(cfg, io.StringIO())


def test_every_strategy_runs_once_and_conserves_money(report: DemoReport) -> None:
    assert [r.strategy for r in report.results] == list(STRATEGIES)
    assert report.money_ok
    for r in report.results:
        assert r.operations > 0
        assert r.operations == r.winners + r.rejections + r.failed
        assert r.actual_total == r.expected_total == 6 * 1_000 + r.deposited - r.withdrawn


def test_zombies_follow_the_strategy(report: DemoReport) -> None:
    by_name = {r.strategy: r for r in report.results}
    none = by_name["none"]
    assert none.rejections + none.failed > 0
    assert none.zombies_end == none.rejections + none.failed
    assert by_name["immediate"].zombies_end == 0
    assert by_name["immediate"].peak_zombies == 0
    for r in report.results:
        assert r.peak_zombies >= r.zombies_end
        assert r.timeline, "the zombie count is sampled over time"


def test_table_has_one_row_per_strategy(report: DemoReport) -> None:
    rows = table_rows(report)
    assert len(rows) == len(STRATEGIES)
    assert all(len(r) == len(TABLE_COLUMNS) for r in rows)
    text = format_table(TABLE_COLUMNS, rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(STRATEGIES)
    assert "peak zombies" in lines[0]
    assert all(line.endswith(": OK") for line in money_lines(report))


def test_plot_is_a_png(report: DemoReport, tmp_path: Path) -> None:
    out = write_plot(report, tmp_path / "zombies.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


def test_custom_strategy_archives_records_before_they_leave(tmp_path: Path) -> None:
    cfg = DemoConfig(
        duration=1.0,
        accounts=4,
        clients=8,
        strategies=("custom",),
        isolate=False,
        archive_dir=str(tmp_path),
    )
    result = run_demo(cfg).results[0]
    assert result.handler == "archive"
    assert result.money_ok
    removed = sum(result.removed.values())
    assert removed > 0, "a one-minute retention passes within the run on the fast clock"
    assert result.archived is not None
    assert result.archived >= removed, "every removed record was written to the archive first"
    assert list(tmp_path.glob("*.sqlite3"))


def test_progress_bar_reports_each_strategy() -> None:
    stream = io.StringIO()
    cfg = DemoConfig(
        duration=0.1, accounts=3, clients=2, strategies=("none", "immediate"), isolate=False
    )
    run_demo(cfg, stream)
    text = stream.getvalue()
    assert "\r[1/2] none" in text
    assert "\r[2/2] immediate" in text
    assert "100%" in text


def test_isolated_run_returns_results_from_the_child_process() -> None:
    cfg = DemoConfig(duration=0.15, accounts=3, clients=4, strategies=("deferred",))
    report = run_demo(cfg, None)
    assert report.money_ok
    assert report.results[0].strategy == "deferred"
    assert report.results[0].operations > 0


async def test_simulate_runs_on_a_given_runtime() -> None:
    rt = make_runtime()
    cfg = DemoConfig(duration=0.1, accounts=3, clients=4, isolate=False)
    result = await simulate(rt, "none", cfg)
    assert result.money_ok
    assert rt.backend.zombie_count == result.zombies_end
    await rt.aclose()


async def test_simulate_needs_a_fake_clock() -> None:
    with pytest.raises(ValueError, match="FakeClock"):
        await simulate(Runtime(), "none", DemoConfig(duration=0.1, isolate=False))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("duration", 0.0, "duration"),
        ("accounts", 1, "accounts"),
        ("clients", 0, "clients"),
        ("strategies", ("sometimes",), "strategies"),
        ("memory", "vmem", "memory"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemoConfig(**{field: value})  # type: ignore[arg-type]
