"""OCC: working copies, one atomic compare-and-set over every target, retries with backoff."""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ConfigDict, PrivateAttr

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    OCCConfig,
    OCCConflictError,
    OperationRejectedError,
    OperationRetriedEvent,
    OperationStatus,
    Runtime,
    with_conflict_resolution,
)
from contend.testing import EventRecorder, make_runtime

KEEP_ALL = CleanupConfig(
    strategy=CleanupStrategy.NONE, retain_succeeded=True, max_zombie_count_per_target=10_000
)


class Tally(Entity):
    value: int = 0


class BankAccount(Entity):
    balance: float


async def test_200_concurrent_increments_lose_no_update(runtime: Runtime) -> None:
    retried = EventRecorder(runtime, OperationRetriedEvent).events

    @with_conflict_resolution(
        pre_ecs=False, occ=OCCConfig(max_retries=4, base_delay_ms=0.2), cleanup=KEEP_ALL
    )
    async def increment(t: Tally) -> int:
        seen = t.value
        await asyncio.sleep(0)
        t.value = seen + 1
        return t.value

    tally = Tally()
    results = await asyncio.wait_for(
        asyncio.gather(*(increment(tally) for _ in range(200)), return_exceptions=True), 30
    )
    ok = [r for r in results if isinstance(r, int)]
    failed = [r for r in results if not isinstance(r, int)]
    assert ok, "at least one increment commits"
    assert failed, "200 read-await-write calls with 4 retries must collide past their budget"
    assert all(isinstance(r, OCCConflictError) for r in failed)
    assert tally.value == len(ok)
    assert tally.version == len(ok)
    assert sorted(ok) == list(range(1, len(ok) + 1)), "each success saw a distinct state"

    records = await runtime.registry.operations_for_target(tally.ecs_id)
    assert len(records) == 200
    by_status = Counter(op.status for op in records)
    assert by_status == {OperationStatus.SUCCEEDED: len(ok), OperationStatus.FAILED: len(failed)}
    for op in records:
        if op.status is OperationStatus.FAILED:
            assert op.retry_count == 4
            assert "OCCConflictError" in (op.error_message or "")

    for exc in failed:
        assert isinstance(exc, OCCConflictError)
        assert exc.entity_id == tally.ecs_id
        assert exc.attempts == 5
        assert exc.actual_version > exc.expected_version
        assert f"expected version {exc.expected_version}" in str(exc)

    per_op = Counter(e.op_id for e in retried)
    assert per_op == Counter({op.ecs_id: op.retry_count for op in records if op.retry_count})
    assert runtime.metrics.occ_retries._value.get() == len(retried)
    for e in retried:
        assert e.expected_version < e.actual_version
        assert e.entity_id == tally.ecs_id


async def test_retry_events_follow_backoff_with_jitter(runtime: Runtime) -> None:
    retried = EventRecorder(runtime, OperationRetriedEvent).events
    config = OCCConfig(max_retries=3, base_delay_ms=1.0, backoff_factor=2.0, jitter=0.5)

    @with_conflict_resolution(pre_ecs=False, occ=True)
    async def interfere(t: Tally) -> None:
        t.value += 100

    @with_conflict_resolution(pre_ecs=False, occ=config, cleanup=KEEP_ALL)
    async def always_overtaken(t: Tally) -> None:
        t.value += 1
        # another caller commits first: a task made in the caller's context, not inside this call
        # (a call made inside it, or in a task spawned from it, would join it instead)
        await asyncio.create_task(interfere(tally), context=outside)

    tally = Tally()
    outside = contextvars.copy_context()
    with pytest.raises(OCCConflictError) as info:
        await asyncio.wait_for(always_overtaken(tally), 5)
    assert [e.attempt for e in retried] == [1, 2, 3]
    for e in retried:
        full = config.base_delay_ms * config.backoff_factor ** (e.attempt - 1)
        assert full * (1 - config.jitter) <= e.delay_ms <= full
    assert info.value.attempts == 4
    assert tally.value == 400, "only the interfering calls committed"
    assert tally.version == 4


async def test_failed_call_commits_nothing(runtime: Runtime) -> None:
    @with_conflict_resolution(pre_ecs=False, occ=True, cleanup=CleanupStrategy.NONE)
    async def half_then_fail(t: Tally) -> None:
        t.value = 999
        raise ValueError("changed my mind")

    tally = Tally(value=1)
    with pytest.raises(ValueError):
        await half_then_fail(tally)
    assert tally.value == 1
    assert tally.version == 0
    [record] = await runtime.registry.operations_for_target(tally.ecs_id)
    assert record.status is OperationStatus.FAILED


class Account(Entity):
    balance: int


async def test_multi_target_commit_is_all_or_nothing(runtime: Runtime) -> None:
    gate = asyncio.Event()
    reached = asyncio.Event()

    @with_conflict_resolution(
        pre_ecs=False, occ=OCCConfig(max_retries=0), cleanup=CleanupStrategy.NONE
    )
    async def transfer(src: Account, dst: Account, amount: int) -> None:
        src.balance -= amount
        dst.balance += amount
        reached.set()
        await gate.wait()

    @with_conflict_resolution(pre_ecs=False, occ=True)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    a, b = Account(balance=100), Account(balance=0)
    moving = asyncio.create_task(transfer(a, b, 30))
    await asyncio.wait_for(reached.wait(), 5)
    await deposit(b, 5)
    gate.set()
    with pytest.raises(OCCConflictError) as info:
        await asyncio.wait_for(moving, 5)
    assert info.value.entity_id == b.ecs_id
    assert (info.value.expected_version, info.value.actual_version) == (0, 1)
    assert (a.balance, a.version) == (100, 0), "the unchanged target was not written either"
    assert (b.balance, b.version) == (5, 1)


async def test_multi_target_retry_commits_both_on_fresh_copies(runtime: Runtime) -> None:
    attempts = 0
    first_attempt_reached = asyncio.Event()
    gate = asyncio.Event()

    @with_conflict_resolution(pre_ecs=False, occ=OCCConfig(max_retries=2, base_delay_ms=0.0))
    async def transfer(src: Account, dst: Account, amount: int) -> None:
        nonlocal attempts
        attempts += 1
        src.balance -= amount
        dst.balance += amount
        if attempts == 1:
            first_attempt_reached.set()
            await gate.wait()

    @with_conflict_resolution(pre_ecs=False, occ=True)
    async def deposit(acct: Account, amount: int) -> None:
        acct.balance += amount

    a, b = Account(balance=100), Account(balance=0)
    moving = asyncio.create_task(transfer(a, b, 30))
    await asyncio.wait_for(first_attempt_reached.wait(), 5)
    await deposit(a, 5)
    gate.set()
    await asyncio.wait_for(moving, 5)
    assert attempts == 2
    assert (a.balance, a.version) == (75, 2)
    assert (b.balance, b.version) == (30, 1)


@pytest.mark.parametrize("occ", [True, False])
async def test_caller_object_holds_committed_state(runtime: Runtime, occ: bool) -> None:
    @with_conflict_resolution(occ=occ)
    async def update_account(account: BankAccount, amount: float) -> BankAccount:
        account.balance += amount
        return account

    acct = BankAccount(balance=100)
    result = await update_account(acct, 50)
    assert acct.balance == 150
    assert acct.version == 1
    assert result is acct
    assert acct.last_modified == runtime.clock.now()


@pytest.mark.parametrize("occ", [True, False])
async def test_stale_copy_with_same_id_receives_committed_state(
    runtime: Runtime, occ: bool
) -> None:
    @with_conflict_resolution(occ=occ)
    async def update_account(account: BankAccount, amount: float) -> BankAccount:
        account.balance += amount
        return account

    acct = BankAccount(balance=100)
    stale = acct.model_copy()
    await update_account(acct, 50)
    assert stale.balance == 100
    result = await update_account(stale, 10)
    assert stale.balance == 160
    assert stale.version == 2
    assert acct.balance == 160
    assert result is acct, "the result is the registry's committed instance"
    committed = await runtime.registry.get_entity(acct.ecs_id)
    assert committed is acct


class Loose(Entity):
    """An entity that keeps fields it does not declare, and a private attribute."""

    model_config = ConfigDict(extra="allow")
    balance: int = 0
    _last_note: str = PrivateAttr(default="")


@pytest.mark.parametrize("occ", [True, False])
async def test_extra_fields_private_attributes_and_set_fields_are_committed(
    runtime: Runtime, occ: bool
) -> None:
    """Under OCC, a write to a field kept by extra="allow" (or to a private attribute) was lost:
    the call succeeded and bumped the version, but only the working copy's declared fields were
    committed; so was model_fields_set, which model_dump(exclude_unset=True) reads."""

    @with_conflict_resolution(occ=occ)
    async def note(entity: Loose, text: str) -> None:
        entity.note = text
        entity.flagged = True
        entity.balance += 1
        entity._last_note = text

    loose = Loose(note="first")
    await note(loose, "second")
    assert (loose.note, loose.flagged, loose.balance) == ("second", True, 1)
    assert loose._last_note == "second"
    assert loose.version == 1
    assert loose.model_dump(exclude_unset=True, exclude={"ecs_id", "version", "last_modified"}) == {
        "note": "second",
        "flagged": True,
        "balance": 1,
    }
    stale = loose.model_copy(deep=True)
    await note(stale, "third")  # a second object with the same id gets the committed state too
    assert (stale.note, stale._last_note, stale.version) == ("third", "third", 2)
    assert (loose.note, loose._last_note, loose.version) == ("third", "third", 2)
    stale.note = "own"
    assert loose.note == "third", "the two objects share no extra-field dict"


class Customer(Entity):
    credit: int = 0


class Order(Entity):
    customer: Customer
    total: int = 0


async def test_an_entity_held_in_a_field_is_part_of_its_holders_state(runtime: Runtime) -> None:
    """What README's Decisions say: not a target, and a value that an OCC commit replaces."""

    @with_conflict_resolution(occ=True)
    async def add(order: Order, amount: int) -> None:
        order.total += amount

    customer = Customer()
    order = Order(customer=customer)
    await add(order, 5)
    assert order.total == 5 and order.customer == customer
    assert order.customer is not customer
    assert await runtime.registry.get_entity(customer.ecs_id) is None, "not a target"


async def test_occ_result_never_exposes_a_working_copy(runtime: Runtime) -> None:
    @with_conflict_resolution(pre_ecs=False, occ=True)
    async def pair(t: Tally) -> tuple[Tally, list[Tally], dict[str, Tally]]:
        t.value += 1
        return t, [t], {"t": t}

    tally = Tally()
    single, listed, mapped = await pair(tally)
    assert single is tally
    assert listed[0] is tally
    assert mapped["t"] is tally
    assert tally.value == 1


async def test_occ_with_staging_serialises_and_commits(runtime: Runtime) -> None:
    @with_conflict_resolution(occ=OCCConfig(max_retries=3), cleanup=CleanupStrategy.NONE)
    async def increment(t: Tally) -> int:
        seen = t.value
        await asyncio.sleep(0)
        t.value = seen + 1
        return t.value

    tally = Tally()
    for _ in range(5):
        results = await asyncio.gather(
            *(increment(tally) for _ in range(4)), return_exceptions=True
        )
        assert sum(isinstance(r, int) for r in results) == 1
    assert tally.value == 5
    assert tally.version == 5


transfer_plan = st.tuples(
    st.integers(0, 3),  # source
    st.integers(0, 3),  # destination
    st.integers(1, 9),  # amount
    st.integers(0, 2),  # ticks between read and write
    st.integers(0, 2),  # ticks before submitting
)


@settings(max_examples=30, deadline=None)
@given(
    staged=st.booleans(),
    plans=st.lists(transfer_plan, min_size=1, max_size=15),
)
def test_random_transfers_never_lose_or_invent_money(
    staged: bool, plans: list[tuple[int, int, int, int, int]]
) -> None:
    """Every committed transfer is applied exactly once to both sides; failed ones to neither."""
    rt = make_runtime()
    accounts = [Account(balance=100) for _ in range(4)]

    @with_conflict_resolution(
        pre_ecs=staged, occ=OCCConfig(max_retries=2, base_delay_ms=0.0), runtime=rt
    )
    async def transfer(src: Account, dst: Account, amount: int, ticks: int) -> None:
        src_balance, dst_balance = src.balance, dst.balance
        for _ in range(ticks):
            await asyncio.sleep(0)
        src.balance = src_balance - amount
        dst.balance = dst_balance + amount

    async def scenario() -> list[object]:
        tasks = []
        for s, d, amount, ticks, wait in plans:
            for _ in range(wait):
                await asyncio.sleep(0)
            src, dst = accounts[s], accounts[d if d != s else (s + 1) % 4]
            tasks.append(asyncio.create_task(transfer(src, dst, amount, ticks)))
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

    results = asyncio.run(scenario())
    expected = [100] * 4
    commits = [0] * 4
    for (s, d, amount, _, _), r in zip(plans, results, strict=True):
        assert r is None or isinstance(r, (OCCConflictError, OperationRejectedError)), r
        if r is None:
            d = d if d != s else (s + 1) % 4
            expected[s] -= amount
            expected[d] += amount
            commits[s] += 1
            commits[d] += 1
    assert [a.balance for a in accounts] == expected
    assert [a.version for a in accounts] == commits


class Ledger(Entity):
    owner: str = "ada"
    balance: float = 0.0
    entries: list[dict[str, float]] = []
    tags: dict[str, list[str]] = {}


def test_working_copy_equals_a_deep_copy_and_shares_no_mutable_state() -> None:
    from contend.occ import working_copy

    original = Ledger(entries=[{"amount": 1.0}], tags={"kind": ["retail"]})
    copy = working_copy(original)
    assert copy == original.model_copy(deep=True)
    assert copy.ecs_id == original.ecs_id and copy.version == original.version
    assert copy.model_fields_set == original.model_fields_set
    copy.entries[0]["amount"] = 99.0
    copy.entries.append({"amount": 2.0})
    copy.tags["kind"].append("vip")
    copy.balance = 5.0
    assert original.entries == [{"amount": 1.0}]
    assert original.tags == {"kind": ["retail"]}
    assert original.balance == 0.0
    assert original.model_fields_set == {"entries", "tags"}


async def test_a_nested_call_joins_the_enclosing_commit_and_applies_once(runtime: Runtime) -> None:
    """Retrying the enclosing call re-runs the nested one on fresh copies: counted once."""

    @with_conflict_resolution(occ=True)
    async def deposit(a: Account, amount: int) -> None:
        a.balance += amount

    attempts = 0

    @with_conflict_resolution(occ=True)
    async def transfer(src: Account, dst: Account, amount: int) -> None:
        nonlocal attempts
        attempts += 1
        src.balance -= amount
        await deposit(dst, amount)  # same task, a target transfer holds: joins it
        await asyncio.sleep(0.01)

    a, b = Account(balance=100), Account(balance=100)
    await asyncio.gather(transfer(a, b, 10), deposit(b, 1000))
    assert attempts == 2  # the outside deposit on b forced one retry
    assert (a.balance, b.balance) == (90, 1110)
    assert a.version == 1 and b.version == 2
    records = await runtime.registry.operations_for_target(b.ecs_id)
    assert records == []  # every record, nested ones included, succeeded and left
