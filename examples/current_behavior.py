"""The design's "Current Behavior" example, runnable.

Only the import line differs from the design (plus the `BankAccount` entity the example
presupposes and a small `main` that runs it).
"""

from __future__ import annotations

import asyncio

from contend import (
    Entity,
    OCCConfig,
    OperationRejectedError,
    PreECSConfig,
    with_conflict_resolution,
)


class BankAccount(Entity):
    balance: float


# Current decorator usage - no cleanup configuration
@with_conflict_resolution(
    pre_ecs=PreECSConfig(enabled=True),
    occ=OCCConfig(enabled=True, max_retries=3),
)
async def update_account(account: BankAccount, amount: float) -> BankAccount:
    account.balance += amount
    return account


# What happens today:
# 1. Operations submitted to staging coordinator
# 2. Conflicts resolved by priority
# 3. Winner executes, losers are rejected
# 4. Rejected operations remain in ECS registry as "zombies"
# 5. No automatic cleanup of zombies


async def run_example() -> tuple[BankAccount, int, int]:
    """One uncontended update, then five concurrent ones: returns (account, won, rejected)."""
    account = BankAccount(balance=100.0)
    await update_account(account, 50.0)
    results = await asyncio.gather(
        *(update_account(account, 10.0) for _ in range(5)), return_exceptions=True
    )
    won = sum(isinstance(r, BankAccount) for r in results)
    rejected = sum(isinstance(r, OperationRejectedError) for r in results)
    return account, won, rejected


def main() -> None:
    account, won, rejected = asyncio.run(run_example())
    print(f"balance {account.balance:.2f} (version {account.version})")
    print(f"five concurrent updates: {won} won, {rejected} rejected")


if __name__ == "__main__":
    main()
