"""Cleanup handlers by name: custom handlers are looked up here, never imported from a string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, overload

from contend.cleanup.handlers import (
    CleanupHandler,
    DeferredCleanupHandler,
    ImmediateCleanupHandler,
    LazyCleanupHandler,
    NoOpCleanupHandler,
)

__all__ = ["CleanupHandlerRegistry"]

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
        """Get a cleanup handler by name."""
        try:
            return cls._handlers[name]
        except KeyError:
            known = ", ".join(sorted(cls._handlers)) or "none"
            raise ValueError(f"Unknown cleanup handler: {name!r} (registered: {known})") from None

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> CleanupHandler:
        """Create an instance of a cleanup handler."""
        return cls.get(name)(**kwargs)

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._handlers)

    @classmethod
    def has(cls, name: str) -> bool:
        return name in cls._handlers


CleanupHandlerRegistry.register("immediate", ImmediateCleanupHandler)
CleanupHandlerRegistry.register("deferred", DeferredCleanupHandler)
CleanupHandlerRegistry.register("lazy", LazyCleanupHandler)
CleanupHandlerRegistry.register("noop", NoOpCleanupHandler)
