"""The ASGI app and the standalone server, as a Prometheus scrape and a health probe see them."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictResolutionOperation,
    FakeClock,
    OperationRejectedError,
    Runtime,
    use_runtime,
    with_conflict_resolution,
)
from contend.http import ASGIApp, health_json, make_app, serve, start_server
from contend.testing import Account, make_runtime


class Broken(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        raise OSError("audit store unreachable")


async def fail_with_a_broken_handler(rt: Runtime) -> None:
    """One failed call whose custom cleanup handler raises."""
    CleanupHandlerRegistry.register("http-test-broken", Broken)
    try:

        @with_conflict_resolution(
            cleanup=CleanupConfig(
                strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="http-test-broken"
            ),
            runtime=rt,
        )
        async def fail(acct: Account) -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError):
            await fail(Account())
    finally:
        CleanupHandlerRegistry.unregister("http-test-broken")


async def call(
    app: ASGIApp, path: str, method: str = "GET", root_path: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """Drive the app the way an ASGI server does."""
    sent: list[dict[str, Any]] = []
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": root_path,
        "headers": [(b"host", b"test")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in bodies)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def contended_run(rt: Runtime, clock: FakeClock) -> dict[str, int]:
    """Immediate rejections on one function, deferred failures swept on another, caps on a third."""

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.IMMEDIATE), runtime=rt)
    async def deposit(acct: Account) -> None:
        acct.balance += 1

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=10), runtime=rt
    )
    async def fail(acct: Account) -> None:
        raise ValueError("boom")

    @with_conflict_resolution(
        cleanup=CleanupConfig(strategy=CleanupStrategy.NONE, max_zombie_count_per_target=1),
        runtime=rt,
    )
    async def fail_kept(acct: Account) -> None:
        raise ValueError("boom")

    results: list[object] = []
    for _ in range(4):
        results += await asyncio.gather(
            *(deposit(Account()) for _ in range(2)),
            *(deposit(shared) for shared in [Account()] for _ in range(5)),
            return_exceptions=True,
        )
    for _ in range(3):
        with pytest.raises(ValueError):
            await fail(Account())
    kept = Account()
    for _ in range(4):
        with pytest.raises(ValueError):
            await fail_kept(kept)
    clock.advance(minutes=11)
    await rt.cleanup.sweep()
    return {
        "succeeded": sum(r is None for r in results),
        "rejected": sum(isinstance(r, OperationRejectedError) for r in results),
        "failed": 3 + 4,
        "ttl": 3,
        "cap": 3,
    }


async def test_metrics_after_a_contended_run_shows_the_right_counts() -> None:
    clock = FakeClock()
    rt = make_runtime(clock=clock)
    expected = await contended_run(rt, clock)
    assert expected["succeeded"] == 4 * 3 and expected["rejected"] == 4 * 4

    status, headers, body = await call(make_app(rt), "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert int(headers["content-length"]) == len(body)
    got = samples(body.decode())

    def at(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    for outcome in ("succeeded", "rejected", "failed"):
        assert at("contend_operations_total", outcome=outcome) == expected[outcome], outcome
    assert at("contend_removals_total", reason="immediate") == expected["rejected"]
    assert at("contend_removals_total", reason="ttl") == expected["ttl"]
    assert at("contend_removals_total", reason="cap") == expected["cap"]
    assert at("contend_removals_total", reason="lazy") == 0
    assert at("contend_zombie_operations", target_type="Account") == 1
    assert at("contend_staging_window_size_count") == 4
    assert at("contend_staging_window_size_sum") == 4 * 5


async def test_healthz_goes_from_200_to_503_when_a_custom_handler_fails(runtime: Runtime) -> None:
    app = make_app()
    status, headers, body = await call(app, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == "healthy"

    await fail_with_a_broken_handler(runtime)

    status, _, body = await call(app, "/healthz")
    report = json.loads(body)
    assert status == 503
    assert report["status"] == "unhealthy"
    assert report["failed_cleanup_handlers"] == {"http-test-broken": 1}
    assert await health_json(runtime) == (503, body)


async def test_degraded_is_still_200(runtime: Runtime) -> None:
    runtime.memory.set_probe(lambda: 0.97)
    status, _, body = await call(make_app(runtime), "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "degraded"


async def test_unknown_paths_404_and_other_methods_405(runtime: Runtime) -> None:
    app = make_app(runtime)
    assert (await call(app, "/"))[0] == 404
    assert (await call(app, "/metricsx"))[0] == 404
    status, headers, _ = await call(app, "/metrics", method="POST")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


async def test_head_sends_headers_without_a_body(runtime: Runtime) -> None:
    app = make_app(runtime)
    _, full_headers, full = await call(app, "/healthz")
    status, headers, body = await call(app, "/healthz", method="HEAD")
    assert status == 200
    assert body == b""
    assert headers["content-length"] == full_headers["content-length"] == str(len(full))


async def test_mounted_under_a_prefix_it_serves_below_it(runtime: Runtime) -> None:
    app = make_app(runtime)
    assert (await call(app, "/ops/metrics", root_path="/ops"))[0] == 200
    assert (await call(app, "/ops/healthz/", root_path="/ops"))[0] == 200
    assert (await call(app, "/ops/other", root_path="/ops"))[0] == 404


async def test_lifespan_is_acknowledged() -> None:
    app = make_app(Runtime(clock=FakeClock()))
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    sent: list[str] = []

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await asyncio.wait_for(app({"type": "lifespan"}, inbox.get, send), 5)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_app_without_a_runtime_follows_the_current_one() -> None:
    app = make_app()
    one = make_runtime()
    two = make_runtime()
    one.metrics.outcome("rejected")
    with use_runtime(one):
        text_one = (await call(app, "/metrics"))[2].decode()
    with use_runtime(two):
        text_two = (await call(app, "/metrics"))[2].decode()
    assert 'contend_operations_total{outcome="rejected"} 1.0' in text_one
    assert 'contend_operations_total{outcome="rejected"} 0.0' in text_two


# the standalone server ------------------------------------------------------------------------


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_answers_scrapes_and_probes_over_http(runtime: Runtime) -> None:
    runtime.metrics.outcome("succeeded")
    port = free_port()
    server = asyncio.create_task(serve("127.0.0.1", port, runtime))
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                status, headers, body = await asyncio.to_thread(fetch, base + "/metrics")
                break
            except urllib.error.URLError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("server did not come up")
        assert status == 200
        assert headers["content-type"] == CONTENT_TYPE_LATEST
        assert 'contend_operations_total{outcome="succeeded"} 1.0' in body.decode()

        status, _, body = await asyncio.to_thread(fetch, base + "/healthz")
        assert (status, json.loads(body)["status"]) == (200, "healthy")
        assert (await asyncio.to_thread(fetch, base + "/nope"))[0] == 404

        await fail_with_a_broken_handler(runtime)
        status, _, body = await asyncio.to_thread(fetch, base + "/healthz")
        assert (status, json.loads(body)["status"]) == (503, "unhealthy")
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


async def test_start_server_on_any_port_and_reject_garbage(runtime: Runtime) -> None:
    server = await start_server("127.0.0.1", 0, runtime)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NONSENSE\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 400 ")

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close" in head
        assert json.loads(body)["status"] == "healthy"
    finally:
        server.close()
        await server.wait_closed()


async def test_healthz_lists_the_targets_with_most_zombies_only(runtime: Runtime) -> None:
    """20,000 targets with zombies made an 860 KB body; /healthz lists 100 unless asked."""

    @with_conflict_resolution(cleanup=CleanupConfig(strategy=CleanupStrategy.NONE))
    async def fail(acct: Account) -> None:
        raise ValueError("boom")

    for _ in range(150):
        with pytest.raises(ValueError):
            await fail(Account())
    app = make_app(runtime)
    report = json.loads((await call(app, "/healthz"))[2])
    assert len(report["zombie_counts_by_target"]) == 100
    assert report["zombie_targets"] == 150 and report["zombie_counts_truncated"]
    assert report["total_zombie_operations"] == 150
    assert json.loads((await call(app, "/healthz?targets=0"))[2])["zombie_counts_by_target"] == {}
    every = json.loads((await call(app, "/healthz?targets=all"))[2])
    assert len(every["zombie_counts_by_target"]) == 150
    status, _, body = await call(app, "/healthz?targets=lots")
    assert status == 400 and b"targets" in body
