"""contend's errors cross process boundaries and copies intact."""

from __future__ import annotations

import asyncio
import copy
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from uuid import uuid4

import pytest

from contend import (
    ConfigurationError,
    ContendError,
    InvalidTransitionError,
    NestedCallError,
    OCCConflictError,
    OperationRejectedError,
    OutcomeUnknownError,
    Runtime,
    RuntimeBindingError,
    with_conflict_resolution,
)
from contend.testing import Account

ERRORS: list[Callable[[], ContendError]] = [
    lambda: ConfigurationError("occ.max_retries", "must be >= 0 and <= 100, got 500"),
    lambda: InvalidTransitionError(uuid4(), "succeeded", "executing"),
    lambda: OperationRejectedError(uuid4(), uuid4(), 2, uuid4(), 8, "Lost", "app.deposit"),
    lambda: OperationRejectedError(uuid4(), None, 5, None, None, "staging window is full"),
    lambda: OCCConflictError(uuid4(), uuid4(), 3, 4, 2),
    lambda: OutcomeUnknownError(uuid4(), "reply lost"),
    lambda: NestedCallError("holds some entities but not all"),
    lambda: RuntimeBindingError("another running event loop"),
]


def _fields(error: ContendError) -> dict[str, object]:
    names = [n for n in dir(error) if not n.startswith("_") and n not in ("args", "with_traceback")]
    return {n: getattr(error, n) for n in names if not callable(getattr(error, n))}


@pytest.mark.parametrize(
    "clone",
    [lambda e: pickle.loads(pickle.dumps(e)), copy.copy, copy.deepcopy],
    ids=["pickle", "copy", "deepcopy"],
)
@pytest.mark.parametrize("make", ERRORS, ids=lambda make: type(make()).__name__)
def test_errors_survive_pickling_and_copying(
    make: Callable[[], ContendError], clone: Callable[[ContendError], ContendError]
) -> None:
    """Pickling (a process pool's result, a task queue) and copying failed for every error with
    arguments of its own: "__init__() missing 5 required positional arguments"."""
    error = make()
    error.add_note("seen by the caller")
    twin = clone(error)
    assert type(twin) is type(error)
    assert str(twin) == str(error)
    assert _fields(twin) == _fields(error)
    assert twin.__notes__ == ["seen by the caller"]


def _rejected_in_a_worker() -> None:
    async def main() -> None:
        rt = Runtime()

        @with_conflict_resolution(runtime=rt)
        async def deposit(account: Account) -> None:
            account.balance += 1

        account = Account()
        await asyncio.gather(deposit(account), deposit(account))

    asyncio.run(main())


def test_a_rejection_raised_in_a_process_pool_reaches_the_parent() -> None:
    with (
        ProcessPoolExecutor(max_workers=1) as pool,
        pytest.raises(OperationRejectedError, match="Lost Pre-ECS priority conflict"),
    ):
        pool.submit(_rejected_in_a_worker).result(timeout=60)
