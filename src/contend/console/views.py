"""The pages and actions: each reads what it shows through the runtime and renders a template.

Reading never changes what it reads: the console looks at zombies through the backend's
indexes, not through registry queries, so a due LAZY zombie stays until a query of the service
meets it (the page says so). The actions go through the runtime like any removal: remove and
purge are counted under reason "manual", a sweep removes what is due and counts it "ttl", as
the sweeper would have a moment later.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from uuid import UUID

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from contend.config import CleanupStrategy
from contend.console.charts import bar_chart, line_chart
from contend.console.history import CONFLICTS, REJECTED, read_counters
from contend.console.query import ZOMBIE_STATUSES, CursorError, ZombieFilter
from contend.console.request import Request, Response
from contend.console.security import COOKIE, same_origin
from contend.metrics import REMOVAL_REASONS
from contend.operations import OperationPriority, OperationStatus

if TYPE_CHECKING:
    from contend.console.app import Console

__all__ = ["ACTIONS", "PAGES", "InputError", "templates"]

MAX_PAGE_SIZE = 500
MAX_FILTER_CHARS = 200
NOTICES = {
    "remove": "Removed {n} zombie record(s) (counted as manual removals).",
    "purge": "Purged {n} zombie record(s) of the target (counted as manual removals).",
    "sweep": "The sweep removed {n} record(s) that were due (counted as ttl removals).",
    "login": "Logged in: actions are on for this browser.",
    "logout": "Logged out.",
}


class InputError(ValueError):
    """A query or form field out of range; shown on a 400 page naming the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("contend.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = _age
    env.filters["count"] = lambda n: f"{n:,}" if isinstance(n, int) else f"{n:,.0f}"
    env.filters["moment"] = _moment
    return env


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m {int(seconds % 60)}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h {int(seconds % 3600 // 60)}m"
    return f"{int(seconds // 86400)}d {int(seconds % 86400 // 3600)}h"


def _moment(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


# rendering --------------------------------------------------------------------------------------
def page(console: Console, req: Request, name: str, status: int = 200, **ctx: Any) -> Response:
    session = console.guard.session(req.cookies)
    done = NOTICES.get(req.query.get("done", ""))
    n = req.query.get("n", "0")
    body = console.env.get_template(name).render(
        url=req.url,
        req=req,
        actions_enabled=console.guard.actions_enabled,
        logged_in=session is not None or console.guard.bearer(req.headers),
        csrf=console.guard.csrf_for(session),
        notice=done.format(n=int(n)) if done and n.isdigit() else None,
        **{"refresh": 0, **ctx},
    )
    return Response(status, body.encode())


def error(console: Console, req: Request, status: int, message: str) -> Response:
    return page(console, req, "error.html", status, status_code=status, message=message)


# overview ---------------------------------------------------------------------------------------
async def overview(console: Console, req: Request) -> Response:
    history = console.history
    snap = history.latest or await history.sample()
    rt = console.rt
    now = rt.clock.time()
    start = now - history.span
    window = history.window(now)
    strategies = sorted({s for p in window for s in p.by_strategy} | set(snap.strategies.counts))
    series = {s: [(p.t, float(p.by_strategy.get(s, 0))) for p in window] for s in strategies}
    zombies_chart = line_chart(series, start, now) if window else None
    rejected = history.per_minute(REJECTED, now)
    conflicts = history.per_minute(CONFLICTS, now)
    groups = [
        (t, {"rejections": r, "OCC conflicts": c})
        for (t, r), (_, c) in zip(rejected, conflicts, strict=True)
    ]
    minute_end = groups[-1][0] + 60 if groups else now
    rates_chart = bar_chart(groups, ["rejections", "OCC conflicts"], minute_end)
    counters = read_counters(rt.metrics.registry)
    first = window[0].counters if window else None
    removals = [
        (
            reason,
            int(counters[f"removed:{reason}"]),
            None
            if first is None
            else int(counters[f"removed:{reason}"] - first[f"removed:{reason}"]),
        )
        for reason in REMOVAL_REASONS
    ]
    top = max((total for _, total, _ in removals), default=0) or 1
    last_minute = [
        (name, _last(series_))
        for name, series_ in (("rejections", rejected), ("OCC conflicts", conflicts))
    ]
    return page(
        console,
        req,
        "overview.html",
        refresh=console.settings.refresh_seconds,
        zombies=rt.backend.zombie_count,
        snap=snap,
        snap_age=now - snap.t,
        zombies_chart=zombies_chart,
        rates_chart=rates_chart,
        removals=removals,
        removals_top=top,
        last_minute=last_minute,
        now=rt.clock.now(),
        history_minutes=console.settings.history_minutes,
        snap_interval=console.settings.sample_interval_seconds,
    )


def _last(series: list[tuple[float, float | None]]) -> float | None:
    return series[-1][1] if series else None


# the zombie browser ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Filters:
    """The browser's form, as given (for redisplay) and as a ZombieFilter."""

    form: dict[str, str]
    filt: ZombieFilter
    limit: int

    def link(self, req: Request, **extra: str) -> str:
        kept = {k: v for k, v in self.form.items() if v}
        kept.update(extra)
        return req.url("/zombies") + ("?" + urlencode(kept) if kept else "")


def parse_filters(console: Console, req: Request) -> Filters:
    q = req.query
    form = {
        k: q.get(k, "").strip()
        for k in ("target", "status", "function", "priority", "older", "newer", "limit")
    }
    now = console.rt.clock.now()
    status = None
    if form["status"]:
        try:
            status = OperationStatus(form["status"])
        except ValueError:
            status = None
        if status not in ZOMBIE_STATUSES:
            raise InputError(
                "status", f"must be one of {', '.join(s.value for s in ZOMBIE_STATUSES)}"
            )
    function = form["function"] or None
    if function is not None and len(function) > MAX_FILTER_CHARS:
        raise InputError("function", f"at most {MAX_FILTER_CHARS} characters")
    priority = _int_field(form, "priority", 1, 10)
    limit = _int_field(form, "limit", 1, MAX_PAGE_SIZE) or console.settings.page_size
    older = _minutes_field(form, "older")
    newer = _minutes_field(form, "newer")
    filt = ZombieFilter(
        target_id=_uuid_field(form, "target"),
        status=status,
        function=function,
        priority=priority,
        completed_before=now - timedelta(minutes=older) if older is not None else None,
        completed_after=now - timedelta(minutes=newer) if newer is not None else None,
    )
    return Filters(form, filt, limit)


def _int_field(form: dict[str, str], name: str, low: int, high: int) -> int | None:
    text = form[name]
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InputError(name, f"expected a whole number within {low}..{high}") from None
    if not low <= value <= high:
        raise InputError(name, f"must be within {low}..{high}, got {value}")
    return value


def _minutes_field(form: dict[str, str], name: str) -> float | None:
    text = form[name]
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(name, "expected a number of minutes within 0..525600") from None
    if not (math.isfinite(value) and 0 <= value <= 525_600):
        raise InputError(name, f"must be within 0..525600 minutes, got {text}")
    return value


def _uuid_field(form: dict[str, str], name: str) -> UUID | None:
    text = form[name]
    if not text:
        return None
    try:
        return UUID(text)
    except ValueError:
        raise InputError(name, "expected an entity id (a UUID)") from None


async def zombies(console: Console, req: Request) -> Response:
    try:
        filters = parse_filters(console, req)
    except InputError as exc:
        return page(
            console, req, "zombies.html", 400, **_browser_ctx(console, req, None, None, str(exc))
        )
    cursor = req.query.get("cursor") or None
    try:
        found = await console.reader.page(
            filters.filt, cursor, filters.limit, console.settings.scan_limit
        )
    except CursorError as exc:
        return page(
            console, req, "zombies.html", 400, **_browser_ctx(console, req, filters, None, str(exc))
        )
    return page(console, req, "zombies.html", **_browser_ctx(console, req, filters, found, None))


def _browser_ctx(
    console: Console, req: Request, filters: Any, found: Any, problem: str | None
) -> dict[str, Any]:
    form = (
        filters.form
        if filters is not None
        else {
            k: req.query.get(k, "")
            for k in ("target", "status", "function", "priority", "older", "newer", "limit")
        }
    )
    return {
        "form": form,
        "filters": filters,
        "found": found,
        "problem": problem,
        "statuses": [s.value for s in ZOMBIE_STATUSES],
        "priorities": [(int(p), p.name) for p in OperationPriority],
        "zombies": console.rt.backend.zombie_count,
        "now": console.rt.clock.now(),
        "next_link": filters.link(req, cursor=found.cursor)
        if found is not None and found.cursor
        else None,
        "first_link": filters.link(req) if filters is not None else req.url("/zombies"),
        "purge_link": (
            req.url("/confirm/purge?" + urlencode({"target": str(filters.filt.target_id)}))
            if filters is not None and filters.filt.target_id is not None
            else None
        ),
    }


async def zombie(console: Console, req: Request, op_id: UUID) -> Response:
    op = await console.rt.backend.get_operation(op_id)
    if op is None or not op.is_zombie:
        return error(console, req, 404, f"No zombie record {op_id} (removed, or never a zombie).")
    config = op.get_cleanup_config()
    due = op.cleanup_scheduled_at
    now = console.rt.clock.now()
    return page(
        console,
        req,
        "zombie.html",
        op=op,
        now=now,
        config=config,
        due_in=(due - now).total_seconds() if due is not None else None,
        lazy_due=op.cleanup_strategy is CleanupStrategy.LAZY and due is not None and due <= now,
    )


# actions ----------------------------------------------------------------------------------------
async def confirm(console: Console, req: Request, action: str) -> Response:
    ctx: dict[str, Any] = {"action": action, "op": None, "target": None, "count": None}
    if action == "remove":
        op_id = _uuid_field({"op": req.query.get("op", "")}, "op")
        op = await console.rt.backend.get_operation(op_id) if op_id is not None else None
        if op is None or not op.is_zombie:
            return error(console, req, 404, "No such zombie record (already removed?).")
        ctx["op"] = op
    elif action == "purge":
        target = _uuid_field({"target": req.query.get("target", "")}, "target")
        if target is None:
            raise InputError("target", "expected an entity id (a UUID)")
        ctx["target"] = target
        ctx["count"] = len(await console.rt.backend.zombies(target))
    return page(console, req, "confirm.html", **ctx)


async def act(console: Console, req: Request, action: str) -> Response:
    refused = console.guard.may_act(req.headers, req.cookies, req.form)
    if refused is not None:
        return error(console, req, 403, refused)
    rt = console.rt
    if action == "remove":
        op_id = _uuid_field({"op": req.form.get("op", "")}, "op")
        if op_id is None:
            raise InputError("op", "expected an operation id (a UUID)")
        op = await rt.backend.get_operation(op_id)
        if op is None or not op.is_zombie:
            return error(console, req, 404, f"No zombie record {op_id} (already removed?).")
        n = int(await rt.registry.remove(op_id))
        back = {"target": str(op.target_entity_id)} if op.target_entity_id else {}
        location = req.url("/zombies?" + urlencode({**back, "done": "remove", "n": n}))
    elif action == "purge":
        target = _uuid_field({"target": req.form.get("target", "")}, "target")
        if target is None:
            raise InputError("target", "expected an entity id (a UUID)")
        n = 0
        for op in await rt.backend.zombies(target):
            n += await rt.registry.remove(op.ecs_id)
        location = req.url(
            "/zombies?" + urlencode({"target": str(target), "done": "purge", "n": n})
        )
    else:
        n = await rt.cleanup.sweep()
        location = req.url("/?" + urlencode({"done": "sweep", "n": n}))
    await console.history.sample(record=False)
    return Response.redirect(location)


# login ------------------------------------------------------------------------------------------
async def login_form(console: Console, req: Request) -> Response:
    return page(console, req, "login.html", failed=False, next=_local_next(req, req.query))


async def login(console: Console, req: Request) -> Response:
    if not same_origin(req.headers):
        return error(console, req, 403, "Refused: the request came from another site.")
    session = console.guard.session_for(req.form.get("token", ""))
    if session is None:
        return page(console, req, "login.html", 403, failed=True, next=_local_next(req, req.form))
    response = Response.redirect(_with_notice(_local_next(req, req.form), "login"))
    response.headers.append((b"set-cookie", _cookie(req, session).encode()))
    return response


async def logout(console: Console, req: Request) -> Response:
    if not same_origin(req.headers):
        return error(console, req, 403, "Refused: the request came from another site.")
    response = Response.redirect(req.url("/?done=logout"))
    response.headers.append((b"set-cookie", _cookie(req, "", max_age=0).encode()))
    return response


def _cookie(req: Request, value: str, max_age: int | None = None) -> str:
    parts = [f"{COOKIE}={value}", f"Path={req.prefix or '/'}", "HttpOnly", "SameSite=Strict"]
    if req.headers.get("x-forwarded-proto", req.scheme) == "https":
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def _local_next(req: Request, source: dict[str, str]) -> str:
    """Where to go after logging in: a path of this console only (no open redirect)."""
    target = source.get("next", "")
    home = req.url("/")
    if not target.startswith(req.prefix + "/") or target.startswith("//") or "\\" in target:
        return home
    return target


def _with_notice(location: str, code: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}done={code}&n=1"


Handler = Callable[["Console", Request], Awaitable[Response]]

PAGES: dict[str, Handler] = {"/": overview, "/zombies": zombies, "/login": login_form}
ACTIONS = ("remove", "purge", "sweep")
