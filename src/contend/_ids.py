"""Fast random UUIDs for operation records (uuid4's urandom call dominates a cheap call)."""

from __future__ import annotations

import os
import random
from uuid import UUID, SafeUUID

_rng = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))

_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)
_new = object.__new__
_set = object.__setattr__
_UNKNOWN = SafeUUID.unknown


def new_id() -> UUID:
    """A version-4 UUID from a per-process generator seeded by the OS (reseeded after fork)."""
    u = _new(UUID)
    _set(u, "int", (_rng.getrandbits(128) & _CLEAR) | _SET)
    _set(u, "is_safe", _UNKNOWN)
    return u
