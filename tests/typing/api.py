"""The public API as a user's type checker sees it (checked by ``mypy --strict``, not run).

As structlog checks its API in ``tests/typing``: a change that makes a documented use fail to
type-check, or lets a wrong one pass, fails ``make types`` (``assert_type`` pins what each call
returns).
"""

from __future__ import annotations

import asyncio
from typing import Any, assert_type
from uuid import UUID

from contend import (
    DEFAULT_CLEANUP_CONFIG,
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictPolicy,
    ConflictResolutionConfig,
    ConflictResolutionOperation,
    ConflictResolved,
    CrossShardError,
    Entity,
    FakeClock,
    OCCConfig,
    OperationCleanedEvent,
    OperationPriority,
    OperationRejectedError,
    OperationRejectedEvent,
    OperationStatus,
    PreECSConfig,
    Runtime,
    cleanup_system_health_check,
    shard_key_of,
    use_runtime,
    with_conflict_resolution,
)
from contend.testing import KEEP_EVERYTHING, Account, EventRecorder, make_runtime, runtime_in_use


class BankAccount(Entity):
    balance: float


class CustomerAccount(Entity, shard_key="customer_id"):
    customer_id: str
    balance: float = 0.0


@with_conflict_resolution
async def bare(account: BankAccount) -> BankAccount:
    return account


@with_conflict_resolution(
    pre_ecs=PreECSConfig(conflict_policy=ConflictPolicy.WAIT, max_wait_ms=500),
    occ=OCCConfig(max_retries=3),
    cleanup=CleanupConfig(strategy=CleanupStrategy.LAZY, retention_minutes=5),
    priority=OperationPriority.HIGH,
)
async def update(account: BankAccount, amount: float) -> float:
    account.balance += amount
    return account.balance


@with_conflict_resolution(cleanup="immediate", mode="both")
def sync_update(account: BankAccount) -> int:
    return 1


@CleanupHandlerRegistry.register("typing-audit")
class Audit(CleanupHandler):
    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        assert_type(operation.status, OperationStatus)
        if operation.priority >= OperationPriority.HIGH:
            await self.retain_for(operation, minutes=60)
        else:
            await self.remove(operation)


async def use() -> None:
    account = BankAccount(balance=0)
    assert_type(await update(account, 1.0), float)
    assert_type(await update.with_priority(OperationPriority.CRITICAL)(account, 2.0), float)
    assert_type(await update.with_max_wait(0)(account, 3.0), float)
    assert_type(await bare(account), BankAccount)
    assert_type(sync_update(account), int)
    assert_type(update.conflict_config, ConflictResolutionConfig)
    assert_type(update.priority, int)

    rt = Runtime(clock=FakeClock(), memory_probe=lambda: 0.0)
    with use_runtime(rt):
        try:
            await update(account, 1.0)
        except OperationRejectedError as exc:
            assert_type(exc.op_id, UUID)
            assert_type(exc.winner_id, UUID | None)
            assert_type(exc.winner_priority, int | None)
    zombies = await rt.registry.zombies(account.ecs_id)
    assert_type(zombies, list[ConflictResolutionOperation])
    found = await rt.registry.get_entity(account.ecs_id, BankAccount)
    assert_type(found, BankAccount | None)
    assert_type(await rt.registry.get_operation(account.ecs_id), ConflictResolutionOperation | None)
    assert_type(await rt.registry.remove(zombies[0].ecs_id), bool)
    assert_type(await rt.cleanup.sweep(), int)
    assert_type(rt.cleanup.removed["ttl"], int)
    assert_type(await cleanup_system_health_check(rt), dict[str, Any])

    def on_cleaned(event: OperationCleanedEvent) -> None:
        assert_type(event.reason, str)

    unsubscribe = rt.events.subscribe(OperationCleanedEvent, on_cleaned)
    unsubscribe()

    probe = ConflictResolutionOperation(priority=OperationPriority.NORMAL)
    assert_type(DEFAULT_CLEANUP_CONFIG.get_effective_cleanup_strategy(probe, rt), CleanupStrategy)

    with (
        runtime_in_use(memory_pressure=0.5) as test_rt,
        EventRecorder(test_rt, OperationRejectedEvent) as recorder,
    ):
        assert_type(recorder.of(OperationRejectedEvent), list[OperationRejectedEvent])
        assert_type(recorder.ids(), list[UUID])
    assert_type(make_runtime(clock=FakeClock()), Runtime)

    assert_type(shard_key_of(CustomerAccount(customer_id="c-1")), str)
    try:
        await update(account, 1.0)
    except CrossShardError as crossed:
        assert_type(crossed.shard_keys, dict[UUID, str])
    assert_type(KEEP_EVERYTHING, CleanupConfig)
    assert_type(Account().balance, int)


def wrong_uses(account: BankAccount) -> None:
    """Each line must fail to type-check (an unneeded ignore is an error under --strict)."""
    update(account, "one").close()  # type: ignore[arg-type]
    update.with_priority("high")  # type: ignore[arg-type]
    bare(account, 1).close()  # type: ignore[call-arg]


def the_protocol(fn: ConflictResolved[[BankAccount, float], asyncio.Future[float]]) -> None:
    """A decorated function can be passed where its protocol is expected."""
