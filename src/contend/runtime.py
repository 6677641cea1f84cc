"""The runtime: one object owning registry, events, staging, cleanup and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from contend.backends.memory import MemoryBackend
from contend.cleanup.manager import CleanupManager
from contend.cleanup.memory import MemoryPressureMonitor
from contend.clock import Clock, SystemClock
from contend.errors import ConfigurationError, RuntimeBindingError
from contend.events import EventBus, OperationConflictEvent
from contend.metrics import CleanupMetrics
from contend.registry import Registry

if TYPE_CHECKING:
    from uuid import UUID

    from contend.backends.base import Backend
    from contend.operations import ConflictResolutionOperation

__all__ = ["Runtime", "get_runtime", "reset_runtime", "set_runtime", "use_runtime"]

log = logging.getLogger("contend.runtime")


_BYPASSED = ("ensure_entity", "add_operation", "bump", "set_status", "discard", "remove")


def _direct(backend: Backend) -> MemoryBackend | None:
    """The backend, when the hot path may call it without coroutines and skip the zombie books
    for records that leave at once: a MemoryBackend whose class overrides none of the methods
    this bypasses (a subclass that observes those calls keeps seeing every one)."""
    if not isinstance(backend, MemoryBackend) or not type(backend).removes_unbooked:
        return None
    cls = type(backend)
    if any(getattr(cls, name) is not getattr(MemoryBackend, name) for name in _BYPASSED):
        return None
    return backend


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
        self._local = _direct(self.backend)
        self._holding: dict[asyncio.Task[Any], tuple[UUID, ...]] = {}
        """Tasks running a protected call, and the entities each holds (for nested calls)."""
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.events = EventBus()
        self.metrics = CleanupMetrics()
        self.memory = MemoryPressureMonitor(memory_probe, time_source=self._clock_time)
        self.cleanup = CleanupManager(self)
        self.registry = Registry(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bind_lock = threading.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._functions: set[str] = set()
        coordinator = self.backend.coordinator
        if hasattr(coordinator, "on_window"):
            coordinator.on_window = self._on_window
        attach = getattr(self.backend, "attach", None)
        if attach is not None:
            attach(self)

    def _clock_time(self) -> float:
        """The clock in force now (a test may swap `clock` after the runtime is built)."""
        return self.clock.time()

    def __repr__(self) -> str:
        return f"Runtime(name={self.name!r}, backend={self.backend.name!r}, clock={self.clock!r})"

    def bind_loop(self) -> None:
        """Called on every decorated call: cheap when the loop is unchanged.

        The switch happens under a lock, so two threads starting at once cannot both bind. A
        loop that is not closed keeps the runtime while it runs, and also while it is paused
        with calls still staged (``run_until_complete`` in steps): moving away would strand them.
        """
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        with self._bind_lock:
            old = self._loop
            if loop is old:
                return
            if (
                old is not None
                and not old.is_closed()
                and (old.is_running() or self.backend.coordinator.in_flight())
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
            reset = getattr(self.backend.coordinator, "reset", None)
            if old is not None and reset is not None:
                reset()
            self.cleanup.stop()
            self._holding.clear()
            self._loop = loop

    def note_function(self, name: str, strategy: str) -> None:
        """Count a decorated function once per runtime, by its cleanup strategy."""
        if name not in self._functions:
            self._functions.add(name)
            self.metrics.decorators_by_cleanup_strategy.labels(strategy).inc()

    def _on_window(
        self,
        winner: ConflictResolutionOperation,
        entries: list[ConflictResolutionOperation],
        carried: Sequence[ConflictResolutionOperation] = (),
    ) -> None:
        if carried:
            rejected = _rejected_ids(winner, entries, carried)
        else:
            rejected = (e.ecs_id for e in entries if e is not winner)
        self.observe_window(winner, len(entries), rejected, carried=len(carried))

    def observe_window(
        self,
        winner: ConflictResolutionOperation,
        contenders: int,
        rejected_ids: Iterable[UUID],
        *,
        carried: int = 0,
    ) -> None:
        """A staging window held `contenders` calls: its size metric and one conflict event;
        `carried` of its losers wait for the next window (wait policy) instead of being
        rejected."""
        self.metrics.staging_window_size.observe(contenders)
        if carried:
            self.metrics.staging_carried.inc(carried)
        if self.events.wants(OperationConflictEvent):
            event = OperationConflictEvent(
                op_id=winner.ecs_id,
                target_entity_id=winner.target_entity_id,
                contenders=contenders,
                winner_priority=winner.priority,
                rejected_ids=tuple(rejected_ids),
            )
            task = asyncio.get_running_loop().create_task(self.events.emit(event))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Stop the sweeper and release the backend's connections."""
        self.cleanup.stop()
        await self.backend.close()


def _rejected_ids(
    winner: ConflictResolutionOperation,
    entries: list[ConflictResolutionOperation],
    carried: Sequence[ConflictResolutionOperation],
) -> Iterator[UUID]:
    """The ids of a window's rejected calls (read only when a conflict event is wanted)."""
    waiting = {id(c) for c in carried}
    yield from (e.ecs_id for e in entries if e is not winner and id(e) not in waiting)


_default: Runtime | None = None
_default_lock = threading.Lock()
_current: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar(
    "contend_runtime", default=None
)


def get_runtime() -> Runtime:
    """The runtime in force: the one made current by `use_runtime`, else the process default."""
    rt = _current.get()
    if rt is not None:
        return rt
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Runtime(name="default")
    return _default


def set_runtime(runtime: Runtime) -> Runtime | None:
    """Make `runtime` the process default; returns the previous default."""
    global _default
    previous, _default = _default, runtime
    return previous


def reset_runtime() -> Runtime:
    """Replace the process default with a fresh runtime (forgets every record and entity)."""
    global _default
    if _default is not None:
        _default.cleanup.stop()
    _default = Runtime(name="default")
    return _default


@contextlib.contextmanager
def use_runtime(runtime: Runtime) -> Iterator[Runtime]:
    """Make `runtime` current in this context (and in tasks created inside it)."""
    token = _current.set(runtime)
    try:
        yield runtime
    finally:
        _current.reset(token)
