"""The README's bank under both conflict policies: 4,000 transfers gathered over 40 accounts.

Under ``reject`` (the default) one transfer per source account gets through and the rest are
rejected; under ``wait`` every loser is carried into its account's next window, so all of them
go through, in priority then submission order, and no money is created or lost.

    python examples/waiting_transfers.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from contend import (
    ConflictPolicy,
    Entity,
    OCCConfig,
    OperationRejectedError,
    PreECSConfig,
    with_conflict_resolution,
)

ACCOUNTS = 40
TRANSFERS = 4_000


class BankAccount(Entity):
    balance: float


def make_transfer(policy: ConflictPolicy) -> Callable[..., Awaitable[None]]:
    pre_ecs = (
        PreECSConfig(conflict_policy=policy, max_wait_ms=10_000)
        if policy is ConflictPolicy.WAIT
        else PreECSConfig()
    )

    @with_conflict_resolution(pre_ecs=pre_ecs, occ=OCCConfig(max_retries=5), cleanup="immediate")
    async def transfer(source: BankAccount, dest: BankAccount, amount: float) -> None:
        source.balance -= amount
        dest.balance += amount

    return transfer


async def run(policy: ConflictPolicy) -> tuple[int, int, float]:
    """(transfers that went through, rejections, money in all accounts at the end)."""
    transfer = make_transfer(policy)
    accounts = [BankAccount(balance=100) for _ in range(ACCOUNTS)]
    results = await asyncio.gather(
        *(
            transfer(accounts[i % ACCOUNTS], accounts[(i + 1) % ACCOUNTS], 1)
            for i in range(TRANSFERS)
        ),
        return_exceptions=True,
    )
    done = sum(r is None for r in results)
    rejected = sum(isinstance(r, OperationRejectedError) for r in results)
    return done, rejected, sum(a.balance for a in accounts)


async def main() -> None:
    for policy in ConflictPolicy:
        done, rejected, money = await run(policy)
        print(
            f"{policy.value:>6}: {done:,} transfers went through, {rejected:,} rejected; "
            f"money {money:,.0f} (started with {ACCOUNTS * 100:,})"
        )


if __name__ == "__main__":
    asyncio.run(main())
