"""The console over ASGI: pages, escaping, the token, the CSRF guard, actions and their counts."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from conftest import Account, call, contend_on, fail_on, keep
from contend import ConfigurationError, Runtime
from contend.console import make_console
from contend.console.security import COOKIE
from contend.http import make_app, start_server

TOKEN = "a-console-token-for-tests"
SCRIPT_NAME = "<script>window.__pwned=1</script>"


async def login(app, root: str = "") -> dict[str, str]:
    """Log in with the token; the headers a browser then sends (cookie, same origin)."""
    reply = await call(app, f"{root}/login", method="POST", form={"token": TOKEN}, root_path=root)
    assert reply.status == 303, reply.text
    cookie = reply.cookies[0].split(";")[0]
    return {"cookie": cookie, "origin": "http://console.test", "sec-fetch-site": "same-origin"}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]*)"', html)
    assert found is not None
    return found.group(1)


async def zombies_of(rt: Runtime, n: int = 3) -> Account:
    account = Account()
    await contend_on(rt, [account], 1, width=n + 1)
    return account


# reading ------------------------------------------------------------------------------------------
async def test_overview_shows_the_runtime(runtime):
    account = await zombies_of(runtime, 4)
    await fail_on(runtime, account, 1, name="withdraw", message="insufficient funds")
    reply = await call(make_console(runtime), "/")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    assert 'id="zombies-now">5<' in reply.text
    assert 'id="health">healthy<' in reply.text
    assert str(account.ecs_id) in reply.text  # the hottest target
    assert "Removals by reason" in reply.text and "<svg" in reply.text


async def test_user_text_is_escaped_everywhere_it_shows(runtime):
    account = Account()
    await fail_on(runtime, account, 1, name=SCRIPT_NAME, message="<img src=x onerror=alert(1)>")
    app = make_console(runtime, token=TOKEN)
    (op,) = await runtime.registry.zombies()
    pages = [
        await call(app, "/zombies"),
        await call(app, f"/zombies/{op.ecs_id}"),
        await call(app, f"/confirm/remove?op={op.ecs_id}"),
        await call(app, "/zombies?" + urlencode({"function": "<script>"})),
    ]
    for reply in pages:
        assert reply.status == 200
        assert "<script" not in reply.text and "<img" not in reply.text
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in reply.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[1].text
    policy = pages[0].headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert pages[0].headers["x-frame-options"] == "DENY"


async def test_bad_filters_get_a_400_naming_the_field(runtime):
    app = make_console(runtime)
    for query, field in [
        ("priority=11", "priority: must be within 1..10"),
        ("target=not-a-uuid", "target: expected an entity id"),
        ("status=succeeded", "status: must be one of"),
        ("older=-1", "older: must be within 0..525600"),
        ("limit=100000", "limit: must be within 1..500"),
        ("cursor=%3Cscript%3E", "not a cursor"),
    ]:
        reply = await call(app, f"/zombies?{query}")
        assert reply.status == 400, query
        assert field in reply.text, query


async def test_the_browser_filters_and_pages(runtime):
    hot = await zombies_of(runtime, 30)
    await zombies_of(runtime, 5)
    app = make_console(runtime)
    reply = await call(app, f"/zombies?target={hot.ecs_id}&limit=20")
    assert reply.text.count('class="open"') == 20
    assert "of 30 zombies of this target" in reply.text
    next_link = re.search(r'href="([^"]*)" id="next"', reply.text)
    assert next_link is not None
    second = await call(app, next_link.group(1).replace("&amp;", "&"))
    assert second.text.count('class="open"') == 10
    assert 'id="next"' not in second.text


async def test_one_records_whole_story(runtime):
    account = Account()
    await fail_on(
        runtime, account, 1, name="charge", message="card declined", cleanup=keep("deferred")
    )
    (op,) = await runtime.registry.zombies()
    reply = await call(make_console(runtime), f"/zombies/{op.ecs_id}")
    text = reply.text
    for shown in ("charge", "failed", "card declined", "deferred", str(account.ecs_id)):
        assert shown in text
    assert "2026-01-01 00:30:00 UTC (in 30m 0s)" in text  # the due time, 30 min retention
    missing = await call(make_console(runtime), "/zombies/00000000-0000-0000-0000-000000000000")
    assert missing.status == 404


async def test_reads_can_need_the_token(runtime):
    app = make_console(runtime, token=TOKEN, protect_reads=True)
    assert (await call(app, "/zombies")).status == 401
    browser = await call(app, "/zombies", headers={"accept": "text/html"})
    assert browser.status == 303 and "/login?next=%2Fzombies" in browser.headers["location"]
    assert (await call(app, "/login")).status == 200
    assert (await call(app, "/static/console.css")).status == 200
    bearer = await call(app, "/zombies", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status == 200
    assert (await call(app, "/zombies", headers=await login(app))).status == 200


# acting -------------------------------------------------------------------------------------------
async def test_actions_are_off_without_a_token(runtime):
    account = await zombies_of(runtime)
    (op, *_) = await runtime.registry.zombies()
    app = make_console(runtime)
    confirm = await call(app, f"/confirm/remove?op={op.ecs_id}")
    assert "Actions are off" in confirm.text and 'id="confirm"' not in confirm.text
    for headers in ({}, {"authorization": "Bearer anything-at-all-here"}):
        reply = await call(
            app, "/actions/remove", method="POST", form={"op": str(op.ecs_id)}, headers=headers
        )
        assert reply.status == 403
    assert len(await runtime.registry.zombies(account.ecs_id)) == 3
    assert runtime.cleanup.removed["manual"] == 0


async def test_remove_with_the_token_counts_a_manual_removal(runtime):
    account = await zombies_of(runtime)
    (op, *_) = await runtime.registry.zombies()
    app = make_console(runtime, token=TOKEN)
    headers = await login(app)
    confirm = await call(app, f"/confirm/remove?op={op.ecs_id}", headers=headers)
    reply = await call(
        app,
        "/actions/remove",
        method="POST",
        form={"op": str(op.ecs_id), "csrf": csrf_of(confirm.text)},
        headers=headers,
    )
    assert reply.status == 303
    assert "done=remove" in reply.headers["location"]
    assert len(await runtime.registry.zombies(account.ecs_id)) == 2
    assert runtime.cleanup.removed["manual"] == 1
    exported = runtime.metrics.registry.get_sample_value(
        "contend_removals_total", {"reason": "manual"}
    )
    assert exported == 1.0
    after = await call(app, reply.headers["location"], headers=headers)
    assert "Removed 1 zombie record(s)" in after.text


async def test_the_csrf_guard_and_the_origin_check(runtime):
    await zombies_of(runtime)
    (op, *_) = await runtime.registry.zombies()
    app = make_console(runtime, token=TOKEN)
    headers = await login(app)
    csrf = csrf_of((await call(app, f"/confirm/remove?op={op.ecs_id}", headers=headers)).text)
    form = {"op": str(op.ecs_id), "csrf": csrf}
    cases = [
        ({**headers}, {"op": str(op.ecs_id)}, "CSRF"),
        ({**headers}, {"op": str(op.ecs_id), "csrf": "0" * 64}, "CSRF"),
        (
            {**headers, "origin": "http://evil.test", "sec-fetch-site": "cross-site"},
            form,
            "another site",
        ),
        ({"origin": "http://console.test"}, form, "log in"),
        ({**headers, "cookie": f"{COOKIE}=forged"}, form, "log in"),
    ]
    for hdrs, body, why in cases:
        reply = await call(app, "/actions/remove", method="POST", form=body, headers=hdrs)
        assert reply.status == 403 and why in reply.text, why
    assert len(await runtime.registry.zombies()) == 3
    wrong = await call(app, "/login", method="POST", form={"token": "x" * 30})
    assert wrong.status == 403 and not wrong.cookies
    another = make_console(runtime, token=TOKEN)  # a restart: old sessions open nothing
    reply = await call(another, "/actions/remove", method="POST", form=form, headers=headers)
    assert reply.status == 403


async def test_purge_and_sweep(runtime, clock):
    doomed = await zombies_of(runtime, 4)
    spared = await zombies_of(runtime, 2)
    await contend_on(
        runtime, [Account()], 1, width=3, cleanup=keep("deferred", retention_minutes=5)
    )
    app = make_console(runtime, token=TOKEN)
    bearer = {"authorization": f"Bearer {TOKEN}"}
    confirm = await call(app, f"/confirm/purge?target={doomed.ecs_id}", headers=bearer)
    assert 'id="purge-count">4<' in confirm.text
    reply = await call(
        app, "/actions/purge", method="POST", form={"target": str(doomed.ecs_id)}, headers=bearer
    )
    assert reply.status == 303 and "n=4" in reply.headers["location"]
    assert await runtime.registry.zombies(doomed.ecs_id) == []
    assert len(await runtime.registry.zombies(spared.ecs_id)) == 2
    assert runtime.cleanup.removed["manual"] == 4
    clock.advance(minutes=6)
    reply = await call(app, "/actions/sweep", method="POST", form={}, headers=bearer)
    assert reply.status == 303 and "n=2" in reply.headers["location"]
    assert runtime.cleanup.removed["ttl"] == 2 and runtime.backend.zombie_count == 2


def test_a_short_token_is_refused_naming_the_field():
    with pytest.raises(ConfigurationError) as err:
        make_console(token="short")
    assert err.value.field == "token" and "at least 16 characters" in str(err.value)
    with pytest.raises(ConfigurationError) as err:
        make_console(page_size=0)
    assert err.value.field == "page_size"
    # the whole allowed range, not one bound ("Input should be greater than or equal to 1")
    assert "page_size must be >= 1 and <= 500, got 0" in str(err.value)
    with pytest.raises(ConfigurationError, match=r"sample_interval_seconds must be >= 1.0 and"):
        make_console(sample_interval_seconds=1e9)


async def test_methods_and_unknown_paths(runtime):
    app = make_console(runtime, token=TOKEN)
    assert (await call(app, "/actions/remove")).status == 405
    assert (await call(app, "/zombies", method="POST", form={})).status == 405
    assert (await call(app, "/nope")).status == 404
    head = await call(app, "/", method="HEAD")
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0


# mounting -----------------------------------------------------------------------------------------
async def test_mounted_in_starlette_next_to_its_routes(runtime):
    await zombies_of(runtime)
    console = make_console(runtime, token=TOKEN)

    async def home(request):
        return PlainTextResponse("the service's own page")

    app = Starlette(routes=[Route("/", home), Mount("/ops/console", app=console)])
    assert (await call(app, "/")).text == "the service's own page"
    overview = await call(app, "/ops/console/")
    assert overview.status == 200
    assert 'href="/ops/console/zombies"' in overview.text
    assert 'href="/ops/console/static/console.css"' in overview.text
    listing = await call(app, "/ops/console/zombies")
    assert listing.text.count('class="open"') == 3
    logged = await call(app, "/ops/console/login", method="POST", form={"token": TOKEN})
    assert logged.status == 303 and "Path=/ops/console" in logged.cookies[0]
    assert logged.headers["location"].startswith("/ops/console/")


async def test_served_by_the_http_server_under_console(runtime):
    account = await zombies_of(runtime)
    console = make_console(runtime, token=TOKEN)
    server = await start_server("127.0.0.1", 0, runtime, app=make_app(runtime, console=console))
    port = server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    def fetch(path: str, data: bytes | None = None, headers: dict[str, str] | None = None):
        req = urllib.request.Request(base + path, data=data, headers=headers or {})
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    try:
        loop = asyncio.get_running_loop()
        status, headers, _ = await loop.run_in_executor(None, fetch, "/")
        assert status == 307 and headers["location"] == "/console/"
        status, _, text = await loop.run_in_executor(None, fetch, "/console/zombies")
        assert status == 200 and text.count('class="open"') == 3
        assert (await loop.run_in_executor(None, fetch, "/metrics"))[0] == 200
        (op, *_) = await runtime.registry.zombies()
        body = urlencode({"op": str(op.ecs_id)}).encode()
        auth = {"authorization": f"Bearer {TOKEN}"}
        status, headers, _ = await loop.run_in_executor(
            None, fetch, "/console/actions/remove", body, auth
        )
        assert status == 303
        assert len(await runtime.registry.zombies(account.ecs_id)) == 2
    finally:
        server.close()
        await server.wait_closed()
        await console.aclose()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
