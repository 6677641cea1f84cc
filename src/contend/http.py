"""HTTP exposition: ``/metrics`` (Prometheus text format) and ``/healthz`` (JSON, 200 or 503).

``make_app()`` is a plain ASGI 3 application with no framework behind it, so a service mounts it
in one line (``Mount("/ops", make_app())`` in Starlette, ``app.mount("/ops", make_app())`` in
FastAPI). ``serve()`` runs the same app on a minimal HTTP/1.1 server built on asyncio streams,
for processes that have no web server of their own (``contend serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contend.health import cleanup_system_health_check
from contend.runtime import Runtime, get_runtime

__all__ = ["ASGIApp", "health_json", "make_app", "serve", "start_server"]

log = logging.getLogger("contend.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CONTENT_TYPE = "application/json"
CONSOLE_PATH = "/console"
HEALTHZ_MAX_TARGETS = 100
"""Targets listed in /healthz's zombie_counts_by_target (the most zombies first); ``?targets=N``
asks for another number, ``?targets=all`` for every one."""
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_SECONDS = 10.0


async def health_json(
    runtime: Runtime | None = None, max_targets: int | None = None
) -> tuple[int, bytes]:
    """The health check as an HTTP status (200 healthy or degraded, 503 unhealthy) and JSON;
    `max_targets` caps the per-target zombie counts (None: all)."""
    report = await cleanup_system_health_check(runtime, max_targets=max_targets)
    status = 503 if report["status"] == "unhealthy" else 200
    return status, json.dumps(report, default=str, sort_keys=True).encode()


def make_app(runtime: Runtime | None = None, *, console: ASGIApp | None = None) -> ASGIApp:
    """An ASGI 3 app serving ``GET /metrics`` and ``GET /healthz`` of `runtime`.

    Without a runtime, each request reads the one in force (``get_runtime()``), so the app follows
    ``set_runtime``. Paths are matched after the mount prefix (``root_path``); other paths get
    404, other methods 405. With `console` (``contend.console.make_console()``), it answers
    under ``/console`` and ``/`` redirects there.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            return
        path = _local_path(scope)
        method = scope.get("method", "GET")
        if console is not None:
            if path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/"):
                root = scope.get("root_path", "") + CONSOLE_PATH
                rest = path[len(CONSOLE_PATH) :] or "/"
                await console({**scope, "root_path": root, "path": root + rest}, receive, send)
                return
            if path == "/":
                location = (scope.get("root_path", "") + CONSOLE_PATH + "/").encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 307,
                        "headers": [(b"location", location), (b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        if path not in ("/metrics", "/healthz"):
            await _respond(send, 404, b"not found\n", "text/plain; charset=utf-8")
            return
        if method not in ("GET", "HEAD"):
            await _respond(
                send, 405, b"method not allowed\n", "text/plain; charset=utf-8", allow="GET, HEAD"
            )
            return
        rt = runtime or get_runtime()
        if path == "/metrics":
            status, body, content_type = (
                200,
                generate_latest(rt.metrics.registry),
                CONTENT_TYPE_LATEST,
            )
        else:
            limit = _targets_param(scope)
            if limit == -1:
                await _respond(
                    send, 400, b"targets must be an integer >= 0 or 'all'\n", "text/plain"
                )
                return
            status, body = await health_json(rt, limit)
            content_type = JSON_CONTENT_TYPE
        await _respond(
            send, status, b"" if method == "HEAD" else body, content_type, length=len(body)
        )

    return app


def _targets_param(scope: Scope) -> int | None:
    """``?targets=`` of a /healthz request: a count, None for "all", -1 when malformed."""
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    values = [v for k, _, v in (p.partition("=") for p in query.split("&")) if k == "targets"]
    if not values:
        return HEALTHZ_MAX_TARGETS
    if values[-1] == "all":
        return None
    return int(values[-1]) if values[-1].isdigit() else -1


def _local_path(scope: Scope) -> str:
    path: str = scope.get("path", "/")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    *,
    length: int | None = None,
    allow: str | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body) if length is None else length).encode()),
        (b"cache-control", b"no-store"),
    ]
    if allow is not None:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# the standalone server -------------------------------------------------------------------------
async def start_server(
    host: str = "127.0.0.1",
    port: int = 9464,
    runtime: Runtime | None = None,
    *,
    app: ASGIApp | None = None,
) -> asyncio.Server:
    """Start serving ``make_app(runtime)`` (or `app`) and return the listening server
    (``port=0``: any free port, read it from ``server.sockets[0].getsockname()``)."""
    app = app if app is not None else make_app(runtime)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _serve_connection(app, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("error while serving an HTTP request")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES)


async def serve(
    host: str = "127.0.0.1",
    port: int = 9464,
    runtime: Runtime | None = None,
    *,
    app: ASGIApp | None = None,
) -> None:
    """Serve ``/metrics`` and ``/healthz`` (or `app`) on `host`:`port` until cancelled.

    One request per connection (``Connection: close``), which is what Prometheus scrapes and
    health probes need; the default port 9464 is the one Prometheus exporters commonly use.
    """
    server = await start_server(host, port, runtime, app=app)
    bound = ", ".join(str(s.getsockname()) for s in server.sockets)
    log.info("contend metrics and health listening on %s", bound)
    async with server:
        await server.serve_forever()


async def _serve_connection(
    app: ASGIApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_SECONDS)
    except (asyncio.LimitOverrunError, ValueError):
        await _write_plain(writer, 431, b"request header too large\n")
        return
    except TimeoutError:
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        await _write_plain(writer, 400, b"bad request\n")
        return
    method, target, version = parts
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            await _write_plain(writer, 400, b"bad request\n")
            return
        headers.append((name.strip().lower().encode("latin-1"), value.strip().encode("latin-1")))
    path, _, query = target.partition("?")
    length = next((v for k, v in headers if k == b"content-length"), b"0")
    if not length.isdigit() or int(length) > MAX_BODY_BYTES:
        await _write_plain(writer, 413, b"request body missing a length or too large\n")
        return
    try:
        request_body = await asyncio.wait_for(reader.readexactly(int(length)), READ_TIMEOUT_SECONDS)
    except TimeoutError:
        return
    peer = writer.get_extra_info("peername")
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": version[5:],
        "method": method.upper(),
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
        "server": tuple(writer.get_extra_info("sockname")[:2]),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": request_body, "more_body": False}

    start: Message = {}
    body = bytearray()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    status = int(start.get("status", 500))
    out = [f"HTTP/1.1 {status} {_reason(status)}".encode()]
    for name, value in start.get("headers", []):
        out.append(bytes(name) + b": " + bytes(value))
    out.append(b"connection: close")
    writer.write(b"\r\n".join(out) + b"\r\n\r\n" + bytes(body))
    await writer.drain()


async def _write_plain(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    writer.write(
        f"HTTP/1.1 {status} {_reason(status)}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
