"""The user-facing view of a runtime's state: committed entities and operation records."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar, overload
from uuid import UUID

from contend.entity import Entity
from contend.enums import TERMINAL_STATUSES, CleanupStrategy, OperationStatus
from contend.operations import ConflictResolutionOperation

if TYPE_CHECKING:
    from contend.backends.base import Backend
    from contend.cleanup.manager import CleanupManager
    from contend.record import Record

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
    answer (the LAZY strategy's only trigger). Records are handed out as
    `ConflictResolutionOperation` views, kept current by the runtime.
    """

    def __init__(self, backend: Backend, cleanup: CleanupManager) -> None:
        self.backend = backend
        self.cleanup = cleanup

    @property
    def zombie_count(self) -> int:
        return self.backend.zombie_count

    async def register(self, entity: Entity) -> Entity:
        """Register an entity ahead of its first call; returns the committed instance."""
        return await self.backend.ensure_entity(entity)

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
        found = await self.backend.get_entity(entity_id, kind)
        if found is not None and kind is not None and not isinstance(found, kind):
            raise TypeError(
                f"entity {entity_id} is a {type(found).__name__}, not a {kind.__name__}; "
                "an ecs_id names one entity of one type"
            )
        return found

    async def get_operation(self, op_id: UUID | str) -> ConflictResolutionOperation | None:
        record = await self.backend.get_operation(_uuid(op_id, "op_id"))
        if record is None:
            return None
        kept = await self.cleanup.remove_due_lazy([record])
        return kept[0].view() if kept else None

    async def operations_for_target(
        self, target_id: UUID | str
    ) -> list[ConflictResolutionOperation]:
        return _views(await self._for_target(_uuid(target_id, "target_id")))

    async def _for_target(self, target_id: UUID) -> list[Record]:
        records = await self.backend.operations_for_target(target_id)
        return await self.cleanup.remove_due_lazy(records)

    async def conflicting_operations(
        self, operation: ConflictResolutionOperation
    ) -> list[ConflictResolutionOperation]:
        """Records in flight (pending or executing) on any target of `operation`, except itself."""
        seen: dict[UUID, Record] = {}
        for tid in operation.target_entity_ids:
            for record in await self._for_target(tid):
                if record.status not in TERMINAL_STATUSES and record.ecs_id != operation.ecs_id:
                    seen.setdefault(record.ecs_id, record)
        return _views(seen.values())

    async def operations_with_status(
        self, status: OperationStatus | str
    ) -> list[ConflictResolutionOperation]:
        status = _status(status)
        records = await self.backend.operations_with_status(status)
        if status in TERMINAL_STATUSES:
            records = await self.cleanup.remove_due_lazy(records)
        return _views(records)

    async def zombies(
        self, target_id: UUID | str | None = None
    ) -> list[ConflictResolutionOperation]:
        """Zombies, all or those whose primary target is `target_id` (the unit zombie counts
        and per-target caps use); `operations_for_target` also finds those naming it later."""
        tid = None if target_id is None else _uuid(target_id, "target_id")
        records = await self.backend.zombies(tid)
        return _views(await self.cleanup.remove_due_lazy(records))

    async def zombie_counts_by_target(self) -> dict[UUID, int]:
        return await self.backend.zombie_counts_by_target()

    async def remove(self, op_id: UUID | str | ConflictResolutionOperation) -> bool:
        """Remove a record by hand (counted under reason "manual"), given its id or the
        operation a query returned (as a handler's ``remove(op)`` is); False if it was not
        there."""
        if isinstance(op_id, ConflictResolutionOperation):
            op_id = op_id.ecs_id
        op_id = _uuid(op_id, "op_id")
        record = await self.backend.get_operation(op_id)
        if record is None:
            return False
        if not record.is_terminal:
            raise ValueError(
                f"operation {op_id} is {record.status.value}; only terminal records can be removed"
            )
        return await self.cleanup.remove(
            op_id, "manual", strategy=record.cleanup_strategy or CleanupStrategy.NONE
        )


def _status(value: OperationStatus | str) -> OperationStatus:
    """A status given as the enum or its name (a typo would otherwise find nothing, silently)."""
    try:
        return OperationStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in OperationStatus)
        raise ValueError(f"status: unknown status {value!r} (allowed: {allowed})") from None


def _views(records: Iterable[Record]) -> list[ConflictResolutionOperation]:
    return [r.view() for r in records]
