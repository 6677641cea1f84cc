"""`contend health` and `contend serve` report the state shared in Redis (issue 12 item 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from redis_cluster import LocalCluster
from redis_workers import RedisServer, free_port, make_zombies

from contend.backends.redis.keys import Keys

ROOT = Path(__file__).resolve().parents[2]


def _contend(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "contend", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _zombies(server: RedisServer, prefix: str, target: str) -> int:
    return make_zombies(server.url, prefix, target, 6, 100)


def test_health_reads_the_shared_totals_from_redis_url_or_the_environment(
    redis_server: RedisServer, prefix: str
) -> None:
    target = "6f1c3c7e-5a5e-4a54-9d42-3d3a5b7a0c11"
    rejected = _zombies(redis_server, prefix, target)
    assert rejected > 0

    done = _contend("health", "--redis-url", redis_server.url, "--redis-prefix", prefix)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["total_zombie_operations"] == rejected
    assert body["zombie_counts_by_target"] == {target: rejected}

    env = {"CONTEND_REDIS_URL": redis_server.url, "CONTEND_REDIS_PREFIX": prefix}
    done = _contend("health", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total_zombie_operations"] == rejected

    refused = _contend("health", "--redis-url", "http://nope", "--redis-prefix", prefix)
    assert refused.returncode == 2
    assert "url" in refused.stderr


def test_serve_reports_the_shared_totals_over_http(redis_server: RedisServer, prefix: str) -> None:
    target = "0b9f3c3e-2f0e-4a77-9e55-1c2d3e4f5a6b"
    rejected = _zombies(redis_server, prefix, target)
    port = free_port()
    env = {**os.environ, "CONTEND_REDIS_URL": redis_server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "contend", "serve", "--port", str(port), "--redis-prefix", prefix],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 30
        while body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    body = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "contend serve did not answer"
                time.sleep(0.1)
        assert body["total_zombie_operations"] == rejected
        assert body["zombie_counts_by_target"] == {target: rejected}
    finally:
        proc.terminate()
        proc.wait(10)


def test_health_reads_a_cluster_from_one_nodes_url(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """`--redis-url` of one node of a Redis Cluster: the backend finds out it is a cluster and
    walks every bucket, on whichever node serves it."""
    targets = [str(uuid.uuid4())]
    while len({redis_cluster.node_of(_tag(prefix, t)) for t in targets}) < 2:
        targets[1:] = [str(uuid.uuid4())]  # a second target on another node
    rejected = {t: make_zombies(redis_cluster.url, prefix, t, 3, 100) for t in targets}
    done = _contend("health", "--redis-url", redis_cluster.url, "--redis-prefix", prefix)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["total_zombie_operations"] == sum(rejected.values())
    assert body["zombie_counts_by_target"] == rejected


def _tag(prefix: str, target: str) -> str:
    keys = Keys(prefix)
    return keys.tag(keys.of(target))
