"""Redis backend: several worker processes share staging, OCC and cleanup through one Redis.

Select it in code, ``Runtime(backend=RedisBackend.from_url("redis://host:6379/0"))``, or with the
environment variable ``CONTEND_REDIS_URL`` and :func:`backend_from_env`. Entities and operation
records are stored as JSON (pydantic); function arguments and results never leave the process.
See docs/redis.md for guarantees, what each error means for the write, recovery after faults,
key layout and limits.

One module per job, importing only downward:
``scripts`` (the Lua), ``errors``, ``keys`` (the key layout) and ``cluster`` (a tick's commands
per cluster node) <- ``batching`` (one pipelined write per loop tick) <- ``connection`` (one
node's or a cluster's client, script runner, outages, bad keys, deferred writes) <-
``leases`` (running calls, fencing, renewal) and ``wakeups`` (pub/sub) <- ``entities`` (state
and settled writes) <- ``records`` (records, zombie books, sweeps) <- ``orphans`` <- ``staging``
(cross-worker windows) <- ``backend`` (`RedisBackend`).
"""

from contend.backends.redis.backend import ENV_VAR, RedisBackend, backend_from_env
from contend.backends.redis.errors import LeaseLostError, RedisDataError, RedisUnavailableError
from contend.errors import OutcomeUnknownError

__all__ = [
    "ENV_VAR",
    "LeaseLostError",
    "OutcomeUnknownError",
    "RedisBackend",
    "RedisDataError",
    "RedisUnavailableError",
    "backend_from_env",
]
