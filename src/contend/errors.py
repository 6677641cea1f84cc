"""Exceptions a caller of a decorated function can meet."""

from __future__ import annotations

from typing import Protocol
from uuid import UUID, uuid4

__all__ = [
    "ConfigurationError",
    "ContendError",
    "CrossShardError",
    "InvalidTransitionError",
    "NestedCallError",
    "OCCConflictError",
    "OperationRejectedError",
    "OutcomeUnknownError",
    "RuntimeBindingError",
]


class ContendError(Exception):
    """Base of every error contend raises on purpose."""

    def _rebuilt_from(self) -> tuple[object, ...] | None:
        """The arguments that build this error again (None: its `args`, as Exception's)."""
        return None

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled and copied with the arguments it is built from (Exception's reduce passes
        `args`, the message alone), so it crosses a process pool or a task queue."""
        built = self._rebuilt_from()
        return type(self), self.args if built is None else built, self.__dict__ or None


class ConfigurationError(ContendError, ValueError):
    """A decorator or config was given values it cannot work with; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")

    def _rebuilt_from(self) -> tuple[object, ...]:
        return self.field, str(self.args[0]).removeprefix(f"{self.field}: ")


class InvalidTransitionError(ContendError, RuntimeError):
    """An operation record was asked to move along an edge the status machine does not have."""

    def __init__(self, op_id: UUID, current: str, requested: str) -> None:
        self.op_id = op_id
        self.current = current
        self.requested = requested
        super().__init__(f"operation {op_id}: illegal status transition {current} -> {requested}")

    def _rebuilt_from(self) -> tuple[object, ...]:
        return self.op_id, self.current, self.requested


class _Winner(Protocol):
    """What a rejection reads of the call that won (an operation record)."""

    @property
    def ecs_id(self) -> UUID: ...

    priority: int


class _Lost(Protocol):
    """What a rejection reads of the call that lost (an operation record)."""

    made_id: UUID | None
    target_entity_id: UUID | None
    priority: int
    function_name: str


class _Named:
    """A winner known by its id (an error built by hand)."""

    __slots__ = ("ecs_id", "priority")

    def __init__(self, ecs_id: UUID, priority: int) -> None:
        self.ecs_id = ecs_id
        self.priority = priority


class OperationRejectedError(ContendError, RuntimeError):
    """The call lost its staging window to a higher-priority (or earlier) call.

    The message names both operations and both priorities. It is built when first read, and so
    are the ids: most rejections in a busy service are counted, not printed, and a record whose
    id nobody read has none yet (the error then makes it; nothing else can know it). The error
    keeps the winner's record, not the loser's, so a loser that left at once is freed at once.
    """

    __slots__ = ("_function", "_op_id", "_priority", "_target", "_winner", "_winner_priority")

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
        super().__init__(reason)
        self._op_id: UUID | None = op_id
        self._target = target_entity_id
        self._priority = priority
        self._function = function_name
        self._winner: _Winner | None = (
            None if winner_id is None else _Named(winner_id, winner_priority or 0)
        )
        self._winner_priority = winner_priority

    @classmethod
    def lost(cls, call: _Lost, winner: _Winner | None, reason: str) -> OperationRejectedError:
        """The error of `call`, which lost to `winner` (None: no winner, `reason` says why)."""
        error = cls.__new__(cls, reason)
        error._op_id = call.made_id
        error._target = call.target_entity_id
        error._priority = call.priority
        error._function = call.function_name
        error._winner = winner
        error._winner_priority = None if winner is None else winner.priority
        return error

    def _rebuilt_from(self) -> tuple[object, ...]:
        return (
            self.op_id,
            self._target,
            self._priority,
            self.winner_id,
            self._winner_priority,
            self.reason,
            self._function,
        )

    @property
    def op_id(self) -> UUID:
        op_id = self._op_id
        if op_id is None:
            op_id = self._op_id = uuid4()
        return op_id

    @property
    def target_entity_id(self) -> UUID | None:
        return self._target

    @property
    def priority(self) -> int:
        return self._priority

    @property
    def function_name(self) -> str:
        return self._function

    @property
    def winner_id(self) -> UUID | None:
        winner = self._winner
        return None if winner is None else winner.ecs_id

    @property
    def winner_priority(self) -> int | None:
        return self._winner_priority

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        name = self.function_name
        where = f" ({name})" if name else ""
        winner_id = self.winner_id
        winner = f"; winner {winner_id}" if winner_id is not None else ""
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

    def _rebuilt_from(self) -> tuple[object, ...]:
        return self.op_id, self.entity_id, self.expected_version, self.actual_version, self.attempts


class NestedCallError(ContendError, RuntimeError):
    """A protected call made inside another one holds some of its entities but not all: it can
    neither join the enclosing call nor be staged on its own (it would wait for the enclosing
    call forever, or commit again on each of its OCC retries). Nothing was run or written."""


class CrossShardError(ContendError, ValueError):
    """A call's entities have different shard keys, on a backend that places entities by shard
    key (Redis): its compare-and-set could not be one script in one slot. Nothing was run or
    written. `shard_keys` maps each entity's id to its shard key."""

    def __init__(self, function: str, shard_keys: dict[UUID, str], kinds: dict[UUID, str]) -> None:
        self.function = function
        self.shard_keys = shard_keys
        named = ", ".join(f"{kinds[i]} {i} (shard key {k!r})" for i, k in shard_keys.items())
        super().__init__(
            f"{function} was called on entities of {len(set(shard_keys.values()))} shard keys: "
            f"{named}. On Redis a call's entities must share one shard key (one Redis Cluster "
            "slot), so its compare-and-set is one script: give their classes a shard key they "
            'share (class Account(Entity, shard_key="customer_id")), or make one call per '
            "entity"
        )


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

    def _rebuilt_from(self) -> tuple[object, ...]:
        return self.op_id, self.args[0]


class RuntimeBindingError(ContendError, RuntimeError):
    """A runtime was used from a second event loop or thread while another still drives it."""
