"""A request as the console reads it from ASGI, and the responses it sends back."""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl

from contend.console.security import SECURITY_HEADERS
from contend.http import Receive, Scope, Send

__all__ = ["MAX_FORM_BYTES", "BodyTooLarge", "Request", "Response", "read_request"]

MAX_FORM_BYTES = 16 * 1024


class BodyTooLarge(ValueError):
    """A form body over MAX_FORM_BYTES."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    """The path under the console's mount point, without a trailing slash ("/" for the root)."""
    prefix: str
    """Where the console is mounted ("" at the root); every link starts with it."""
    query: dict[str, str]
    headers: dict[str, str]
    cookies: dict[str, str]
    form: dict[str, str]
    scheme: str = "http"

    def url(self, path: str) -> str:
        return f"{self.prefix}{path}"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        return cls(status, b"", "text/plain; charset=utf-8", [(b"location", location.encode())])

    async def send(self, send: Send, head_only: bool = False) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
            *SECURITY_HEADERS,
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        body = b"" if head_only else self.body
        await send({"type": "http.response.body", "body": body, "more_body": False})


def local_path(scope: Scope) -> tuple[str, str]:
    """(mount prefix, path under it), whichever way the server or framework split them."""
    path: str = scope.get("path", "/") or "/"
    root: str = scope.get("root_path", "") or ""
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return root.rstrip("/"), path


async def read_request(scope: Scope, receive: Receive) -> Request:
    """Parse what the console needs; a form body is read only for urlencoded POSTs."""
    prefix, path = local_path(scope)
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers and key != "cookie" else text
    raw_query = bytes(scope.get("query_string", b"")).decode("latin-1")
    query = dict(parse_qsl(raw_query, keep_blank_values=True))
    method = str(scope.get("method", "GET")).upper()
    form: dict[str, str] = {}
    if method == "POST":
        body = await _body(receive)
        if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    cookies = _cookies(headers.get("cookie", ""))
    scheme = str(scope.get("scheme", "http"))
    return Request(method, path, prefix, query, headers, cookies, form, scheme)


async def _body(receive: Receive) -> bytes:
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.extend(message.get("body", b""))
        if len(chunks) > MAX_FORM_BYTES:
            raise BodyTooLarge(f"form body over {MAX_FORM_BYTES} bytes")
        if not message.get("more_body", False):
            break
    return bytes(chunks)


def _cookies(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}
