"""Cleanup handlers: one small object per strategy, each with one job, found by name.

A handler decides what becomes of a record that ended and is kept (a zombie; a retained success
for the stock strategies). Each stock strategy is one class carrying everything that names it:
its `CleanupStrategy`, the name it is registered under and the reason its removals are counted
under. The manager finds the class for a strategy through `CleanupHandlerRegistry` (so a class
registered again under a stock name takes its place), as it finds a custom one by the config's
handler name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, overload

from contend.config import CleanupConfig, EffectiveCleanup
from contend.current import current_runtime
from contend.enums import CleanupStrategy

if TYPE_CHECKING:
    from contend.cleanup.manager import CleanupManager
    from contend.operations import ConflictResolutionOperation
    from contend.record import Record

__all__ = [
    "CleanupHandler",
    "CleanupHandlerRegistry",
    "CustomCleanupHandler",
    "DeferredCleanupHandler",
    "ImmediateCleanupHandler",
    "LazyCleanupHandler",
    "NoOpCleanupHandler",
]


class CleanupHandler:
    """Base class for cleanup handlers.

    A handler is called once for every record that ends as a zombie (rejected, failed or
    cancelled: check ``operation.status``). It may remove the record now (``await
    self.remove(operation)``), schedule its removal (``await self.retain_for(operation,
    minutes=...)``), or leave it be. A handler that raises or runs past the config's
    ``handler_timeout_seconds`` has failed: the record stays and the health check says so.
    """

    strategy: ClassVar[CleanupStrategy] = CleanupStrategy.CUSTOM
    name: str = "custom"
    """The name it is registered under (a custom handler: the one its config names)."""
    reason: str = "custom"
    """What its removals are counted under (``contend_removals_total{reason}``)."""
    cleanup: CleanupManager | None = None
    """The cleanup manager it acts through, once bound."""

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        """Decide the fate of `operation`, a record that ended as a zombie (override this; the
        design's name: it is called for failed and cancelled records too)."""
        raise NotImplementedError

    @classmethod
    def for_cleanup(cls, effective: EffectiveCleanup, config: CleanupConfig) -> CleanupHandler:
        """The instance that applies `effective` under `config` (a custom class: built with no
        arguments, as the design's registry creates it)."""
        return cls()

    async def handle(self, record: Record) -> None:
        """What the manager calls for a kept record: the design's ``handle_operation_rejection``
        with the record's public view (the stock strategies act on the record itself)."""
        await settle(self.name, self.handle_operation_rejection(record.view()))

    def bind(self, cleanup: CleanupManager) -> None:
        """Act through `cleanup` (the manager binds the handlers it makes)."""
        self.cleanup = cleanup

    def _manager(self) -> CleanupManager:
        if self.cleanup is not None:
            return self.cleanup
        manager: CleanupManager = current_runtime().cleanup
        return manager

    async def remove(
        self, operation: ConflictResolutionOperation | Record, reason: str | None = None
    ) -> bool:
        """Remove the record now; returns False if it was already gone."""
        return await self._manager().remove(
            operation.ecs_id, reason or self.reason, strategy=self.strategy
        )

    async def retain_for(
        self, operation: ConflictResolutionOperation | Record, minutes: float
    ) -> None:
        """Schedule removal `minutes` after the record's completion; the runtime's sweeper
        carries it out (counted under reason "ttl", labelled with the record's strategy)."""
        manager = self._manager()
        now = manager.clock.now()
        try:
            valid = minutes >= 0 and (now + timedelta(minutes=minutes)).year < 9999
        except (TypeError, ValueError, OverflowError):
            valid = False
        if not valid:
            raise ValueError(
                "retain_for: minutes must be a finite number of minutes >= 0 that ends before "
                f"the year 9999, got {minutes!r}"
            )
        record = manager.record_of(operation)
        if record is None:
            return
        due = record.retain_for(minutes, now)
        await manager.schedule(record, due.timestamp())


class ImmediateCleanupHandler(CleanupHandler):
    """Removes the record as soon as its rejection is handled."""

    strategy = CleanupStrategy.IMMEDIATE
    name = "immediate"
    reason = "immediate"

    def __init__(self, reason: str = "immediate") -> None:
        self.reason = reason

    @classmethod
    def for_cleanup(cls, effective: EffectiveCleanup, config: CleanupConfig) -> CleanupHandler:
        return cls(reason=effective.trigger or cls.reason)

    async def handle(self, record: Record) -> None:
        await self.remove(record)

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        await self.remove(operation)


class _Retaining(CleanupHandler):
    """A stock strategy that keeps the record `retention_minutes` after it ended."""

    def __init__(self, retention_minutes: int = 0) -> None:
        self.retention_minutes = retention_minutes

    @classmethod
    def for_cleanup(cls, effective: EffectiveCleanup, config: CleanupConfig) -> CleanupHandler:
        return cls(retention_minutes=effective.retention_minutes)

    def _plan(self, record: Record) -> None:
        now = self._manager().clock.now()
        record.plan_cleanup(self.strategy, record.due_after(self.retention_minutes, now))

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        record = self._manager().record_of(operation)
        if record is not None:
            await self.handle(record)


class DeferredCleanupHandler(_Retaining):
    """Keeps the record for a retention period after its completion, then the sweeper removes it."""

    strategy = CleanupStrategy.DEFERRED
    name = "deferred"
    reason = "ttl"

    def __init__(self, retention_minutes: int = 30) -> None:
        super().__init__(retention_minutes)

    async def handle(self, record: Record) -> None:
        self._plan(record)
        await self.retain_for(record, self.retention_minutes)


class LazyCleanupHandler(_Retaining):
    """Marks when the record becomes due; the first query that meets it afterwards removes it."""

    strategy = CleanupStrategy.LAZY
    name = "lazy"
    reason = "lazy"

    async def handle(self, record: Record) -> None:
        self._plan(record)


class NoOpCleanupHandler(CleanupHandler):
    """Keeps the record until it is removed by hand (it is still counted and reported)."""

    strategy = CleanupStrategy.NONE
    name = "noop"
    reason = "manual"

    async def handle(self, record: Record) -> None:
        record.handled_by(self.name)

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        record = self._manager().record_of(operation)
        if record is not None:
            await self.handle(record)


class CustomCleanupHandler(CleanupHandler):
    """Delegates to the handler registered under `name` in CleanupHandlerRegistry."""

    strategy = CleanupStrategy.CUSTOM
    reason = "custom"

    def __init__(self, name: str, **kwargs: Any) -> None:
        self.name = name
        self.delegate = CleanupHandlerRegistry.create(name, **kwargs)

    @classmethod
    def for_cleanup(cls, effective: EffectiveCleanup, config: CleanupConfig) -> CleanupHandler:
        return cls(config.custom_cleanup_handler or "")

    def bind(self, cleanup: CleanupManager) -> None:
        self.cleanup = cleanup
        if isinstance(self.delegate, CleanupHandler):
            self.delegate.bind(cleanup)

    async def handle(self, record: Record) -> None:
        record.handled_by(self.name)
        delegate = self.delegate
        if isinstance(delegate, CleanupHandler) and type(delegate).handle is not _BASE_HANDLE:
            await delegate.handle(record)
            return
        await settle(self.name, delegate.handle_operation_rejection(record.view()))

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        record = self._manager().record_of(operation)
        if record is not None:
            await self.handle(record)


_BASE_HANDLE = CleanupHandler.handle


async def settle(name: str, outcome: object) -> None:
    """Await what the handler registered under `name` returned from
    ``handle_operation_rejection``: a coroutine that gives None, or the handler has failed."""
    if not inspect.isawaitable(outcome):
        raise TypeError(
            f"{name}: handle_operation_rejection returned {outcome!r}, not an awaitable; define "
            "it with `async def` (contend awaits it)"
        )
    result = await outcome
    if result is not None:
        raise TypeError(
            f"cleanup handler {name!r} returned {result!r}; a cleanup handler returns None"
        )


HandlerClass = type[CleanupHandler]


class CleanupHandlerRegistry:
    """Registry for cleanup handlers.

    This name-to-class table is the one process-wide table contend keeps (the design makes it a
    class-level registry so a handler registered at import time serves every runtime). It holds
    classes, never operation state.
    """

    _handlers: ClassVar[dict[str, HandlerClass]] = {}

    @overload
    @classmethod
    def register(cls, name: str) -> Callable[[HandlerClass], HandlerClass]: ...

    @overload
    @classmethod
    def register(cls, name: str, handler_class: HandlerClass) -> HandlerClass: ...

    @classmethod
    def register(
        cls, name: str, handler_class: HandlerClass | None = None
    ) -> HandlerClass | Callable[[HandlerClass], HandlerClass]:
        """Register a handler class; also usable as ``@CleanupHandlerRegistry.register("name")``."""
        if not isinstance(name, str) or not name:
            raise ValueError("CleanupHandlerRegistry.register: name must be a non-empty string")

        def add(klass: HandlerClass) -> HandlerClass:
            if not (isinstance(klass, type) and hasattr(klass, "handle_operation_rejection")):
                raise TypeError(
                    f"CleanupHandlerRegistry.register({name!r}): expected a class with "
                    f"handle_operation_rejection, got {klass!r}"
                )
            cls._handlers[name] = klass
            return klass

        if handler_class is None:
            return add
        return add(handler_class)

    @classmethod
    def unregister(cls, name: str) -> None:
        cls._handlers.pop(name, None)

    @classmethod
    def get(cls, name: str) -> HandlerClass:
        """The class registered under `name`; ValueError naming the registered ones if none."""
        try:
            return cls._handlers[name]
        except KeyError:
            known = ", ".join(sorted(cls._handlers)) or "none"
            raise ValueError(f"Unknown cleanup handler: {name!r} (registered: {known})") from None

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> CleanupHandler:
        """An instance of the class registered under `name`, built with `kwargs`."""
        return cls.get(name)(**kwargs)

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._handlers)

    @classmethod
    def has(cls, name: str) -> bool:
        return name in cls._handlers

    @classmethod
    def name_for(cls, strategy: CleanupStrategy, config: CleanupConfig) -> str:
        """The registered name that serves `strategy` under `config`."""
        if strategy is CleanupStrategy.CUSTOM:
            return config.custom_cleanup_handler or ""
        return _STOCK[strategy].name

    @classmethod
    def handler_class(cls, strategy: CleanupStrategy, config: CleanupConfig) -> HandlerClass:
        """The class that serves `strategy` under `config`: a custom handler wrapped so its
        failures and timeouts are its own, else the class registered under the stock name."""
        if strategy is CleanupStrategy.CUSTOM:
            return CustomCleanupHandler
        return cls._handlers.get(_STOCK[strategy].name, _STOCK[strategy])


_STOCK: dict[CleanupStrategy, HandlerClass] = {
    h.strategy: h
    for h in (
        ImmediateCleanupHandler,
        DeferredCleanupHandler,
        LazyCleanupHandler,
        NoOpCleanupHandler,
    )
}

for _stock in _STOCK.values():
    CleanupHandlerRegistry.register(_stock.name, _stock)
