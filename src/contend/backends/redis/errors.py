"""What the Redis backend raises, and what each error means for the call's write."""

from __future__ import annotations

from contend.errors import ContendError

__all__ = ["LeaseLostError", "RedisDataError", "RedisUnavailableError"]


class RedisUnavailableError(ContendError, ConnectionError):
    """Redis could not be reached or did not answer within the socket timeout.

    Raised to a caller only when its write was not applied: before anything was sent, or after a
    lost reply was settled as "not applied". Retrying the call is safe.
    """


class LeaseLostError(ContendError, RuntimeError):
    """A winner's lease on its target expired before it wrote; its write was refused (nothing was
    written)."""


class RedisDataError(ContendError, RuntimeError):
    """A key in Redis holds something contend cannot read (a malformed value, a wrong type).

    One bad key fails only the calls and reads that need that key, each with this error naming
    it; it is logged and counted (``contend_redis_bad_keys_total``), and the rest keeps working.
    Nothing was written by the call that met it.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")
