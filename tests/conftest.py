"""Small shared fixtures: every test gets its own runtime, never the process default."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contend import FakeClock, Runtime, use_runtime
from contend.testing import make_runtime


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def runtime(clock: FakeClock) -> Iterator[Runtime]:
    """A fresh runtime on a fake clock with no memory pressure, made current for the test."""
    rt = make_runtime(clock=clock)
    with use_runtime(rt):
        yield rt
    rt.cleanup.stop()
