"""The user-facing view of a runtime's state: committed entities and operation records."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, overload
from uuid import UUID

from contend.config import CleanupStrategy
from contend.entity import Entity
from contend.operations import TERMINAL_STATUSES, ConflictResolutionOperation, OperationStatus

if TYPE_CHECKING:
    from contend.runtime import Runtime

__all__ = ["Registry"]

E = TypeVar("E", bound=Entity)


def _uuid(value: UUID | str, name: str) -> UUID:
    """An id given as a UUID or its text (what a request or a log line carries)."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            raise ValueError(f"{name}: not a UUID: {value!r}") from None
    raise TypeError(f"{name}: expected a UUID or its text, got {type(value).__name__}")


class Registry:
    """Lookups by id, target and status, each O(1) or O(result).

    Queries meet zombies; a lazy zombie that is due is removed on the spot and left out of the
    answer (the LAZY strategy's only trigger).
    """

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    @property
    def zombie_count(self) -> int:
        return self._rt.backend.zombie_count

    async def register(self, entity: Entity) -> Entity:
        """Register an entity ahead of its first call; returns the committed instance."""
        return await self._rt.backend.ensure_entity(entity)

    @overload
    async def get_entity(self, entity_id: UUID | str) -> Entity | None: ...

    @overload
    async def get_entity(self, entity_id: UUID | str, kind: type[E]) -> E | None: ...

    async def get_entity(self, entity_id: UUID | str, kind: type[E] | None = None) -> Entity | None:
        """The committed entity, or None if the registry does not know it.

        `kind` is the class to expect: with a backend shared by several processes, it is the
        class an entity this process has not seen yet is loaded into (without it, only the
        fields every `Entity` has are read). An entity of another class raises TypeError.
        """
        entity_id = _uuid(entity_id, "entity_id")
        found = await self._rt.backend.get_entity(entity_id, kind)
        if found is not None and kind is not None and not isinstance(found, kind):
            raise TypeError(
                f"entity {entity_id} is a {type(found).__name__}, not a {kind.__name__}; "
                "an ecs_id names one entity of one type"
            )
        return found

    async def get_operation(self, op_id: UUID | str) -> ConflictResolutionOperation | None:
        op = await self._rt.backend.get_operation(_uuid(op_id, "op_id"))
        if op is None:
            return None
        kept = await self._rt.cleanup.remove_due_lazy([op])
        return kept[0] if kept else None

    async def operations_for_target(
        self, target_id: UUID | str
    ) -> list[ConflictResolutionOperation]:
        ops = await self._rt.backend.operations_for_target(_uuid(target_id, "target_id"))
        return await self._rt.cleanup.remove_due_lazy(ops)

    async def conflicting_operations(
        self, operation: ConflictResolutionOperation
    ) -> list[ConflictResolutionOperation]:
        """Records in flight (pending or executing) on any target of `operation`, except itself."""
        seen: dict[UUID, ConflictResolutionOperation] = {}
        for tid in operation.target_entity_ids:
            for op in await self.operations_for_target(tid):
                if op.ecs_id != operation.ecs_id and op.status not in TERMINAL_STATUSES:
                    seen.setdefault(op.ecs_id, op)
        return list(seen.values())

    async def operations_with_status(
        self, status: OperationStatus
    ) -> list[ConflictResolutionOperation]:
        ops = await self._rt.backend.operations_with_status(status)
        if status in TERMINAL_STATUSES:
            return await self._rt.cleanup.remove_due_lazy(ops)
        return ops

    async def zombies(
        self, target_id: UUID | str | None = None
    ) -> list[ConflictResolutionOperation]:
        """Zombies, all or those whose primary target is `target_id` (the unit zombie counts
        and per-target caps use); `operations_for_target` also finds those naming it later."""
        tid = None if target_id is None else _uuid(target_id, "target_id")
        ops = await self._rt.backend.zombies(tid)
        return await self._rt.cleanup.remove_due_lazy(ops)

    async def zombie_counts_by_target(self) -> dict[UUID, int]:
        return await self._rt.backend.zombie_counts_by_target()

    async def remove(self, op_id: UUID | str) -> bool:
        """Remove a record by hand (counted under reason "manual"); False if it was not there."""
        op_id = _uuid(op_id, "op_id")
        op = await self._rt.backend.get_operation(op_id)
        if op is None:
            return False
        if not op.is_terminal:
            raise ValueError(
                f"operation {op_id} is {op.status.value}; only terminal records can be removed"
            )
        return await self._rt.cleanup.remove(
            op_id, "manual", strategy=op.cleanup_strategy or CleanupStrategy.NONE
        )
