"""The console as an ASGI 3 app: routing, the guard, the sampler's life.

``make_console(runtime, token=...)`` returns a `Console`; mount it anywhere (Starlette's
``Mount("/console", app=console)``, FastAPI's ``app.mount("/console", console)``, or
``contend.http.make_app(console=console)``, which is what ``contend serve`` does).
"""

from __future__ import annotations

import logging
import re
from importlib.resources import files
from typing import Any
from uuid import UUID

from contend.console import views
from contend.console.history import History
from contend.console.query import ZombieReader, zombie_reader
from contend.console.request import BodyTooLarge, Request, Response, read_request
from contend.console.security import Guard
from contend.console.settings import ConsoleSettings, console_settings
from contend.http import Receive, Scope, Send
from contend.runtime import Runtime, get_runtime

__all__ = ["Console", "make_console"]

log = logging.getLogger("contend.console")

_ZOMBIE = re.compile(r"^/zombies/([0-9a-fA-F-]{32,36})$")
_CONFIRM = re.compile(r"^/confirm/(remove|purge|sweep)$")
_ACTION = re.compile(r"^/actions/(remove|purge|sweep)$")
_STATIC = {"/static/console.css": "text/css; charset=utf-8"}


class Console:
    """An operations console for one runtime (an ASGI 3 application).

    Sampling for the overview's last-hour charts starts with `start()` (call it from the
    service's startup, in the runtime's event loop), else at the first request; `aclose()`
    stops it. Serve it from the loop that drives the runtime.
    """

    def __init__(
        self, runtime: Runtime | None = None, settings: ConsoleSettings | None = None
    ) -> None:
        self.settings = settings or ConsoleSettings()
        self._runtime = runtime
        self.guard = Guard(self.settings.token, self.settings.protect_reads)
        self.env = views.templates()
        self._history: History | None = None
        self._reader: ZombieReader | None = None
        self._static = {
            path: files("contend.console").joinpath("static", path.rsplit("/", 1)[1]).read_bytes()
            for path in _STATIC
        }

    @property
    def rt(self) -> Runtime:
        """The runtime shown: the one given, else the one in force at first use (then kept)."""
        if self._runtime is None:
            self._runtime = get_runtime()
        return self._runtime

    @property
    def reader(self) -> ZombieReader:
        if self._reader is None:
            self._reader = zombie_reader(self.rt.backend)
        return self._reader

    @property
    def history(self) -> History:
        if self._history is None:
            self._history = History(self.rt, self.reader, self.settings)
        return self._history

    def start(self) -> None:
        """Start sampling in the running event loop (idempotent)."""
        self.history.start()

    async def aclose(self) -> None:
        if self._history is not None:
            await self._history.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            req = await read_request(scope, receive)
        except BodyTooLarge as exc:
            await Response(413, str(exc).encode(), "text/plain; charset=utf-8").send(send)
            return
        self.start()
        try:
            response = await self._route(req)
        except views.InputError as exc:
            response = views.error(self, req, 400, str(exc))
        await response.send(send, head_only=req.method == "HEAD")

    async def _route(self, req: Request) -> Response:
        path, method = req.path, req.method
        reading = method in ("GET", "HEAD")
        if path in self._static:
            if not reading:
                return _not_allowed("GET, HEAD")
            return Response(
                200, self._static[path], _STATIC[path], [(b"cache-control", b"max-age=3600")]
            )
        if path == "/login" and method == "POST":
            return await views.login(self, req)
        if path == "/logout":
            return await views.logout(self, req) if method == "POST" else _not_allowed("POST")
        if path != "/login" and not self.guard.may_read(req.headers, req.cookies):
            if "text/html" in req.headers.get("accept", ""):
                return Response.redirect(req.url("/login?") + _next(req))
            return Response(
                401,
                b"this console needs its token\n",
                "text/plain; charset=utf-8",
                [(b"www-authenticate", b'Bearer realm="contend console"')],
            )
        handler = views.PAGES.get(path)
        if handler is not None:
            return await handler(self, req) if reading else _not_allowed("GET, HEAD")
        found = _ZOMBIE.match(path)
        if found is not None:
            if not reading:
                return _not_allowed("GET, HEAD")
            try:
                op_id = UUID(found.group(1))
            except ValueError:
                return views.error(self, req, 404, "Not an operation id.")
            return await views.zombie(self, req, op_id)
        found = _CONFIRM.match(path)
        if found is not None:
            return (
                await views.confirm(self, req, found.group(1))
                if reading
                else _not_allowed("GET, HEAD")
            )
        found = _ACTION.match(path)
        if found is not None:
            return (
                await views.act(self, req, found.group(1))
                if method == "POST"
                else _not_allowed("POST")
            )
        return views.error(self, req, 404, "No such page.")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _not_allowed(allow: str) -> Response:
    return Response(
        405, b"method not allowed\n", "text/plain; charset=utf-8", [(b"allow", allow.encode())]
    )


def _next(req: Request) -> str:
    from urllib.parse import urlencode

    here = req.url(req.path)
    if req.query:
        here += "?" + urlencode(req.query)
    return urlencode({"next": here})


def make_console(
    runtime: Runtime | None = None, settings: ConsoleSettings | None = None, **options: Any
) -> Console:
    """A console for `runtime` (default: the one in force at first use).

    Options are `ConsoleSettings` fields: ``token`` (actions off without one), ``protect_reads``,
    ``sample_interval_seconds``, ``history_minutes``, ``page_size``, ``scan_limit``, ...; a bad
    value raises ConfigurationError naming the field.
    """
    return Console(runtime, console_settings(settings, **options))
