"""Headless Chromium under Selenium, as the console's browser tests and screenshot use it.

Debian's ``chromium`` and ``chromium-driver`` (``make console-tools`` installs them): Selenium
is pointed at both binaries, so it never tries to download a browser or a driver.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

__all__ = ["FLAGS", "chromium", "find_binaries"]

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def find_binaries() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium (its own profile folder, removed afterwards)."""
    found = find_binaries()
    if found is None:
        raise RuntimeError("chromium and chromedriver are needed: run `make console-tools`")
    browser, driver = found
    profile = tempfile.mkdtemp(prefix="contend-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    drv = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
