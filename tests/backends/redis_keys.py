"""Keys of the Redis backend's layout, for tests that look into Redis (docs/redis.md, "Key
layout"): a target's keys are in its bucket; what was global is one key per bucket."""

from __future__ import annotations

from typing import Any

from contend.backends.redis.keys import Keys


def key(prefix: str, target: object, suffix: str) -> str:
    """A key of target `target`'s bucket (``suffix``: e.g. ``lease:<target>``)."""
    return Keys(prefix).key(str(target), suffix)


def everywhere(prefix: str, suffix: str) -> list[str]:
    """Key `suffix` in every bucket."""
    keys = Keys(prefix)
    return [keys.tag(b) + suffix for b in keys.all()]


def total(r: Any, prefix: str, command: str, suffix: str) -> int:
    """The sum of `command` (scard, zcard, get) on key `suffix` over every bucket."""
    pipe = r.pipeline(transaction=False)
    for k in everywhere(prefix, suffix):
        getattr(pipe, command)(k)
    return sum(int(v or 0) for v in pipe.execute())


def found(r: Any, prefix: str, suffix: str) -> str:
    """The one key `suffix` that exists, in whichever bucket (a record's key: its target's)."""
    hits = [k for k in everywhere(prefix, suffix) if r.exists(k)]
    assert len(hits) == 1, f"{suffix}: in {len(hits)} buckets"
    return hits[0]
