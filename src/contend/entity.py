"""Entities: the things concurrent operations fight over."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from contend.clock import utcnow

__all__ = ["Entity", "copy_state"]

_set = object.__setattr__


class Entity(BaseModel):
    """A piece of state with a stable identity and a version that every commit bumps.

    Subclass it: ``class BankAccount(Entity): balance: float``.
    """

    model_config = ConfigDict(
        validate_assignment=False,
        revalidate_instances="never",
        extra="forbid",
        # a method decorated with `with_conflict_resolution` is a partial: a method, not a field
        ignored_types=(partial,),
    )

    ecs_id: UUID = Field(default_factory=uuid4, description="Stable identity across versions.")
    version: int = Field(default=0, ge=0, description="Committed writes so far.")
    last_modified: datetime = Field(default_factory=utcnow, description="Aware UTC time.")


def copy_state(target: Entity, source: Entity) -> None:
    """Make `target` hold `source`'s state: its fields, and what pydantic keeps beside them (the
    fields an ``extra="allow"`` model was given, private attributes, which fields were set)."""
    target.__dict__.update(source.__dict__)
    _set(target, "__pydantic_fields_set__", set(source.__pydantic_fields_set__))
    extra, private = source.__pydantic_extra__, source.__pydantic_private__
    _set(target, "__pydantic_extra__", None if extra is None else dict(extra))
    _set(target, "__pydantic_private__", None if private is None else dict(private))
