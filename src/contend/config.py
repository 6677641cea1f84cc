"""Validated configuration for staging, OCC and cleanup (bounds from the design)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Self, SupportsIndex

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from contend.current import current_runtime
from contend.enums import CleanupStrategy, ConflictPolicy, ConflictResolutionMode, OperationPriority
from contend.errors import ConfigurationError

if TYPE_CHECKING:
    from contend.operations import ConflictResolutionOperation
    from contend.runtime import Runtime

__all__ = [
    "DEFAULT_CLEANUP_CONFIG",
    "CleanupConfig",
    "CleanupStrategy",
    "ConflictPolicy",
    "ConflictResolutionConfig",
    "ConflictResolutionMode",
    "EffectiveCleanup",
    "OCCConfig",
    "PreECSConfig",
    "RangeChecked",
]


_FROZEN = ConfigDict(frozen=True, extra="forbid")


class RangeChecked(BaseModel):
    """Out-of-range numbers fail naming the field's whole allowed range, not one bound."""

    @field_validator("*", mode="before")
    @classmethod
    def _check_range(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        field = cls.model_fields.get(name) if name else None
        if field is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if value != value:
            raise ValueError(f"{name} must be a number, got NaN")
        lo: Any = None
        hi: Any = None
        lo_open = hi_open = False
        for m in field.metadata:
            if isinstance(m, annotated_types.Ge):
                lo = m.ge
            elif isinstance(m, annotated_types.Gt):
                lo, lo_open = m.gt, True
            elif isinstance(m, annotated_types.Le):
                hi = m.le
            elif isinstance(m, annotated_types.Lt):
                hi, hi_open = m.lt, True
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        too_high = hi is not None and (value >= hi if hi_open else value > hi)
        if too_low or too_high:
            low = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            high = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            allowed = " and ".join(b for b in (low, high) if b)
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
        return value


class EffectiveCleanup(NamedTuple):
    """The cleanup that applies to one record now: a strategy, how long a deferred or lazy record
    is kept, and, when an adaptive rule chose it, that rule ("pressure" or "force": the removal
    reason metrics report; else the strategy's own reason).

    A tuple: one is looked up per staging window on the hot path.
    """

    strategy: CleanupStrategy
    retention_minutes: int = 0
    trigger: str | None = None


_AT_ONCE = EffectiveCleanup(CleanupStrategy.IMMEDIATE)
_PRESSURE = EffectiveCleanup(CleanupStrategy.IMMEDIATE, 0, "pressure")
_FORCE = EffectiveCleanup(CleanupStrategy.IMMEDIATE, 0, "force")


def _get_system_memory_pressure(runtime: Runtime) -> float:
    """Fraction of memory in use, from the runtime's (cached, replaceable) probe."""
    return runtime.memory.pressure()


def _get_current_zombie_count(runtime: Runtime) -> int:
    """Zombies in the runtime, read from its counter (never a scan)."""
    return runtime.backend.zombie_count


MAX_RETENTION_MINUTES = 1440
MAX_CUSTOM_RETENTION_MINUTES = 43_200


MAX_WAIT_MS = 3_600_000


class PreECSConfig(RangeChecked):
    """Staging: calls on one target are collected in a window; the highest priority wins."""

    model_config = _FROZEN

    enabled: bool = True
    staging_timeout_ms: float = Field(
        default=0,
        ge=0,
        le=60_000,
        description="Window length; 0 collects the calls submitted in the same event-loop tick.",
    )
    max_pending_per_target: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Calls one window may hold; further calls are rejected at once.",
    )
    conflict_policy: ConflictPolicy = Field(
        default=ConflictPolicy.REJECT,
        description="reject: a window's losers are rejected; wait: they are carried into the"
        " target's next window until max_wait_ms has passed.",
    )
    max_wait_ms: float = Field(
        default=1_000,
        gt=0,
        le=MAX_WAIT_MS,
        description="How long a call under the wait policy may wait for its target, from the"
        " moment it is staged; then it is rejected.",
    )
    priority: int | None = Field(
        default=None,
        ge=1,
        le=10,
        description="Default priority of the decorated function's calls (the legacy framework's"
        " spelling of the decorator's priority=).",
    )

    @field_validator("priority", mode="before")
    @classmethod
    def _no_bool_priority(cls, value: Any) -> Any:
        if isinstance(value, (bool, float)):
            raise ValueError(f"priority must be an int from 1 to 10, got {value!r}")
        return value

    @model_validator(mode="after")
    def _wait_fields_agree(self) -> Self:
        if "max_wait_ms" in self.model_fields_set and self.conflict_policy is ConflictPolicy.REJECT:
            raise ConfigurationError(
                "max_wait_ms",
                "is only used with conflict_policy='wait' (the policy is 'reject', under which a"
                " loser is rejected at once); set conflict_policy='wait' or drop max_wait_ms",
            )
        return self

    @property
    def waits(self) -> bool:
        return self.conflict_policy is ConflictPolicy.WAIT


class OCCConfig(RangeChecked):
    """Optimistic concurrency: run on copies, commit with a version compare-and-set, retry."""

    model_config = _FROZEN

    enabled: bool = True
    max_retries: int = Field(default=3, ge=0, le=100)
    base_delay_ms: float = Field(default=1.0, ge=0.0, le=10_000.0)
    backoff_factor: float = Field(default=2.0, ge=1.0, le=10.0)
    max_delay_ms: float = Field(default=1_000.0, ge=0.0, le=60_000.0)
    jitter: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Fraction of each delay drawn at random."
    )
    version_field: str = Field(
        default="version",
        description="The entity field holding the version compared at commit (the legacy"
        " framework's option; contend's Entity keeps it in `version`).",
    )
    modified_field: str = Field(
        default="last_modified",
        description="The entity field stamped at commit (the legacy framework's option;"
        " contend's Entity keeps it in `last_modified`).",
    )

    @field_validator("version_field", "modified_field")
    @classmethod
    def _entity_fields(cls, value: str, info: ValidationInfo) -> str:
        expected = {"version_field": "version", "modified_field": "last_modified"}[
            str(info.field_name)
        ]
        if value != expected:
            raise ValueError(
                f"{info.field_name} must be {expected!r}, got {value!r}: contend's Entity keeps"
                f" its version in `version` and its commit time in `last_modified`, and every"
                f" backend compares and stamps those fields; subclass Entity and keep them"
            )
        return value

    @model_validator(mode="after")
    def _delays_ordered(self) -> Self:
        if self.base_delay_ms > self.max_delay_ms:
            raise ConfigurationError(
                "base_delay_ms",
                f"must be <= max_delay_ms ({self.max_delay_ms}), got {self.base_delay_ms}",
            )
        return self

    def delay_seconds(self, attempt: int, rand: float) -> float:
        """Backoff before retry number `attempt` (0-based), with `rand` in [0, 1)."""
        base = min(self.base_delay_ms * self.backoff_factor**attempt, self.max_delay_ms)
        return base * (1.0 - self.jitter + self.jitter * rand) / 1000.0


class _Priorities(list[int]):
    """A config's priority list, frozen as the config is: a handler's view of a record shares its
    decorator's config, and `DEFAULT_CLEANUP_CONFIG` serves every function left at the defaults,
    so a change here would change their cleanup, unvalidated. Reads, compares and copies as a
    list."""

    __slots__ = ("_field",)

    def __init__(self, items: list[int], field: str) -> None:
        super().__init__(items)
        self._field = field

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self), self._field))

    def _refuse(self) -> NoReturn:
        raise TypeError(
            f"{self._field} cannot be changed: CleanupConfig is frozen (its lists too); build "
            f"another one, e.g. config.model_copy(update={{{self._field!r}: [...]}})"
        )

    def append(self, *args: Any) -> NoReturn:
        self._refuse()

    def extend(self, *args: Any) -> NoReturn:
        self._refuse()

    def insert(self, *args: Any) -> NoReturn:
        self._refuse()

    def remove(self, *args: Any) -> NoReturn:
        self._refuse()

    def pop(self, *args: Any) -> NoReturn:
        self._refuse()

    def clear(self) -> NoReturn:
        self._refuse()

    def sort(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._refuse()

    def reverse(self) -> NoReturn:
        self._refuse()

    def __setitem__(self, *args: Any) -> NoReturn:
        self._refuse()

    def __delitem__(self, *args: Any) -> NoReturn:
        self._refuse()

    def __iadd__(self, value: Iterable[int], /) -> Self:  # type: ignore[override,misc]
        self._refuse()

    def __imul__(self, value: SupportsIndex, /) -> Self:
        self._refuse()


class CleanupConfig(RangeChecked):
    """Configuration for cleanup of rejected operations."""

    model_config = _FROZEN

    strategy: CleanupStrategy = CleanupStrategy.DEFERRED
    retention_minutes: int = Field(
        default=30,
        ge=0,
        le=MAX_CUSTOM_RETENTION_MINUTES,
        description="0-1440 (24 h); up to 43200 (30 days) with strategy CUSTOM, whose handler"
        " decides (the design's financial audit example keeps records 72 h).",
    )
    cleanup_check_interval_seconds: int = Field(default=60, ge=10, le=3600)
    aggressive_on_memory_pressure: bool = True
    memory_pressure_threshold: float = Field(default=0.8, ge=0.1, le=1.0)
    immediate_cleanup_priorities: list[int] = Field(
        default_factory=lambda: [int(OperationPriority.CRITICAL)], validate_default=True
    )
    debug_retention_priorities: list[int] = Field(
        default_factory=lambda: [int(OperationPriority.LOW)], validate_default=True
    )
    custom_cleanup_handler: str | None = None
    max_zombie_count_per_target: int = Field(default=100, ge=1, le=10_000)
    force_cleanup_threshold: int = Field(default=1000, ge=100, le=100_000)
    handler_timeout_seconds: float = Field(
        default=5.0, gt=0.0, le=300.0, description="A custom handler running longer has failed."
    )
    retain_succeeded: bool = Field(
        default=False,
        description="Keep succeeded records too (removed by the same schedule, never zombies).",
    )

    @field_validator("immediate_cleanup_priorities", "debug_retention_priorities")
    @classmethod
    def _priorities_in_range(cls, v: list[int], info: ValidationInfo) -> list[int]:
        for p in v:
            if not 1 <= int(p) <= 10:
                raise ValueError(f"priority {p} is outside the allowed range 1..10")
        return _Priorities([int(p) for p in v], str(info.field_name))

    @model_validator(mode="after")
    def _check_combinations(self) -> Self:
        self.validate_config()
        return self

    def validate_config(self) -> bool:
        """Check what single fields cannot; raises ConfigurationError naming the field."""
        if self.strategy is CleanupStrategy.CUSTOM and not self.custom_cleanup_handler:
            raise ConfigurationError(
                "custom_cleanup_handler", "strategy CUSTOM requires custom_cleanup_handler"
            )
        if self.strategy is not CleanupStrategy.CUSTOM and self.custom_cleanup_handler:
            raise ConfigurationError(
                "custom_cleanup_handler",
                f"is only used with strategy CUSTOM (strategy is {self.strategy.value}); "
                "set strategy=CleanupStrategy.CUSTOM or drop the handler name",
            )
        if (
            self.strategy is not CleanupStrategy.CUSTOM
            and self.retention_minutes > MAX_RETENTION_MINUTES
        ):
            raise ConfigurationError(
                "retention_minutes",
                f"must be 0..{MAX_RETENTION_MINUTES} (24 h) for strategy {self.strategy.value},"
                f" got {self.retention_minutes}; only a CUSTOM handler may retain records up to"
                f" {MAX_CUSTOM_RETENTION_MINUTES} minutes (30 days)",
            )
        if self.strategy is CleanupStrategy.DEFERRED and self.retention_minutes == 0:
            raise ConfigurationError(
                "retention_minutes", "strategy DEFERRED requires retention_minutes > 0 (1..1440)"
            )
        both = sorted(set(self.immediate_cleanup_priorities) & set(self.debug_retention_priorities))
        if both:
            raise ConfigurationError(
                "debug_retention_priorities",
                f"priorities {both} are also in immediate_cleanup_priorities; a priority may be"
                " in one list only",
            )
        return True

    def effective(self, priority: int, pressure: float, zombies: int) -> EffectiveCleanup:
        """The cleanup that applies to a record of `priority` when memory pressure is `pressure`
        and the runtime holds `zombies` zombies: the first matching rule wins (immediate
        priorities, memory pressure, force threshold, debug-retention priorities, the
        configured strategy). The one implementation of the rules."""
        if priority in self.immediate_cleanup_priorities:
            return _AT_ONCE
        if self.aggressive_on_memory_pressure and pressure > self.memory_pressure_threshold:
            return _PRESSURE
        if zombies > self.force_cleanup_threshold:
            return _FORCE
        if priority in self.debug_retention_priorities:
            return EffectiveCleanup(CleanupStrategy.DEFERRED, self.retention_minutes)
        return EffectiveCleanup(self.strategy, self.retention_minutes)

    def get_effective_cleanup_strategy(
        self, operation: ConflictResolutionOperation, runtime: Runtime | None = None
    ) -> CleanupStrategy:
        """The strategy that applies to `operation` right now (first matching rule wins), with
        the memory pressure and zombie count of `runtime` (default: the current runtime)."""
        rt = runtime if runtime is not None else current_runtime()
        return self.effective(
            operation.priority, _get_system_memory_pressure(rt), _get_current_zombie_count(rt)
        ).strategy

    @property
    def immediate_set(self) -> frozenset[int]:
        return frozenset(self.immediate_cleanup_priorities)

    @property
    def debug_set(self) -> frozenset[int]:
        return frozenset(self.debug_retention_priorities)


_MODE_FLAGS = {
    ConflictResolutionMode.NONE: (False, False),
    ConflictResolutionMode.PRE_ECS: (True, False),
    ConflictResolutionMode.OCC: (False, True),
    ConflictResolutionMode.BOTH: (True, True),
}


class ConflictResolutionConfig(BaseModel):
    """Everything a decorated function runs under.

    `mode` and the two `enabled` flags always agree: a mode given explicitly switches the flags;
    without one, the mode follows from the flags.
    """

    model_config = _FROZEN

    mode: ConflictResolutionMode = ConflictResolutionMode.PRE_ECS
    pre_ecs: PreECSConfig = Field(default_factory=PreECSConfig)
    occ: OCCConfig = Field(default_factory=lambda: OCCConfig(enabled=False))
    cleanup: CleanupConfig = Field(default_factory=CleanupConfig)

    @model_validator(mode="before")
    @classmethod
    def _align_mode(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        pre = _coerce(data.get("pre_ecs"), PreECSConfig, default_enabled=True)
        occ = _coerce(data.get("occ"), OCCConfig, default_enabled=False)
        mode = data.get("mode")
        if mode is not None:
            mode = ConflictResolutionMode(mode)
            want_pre, want_occ = _MODE_FLAGS[mode]
            for name, given, want in (("pre_ecs", pre, want_pre), ("occ", occ, want_occ)):
                if data.get(name) is not None and given.enabled != want:
                    raise ConfigurationError(
                        name,
                        f"mode {mode.value!r} turns {name} {'on' if want else 'off'}, but"
                        f" {name} {'disables' if want else 'enables'} it; give one of the two",
                    )
            if pre.enabled != want_pre:
                pre = pre.model_copy(update={"enabled": want_pre})
            if occ.enabled != want_occ:
                occ = occ.model_copy(update={"enabled": want_occ})
        else:
            mode = {
                (False, False): ConflictResolutionMode.NONE,
                (True, False): ConflictResolutionMode.PRE_ECS,
                (False, True): ConflictResolutionMode.OCC,
                (True, True): ConflictResolutionMode.BOTH,
            }[(pre.enabled, occ.enabled)]
        data.update(mode=mode, pre_ecs=pre, occ=occ)
        return data

    @property
    def staging_enabled(self) -> bool:
        return self.pre_ecs.enabled

    @property
    def occ_enabled(self) -> bool:
        return self.occ.enabled

    def get_effective_cleanup_strategy(
        self, operation: ConflictResolutionOperation, runtime: Runtime | None = None
    ) -> CleanupStrategy:
        """`CleanupConfig.get_effective_cleanup_strategy` of this config's cleanup (the design's
        listing has it here too; one implementation)."""
        return self.cleanup.get_effective_cleanup_strategy(operation, runtime)


def _coerce(value: Any, kind: type[Any], *, default_enabled: bool) -> Any:
    if value is None:
        return kind(enabled=default_enabled)
    if isinstance(value, bool):
        return kind(enabled=value)
    if isinstance(value, kind):
        return value
    if isinstance(value, dict):
        try:
            return kind(**value)
        except ValidationError as exc:
            raise _under(_FIELD_OF[kind], exc) from None
    raise ConfigurationError(
        kind.__name__, f"expected {kind.__name__}, a bool or None, got {type(value).__name__}"
    )


_FIELD_OF: dict[type[Any], str] = {PreECSConfig: "pre_ecs", OCCConfig: "occ"}


def _under(field: str, exc: ValidationError) -> ValidationError:
    """`exc` from validating a nested config, located under its field (``occ.max_retries``)."""
    details: list[InitErrorDetails] = []
    for e in exc.errors():
        loc = (field, *e["loc"])
        detail: InitErrorDetails = {"type": e["type"], "loc": loc, "input": e["input"]}
        if "ctx" in e:
            detail["ctx"] = e["ctx"]
        details.append(detail)
    return ValidationError.from_exception_data(exc.title, details)


DEFAULT_CLEANUP_CONFIG = CleanupConfig(
    strategy=CleanupStrategy.DEFERRED,
    retention_minutes=30,
    aggressive_on_memory_pressure=True,
    memory_pressure_threshold=0.8,
    force_cleanup_threshold=1000,
    immediate_cleanup_priorities=[OperationPriority.CRITICAL],
)
