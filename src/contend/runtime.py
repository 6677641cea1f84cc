"""The runtime: one object owning registry, events, staging, cleanup and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from contend import current
from contend.backends.base import Coordinator, Hooks, Store
from contend.backends.memory import MemoryBackend
from contend.cleanup.manager import CleanupManager
from contend.cleanup.pressure import MemoryPressureMonitor
from contend.clock import Clock, SystemClock
from contend.errors import ConfigurationError, RuntimeBindingError
from contend.events import EventBus, OperationConflictEvent
from contend.metrics import CleanupMetrics
from contend.registry import Registry

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.base import Backend
    from contend.record import Record

__all__ = ["Runtime", "get_runtime", "reset_runtime", "set_runtime", "use_runtime"]

log = logging.getLogger("contend.runtime")


_STOOD_IN_FOR = ("ensure_entity", "add_operation", "bump", "set_status", "discard", "remove")
"""The `Backend` methods a backend's synchronous `Store` stands in for on the hot path."""


def _store_of(backend: Backend) -> Store | None:
    """The backend's synchronous store, when the hot path may use it: the backend offers one
    (``backend.store``) and its class overrides none of the methods the store stands in for (a
    subclass that observes those calls keeps seeing every one, through the coroutines)."""
    store = getattr(backend, "store", None)
    if not isinstance(store, Store) or not isinstance(backend, MemoryBackend):
        return None
    cls = type(backend)
    if any(getattr(cls, name) is not getattr(MemoryBackend, name) for name in _STOOD_IN_FOR):
        return None
    return store


def _claim(backend: Backend, runtime: Runtime, name: str) -> None:
    """A backend belongs to the first runtime it is given to: a runtime's staging, cleanup,
    events and metrics act on every record its backend holds, so a second runtime on it would
    act on the first one's calls (and the backend's hooks point at the first runtime)."""
    owner_ref = getattr(backend, "_contend_runtime", None)
    owner = owner_ref() if owner_ref is not None else None
    if owner is not None:
        raise ConfigurationError(
            "backend",
            f"{backend!r} already serves runtime {owner.name!r}; give runtime {name!r} a backend "
            "of its own (several workers share Redis through one RedisBackend each, with the "
            "same prefix)",
        )
    with contextlib.suppress(AttributeError):  # a backend with __slots__ cannot be marked
        backend._contend_runtime = weakref.ref(runtime)  # type: ignore[attr-defined]


class Runtime:
    """Everything contend keeps for one application: state lives here, never in module globals.

    A runtime is driven by one event loop at a time. It may move to a new loop once the old one
    has stopped (two ``asyncio.run()`` calls in a row), but a call from a second loop while the
    first is still running raises ``RuntimeBindingError``: create one runtime per loop instead.
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        clock: Clock | None = None,
        memory_probe: Callable[[], float] | None = None,
        name: str = "contend",
    ) -> None:
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigurationError(
                "clock", f"expected a Clock (now(), time(), async sleep()), got {clock!r}"
            )
        if memory_probe is not None and not callable(memory_probe):
            raise ConfigurationError(
                "memory_probe", f"expected a callable returning 0..1, got {memory_probe!r}"
            )
        if backend is not None and not all(
            hasattr(backend, a) for a in ("coordinator", "ensure_entity", "add_zombie", "commit")
        ):
            raise ConfigurationError(
                "backend",
                f"expected a contend backend (MemoryBackend, RedisBackend), got {backend!r}",
            )
        if backend is not None:
            _claim(backend, self, name)
        self.name = name
        self.backend: Backend = MemoryBackend() if backend is None else backend
        self.store: Store | None = _store_of(self.backend)
        """The backend's synchronous side, used on the hot path when there is one."""
        self.coordinator: Coordinator = self.backend.coordinator
        """The backend's staging coordinator."""
        self.clock: Clock = clock if clock is not None else SystemClock()
        """Where every part of the runtime reads time (replaceable, see `__setattr__`)."""
        self.events = EventBus()
        self.metrics = CleanupMetrics()
        self.memory = MemoryPressureMonitor(memory_probe, time_source=self._clock_time)
        self.cleanup = CleanupManager(
            self.backend,
            store=self.store,
            clock=self.clock,
            metrics=self.metrics,
            events=self.events,
            pressure=self.memory,
            name=name,
        )
        self.registry = Registry(self.backend, self.cleanup)
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop driving this runtime (see `bind_loop`)."""
        self._bind_lock = threading.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._functions: set[str] = set()
        self._attach()

    def __setattr__(self, name: str, value: Any) -> None:
        """A test may swap the clock after the runtime is built: every part follows. (A plain
        attribute, not a property: every call reads it.)"""
        object.__setattr__(self, name, value)
        if name == "clock":
            cleanup = getattr(self, "cleanup", None)  # (not self.__dict__: see _fast, "dicts")
            if cleanup is not None:
                cleanup.clock = value
                self._attach()

    def _attach(self) -> None:
        """Give the backend what it may call back into (a backend without `attach` needs
        nothing)."""
        attach = getattr(self.backend, "attach", None)
        if attach is not None:
            attach(
                Hooks(
                    clock=self.clock,
                    observe_window=self.observe_window,
                    bury=self._bury,
                    count_removal=self.cleanup.count_removal,
                    sweep=self.cleanup.sweep,
                    metrics_registry=self.metrics.registry,
                )
            )

    async def _bury(self, record: Record, status: Any, message: str) -> None:
        await self.cleanup.bury(record, status, record.get_cleanup_config(), message)

    def _clock_time(self) -> float:
        """The clock in force now."""
        return self.clock.time()

    def __repr__(self) -> str:
        return f"Runtime(name={self.name!r}, backend={self.backend.name!r}, clock={self.clock!r})"

    def bind_loop(self) -> None:
        """Bind the running loop (a decorated call does when `loop` is not the running one).

        The switch happens under a lock, so two threads starting at once cannot both bind. A
        loop that is not closed keeps the runtime while it runs, and also while it is paused
        with calls still staged (``run_until_complete`` in steps): moving away would strand them.
        """
        loop = asyncio.get_running_loop()
        if loop is self.loop:
            return
        with self._bind_lock:
            old = self.loop
            if loop is old:
                return
            if (
                old is not None
                and not old.is_closed()
                and (old.is_running() or self.coordinator.in_flight())
            ):
                state = (
                    "running event loop"
                    if old.is_running()
                    else "event loop, paused with calls still staged,"
                )
                raise RuntimeBindingError(
                    f"runtime {self.name!r} is driven by another {state} "
                    f"(thread {threading.current_thread().name!r} tried to use it); "
                    "create a Runtime per event loop or thread"
                )
            reset = getattr(self.coordinator, "reset", None)
            if old is not None and reset is not None:
                reset()
            self.cleanup.stop()
            self.loop = loop

    def note_function(self, name: str, strategy: str) -> None:
        """Count a decorated function once per runtime, by its cleanup strategy."""
        if name not in self._functions:
            self._functions.add(name)
            self.metrics.decorators_by_cleanup_strategy.labels(strategy).inc()

    def observe_window(
        self,
        winner: Record,
        contenders: int,
        rejected_ids: Callable[[], Iterable[UUID]] | Iterable[UUID],
        carried: int = 0,
    ) -> None:
        """A staging window held `contenders` calls: its size metric and one conflict event
        (`rejected_ids`: the ids of those rejected, or a function returning them, called only
        for the event); `carried` of its losers wait for the next window (wait policy) instead
        of being rejected."""
        self.metrics.staging_window_size.observe(contenders)
        if carried:
            self.metrics.staging_carried.inc(carried)
        if self.events.wants(OperationConflictEvent):
            event = OperationConflictEvent(
                op_id=winner.ecs_id,
                target_entity_id=winner.target_entity_id,
                contenders=contenders,
                winner_priority=winner.priority,
                rejected_ids=tuple(rejected_ids() if callable(rejected_ids) else rejected_ids),
            )
            task = asyncio.get_running_loop().create_task(self.events.emit(event))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Stop the sweeper and release the backend's connections."""
        self.cleanup.stop()
        await self.backend.close()


def _default() -> Runtime:
    return Runtime(name="default")


current.install_default(_default)


def get_runtime() -> Runtime:
    """The runtime in force: the one made current by `use_runtime`, else the process default."""
    rt: Runtime = current.current_runtime()
    return rt


def set_runtime(runtime: Runtime) -> Runtime | None:
    """Make `runtime` the process default; returns the previous default."""
    previous: Runtime | None = current.replace_default(runtime)
    return previous


def reset_runtime() -> Runtime:
    """Replace the process default with a fresh runtime (forgets every record and entity)."""
    previous: Runtime | None = current.peek_default()
    if previous is not None:
        previous.cleanup.stop()
    fresh = _default()
    current.replace_default(fresh)
    return fresh


@contextlib.contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Make `runtime` current in this context (and in tasks created inside it)."""
    token = current.context.set(runtime)
    try:
        yield runtime
    finally:
        current.context.reset(token)
