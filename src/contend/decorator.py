"""`@with_conflict_resolution`: staging, OCC and cleanup around a function that takes entities.

This module is what happens when a function is decorated: its config is built and checked, and
the callable callers get is made (`contend.protected` is what happens when it is called).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import pickle
from collections.abc import Callable
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from pydantic import ValidationError

from contend.cleanup.handlers import CleanupHandler, CleanupHandlerRegistry, CustomCleanupHandler
from contend.config import (
    CleanupConfig,
    CleanupStrategy,
    ConflictResolutionConfig,
    ConflictResolutionMode,
    OCCConfig,
    PreECSConfig,
)
from contend.enums import OperationPriority
from contend.errors import ConfigurationError
from contend.protected import Protected, check_priority, check_wait
from contend.runtime import Runtime

__all__ = ["ConflictResolved", "no_conflict_resolution", "with_conflict_resolution"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class ConflictResolved(Protocol[P, R_co]):
    """A decorated function: call it as before; its config and a priority override hang on it."""

    conflict_config: ConflictResolutionConfig
    priority: int
    __wrapped__: Callable[..., Any]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def with_priority(self, priority: int) -> ConflictResolved[P, R_co]: ...

    def with_max_wait(self, max_wait_ms: float) -> ConflictResolved[P, R_co]:
        """The same function, waiting up to `max_wait_ms` for its target (0: rejected at once
        on losing), whatever the configured conflict policy."""
        ...


class _Bound(functools.partial[Any]):
    """A decorated function as callers see it: `Protected.run` (a sync function: `_run_sync`)
    with the priority and the wait of its calls bound. A partial, so a call creates no frame of
    its own before `run`'s; a descriptor, so a decorated method binds its instance as a function
    would; pickled by name, as a function is."""

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        return self if obj is None else _Method(self, obj)

    def __reduce__(self) -> tuple[Any, ...]:
        """By name (a process pool can take it), with a variant's priority and wait."""
        module, qualname = self.__module__, self.__qualname__  # type: ignore[attr-defined]
        try:
            found = _resolve(module, qualname)
        except (ImportError, AttributeError):
            found = None
        if not isinstance(found, _Bound) or _protected_of(found) is not _protected_of(self):
            raise pickle.PicklingError(
                f"Can't pickle {self!r}: it is not the object named {module}.{qualname}"
            )
        priority, wait = self.args[-2:]
        return _by_name, (module, qualname, priority, wait)

    def __repr__(self) -> str:
        return f"<contend protected function {self.__qualname__}>"  # type: ignore[attr-defined]


class _Method(functools.partial[Any]):
    """A decorated function bound to an instance, as a method is: a partial (a call costs what a
    bound method's does), whose `with_priority` / `with_max_wait` keep the instance (a bound
    method's would return the function unbound); other attributes are the function's."""

    def with_priority(self, priority: int) -> _Method:
        return _Method(self._function().with_priority(priority), *self.args)

    def with_max_wait(self, max_wait_ms: float) -> _Method:
        return _Method(self._function().with_max_wait(max_wait_ms), *self.args)

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.func.__doc__

    @property
    def __self__(self) -> Any:
        return self.args[0]

    @property
    def __func__(self) -> Any:
        return self.func

    def __reduce__(self) -> tuple[Any, ...]:
        return _Method, (self.func, *self.args)

    def _function(self) -> ConflictResolved[..., Any]:
        return cast("ConflictResolved[..., Any]", self.func)

    def __getattr__(self, name: str) -> Any:
        if name == "__wrapped__":  # unwrapped, inspect.signature would keep `self`
            raise AttributeError(name)
        return getattr(self.func, name)

    def __repr__(self) -> str:
        return f"<bound contend protected function {self.func.__qualname__} of {self.args[0]!r}>"


def _resolve(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _protected_of(bound: _Bound) -> Protected[Any, Any]:
    """What a decorated function runs (sync: `_run_sync`'s first argument; else `run`'s self)."""
    if bound.func is _run_sync:
        return cast("Protected[Any, Any]", bound.args[0])
    return cast("Protected[Any, Any]", cast(Any, bound.func).__self__)


def _by_name(module: str, qualname: str, priority: int, wait: float | None) -> Any:
    """The decorated function named `module.qualname`, with this priority and wait."""
    found = _resolve(module, qualname)
    if not isinstance(found, _Bound):
        raise pickle.UnpicklingError(f"{module}.{qualname} is not a contend protected function")
    if tuple(found.args[-2:]) == (priority, wait):
        return found
    return _bound(_protected_of(found), priority, wait)


def _build_config(
    pre_ecs: PreECSConfig | bool | None,
    occ: OCCConfig | bool | None,
    cleanup: CleanupConfig | CleanupStrategy | str | dict[str, Any] | None,
    mode: ConflictResolutionMode | str | None,
    config: ConflictResolutionConfig | None,
) -> ConflictResolutionConfig:
    if config is not None:
        if not isinstance(config, ConflictResolutionConfig):
            raise ConfigurationError(
                "config", f"expected ConflictResolutionConfig, got {type(config).__name__}"
            )
        given = [
            n
            for n, v in (("pre_ecs", pre_ecs), ("occ", occ), ("cleanup", cleanup), ("mode", mode))
            if v is not None
        ]
        if given:
            raise ConfigurationError(
                "config", f"pass either config= or {', '.join(given)}=, not both"
            )
        return config
    if isinstance(cleanup, (CleanupStrategy, str)):
        try:
            strategy = CleanupStrategy(cleanup)
        except ValueError:
            allowed = ", ".join(s.value for s in CleanupStrategy)
            raise ConfigurationError(
                "cleanup", f"unknown strategy {cleanup!r} (allowed: {allowed})"
            ) from None
        try:
            cleanup = CleanupConfig(strategy=strategy)
        except ValidationError as exc:
            raise ConfigurationError(
                "cleanup",
                f"strategy {strategy.value!r} needs a CleanupConfig with its other fields "
                f"({_first_message(exc)})",
            ) from exc
    elif isinstance(cleanup, dict):
        try:
            cleanup = CleanupConfig(**cleanup)
        except ValidationError as exc:
            raise _located("cleanup", exc) from exc
    elif cleanup is not None and not isinstance(cleanup, CleanupConfig):
        raise ConfigurationError(
            "cleanup",
            "expected CleanupConfig, a dict of its fields or a strategy name, "
            f"got {type(cleanup).__name__}",
        )
    for name, value, kind in (("pre_ecs", pre_ecs, PreECSConfig), ("occ", occ, OCCConfig)):
        if value is not None and not isinstance(value, (bool, dict, kind)):
            raise ConfigurationError(
                name,
                f"expected {kind.__name__} (or a dict of its fields), True, False or None, "
                f"got {value!r}",
            )
    data: dict[str, Any] = {"pre_ecs": pre_ecs, "occ": occ}
    if cleanup is not None:
        data["cleanup"] = cleanup
    if mode is not None:
        try:
            data["mode"] = ConflictResolutionMode(mode)
        except ValueError:
            allowed = ", ".join(m.value for m in ConflictResolutionMode)
            raise ConfigurationError(
                "mode", f"unknown mode {mode!r} (allowed: {allowed})"
            ) from None
    try:
        return ConflictResolutionConfig(**data)
    except ValidationError as exc:
        raise _located("", exc) from exc


def _located(parent: str, exc: ValidationError) -> ConfigurationError:
    """The first error of `exc` as a ConfigurationError naming its field under `parent`."""
    first = exc.errors()[0]
    error = (first.get("ctx") or {}).get("error")
    path = [str(p) for p in first["loc"]]
    if isinstance(error, ConfigurationError):
        if not path or path[-1] != error.field:
            path.append(error.field)
        message = str(error).removeprefix(f"{error.field}: ")
    else:
        message = _first_message(exc)
    field = ".".join([parent, *path] if parent else path) or "config"
    return ConfigurationError(field, message)


def _first_message(exc: ValidationError) -> str:
    return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")


def _check_handlers(config: ConflictResolutionConfig) -> None:
    cleanup = config.cleanup
    if cleanup.strategy is CleanupStrategy.CUSTOM:
        name = cleanup.custom_cleanup_handler or ""
        if not CleanupHandlerRegistry.has(name):
            raise ConfigurationError(
                "cleanup.custom_cleanup_handler",
                f"no cleanup handler registered under {name!r} "
                f"(registered: {', '.join(CleanupHandlerRegistry.names())})",
            )
        _check_builds_bare(name, CleanupHandlerRegistry.get(name))


def _check_builds_bare(name: str, klass: type[CleanupHandler]) -> None:
    """contend builds a custom handler with no arguments (as the design's registry does): one
    that needs some would fail on every zombie, so it is refused here."""
    try:
        inspect.signature(klass).bind()
    except TypeError as exc:
        hint = (
            "; subclass CleanupHandler: CustomCleanupHandler is the wrapper contend puts around "
            "the handler a config names"
            if issubclass(klass, CustomCleanupHandler)
            else ""
        )
        raise ConfigurationError(
            "cleanup.custom_cleanup_handler",
            f"{name!r} is {klass.__qualname__}, which contend builds with no arguments, but it "
            f"cannot be: {exc} (give its parameters defaults){hint}",
        ) from None
    except ValueError:
        pass  # no signature to read (a class built in C): left to the first zombie


@overload
def with_conflict_resolution(func: Callable[P, R], /) -> ConflictResolved[P, R]: ...


@overload
def with_conflict_resolution(
    func: None = None,
    /,
    *,
    pre_ecs: PreECSConfig | bool | None = None,
    occ: OCCConfig | bool | None = None,
    cleanup: CleanupConfig | CleanupStrategy | str | dict[str, Any] | None = None,
    mode: ConflictResolutionMode | str | None = None,
    config: ConflictResolutionConfig | None = None,
    priority: int | None = None,
    runtime: Runtime | None = None,
) -> Callable[[Callable[P, R]], ConflictResolved[P, R]]: ...


def with_conflict_resolution(
    func: Callable[P, R] | None = None,
    /,
    *,
    pre_ecs: PreECSConfig | bool | None = None,
    occ: OCCConfig | bool | None = None,
    cleanup: CleanupConfig | CleanupStrategy | str | dict[str, Any] | None = None,
    mode: ConflictResolutionMode | str | None = None,
    config: ConflictResolutionConfig | None = None,
    priority: int | None = None,
    runtime: Runtime | None = None,
) -> ConflictResolved[P, R] | Callable[[Callable[P, R]], ConflictResolved[P, R]]:
    """Protect a function whose arguments include entities.

    Concurrent calls on the same primary target (the first Entity argument) are staged and the
    highest priority wins (`pre_ecs`, on unless disabled); commits can be guarded by version
    compare-and-set with retries (`occ`, off unless given); records of calls that end rejected,
    failed or cancelled are cleaned up by `cleanup` (default: deferred, 30 minutes).
    A call without any Entity argument conflicts with nothing: it runs at once.
    Everything is validated here, at decoration time.
    """
    if runtime is not None and not isinstance(runtime, Runtime):
        raise ConfigurationError("runtime", f"expected a contend Runtime, got {runtime!r}")
    resolved = _build_config(pre_ecs, occ, cleanup, mode, config)
    _check_handlers(resolved)
    default_priority = _default_priority(priority, resolved.pre_ecs.priority)

    def decorate(fn: Callable[P, R]) -> ConflictResolved[P, R]:
        if not callable(fn):
            raise ConfigurationError("func", f"expected a callable, got {fn!r}")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigurationError(
                "func",
                f"{fn.__qualname__} is a generator function: its body runs as it is iterated, "
                "after the call has returned, so nothing could stage or commit it; decorate a "
                "function that returns its result (collect the items into a list)",
            )
        protected: Protected[P, R] = Protected(fn, resolved, default_priority, runtime)
        return cast(
            "ConflictResolved[P, R]", _bound(protected, default_priority, protected.max_wait)
        )

    if func is not None:
        return decorate(func)
    return decorate


def _default_priority(given: Any, configured: int | None) -> int:
    """The decorator's priority=, else PreECSConfig.priority, else NORMAL; both, disagreeing,
    is an error."""
    if given is None:
        return configured if configured is not None else int(OperationPriority.NORMAL)
    checked = check_priority(given)
    if configured is not None and configured != checked:
        raise ConfigurationError(
            "priority",
            f"given twice with different values: priority={checked} and "
            f"PreECSConfig(priority={configured}); give it in one place",
        )
    return checked


def _add_overrides(
    wrapper: Callable[..., Any], protected: Protected[Any, Any], priority: int, wait: float | None
) -> None:
    """`wrapper.with_priority(p)` and `wrapper.with_max_wait(ms)`: the same function with one
    per-call setting changed; each returns a callable that has both again (they chain)."""

    def with_priority(p: int) -> Callable[..., Any]:
        return _bound(protected, check_priority(p), wait)

    def with_max_wait(max_wait_ms: float) -> Callable[..., Any]:
        return _bound(protected, priority, check_wait(max_wait_ms))

    setattr(wrapper, "with_priority", with_priority)  # noqa: B010
    setattr(wrapper, "with_max_wait", with_max_wait)  # noqa: B010


def _bound(protected: Protected[Any, Any], priority: int, wait: float | None) -> Callable[..., Any]:
    """The decorated function as callers see it, with its priority and wait (ms, None: reject)
    for every call, and `with_priority` / `with_max_wait` to change either."""
    call: Callable[..., Any]
    if protected.is_async:
        call = _Bound(protected.run, priority, wait)
    else:
        call = _Bound(_run_sync, protected, priority, wait)
    functools.update_wrapper(call, protected.fn)
    # named after what it runs (an object or a partial has no name of its own)
    call.__dict__.update(__module__=protected.module, __qualname__=protected.qualname)
    call.__dict__.setdefault("__name__", protected.qualname.rpartition(".")[2])
    _add_overrides(call, protected, priority, wait)
    setattr(call, "conflict_config", protected.config)  # noqa: B010
    setattr(call, "priority", priority)  # noqa: B010
    return call


def _run_sync(
    protected: Protected[Any, Any], priority: int, wait: float | None, /, *args: Any, **kwargs: Any
) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            f"{protected.name} is a sync function decorated with with_conflict_resolution and "
            "was called inside a running event loop, where it would block the loop; decorate an "
            "`async def` and await it, or call this function from synchronous code"
        )
    return asyncio.run(protected.run(priority, wait, *args, **kwargs))


F = TypeVar("F", bound=Callable[..., Any])


def no_conflict_resolution(func: F) -> F:
    """Mark a function as deliberately unprotected (it runs as written; nothing is staged)."""
    func.__contend_unprotected__ = True  # type: ignore[attr-defined]
    return func
