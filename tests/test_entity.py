"""Entities: identity, versions, and how they are found in a call's arguments."""

from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple
from uuid import UUID

import pytest
from pydantic import ValidationError

from contend import (
    CleanupStrategy,
    ConfigurationError,
    Entity,
    FakeClock,
    Runtime,
    with_conflict_resolution,
)
from contend._args import find_entities, substitute


class BankAccount(Entity):
    balance: float


def test_new_entity_has_identity_version_zero_and_aware_utc_time() -> None:
    acct = BankAccount(balance=1.0)
    assert isinstance(acct.ecs_id, UUID)
    assert acct.version == 0
    assert acct.last_modified.tzinfo is not None
    assert acct.last_modified.utcoffset() == timedelta(0)
    assert BankAccount(balance=1.0).ecs_id != acct.ecs_id


def test_subclass_fields_are_validated() -> None:
    with pytest.raises(ValidationError, match="balance"):
        BankAccount(balance="lots")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="version"):
        BankAccount(balance=1.0, version=-1)


def test_copies_keep_the_identity() -> None:
    acct = BankAccount(balance=1.0)
    assert acct.model_copy().ecs_id == acct.ecs_id
    assert acct.model_copy(deep=True).ecs_id == acct.ecs_id


async def test_each_committed_write_bumps_version_and_stamps_runtime_time(
    runtime: Runtime, clock: FakeClock
) -> None:
    @with_conflict_resolution(cleanup=CleanupStrategy.NONE)
    async def deposit(acct: BankAccount, amount: float) -> None:
        acct.balance += amount

    acct = BankAccount(balance=0.0)
    for i in range(1, 4):
        clock.advance(seconds=10)
        await deposit(acct, 1.0)
        assert acct.version == i
        assert acct.last_modified == clock.now()
        assert acct.last_modified.utcoffset() == timedelta(0)


class Pair(NamedTuple):
    left: Entity
    right: Entity


def test_find_entities_looks_inside_containers_in_order_without_duplicates() -> None:
    a, b, c, d, e = (BankAccount(balance=float(i)) for i in range(5))
    found = find_entities(
        (1, [a, (b, {"k": c})], a.model_copy()),
        {"x": {"nested": [d]}, "y": e, "z": "not an entity"},
    )
    assert [x.ecs_id for x in found] == [a.ecs_id, b.ecs_id, c.ecs_id, d.ecs_id, e.ecs_id]
    assert found[0] is a, "the first occurrence of an id is the one kept"


def test_find_entities_with_nothing_to_find() -> None:
    assert find_entities((1, "a", [2, 3], {"k": None}), {}) == ()


def test_substitute_rebuilds_only_what_changed() -> None:
    a, b = BankAccount(balance=1.0), BankAccount(balance=2.0)
    a2 = a.model_copy()
    untouched = [b, {"k": b}]
    assert substitute(untouched, {a.ecs_id: a2}) is untouched
    swapped = substitute([a, (b, a), {"k": a}], {a.ecs_id: a2})
    assert swapped[0] is a2
    assert swapped[1] == (b, a2)
    assert swapped[1][0] is b
    assert swapped[2]["k"] is a2
    pair = substitute(Pair(a, b), {a.ecs_id: a2})
    assert isinstance(pair, Pair)
    assert pair.left is a2


def test_a_shard_key_names_a_field_or_property_and_places_the_entity_by_its_value() -> None:
    from contend import shard_key_of

    class Order(Entity, shard_key="customer"):
        customer: str = "c1"

    class Line(Order):
        qty: int = 0

    class ByRegion(Entity, shard_key="region"):
        @property
        def region(self) -> str:
            return "eu"

    plain = Entity()
    assert shard_key_of(plain) == str(plain.ecs_id)
    assert shard_key_of(Order()) == shard_key_of(Line()) == "c1"
    assert shard_key_of(ByRegion()) == "eu"


@pytest.mark.parametrize("name", ["nope", "not a name", ""])
def test_a_shard_key_that_names_nothing_fails_when_the_class_is_made(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"Broken\.shard_key"):

        class Broken(Entity, shard_key=name):
            balance: int = 0
