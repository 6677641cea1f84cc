"""The named values every layer shares: priorities, statuses and their transitions, cleanup
strategies, conflict policies and modes. A leaf: it imports nothing from contend."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any

__all__ = [
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "ZOMBIE_STATUSES",
    "CleanupStrategy",
    "ConflictPolicy",
    "ConflictResolutionMode",
    "OperationPriority",
    "OperationStatus",
]


class OperationPriority(IntEnum):
    """Named priorities; any int from 1 to 10 is accepted."""

    BACKGROUND = 1
    LOW = 2
    NORMAL = 5
    HIGH = 8
    CRITICAL = 10


class OperationStatus(StrEnum):
    """Where a call's record stands; see `TRANSITIONS` for the edges between them."""

    PENDING = "pending"
    EXECUTING = "executing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        OperationStatus.SUCCEEDED,
        OperationStatus.FAILED,
        OperationStatus.REJECTED,
        OperationStatus.CANCELLED,
    }
)
ZOMBIE_STATUSES = TERMINAL_STATUSES - {OperationStatus.SUCCEEDED}
"""Terminal statuses other than success: what a record left behind is a zombie in."""

TRANSITIONS: dict[OperationStatus, frozenset[OperationStatus]] = {
    OperationStatus.PENDING: frozenset(
        {OperationStatus.EXECUTING, OperationStatus.REJECTED, OperationStatus.CANCELLED}
    ),
    OperationStatus.EXECUTING: frozenset(
        {OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELLED}
    ),
    OperationStatus.SUCCEEDED: frozenset(),
    OperationStatus.FAILED: frozenset(),
    OperationStatus.REJECTED: frozenset(),
    OperationStatus.CANCELLED: frozenset(),
}
"""The status machine: terminal statuses have no way out."""


class _NamedEnum(StrEnum):
    """A string enum that also accepts its members' names in any case ("LAZY", "Lazy")."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


class CleanupStrategy(_NamedEnum):
    """Available cleanup strategies for rejected operations."""

    NONE = "none"
    IMMEDIATE = "immediate"
    DEFERRED = "deferred"
    LAZY = "lazy"
    CUSTOM = "custom"


class ConflictPolicy(_NamedEnum):
    """What happens to a call that loses its staging window."""

    REJECT = "reject"
    """It ends REJECTED at once (the design's behaviour)."""
    WAIT = "wait"
    """It is carried into its target's next window, until `max_wait_ms`, then rejected."""


class ConflictResolutionMode(_NamedEnum):
    """Which protections a decorated call gets."""

    NONE = "none"
    PRE_ECS = "pre_ecs"
    OCC = "occ"
    BOTH = "both"
