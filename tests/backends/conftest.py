"""A real redis-server on 127.0.0.1 and a free port, started for the tests and stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from contend import FakeClock, Runtime
from contend.backends.redis import RedisBackend

INSTALL_HINT = (
    "redis-server is not installed: the Redis backend tests need a real server. Install it with "
    "`make redis-server` or `sudo apt-get update && sudo apt-get install -y redis-server`."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server subprocess without persistence; can be stopped and started again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A key namespace of this test's own, so tests never see each other's state."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_runtime(redis_server: RedisServer, prefix: str) -> AsyncIterator[Runtime]:
    rt = Runtime(
        backend=RedisBackend.from_url(redis_server.url, prefix=prefix, lease_ms=2000),
        clock=FakeClock(),
        memory_probe=lambda: 0.0,
    )
    yield rt
    await rt.aclose()
