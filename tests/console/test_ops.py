"""The ops files: alert rules pass promtool (and its unit tests), the dashboard's queries parse
and name only metrics contend exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from contend import Runtime

OPS = Path(__file__).resolve().parents[2] / "ops"
RULES = OPS / "prometheus" / "contend-alerts.yml"
RULE_TESTS = OPS / "prometheus" / "contend-alerts.test.yml"
DASHBOARD = OPS / "grafana" / "contend-dashboard.json"
METRIC = re.compile(r"\bcontend_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `make console-tools` installs Debian's prometheus")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def exported_names() -> set[str]:
    """Every sample name a runtime's /metrics can carry, from its registry's own families."""
    names: set[str] = set()
    for family in Runtime().metrics.registry.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    exprs += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_the_alert_rules_pass_promtool_and_their_unit_tests():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_alert_rules_name_only_exported_metrics():
    used = set(METRIC.findall(RULES.read_text()))
    assert used and used <= exported_names(), used - exported_names()


def test_dashboard_queries_name_only_exported_metrics():
    exported = exported_names()
    queries = dashboard_queries()
    assert len(queries) >= 15
    for query in queries:
        used = set(METRIC.findall(query))
        assert used, query
        assert used <= exported, f"{query}: {used - exported} is not exported"
    every_family = {n for q in queries for n in METRIC.findall(q)}
    for name in (
        "contend_zombie_operations",
        "contend_removals_total",
        "contend_operations_total",
        "contend_cleanup_failures_total",
    ):
        assert name in every_family


def test_dashboard_queries_are_valid_promql(tmp_path):
    queries = [
        q.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
        for q in dashboard_queries()
        if not q.startswith("label_values(")
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_is_grafana_json():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 30
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
