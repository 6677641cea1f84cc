"""Cleanup handlers: small objects with one job each, deciding a zombie record's fate."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from contend.config import CleanupStrategy

if TYPE_CHECKING:
    from contend.operations import ConflictResolutionOperation
    from contend.runtime import Runtime

__all__ = [
    "CleanupHandler",
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

    runtime: Runtime | None = None
    strategy: CleanupStrategy = CleanupStrategy.CUSTOM
    reason: str = "custom"

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        """Handle rejection of an operation."""
        raise NotImplementedError

    def bind(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def _rt(self) -> Runtime:
        if self.runtime is not None:
            return self.runtime
        from contend.runtime import get_runtime

        return get_runtime()

    async def remove(
        self, operation: ConflictResolutionOperation, reason: str | None = None
    ) -> bool:
        """Remove the record now; returns False if it was already gone."""
        return await self._rt().cleanup.remove(
            operation.ecs_id, reason or self.reason, strategy=self.strategy
        )

    async def retain_for(self, operation: ConflictResolutionOperation, minutes: float) -> None:
        """Schedule removal `minutes` after the record's completion; the runtime's sweeper
        carries it out (counted under reason "ttl", labelled with the record's strategy)."""
        if not minutes >= 0:
            raise ValueError(f"retain_for: minutes must be >= 0, got {minutes!r}")
        rt = self._rt()
        base = operation.completed_at or rt.clock.now()
        due = base + timedelta(minutes=minutes)
        operation.__dict__["cleanup_scheduled_at"] = due
        await rt.cleanup.schedule(operation, due.timestamp())


class ImmediateCleanupHandler(CleanupHandler):
    """Removes the record as soon as its rejection is handled."""

    strategy = CleanupStrategy.IMMEDIATE

    def __init__(self, reason: str = "immediate") -> None:
        self.reason = reason

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        await self.remove(operation)


class DeferredCleanupHandler(CleanupHandler):
    """Keeps the record for a retention period after its completion, then the sweeper removes it."""

    strategy = CleanupStrategy.DEFERRED
    reason = "ttl"

    def __init__(self, retention_minutes: int = 30) -> None:
        self.retention_minutes = retention_minutes

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        operation.schedule_cleanup(CleanupStrategy.DEFERRED, self.retention_minutes)
        await self.retain_for(operation, self.retention_minutes)


class LazyCleanupHandler(CleanupHandler):
    """Marks when the record becomes due; the first query that meets it afterwards removes it."""

    strategy = CleanupStrategy.LAZY
    reason = "lazy"

    def __init__(self, retention_minutes: int = 0) -> None:
        self.retention_minutes = retention_minutes

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        operation.schedule_cleanup(CleanupStrategy.LAZY, self.retention_minutes)


class NoOpCleanupHandler(CleanupHandler):
    """Keeps the record until it is removed by hand (it is still counted and reported)."""

    strategy = CleanupStrategy.NONE
    reason = "manual"

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        operation.__dict__["cleanup_handler_name"] = "noop"


class CustomCleanupHandler(CleanupHandler):
    """Delegates to the handler registered under `name` in CleanupHandlerRegistry."""

    strategy = CleanupStrategy.CUSTOM

    def __init__(self, name: str, **kwargs: Any) -> None:
        from contend.cleanup.registry import CleanupHandlerRegistry

        self.name = name
        self.reason = "custom"
        self.delegate = CleanupHandlerRegistry.create(name, **kwargs)

    def bind(self, runtime: Runtime) -> None:
        self.runtime = runtime
        if isinstance(self.delegate, CleanupHandler):
            self.delegate.bind(runtime)

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        operation.__dict__["cleanup_handler_name"] = self.name
        outcome: Awaitable[object] = self.delegate.handle_operation_rejection(operation)
        result = await outcome
        if result is not None:
            raise TypeError(
                f"cleanup handler {self.name!r} returned {result!r}; a cleanup handler returns None"
            )
