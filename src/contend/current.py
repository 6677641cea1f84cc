"""The current-runtime slot: which runtime a call uses when none is given.

A leaf, so that any layer can find the runtime in force without importing `contend.runtime`
(which sits above them all). `contend.runtime` fills it: it installs the factory of the process
default and `use_runtime` sets the context's runtime.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["context", "current_runtime", "install_default", "peek_default", "replace_default"]

context: contextvars.ContextVar[Any] = contextvars.ContextVar("contend_runtime", default=None)
"""The runtime made current in this context (`use_runtime`), else None."""

_default: Any = None
_factory: Callable[[], Any] | None = None
_lock = threading.Lock()


def install_default(factory: Callable[[], Any]) -> None:
    """How the process default is made when first needed (`contend.runtime` installs it)."""
    global _factory
    _factory = factory


def current_runtime() -> Any:
    """The runtime in force: the context's, else the process default (made on first use)."""
    rt = context.get()
    if rt is not None:
        return rt
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                if _factory is None:
                    raise RuntimeError(
                        "no contend runtime: import contend (or contend.runtime) before using "
                        "the current runtime"
                    )
                _default = _factory()
    return _default


def replace_default(runtime: Any) -> Any:
    """Make `runtime` the process default (None: made again on next use); returns the old one."""
    global _default
    previous, _default = _default, runtime
    return previous


def peek_default() -> Any:
    """The process default if it has been made, else None (never makes one)."""
    return _default
