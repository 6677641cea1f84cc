"""The soak benchmark, 10,000 calls in-process: zombies and RSS stay within their bounds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("contend_benchmark_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_ten_thousand_calls_keep_zombies_and_memory_bounded() -> None:
    soak = _load_soak()
    result = soak.run(10_000)

    assert result["failures"] == []
    assert result["ok"]
    assert result["calls"] == 10_000
    assert result["rejected"] == 8_000
    assert result["failed"] > 0
    assert result["removed"].get("ttl", 0) > 0, "the sweeper removed records as they fell due"
    assert 0 < result["zombie_max"] <= result["zombie_bound"]
    assert result["zombies_end"] <= result["zombie_bound"]
    assert result["rss_warm"] is not None
    assert result["rss_growth"] <= soak.MEMORY_GROWTH_LIMIT
    assert result["accounted"]
