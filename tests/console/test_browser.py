"""The console in a real headless Chromium: overview, filters, a removal refused without the
token and done with it, and a function named like a script shown as text."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
from chromium import chromium, find_binaries
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import Account, contend_on, fail_on
from contend import FakeClock
from contend.console import Console, make_console
from contend.http import make_app, start_server
from contend.testing import make_runtime

TOKEN = "browser-test-console-token"
SCRIPT_NAME = "<script>window.__pwned=1</script>"
T = TypeVar("T")


class Served:
    """A runtime, its console and the HTTP server, on an event loop in a thread of their own
    (the browser is driven from the test's thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clock = FakeClock()
        self.rt = make_runtime(clock=self.clock)
        self.console: Console = make_console(self.rt, token=TOKEN, refresh_seconds=0)
        self.server = self.run(
            start_server("127.0.0.1", 0, app=make_app(self.rt, console=self.console))
        )
        port = self.server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}/console"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=30)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()
            await self.console.aclose()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if find_binaries() is None:
        pytest.fail("chromium and chromedriver are missing: `make console-tools` installs them")
    with chromium() as driver:
        driver.set_page_load_timeout(30)
        yield driver


def wait_for(browser: WebDriver, element_id: str) -> Any:
    return WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.ID, element_id)))


def text_of(browser: WebDriver, element_id: str) -> str:
    return str(wait_for(browser, element_id).text)


def test_the_overview_loads(served: Served, browser: WebDriver) -> None:
    hot = Account()
    served.run(contend_on(served.rt, [hot], 2, width=4))  # 6 rejections
    served.run(contend_on(served.rt, [Account()], 1, width=2))  # 1 more elsewhere
    browser.get(served.base + "/")
    assert text_of(browser, "zombies-now") == str(served.rt.backend.zombie_count)
    assert text_of(browser, "health") == "healthy"
    hottest = browser.find_element(By.CSS_SELECTOR, "#hot tbody tr td a")
    assert hottest.text == str(hot.ecs_id)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline.line")
    assert browser.title.startswith("Overview")


def test_the_zombie_browser_filters(served: Served, browser: WebDriver) -> None:
    target = Account()
    served.run(contend_on(served.rt, [target], 1, width=5))  # 4 rejected
    served.run(fail_on(served.rt, target, 2, name="withdraw", message="insufficient funds"))
    browser.get(served.base + "/zombies")
    wait_for(browser, "f-target").send_keys(str(target.ecs_id))
    Select(browser.find_element(By.ID, "f-status")).select_by_value("failed")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, 15).until(ec.url_contains("status=failed"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#zombies tbody tr")
    assert len(rows) == 2
    assert all("failed" in r.text and "withdraw" in r.text for r in rows)
    assert "2 shown" in text_of(browser, "summary")


def test_a_function_named_like_a_script_renders_as_text(served: Served, browser: WebDriver) -> None:
    served.run(fail_on(served.rt, Account(), 1, name=SCRIPT_NAME, message="<b>bold?</b>"))
    browser.get(served.base + "/zombies?function=" + "%3Cscript%3E")
    link = WebDriverWait(browser, 15).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#zombies a.open"))
    )
    assert SCRIPT_NAME in browser.find_element(By.CSS_SELECTOR, "#zombies td.fn").text
    link.click()
    assert SCRIPT_NAME in text_of(browser, "function")
    assert text_of(browser, "error") == "ValueError: <b>bold?</b>"
    assert browser.execute_script("return window.__pwned") is None
    assert browser.find_elements(By.TAG_NAME, "script") == []


def test_remove_is_refused_without_the_token_and_done_with_it(
    served: Served, browser: WebDriver
) -> None:
    target = Account()
    served.run(contend_on(served.rt, [target], 1, width=4))  # 3 zombies

    def count() -> int:
        return len(served.run(served.rt.registry.zombies(target.ecs_id)))

    browser.delete_all_cookies()
    browser.get(f"{served.base}/zombies?target={target.ecs_id}")
    assert "of 3 zombies of this target" in text_of(browser, "summary")
    total = int(text_of(browser, "zombie-total").split()[0].replace(",", ""))
    browser.find_element(By.CSS_SELECTOR, "#zombies a.remove").click()
    wait_for(browser, "confirm").click()
    assert "needs the console token" in text_of(browser, "problem")
    assert count() == 3

    browser.get(served.base + "/login")
    wait_for(browser, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "login").click()
    assert "Logged in" in text_of(browser, "notice")

    browser.get(f"{served.base}/zombies?target={target.ecs_id}")
    browser.find_element(By.CSS_SELECTOR, "#zombies a.remove").click()
    wait_for(browser, "confirm").click()
    assert "Removed 1 zombie record(s)" in text_of(browser, "notice")
    assert "of 2 zombies of this target" in text_of(browser, "summary")
    after = int(text_of(browser, "zombie-total").split()[0].replace(",", ""))
    assert after == total - 1
    assert count() == 2
    assert served.rt.cleanup.removed["manual"] == 1
