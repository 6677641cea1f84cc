"""Finding the entities in a call's arguments and swapping them for other instances."""

from __future__ import annotations

import copy
import dataclasses
from collections import deque
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from contend.entity import Entity

__all__ = ["find_entities", "substitute"]

_CONTAINERS = (list, tuple, set, frozenset, dict, deque)
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})
"""Types whose values hold no entity (the common second argument: an amount, a name)."""


def find_entities(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Entity, ...]:
    """Every Entity in the arguments (also inside lists, tuples, sets, deques and dict values,
    their subclasses included), first occurrence of each id, in order (a tuple: most calls pass
    one entity, and a one-item tuple comes from CPython's free list)."""
    if not kwargs and len(args) <= 2:
        first = args[0] if args else None
        if isinstance(first, Entity) and (len(args) == 1 or type(args[1]) in _PLAIN):
            return (first,)
    found: dict[int, Entity] = {}
    for a in args:
        if isinstance(a, Entity):
            found.setdefault(a.ecs_id.int, a)
        elif isinstance(a, _CONTAINERS):
            _collect(a, found)
    if kwargs:
        for a in kwargs.values():
            if isinstance(a, Entity):
                found.setdefault(a.ecs_id.int, a)
            elif isinstance(a, _CONTAINERS):
                _collect(a, found)
    return tuple(found.values()) if found else _none_found(args, kwargs)


def _none_found(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Entity, ...]:
    """No target: the call conflicts with nothing. An entity held by a model or a dataclass
    among the arguments would then be written unstaged and unguarded, silently: refused."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, BaseModel):
            fields = [(name, getattr(a, name, None)) for name in type(a).model_fields]
        elif dataclasses.is_dataclass(a) and not isinstance(a, type):
            fields = [(f.name, getattr(a, f.name, None)) for f in dataclasses.fields(a)]
        else:
            continue
        for name, value in fields:
            inside: dict[int, Entity] = {}
            _collect(value, inside)
            if inside:
                raise TypeError(
                    f"{type(a).__name__}.{name} holds an Entity, but contend finds entities only "
                    "among a call's arguments (and in lists, tuples, sets, deques and dict values "
                    "there), not inside models or dataclasses: this call would be neither staged "
                    "nor guarded; pass the entities themselves as arguments"
                )
    return ()


def _collect(obj: Any, found: dict[int, Entity]) -> None:
    if isinstance(obj, Entity):
        found.setdefault(obj.ecs_id.int, obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, found)
    elif isinstance(obj, _CONTAINERS):
        for v in obj:
            _collect(v, found)


def substitute(obj: Any, by_id: dict[UUID, Entity]) -> Any:
    """`obj` with each Entity whose id is in `by_id` replaced by that instance (containers rebuilt
    only where something inside changed, as the same type: a defaultdict keeps its factory, a
    tuple subclass or namedtuple its class, a deque its maxlen)."""
    if isinstance(obj, Entity):
        return by_id.get(obj.ecs_id, obj)
    if isinstance(obj, dict):
        new = {k: substitute(v, by_id) for k, v in obj.items()}
        if all(new[k] is obj[k] for k in obj):
            return obj
        if type(obj) is dict:
            return new
        clone = copy.copy(obj)
        clone.update(new)
        return clone
    if isinstance(obj, (list, tuple, deque)):
        items = [substitute(v, by_id) for v in obj]
        if all(a is b for a, b in zip(items, obj, strict=True)):
            return obj
        return _rebuilt(obj, items)
    if isinstance(obj, (set, frozenset)):
        items = [substitute(v, by_id) for v in obj]
        if all(a in obj for a in items):
            return obj
        return _rebuilt(obj, items)
    return obj


def _rebuilt(obj: Any, items: list[Any]) -> Any:
    """A container of `obj`'s own type holding `items` instead, without calling a subclass's
    constructor (whose signature may differ: a namedtuple, a tuple of fields)."""
    kind = type(obj)
    if kind in (list, tuple, set, frozenset):
        return kind(items)
    if isinstance(obj, (tuple, frozenset)):
        base = tuple if isinstance(obj, tuple) else frozenset
        clone = base.__new__(kind, items)
        if hasattr(obj, "__dict__"):
            clone.__dict__.update(obj.__dict__)
        return clone
    clone = copy.copy(obj)
    clone.clear()
    if isinstance(obj, (list, deque)):
        clone.extend(items)
    else:
        clone.update(items)
    return clone


def substitute_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], by_id: dict[UUID, Entity]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (
        tuple(substitute(a, by_id) for a in args),
        {k: substitute(v, by_id) for k, v in kwargs.items()},
    )
