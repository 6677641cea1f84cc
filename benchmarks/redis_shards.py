"""Redis Cluster: one node against a local cluster of 3 masters, with WORKERS processes.

Each of WORKERS processes runs TASKS tasks, each making sequential deposits on an account of its
own (uncontended), for the same variants on both topologies:

- ``lua``: the hand-written Lua compare-and-set peer of redis_peer.py, one key per account, so on
  the cluster the accounts spread over the shards (the baseline: this scales);
- ``staged``: contend, staged + OCC (the default), and ``occ``: contend, OCC only, through
  ``RedisBackend.from_url`` of one node's URL on both topologies (on the cluster it finds out it
  is one and uses redis-py's cluster client). Keys are hashed per target into buckets, each
  bucket a hash tag of its own, so the accounts spread over the shards.

1 shard is a plain redis-server; 3 shards a local Redis Cluster (tests/backends/redis_cluster.py),
started for the run on 127.0.0.1. Reported: ops/s (3 shards against 1: the scaling); each
node's Redis CPU per call (``INFO cpu`` deltas over the calls of all workers; busiest first); the
busiest shard's ceiling (1 s of one core over its CPU per call), what must lift when the backend
shards. Everything runs on the same 2 cores, so absolute scaling is bounded by the host; the
per-shard figures say whether the load spreads.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests" / "backends"
for folder in (HERE, TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from _common import Row, main, row  # noqa: E402
from redis.asyncio.cluster import RedisCluster  # noqa: E402
from redis.cluster import ClusterNode  # noqa: E402
from redis_peer import Contend, LuaPeer, ServerStats, Variant, deposits_until  # noqa: E402
from redis_throughput import _start_redis  # noqa: E402

from contend.backends.redis import RedisBackend  # noqa: E402

WORKERS = 4
TASKS = 16
VARIANTS = {
    "lua": "hand-written Lua compare-and-set (per-account keys)",
    "occ": "contend, OCC only",
    "staged": "contend, staged + OCC (default)",
}

Nodes = list[int]
"""The ports of a topology: one port is a plain redis-server, several are a cluster."""


async def _client(ports: Nodes) -> Any:
    if len(ports) == 1:
        return aioredis.Redis(port=ports[0], decode_responses=True)
    nodes = [ClusterNode("127.0.0.1", p) for p in ports]
    cluster = RedisCluster(startup_nodes=nodes, decode_responses=True)
    # redis-py's asyncio cluster client must learn the slots before concurrent use: its lazy
    # first-use initialisation races (redis-py 8.1: "'NoneType' object has no attribute
    # 'writelines'" with 16 commands gathered on a fresh client).
    await cluster.initialize()
    return cluster


async def _variant(variant: str, ports: Nodes, prefix: str, worker: int) -> Variant:
    if variant == "lua":
        return LuaPeer(await _client(ports), f"{prefix}:w{worker}", TASKS)
    return Contend(
        RedisBackend.from_url(f"redis://127.0.0.1:{ports[0]}/0", prefix=prefix), variant, TASKS
    )


def _worker(
    variant: str, ports: Nodes, prefix: str, worker: int, start: float, seconds: float
) -> int:
    """One worker process; all share `prefix`, as the workers of one deployment do."""

    async def go() -> int:
        impl = await _variant(variant, ports, prefix, worker)
        try:
            await asyncio.gather(*(impl.deposit(i) for i in range(TASKS)))  # first use
            await asyncio.sleep(max(0.0, start - time.time()))
            done = await deposits_until(impl, TASKS, start + seconds)
            await impl.settle()
            return done
        finally:
            await impl.close()

    return asyncio.run(go())


def _measure(
    pool: ProcessPoolExecutor, variant: str, ports: Nodes, seconds: float
) -> tuple[float, list[float]]:
    """ops/s of all workers, and each node's Redis CPU per call in µs, busiest first (which node
    holds a prefix's slot changes from run to run)."""
    servers = [redis.Redis(port=p, decode_responses=True) for p in ports]
    try:
        start = time.time() + 1.0  # the workers' first calls happen before it
        prefix = f"shards-{variant}-{uuid.uuid4().hex[:8]}"
        futs = [
            pool.submit(_worker, variant, ports, prefix, w, start, seconds) for w in range(WORKERS)
        ]
        while time.time() < start:
            time.sleep(0.01)
        before = [ServerStats.read(s) for s in servers]
        calls = sum(f.result() for f in futs)
        after = [ServerStats.read(s) for s in servers]
    finally:
        for s in servers:
            s.close()
    cpu = [a.since(b).cpu * 1e6 / calls for a, b in zip(after, before, strict=True)]
    return calls / seconds, sorted(cpu, reverse=True)


def _rows(variant: str, results: dict[int, list[tuple[float, list[float]]]]) -> list[Row]:
    label = VARIANTS[variant]
    rows: list[Row] = []
    single: float | None = None
    single_ceiling: float | None = None
    for shards, runs in results.items():
        ops = statistics.median(r[0] for r in runs)
        cpu = [statistics.median(r[1][k] for r in runs) for k in range(shards)]
        where = f"{shards} shard" + ("s" if shards > 1 else "")
        rows.append(
            row(
                f"{label}, {where}: ops/s",
                ops,
                "ops/s",
                baseline=single,
                note=f"{WORKERS} processes x {TASKS} tasks"
                + ("; baseline: 1 shard (ratio = scaling)" if single else ""),
            )
        )
        for k, us in enumerate(cpu):
            rank = " (the busiest)" if k == 0 and shards > 1 else ""
            rows.append(row(f"{label}, {where}: Redis CPU per call, shard {k + 1}{rank}", us, "µs"))
        ceiling = 1e6 / cpu[0]
        rows.append(
            row(
                f"{label}, {where}: busiest shard's ceiling",
                ceiling,
                "ops/s",
                baseline=single_ceiling,
                note="1 s of one core over the busiest shard's CPU per call",
            )
        )
        if single is None:
            single, single_ceiling = ops, ceiling
    return rows


def run(quick: bool) -> list[Row]:
    from redis_cluster import LocalCluster

    seconds, reps = (2.0, 1) if quick else (5.0, 3)
    proc, port = _start_redis()
    cluster = LocalCluster()
    try:
        cluster.start()
        topologies = {1: [port], 3: cluster.ports}
        results: dict[str, dict[int, list[tuple[float, list[float]]]]] = {
            v: {n: [] for n in topologies} for v in VARIANTS
        }
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
            list(pool.map(abs, range(2 * WORKERS)))  # the workers started before timing
            for _ in range(reps):
                for variant in VARIANTS:
                    for shards, ports in topologies.items():
                        results[variant][shards].append(_measure(pool, variant, ports, seconds))
        rows: list[Row] = []
        for variant in VARIANTS:
            rows.extend(_rows(variant, results[variant]))
        return rows
    finally:
        cluster.stop()
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main(run, __doc__ or "")
