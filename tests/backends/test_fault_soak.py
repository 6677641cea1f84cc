"""The fault soak (benchmarks/redis_fault_soak.py), short: a worker SIGKILLed, Redis restarted."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _soak() -> ModuleType:
    # imported under its own name from its folder, so the spawned workers can import it too
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("redis_fault_soak")


@pytest.mark.parametrize("mode", ["kill", "restart"])
def test_four_workers_through_a_fault_lose_nothing_and_recover(mode: str) -> None:
    soak = _soak()
    result = soak.run_mode(mode, 4.0, lease_ms=400)

    assert result["failures"] == []
    assert result["succeeded"] > 50
    assert result["lost_updates"] == 0
    assert result["applied_but_reported_not_applied"] == 0
    assert result["applied_without_a_caller"] == 0
    assert result["hung_calls"] == 0
    assert result["records_not_terminal"] == 0
    assert result["worker_state_left"] == 0
    if mode == "kill":
        assert result["unreported_calls_of_killed_worker"] > 0
    else:
        assert result["ended_unavailable"] > 0
