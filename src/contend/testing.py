"""Helpers for testing code that uses contend, as ``structlog.testing`` is for logging.

- `make_runtime` / `runtime_in_use`: a runtime on a `FakeClock` with no memory pressure (so
  retention periods pass with ``clock.advance(...)`` and the adaptive rules stay quiet), of its
  own, never the process default;
- `EventRecorder`: the events a runtime emits, in order, by type;
- `KEEP_EVERYTHING`: a cleanup config under which nothing leaves the registry by itself, so a
  test can look at every record its calls left;
- `Account`: a small entity (a balance), for tests and examples.

::

    from contend.testing import Account, EventRecorder, runtime_in_use

    async def test_five_concurrent_deposits_one_wins():
        with runtime_in_use() as rt, EventRecorder(rt, OperationRejectedEvent) as rejected:
            results = await asyncio.gather(*(deposit(acct, 1) for _ in range(5)),
                                           return_exceptions=True)
        assert len(rejected.events) == 4
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

from contend.clock import FakeClock
from contend.config import CleanupConfig
from contend.entity import Entity
from contend.enums import CleanupStrategy
from contend.errors import ConfigurationError
from contend.events import OperationEvent
from contend.runtime import Runtime, use_runtime

if TYPE_CHECKING:
    from contend.backends.base import Backend

__all__ = [
    "KEEP_EVERYTHING",
    "Account",
    "EventRecorder",
    "make_runtime",
    "runtime_in_use",
]

E = TypeVar("E", bound=OperationEvent)


class Account(Entity):
    """A small entity for tests and examples: a balance, in whole units."""

    balance: int = 0


KEEP_EVERYTHING = CleanupConfig(
    strategy=CleanupStrategy.NONE,
    retain_succeeded=True,
    aggressive_on_memory_pressure=False,
    immediate_cleanup_priorities=[],
    debug_retention_priorities=[],
    max_zombie_count_per_target=10_000,
    force_cleanup_threshold=100_000,
)
"""Nothing leaves the registry by itself: rejected, failed, cancelled and succeeded records all
stay (up to 10,000 zombies per target), whatever the priority or memory pressure."""


def make_runtime(
    *,
    clock: FakeClock | None = None,
    memory_pressure: float = 0.0,
    backend: Backend | None = None,
    name: str = "test",
) -> Runtime:
    """A runtime of its own on a `FakeClock` (a new one unless given), whose memory probe always
    reads `memory_pressure`."""
    if (
        isinstance(memory_pressure, bool)
        or not isinstance(memory_pressure, (int, float))
        or not 0 <= memory_pressure <= 1
    ):
        raise ConfigurationError(
            "memory_pressure", f"must be a fraction from 0 to 1, got {memory_pressure!r}"
        )
    return Runtime(
        backend,
        clock=clock if clock is not None else FakeClock(),
        memory_probe=lambda: memory_pressure,
        name=name,
    )


@contextlib.contextmanager
def runtime_in_use(
    *,
    clock: FakeClock | None = None,
    memory_pressure: float = 0.0,
    backend: Backend | None = None,
    name: str = "test",
) -> Iterator[Runtime]:
    """`make_runtime`, made current for the block (decorated functions without ``runtime=``
    use it); its sweeper is stopped at the end."""
    rt = make_runtime(clock=clock, memory_pressure=memory_pressure, backend=backend, name=name)
    try:
        with use_runtime(rt):
            yield rt
    finally:
        rt.cleanup.stop()


class EventRecorder:
    """Records the events `runtime` emits of the given types (default: all), in order.

    A context manager: it stops recording when the block ends (or call `close`).
    """

    def __init__(self, runtime: Runtime, *kinds: type[OperationEvent]) -> None:
        self.events: list[OperationEvent] = []
        self._unsubscribe = [
            runtime.events.subscribe(kind, self.events.append)
            for kind in kinds or (OperationEvent,)
        ]

    def of(self, kind: type[E]) -> list[E]:
        """The events recorded of `kind` (subclasses included)."""
        return [e for e in self.events if isinstance(e, kind)]

    def ids(self, kind: type[OperationEvent] = OperationEvent) -> list[UUID]:
        """The operation ids of the events recorded of `kind`."""
        return [e.op_id for e in self.of(kind)]

    def clear(self) -> None:
        self.events.clear()

    def close(self) -> None:
        """Stop recording (what was recorded stays)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def __len__(self) -> int:
        return len(self.events)

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
