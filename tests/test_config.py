"""Configuration: bounds from the design, field-naming errors, decoration-time validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contend import (
    DEFAULT_CLEANUP_CONFIG,
    CleanupConfig,
    CleanupStrategy,
    ConfigurationError,
    ConflictResolutionConfig,
    ConflictResolutionMode,
    Entity,
    OCCConfig,
    OperationPriority,
    PreECSConfig,
    Runtime,
    with_conflict_resolution,
)

M = ConflictResolutionMode


def _error_names(exc: ValidationError, field: str) -> bool:
    return any(field in (str(p) for p in e["loc"]) for e in exc.errors()) or field in str(exc)


@pytest.mark.parametrize(
    ("kind", "field", "bad"),
    [
        (PreECSConfig, "staging_timeout_ms", -1),
        (PreECSConfig, "staging_timeout_ms", 60_001),
        (PreECSConfig, "max_pending_per_target", 0),
        (OCCConfig, "max_retries", -1),
        (OCCConfig, "max_retries", 101),
        (OCCConfig, "base_delay_ms", -0.1),
        (OCCConfig, "backoff_factor", 0.5),
        (OCCConfig, "jitter", 1.5),
        (OCCConfig, "max_delay_ms", -1.0),
        (CleanupConfig, "retention_minutes", -1),
        (CleanupConfig, "retention_minutes", 1441),
        (CleanupConfig, "cleanup_check_interval_seconds", 9),
        (CleanupConfig, "cleanup_check_interval_seconds", 3601),
        (CleanupConfig, "memory_pressure_threshold", 0.05),
        (CleanupConfig, "memory_pressure_threshold", 1.01),
        (CleanupConfig, "max_zombie_count_per_target", 0),
        (CleanupConfig, "max_zombie_count_per_target", 10_001),
        (CleanupConfig, "force_cleanup_threshold", 99),
        (CleanupConfig, "force_cleanup_threshold", 100_001),
        (CleanupConfig, "immediate_cleanup_priorities", [11]),
        (CleanupConfig, "debug_retention_priorities", [0]),
        (CleanupConfig, "strategy", "sometimes"),
    ],
)
def test_out_of_bounds_values_fail_at_construction_naming_the_field(
    kind: type[Any], field: str, bad: Any
) -> None:
    with pytest.raises(ValidationError) as info:
        kind(**{field: bad})
    assert _error_names(info.value, field)


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        (PreECSConfig, {"staging_timeout_ms": 0, "max_pending_per_target": 1}),
        (PreECSConfig, {"staging_timeout_ms": 60_000}),
        (OCCConfig, {"max_retries": 0, "base_delay_ms": 0.0, "backoff_factor": 1.0, "jitter": 0}),
        (OCCConfig, {"max_retries": 100, "jitter": 1.0}),
        (CleanupConfig, {"retention_minutes": 1440, "cleanup_check_interval_seconds": 10}),
        (CleanupConfig, {"memory_pressure_threshold": 0.1, "force_cleanup_threshold": 100}),
        (CleanupConfig, {"strategy": "none", "retention_minutes": 0}),
    ],
)
def test_boundary_values_are_accepted(kind: type[Any], values: dict[str, Any]) -> None:
    config = kind(**values)
    for field, value in values.items():
        assert getattr(config, field) == value


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="staging_timeout"):
        PreECSConfig(staging_timeout=5)  # type: ignore[call-arg]


def test_configs_are_immutable() -> None:
    config = OCCConfig()
    with pytest.raises(ValidationError):
        config.max_retries = 9  # type: ignore[misc]


def test_design_unit_test_cleanup_config_validation() -> None:
    config = CleanupConfig(strategy=CleanupStrategy.DEFERRED, retention_minutes=30)
    assert config.validate_config()
    with pytest.raises(ValueError):
        invalid_config = CleanupConfig(strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler=None)
        invalid_config.validate_config()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"strategy": "custom"}, "custom_cleanup_handler"),
        ({"strategy": "deferred", "retention_minutes": 0}, "retention_minutes"),
        (
            {"immediate_cleanup_priorities": [10, 8], "debug_retention_priorities": [8]},
            "debug_retention_priorities",
        ),
    ],
)
def test_invalid_combinations_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CleanupConfig(**values)


def test_occ_backoff_grows_caps_and_jitters() -> None:
    config = OCCConfig(base_delay_ms=2.0, backoff_factor=3.0, max_delay_ms=50.0, jitter=0.5)
    assert config.delay_seconds(0, 1.0) == pytest.approx(0.002)
    assert config.delay_seconds(0, 0.0) == pytest.approx(0.001)
    assert config.delay_seconds(2, 1.0) == pytest.approx(0.018)
    assert config.delay_seconds(10, 1.0) == pytest.approx(0.050)
    steady = OCCConfig(base_delay_ms=4.0, jitter=0.0)
    assert steady.delay_seconds(1, 0.0) == steady.delay_seconds(1, 0.99) == pytest.approx(0.008)


def test_default_cleanup_is_the_recommended_defaults() -> None:
    assert DEFAULT_CLEANUP_CONFIG.strategy is CleanupStrategy.DEFERRED
    assert DEFAULT_CLEANUP_CONFIG.retention_minutes == 30
    assert DEFAULT_CLEANUP_CONFIG.aggressive_on_memory_pressure is True
    assert DEFAULT_CLEANUP_CONFIG.memory_pressure_threshold == 0.8
    assert DEFAULT_CLEANUP_CONFIG.force_cleanup_threshold == 1000
    assert DEFAULT_CLEANUP_CONFIG.immediate_cleanup_priorities == [OperationPriority.CRITICAL]
    assert ConflictResolutionConfig().cleanup.strategy is CleanupStrategy.DEFERRED
    assert ConflictResolutionConfig().cleanup.retention_minutes == 30


# --- how the decorator reads its arguments -------------------------------------------------------


class Box(Entity):
    value: int = 0


def _config(**kwargs: Any) -> ConflictResolutionConfig:
    async def f(box: Box) -> None:
        return None

    return with_conflict_resolution(runtime=Runtime(), **kwargs)(f).conflict_config


@pytest.mark.parametrize(
    ("kwargs", "mode", "staging", "occ"),
    [
        ({}, M.PRE_ECS, True, False),
        ({"occ": True}, M.BOTH, True, True),
        ({"occ": OCCConfig(max_retries=3)}, M.BOTH, True, True),
        ({"pre_ecs": False, "occ": True}, M.OCC, False, True),
        ({"pre_ecs": False}, M.NONE, False, False),
        (
            {"pre_ecs": PreECSConfig(enabled=False), "occ": OCCConfig(enabled=False)},
            M.NONE,
            False,
            False,
        ),
        ({"mode": "none"}, M.NONE, False, False),
        ({"mode": M.BOTH}, M.BOTH, True, True),
        ({"mode": M.OCC, "pre_ecs": False}, M.OCC, False, True),
        ({"mode": M.BOTH, "occ": OCCConfig(max_retries=7)}, M.BOTH, True, True),
    ],
)
def test_decorator_flags_and_mode_agree(
    kwargs: dict[str, Any], mode: ConflictResolutionMode, staging: bool, occ: bool
) -> None:
    config = _config(**kwargs)
    assert config.mode is mode
    assert config.pre_ecs.enabled is staging
    assert config.occ.enabled is occ


def test_explicit_mode_keeps_the_other_settings() -> None:
    config = _config(mode="both", occ=OCCConfig(max_retries=7))
    assert config.occ.enabled
    assert config.occ.max_retries == 7


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "none", "occ": True}, "occ"),
        ({"mode": "occ", "pre_ecs": PreECSConfig(enabled=True)}, "pre_ecs"),
        ({"mode": "occ", "pre_ecs": True}, "pre_ecs"),
        ({"mode": "both", "occ": OCCConfig(enabled=False, max_retries=7)}, "occ"),
        ({"mode": "pre_ecs", "occ": {"max_retries": 2}}, "occ"),
    ],
)
def test_a_mode_contradicting_a_flag_is_an_error(kwargs: dict[str, Any], field: str) -> None:
    """An explicit mode and a flag that says the opposite: one of them would be dropped."""
    with pytest.raises(ConfigurationError) as info:
        _config(**kwargs)
    assert info.value.field == field
    assert str(kwargs["mode"]) in str(info.value)
    with pytest.raises(ValueError, match=field):
        ConflictResolutionConfig(**kwargs)


def test_cleanup_given_as_a_dict_is_read_like_occ_and_pre_ecs() -> None:
    config = _config(cleanup={"strategy": "lazy", "retention_minutes": 5})
    assert config.cleanup == CleanupConfig(strategy=CleanupStrategy.LAZY, retention_minutes=5)
    with pytest.raises(ConfigurationError) as info:
        _config(cleanup={"strategy": "lazy", "retention_minutes": 5000})
    assert info.value.field == "cleanup.retention_minutes"
    with pytest.raises(ConfigurationError) as info:
        _config(cleanup={"retention": 5})
    assert info.value.field == "cleanup.retention"


# --- what the legacy framework's users write -------------------------------------------------


def test_legacy_pre_ecs_priority_is_the_default_priority() -> None:
    @with_conflict_resolution(
        runtime=Runtime(), pre_ecs=PreECSConfig(priority=OperationPriority.CRITICAL)
    )
    async def f(box: Box) -> None:
        return None

    assert f.priority == 10
    assert f.conflict_config.pre_ecs.priority == 10
    assert _config(pre_ecs={"priority": 2}, priority=2).pre_ecs.priority == 2


def test_a_priority_given_twice_with_different_values_is_an_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        _config(pre_ecs=PreECSConfig(priority=8), priority=OperationPriority.LOW)
    assert info.value.field == "priority"
    assert "8" in str(info.value) and "2" in str(info.value)


@pytest.mark.parametrize("bad", [0, 11, True, 5.5])
def test_pre_ecs_priority_is_range_checked(bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        PreECSConfig(priority=bad)
    assert info.value.errors()[0]["loc"] == ("priority",)


def test_legacy_occ_field_names_are_accepted_and_others_explained() -> None:
    config = OCCConfig(version_field="version", modified_field="last_modified", max_retries=5)
    assert config.max_retries == 5
    with pytest.raises(ValidationError, match="version_field must be 'version'"):
        OCCConfig(version_field="revision")
    with pytest.raises(ValidationError, match="modified_field"):
        OCCConfig(modified_field="updated_at")


def test_a_fractional_staging_timeout_is_accepted() -> None:
    assert PreECSConfig(staging_timeout_ms=2.5).staging_timeout_ms == 2.5
    assert PreECSConfig(staging_timeout_ms=10).staging_timeout_ms == 10


def test_whole_config_is_used_as_given() -> None:
    whole = ConflictResolutionConfig(mode=M.OCC, occ=OCCConfig(max_retries=9))
    assert _config(config=whole) is whole


@pytest.mark.parametrize("other", ["pre_ecs", "occ", "cleanup", "mode"])
def test_config_together_with_other_settings_is_an_error(other: str) -> None:
    value: Any = {"pre_ecs": True, "occ": True, "cleanup": "none", "mode": "both"}[other]
    with pytest.raises(ConfigurationError) as info:
        _config(config=ConflictResolutionConfig(), **{other: value})
    assert info.value.field == "config"
    assert other in str(info.value)


@pytest.mark.parametrize("bad", [0, 11, -5, True, "5", 5.0])
def test_priority_out_of_range_fails_at_decoration(bad: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        _config(priority=bad)
    assert info.value.field == "priority"
    assert "1" in str(info.value) and "10" in str(info.value)


@pytest.mark.parametrize("bad", [0, 11])
def test_priority_override_out_of_range_fails_when_built(bad: int) -> None:
    @with_conflict_resolution(runtime=Runtime())
    async def f(box: Box) -> None:
        return None

    with pytest.raises(ConfigurationError, match="priority"):
        f.with_priority(bad)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pre_ecs": "yes"}, "PreECSConfig"),
        ({"occ": 3}, "OCCConfig"),
        ({"cleanup": 42}, "cleanup"),
        ({"cleanup": "sometimes"}, "sometimes"),
        ({"config": {"mode": "both"}}, "config"),
        ({"pre_ecs": {"staging_timeout_ms": -1}}, "staging_timeout_ms"),
        ({"mode": "fastest"}, "fastest"),
    ],
)
def test_bad_decorator_arguments_fail_at_decoration_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        _config(**kwargs)


def test_unknown_custom_handler_fails_at_decoration() -> None:
    with pytest.raises(ConfigurationError) as info:
        _config(cleanup=CleanupConfig(strategy="custom", custom_cleanup_handler="no-such-handler"))
    assert info.value.field == "cleanup.custom_cleanup_handler"
    assert "no-such-handler" in str(info.value)


def test_cleanup_accepts_a_strategy_name() -> None:
    assert _config(cleanup="immediate").cleanup.strategy is CleanupStrategy.IMMEDIATE
    assert _config(cleanup=CleanupStrategy.NONE).cleanup.strategy is CleanupStrategy.NONE
