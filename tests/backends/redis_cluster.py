"""A local Redis Cluster for the tests and benchmarks: 3 masters on 127.0.0.1, no replicas.

Each node is a `RedisServer` started with ``--cluster-enabled yes`` in a directory of its own
(its ``nodes.conf`` lives there, so a restarted node comes back with its id and its slots); the
slots are spread by ``redis-cli --cluster create``. Fault tests restart one node or pause it
(``CLIENT PAUSE``); the others keep serving their slots meanwhile.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import ClusterNode
from redis_workers import RedisServer, free_port

__all__ = ["LocalCluster", "redis_cluster"]

CLI_HINT = (
    "redis-cli is not installed: the Redis Cluster tests need it to create the cluster. It comes "
    "with redis-server (Debian's redis-tools): `make redis-server`."
)
READY_TIMEOUT = 10.0


class LocalCluster:
    """`masters` redis-server nodes joined into one cluster, every slot served."""

    def __init__(self, masters: int = 3, *, aof: bool = False) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail(CLI_HINT, pytrace=False)
        self.cli = cli
        self.nodes: list[RedisServer] = []
        for _ in range(masters):
            bus = free_port()
            options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            options += ("--cluster-port", str(bus), "--cluster-node-timeout", "2000")
            self.nodes.append(RedisServer(aof=aof, extra=options))

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """For redis-py's `RedisCluster(startup_nodes=...)` (sync or asyncio)."""
        return [ClusterNode("127.0.0.1", p) for p in self.ports]

    @property
    def url(self) -> str:
        """One node's URL: a cluster client finds the others from it."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until every node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(self._ready(n) for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster on ports {self.ports} did not become ready")
            time.sleep(0.02)

    def _ready(self, node: RedisServer) -> bool:
        try:
            with contextlib.closing(node.client()) as client:
                info = client.cluster("INFO")
        except redis.RedisError:
            return False
        return bool(
            info.get("cluster_state") == "ok"
            and int(info.get("cluster_known_nodes", 0)) == len(self.nodes)
        )

    def node_of(self, key: str) -> int:
        """The index in `nodes` of the node serving `key`'s slot."""
        with contextlib.closing(self.nodes[0].client()) as client:
            slot = int(client.cluster("KEYSLOT", key))
            for start, end, master, *_ in client.cluster("SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.ports.index(int(master[1]))
        raise RuntimeError(f"no node serves the slot of {key!r}")

    def restart(self, index: int) -> None:
        """Stop node `index` (SIGTERM) and start it again; back once the cluster is ready."""
        self.nodes[index].restart()
        self.wait_ready()

    def pause(self, index: int, ms: int) -> None:
        """``CLIENT PAUSE ms ALL`` on node `index`: it answers no client for `ms` (not even
        ``CLIENT UNPAUSE``); the cluster bus goes on, so the other nodes do not mark it failed."""
        with contextlib.closing(self.nodes[index].client()) as client:
            client.client_pause(ms, all=True)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """One local Redis Cluster for the test session (each test uses keys of its own)."""
    cluster = LocalCluster()
    cluster.start()
    yield cluster
    cluster.stop()
