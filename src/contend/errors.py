"""Exceptions a caller of a decorated function can meet."""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "ConfigurationError",
    "ContendError",
    "InvalidTransitionError",
    "NestedCallError",
    "OCCConflictError",
    "OperationRejectedError",
    "OutcomeUnknownError",
    "RuntimeBindingError",
]


class ContendError(Exception):
    """Base of every error contend raises on purpose."""


class ConfigurationError(ContendError, ValueError):
    """A decorator or config was given values it cannot work with; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidTransitionError(ContendError, RuntimeError):
    """An operation record was asked to move along an edge the status machine does not have."""

    def __init__(self, op_id: UUID, current: str, requested: str) -> None:
        self.op_id = op_id
        self.current = current
        self.requested = requested
        super().__init__(f"operation {op_id}: illegal status transition {current} -> {requested}")


class OperationRejectedError(ContendError, RuntimeError):
    """The call lost its staging window to a higher-priority (or earlier) call.

    The message names both operations and both priorities; it is built when first read, since
    most rejections in a busy service are counted, not printed.
    """

    def __init__(
        self,
        op_id: UUID,
        target_entity_id: UUID | None,
        priority: int,
        winner_id: UUID | None,
        winner_priority: int | None,
        reason: str,
        function_name: str = "",
    ) -> None:
        self.op_id = op_id
        self.target_entity_id = target_entity_id
        self.priority = priority
        self.winner_id = winner_id
        self.winner_priority = winner_priority
        self.reason = reason
        self.function_name = function_name
        super().__init__(reason)

    def __str__(self) -> str:
        where = f" ({self.function_name})" if self.function_name else ""
        winner = f"; winner {self.winner_id}" if self.winner_id is not None else ""
        return f"operation {self.op_id}{where} rejected: {self.reason}{winner}"


class OCCConflictError(ContendError, RuntimeError):
    """Every optimistic attempt found a target changed under it; nothing was committed."""

    def __init__(
        self,
        op_id: UUID,
        entity_id: UUID,
        expected_version: int,
        actual_version: int,
        attempts: int,
    ) -> None:
        self.op_id = op_id
        self.entity_id = entity_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        self.attempts = attempts
        super().__init__(
            f"operation {op_id}: entity {entity_id} changed under it "
            f"(expected version {expected_version}, found {actual_version}) "
            f"after {attempts} attempt(s); nothing was committed"
        )


class NestedCallError(ContendError, RuntimeError):
    """A protected call made inside another one holds some of its entities but not all: it can
    neither join the enclosing call nor be staged on its own (it would wait for the enclosing
    call forever, or commit again on each of its OCC retries). Nothing was run or written."""


class OutcomeUnknownError(ContendError, RuntimeError):
    """A write was sent but its reply was lost, and the store could not be asked in time whether
    it applied: it may have, or not. Do not retry blindly (that may apply it twice).

    Not a ``ConnectionError``, so retry helpers that retry connection errors leave it alone. The
    call's record ends FAILED with "outcome unknown" in its message; the backend settles the
    outcome once the store answers again (docs/redis.md).
    """

    def __init__(self, op_id: UUID | None, message: str) -> None:
        self.op_id = op_id
        super().__init__(message)


class RuntimeBindingError(ContendError, RuntimeError):
    """A runtime was used from a second event loop or thread while another still drives it."""
