"""Entities: the things concurrent operations fight over."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any, ClassVar
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from contend.clock import utcnow
from contend.errors import ConfigurationError

__all__ = ["SHARD_KEY_MAX_LENGTH", "Entity", "copy_state", "shard_key_of"]

SHARD_KEY_MAX_LENGTH = 256

_set = object.__setattr__


class Entity(BaseModel):
    """A piece of state with a stable identity and a version that every commit bumps.

    Subclass it: ``class BankAccount(Entity): balance: float``. Entities that one call writes
    together share a shard key, named by the class: ``class BankAccount(Entity,
    shard_key="customer_id")`` places each account by its ``customer_id`` (a field or property),
    so on Redis Cluster a customer's accounts sit in one slot and a transfer between them stays
    one compare-and-set. Without one, an entity is placed by its own id.
    """

    __contend_shard_key__: ClassVar[str | None] = None
    """The field or property whose value is the shard key (None: the entity's id)."""

    def __init_subclass__(cls, shard_key: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if shard_key is not None:
            if not isinstance(shard_key, str) or not shard_key.isidentifier():
                raise ConfigurationError(
                    f"{cls.__name__}.shard_key",
                    f"must name a field or property of the class, got {shard_key!r}",
                )
            cls.__contend_shard_key__ = shard_key

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = cls.__contend_shard_key__
        if name is not None and name not in cls.model_fields and not hasattr(cls, name):
            raise ConfigurationError(
                f"{cls.__name__}.shard_key",
                f"names {name!r}, which is neither a field nor a property of {cls.__name__}",
            )

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


def shard_key_of(entity: Entity) -> str:
    """Where `entity` is placed: the value its class's `shard_key` names (a non-empty str
    without braces, an int or a UUID), else its own id. Entities of one shard key share one
    Redis Cluster slot."""
    name = type(entity).__contend_shard_key__
    if name is None:
        return str(entity.ecs_id)
    value = getattr(entity, name)
    if isinstance(value, UUID) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    if (
        isinstance(value, str)
        and 0 < len(value) <= SHARD_KEY_MAX_LENGTH
        and "{" not in value
        and "}" not in value
    ):
        return value
    raise ConfigurationError(
        f"{type(entity).__name__}.{name}",
        f"a shard key must be a str of 1 to {SHARD_KEY_MAX_LENGTH} characters without braces, "
        f"an int or a UUID; entity {entity.ecs_id} has {value!r}",
    )
