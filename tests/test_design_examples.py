"""Every code block of the design runs with only its import line changed (see examples/)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

from contend import (
    DEFAULT_CLEANUP_CONFIG,
    CleanupHandlerRegistry,
    CleanupStrategy,
    Runtime,
    use_runtime,
)
from contend.testing import make_runtime

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    """Import examples/<name>.py under a private module name (examples/ is not a package)."""
    module_name = f"_contend_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def rt() -> Iterator[Runtime]:
    """The examples use the runtime in force; give each a fresh one with no memory pressure."""
    runtime = make_runtime()
    with use_runtime(runtime):
        yield runtime
    runtime.cleanup.stop()


async def test_financial_system_leaves_no_zombies(rt: Runtime) -> None:
    out = await load("financial_system").run_example()
    assert (out["won"], out["rejected"], out["attempts"]) == (1, 4, 1)
    assert out["status"] == "processed"
    assert out["zombies_left"] == 0
    assert out["removed"] == {"immediate": 4}


async def test_development_environment_keeps_losers_two_hours(rt: Runtime) -> None:
    out = await load("development_environment").run_example()
    assert out["rejected"] == 2 and out["zombies"] == 2
    assert out["email"] == "ada@lovelace.example"
    zombies = await rt.registry.zombies()
    for z in zombies:
        assert z.cleanup_strategy is CleanupStrategy.DEFERRED
        assert z.cleanup_scheduled_at == z.completed_at + timedelta(minutes=120)  # type: ignore[operator]
    rt.clock.advance(minutes=120)  # type: ignore[attr-defined]
    assert await rt.cleanup.sweep() == 2


async def test_financial_audit_handler_audits_and_retains_72_hours(rt: Runtime) -> None:
    example = load("financial_audit")
    assert issubclass(
        CleanupHandlerRegistry.get("financial_audit"), example.FinancialAuditCleanupHandler
    )
    out = await example.run_example()
    assert out["balance"] == Decimal("110.00")
    assert out["rejected"] == 3 and out["audited"] == 3 and out["retained"] == 3
    assert rt.cleanup.handler_failures == 0
    rt.clock.advance(hours=72, seconds=-1)  # type: ignore[attr-defined]
    assert await rt.cleanup.sweep() == 0
    rt.clock.advance(seconds=1)  # type: ignore[attr-defined]
    assert await rt.cleanup.sweep() == 3


async def test_the_design_handler_class_is_registered_by_its_decorator() -> None:
    example = load("financial_audit")
    handler = example.FinancialAuditCleanupHandler()
    assert handler.retention_hours == 72
    assert CleanupHandlerRegistry.has("noop") and CleanupHandlerRegistry.has("lazy")


async def test_adaptive_cleanup_caps_each_target(rt: Runtime) -> None:
    out = await load("adaptive_cleanup").run_example(rounds=60, contenders=3)
    assert out["batches"] == 60 and out["rejected"] == 120
    assert out["zombies"] == 50
    assert out["removed"] == {"cap": 70}


async def test_adaptive_cleanup_goes_immediate_under_pressure() -> None:
    runtime = make_runtime(memory_pressure=0.85)
    with use_runtime(runtime):
        out = await load("adaptive_cleanup").run_example(rounds=5, contenders=3)
    assert out["zombies"] == 0
    assert out["removed"] == {"pressure": 10}


async def test_critical_data_update(rt: Runtime) -> None:
    out = await load("critical_data").run_example()
    assert out["data"] == {"limit": 250} and out["version"] == 1
    assert out["rejected"] == 1 and out["retained"] == 1


async def test_migration_phases(rt: Runtime) -> None:
    out = await load("phase1_legacy").run_example()
    assert out["phase1_default"] == "none"
    assert out["shipped_default"] == "deferred"
    assert out["existing_rejected"] == 2 and out["existing_strategies"] == ["deferred"]
    assert out["legacy_rejected"] == 2 and out["legacy_strategies"] == ["none"]
    assert out["legacy_scheduled"] == [None, None]


def test_recommended_defaults_block_matches_the_shipped_default() -> None:
    assert load("recommended_defaults").DEFAULT_CLEANUP_CONFIG == DEFAULT_CLEANUP_CONFIG


@pytest.mark.parametrize(
    "name",
    [
        "financial_system",
        "development_environment",
        "financial_audit",
        "adaptive_cleanup",
        "critical_data",
        "phase1_legacy",
        "recommended_defaults",
    ],
)
def test_each_example_runs_as_a_script(
    name: str, rt: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    load(name).main()
    assert capsys.readouterr().out.strip()
