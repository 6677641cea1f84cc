"""The design's "High-Throughput Financial System" example, runnable.

Only the import line differs from the design, plus the `PaymentTransaction` entity (with the
`process()` method) the example presupposes and a small driver.
"""

from __future__ import annotations

import asyncio

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    OCCConfig,
    OperationPriority,
    OperationRejectedError,
    PreECSConfig,
    get_runtime,
    with_conflict_resolution,
)


class PaymentTransaction(Entity):
    amount: float
    status: str = "pending"
    attempts: int = 0

    def process(self) -> None:
        self.attempts += 1
        self.status = "processed"


# fmt: off
# --- the design's example, verbatim -----------------------------------------------------------
# Aggressive cleanup for financial operations
@with_conflict_resolution(
    pre_ecs=PreECSConfig(enabled=True),
    occ=OCCConfig(enabled=True, max_retries=5),
    cleanup=CleanupConfig(
        strategy=CleanupStrategy.IMMEDIATE,  # No zombies allowed
        aggressive_on_memory_pressure=True,
        immediate_cleanup_priorities=[OperationPriority.CRITICAL, OperationPriority.HIGH]
    )
)
async def process_payment(transaction: PaymentTransaction) -> PaymentTransaction:
    transaction.process()
    return transaction
# ----------------------------------------------------------------------------------------------
# fmt: on


async def run_example() -> dict[str, object]:
    """Five concurrent attempts to process one payment: one wins, four are rejected and cleaned."""
    transaction = PaymentTransaction(amount=125.0)
    results = await asyncio.gather(
        *(process_payment(transaction) for _ in range(5)), return_exceptions=True
    )
    rt = get_runtime()
    return {
        "status": transaction.status,
        "attempts": transaction.attempts,
        "won": sum(isinstance(r, PaymentTransaction) for r in results),
        "rejected": sum(isinstance(r, OperationRejectedError) for r in results),
        "zombies_left": rt.registry.zombie_count,
        "removed": dict(rt.cleanup.removed),
    }


def main() -> None:
    outcome = asyncio.run(run_example())
    print(f"payment {outcome['status']} after {outcome['attempts']} processing run(s)")
    print(f"{outcome['won']} won, {outcome['rejected']} rejected")
    print(f"zombies left: {outcome['zombies_left']} (removed: {outcome['removed']})")


if __name__ == "__main__":
    main()
