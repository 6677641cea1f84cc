"""The design's unit tests for CleanupConfig, plus validation at decoration time."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import pytest

from contend import (
    DEFAULT_CLEANUP_CONFIG,
    CleanupConfig,
    CleanupStrategy,
    ConfigurationError,
    ConflictResolutionConfig,
    ConflictResolutionOperation,
    Entity,
    FakeClock,
    OperationPriority,
    Runtime,
    use_runtime,
    with_conflict_resolution,
)
from contend.testing import make_runtime


@pytest.fixture(autouse=True)
def _own_runtime() -> Iterator[Runtime]:
    """The design's tests use the runtime in force; give each its own, with no memory pressure."""
    rt = make_runtime()
    with use_runtime(rt):
        yield rt


# fmt: off
# --- the design's TestCleanupConfiguration; only the patch target is the project's own -------
class TestCleanupConfiguration:
    """Test cleanup configuration functionality."""

    def test_cleanup_config_validation(self):
        """Test CleanupConfig validation."""

        # Valid configuration
        config = CleanupConfig(
            strategy=CleanupStrategy.DEFERRED,
            retention_minutes=30
        )
        assert config.validate_config()

        # Invalid custom configuration
        with pytest.raises(ValueError):
            invalid_config = CleanupConfig(
                strategy=CleanupStrategy.CUSTOM,
                custom_cleanup_handler=None
            )
            invalid_config.validate_config()

    async def test_adaptive_cleanup_strategy(self):
        """Test adaptive cleanup based on system conditions."""

        config = CleanupConfig(
            strategy=CleanupStrategy.DEFERRED,
            aggressive_on_memory_pressure=True,
            memory_pressure_threshold=0.8
        )

        operation = ConflictResolutionOperation(priority=OperationPriority.NORMAL)

        # Normal conditions - should use deferred strategy
        with mock.patch("contend.config._get_system_memory_pressure", return_value=0.5):
            strategy = config.get_effective_cleanup_strategy(operation)
            assert strategy == CleanupStrategy.DEFERRED

        # High memory pressure - should switch to immediate
        with mock.patch("contend.config._get_system_memory_pressure", return_value=0.9):
            strategy = config.get_effective_cleanup_strategy(operation)
            assert strategy == CleanupStrategy.IMMEDIATE
# ----------------------------------------------------------------------------------------------
# fmt: on


async def test_adaptive_strategy_with_the_runtime_probe() -> None:
    config = CleanupConfig(strategy=CleanupStrategy.DEFERRED, memory_pressure_threshold=0.8)
    operation = ConflictResolutionOperation(priority=OperationPriority.NORMAL)
    calm = make_runtime(memory_pressure=0.5)
    pressed = make_runtime(memory_pressure=0.9)
    assert config.get_effective_cleanup_strategy(operation, calm) is CleanupStrategy.DEFERRED
    assert config.get_effective_cleanup_strategy(operation, pressed) is CleanupStrategy.IMMEDIATE
    pressed.memory.set_probe(lambda: 0.1)
    assert config.get_effective_cleanup_strategy(operation, pressed) is CleanupStrategy.DEFERRED


async def test_pressure_is_ignored_when_not_aggressive() -> None:
    config = CleanupConfig(strategy=CleanupStrategy.LAZY, aggressive_on_memory_pressure=False)
    rt = make_runtime(memory_pressure=1.0)
    op = ConflictResolutionOperation(priority=OperationPriority.NORMAL)
    assert config.get_effective_cleanup_strategy(op, rt) is CleanupStrategy.LAZY


@pytest.mark.parametrize(
    ("priority", "pressure", "expected"),
    [
        (OperationPriority.CRITICAL, 0.0, CleanupStrategy.IMMEDIATE),
        (OperationPriority.LOW, 0.0, CleanupStrategy.DEFERRED),
        (OperationPriority.LOW, 0.95, CleanupStrategy.IMMEDIATE),
        (OperationPriority.NORMAL, 0.0, CleanupStrategy.NONE),
    ],
)
async def test_precedence_of_the_rules(
    priority: int, pressure: float, expected: CleanupStrategy
) -> None:
    config = CleanupConfig(
        strategy=CleanupStrategy.NONE,
        immediate_cleanup_priorities=[OperationPriority.CRITICAL],
        debug_retention_priorities=[OperationPriority.LOW],
    )
    rt = Runtime(clock=FakeClock(), memory_probe=lambda: pressure)
    op = ConflictResolutionOperation(priority=priority)
    assert config.get_effective_cleanup_strategy(op, rt) is expected
    # the same single implementation answers on the enclosing config
    assert (
        ConflictResolutionConfig(cleanup=config).get_effective_cleanup_strategy(op, rt) is expected
    )


def test_recommended_defaults_are_the_default() -> None:
    assert DEFAULT_CLEANUP_CONFIG.strategy is CleanupStrategy.DEFERRED
    assert DEFAULT_CLEANUP_CONFIG.retention_minutes == 30
    assert DEFAULT_CLEANUP_CONFIG.memory_pressure_threshold == 0.8
    assert DEFAULT_CLEANUP_CONFIG.force_cleanup_threshold == 1000
    assert DEFAULT_CLEANUP_CONFIG.immediate_cleanup_priorities == [OperationPriority.CRITICAL]
    assert ConflictResolutionConfig().cleanup == DEFAULT_CLEANUP_CONFIG
    assert CleanupConfig() == DEFAULT_CLEANUP_CONFIG


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retention_minutes", -1),
        ("retention_minutes", 1441),
        ("cleanup_check_interval_seconds", 9),
        ("cleanup_check_interval_seconds", 3601),
        ("memory_pressure_threshold", 0.05),
        ("memory_pressure_threshold", 1.5),
        ("max_zombie_count_per_target", 0),
        ("max_zombie_count_per_target", 10_001),
        ("force_cleanup_threshold", 99),
        ("force_cleanup_threshold", 100_001),
        ("immediate_cleanup_priorities", [11]),
        ("debug_retention_priorities", [0]),
        ("handler_timeout_seconds", 0),
    ],
)
def test_every_bound_is_enforced_and_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        CleanupConfig(**{field: value})


def test_custom_handlers_may_retain_longer_than_a_day() -> None:
    config = CleanupConfig(
        strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="noop", retention_minutes=4320
    )
    assert config.retention_minutes == 4320
    with pytest.raises(ValueError, match="retention_minutes"):
        CleanupConfig(
            strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="noop", retention_minutes=43_201
        )


class Item(Entity):
    n: int = 0


def _decorate(**cleanup: object) -> object:
    @with_conflict_resolution(cleanup=CleanupConfig(**cleanup))  # type: ignore[arg-type]
    async def touch(item: Item) -> Item:
        return item

    return touch


@pytest.mark.parametrize(
    ("cleanup", "field"),
    [
        (
            {"strategy": CleanupStrategy.CUSTOM, "custom_cleanup_handler": "no-such-handler"},
            "custom_cleanup_handler",
        ),
        ({"strategy": CleanupStrategy.CUSTOM}, "custom_cleanup_handler"),
        ({"strategy": CleanupStrategy.DEFERRED, "retention_minutes": 0}, "retention_minutes"),
        (
            {
                "immediate_cleanup_priorities": [OperationPriority.HIGH],
                "debug_retention_priorities": [OperationPriority.HIGH, OperationPriority.LOW],
            },
            "debug_retention_priorities",
        ),
    ],
)
def test_bad_cleanup_fails_when_decorating(cleanup: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _decorate(**cleanup)


def test_unknown_handler_message_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        _decorate(strategy=CleanupStrategy.CUSTOM, custom_cleanup_handler="nope")
    assert info.value.field == "cleanup.custom_cleanup_handler"
    assert "'nope'" in str(info.value)
    assert "immediate" in str(info.value)


def test_strategy_name_is_accepted_for_cleanup() -> None:
    @with_conflict_resolution(cleanup="lazy")
    async def touch(item: Item) -> Item:
        return item

    assert touch.conflict_config.cleanup.strategy is CleanupStrategy.LAZY
    with pytest.raises(ValueError, match="cleanup"):

        @with_conflict_resolution(cleanup="sometimes")
        async def other(item: Item) -> Item:
            return item


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.append(5),
        lambda p: p.extend([5]),
        lambda p: p.insert(0, 5),
        lambda p: p.remove(10),
        lambda p: p.pop(),
        lambda p: p.clear(),
        lambda p: p.__setitem__(0, 5),
        lambda p: p.__delitem__(0),
        lambda p: p.__iadd__([5]),
        lambda p: p.__imul__(2),
        lambda p: p.sort(),
        lambda p: p.reverse(),
    ],
)
def test_a_config_s_priority_lists_cannot_change_under_it(change: object) -> None:
    """A frozen config's lists were mutable: a handler appending to its operation's
    ``cleanup_config.immediate_cleanup_priorities`` changed the cleanup of every later call of
    that function, unvalidated (DEFAULT_CLEANUP_CONFIG's, of every function left at defaults)."""
    import copy
    import pickle

    config = CleanupConfig(debug_retention_priorities=[OperationPriority.LOW])
    with pytest.raises(TypeError, match="immediate_cleanup_priorities cannot be changed"):
        change(config.immediate_cleanup_priorities)  # type: ignore[operator]
    assert config.immediate_cleanup_priorities == [OperationPriority.CRITICAL]
    with pytest.raises(TypeError, match="debug_retention_priorities cannot be changed"):
        config.debug_retention_priorities.append(10)
    assert config.debug_retention_priorities == [OperationPriority.LOW]
    # still lists to read, compare, dump, copy and pickle
    assert isinstance(config.immediate_cleanup_priorities, list)
    assert config.model_dump()["immediate_cleanup_priorities"] == [10]
    assert copy.deepcopy(config) == config == pickle.loads(pickle.dumps(config))
    assert config.model_copy(update={"retention_minutes": 5}).immediate_cleanup_priorities == [10]
