"""The design's "Cleanup Handler Registry" and "Custom Financial Audit System" examples, runnable.

Only the import lines differ from the design. The design presupposes an `Account` entity (with
`process_transaction()`) and leaves the two audit steps of its handler (`_log_to_audit_trail`,
`_schedule_extended_retention`) to the deployment: this file supplies them in a subclass that it
registers under the same name, which is how an application customises a registered handler.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictResolutionOperation,
    DeferredCleanupHandler,
    Entity,
    ImmediateCleanupHandler,
    LazyCleanupHandler,
    NoOpCleanupHandler,
    OperationRejectedError,
    PreECSConfig,
    get_runtime,
    with_conflict_resolution,
)

log = logging.getLogger("examples.financial_audit")


class Account(Entity):
    balance: Decimal = Decimal("0")

    def process_transaction(self, amount: Decimal) -> None:
        self.balance += amount


# fmt: off
# --- the design's handler registry block (its own CleanupHandler/Registry classes are the
# --- library's), verbatim ---------------------------------------------------------------------
# Register standard handlers
CleanupHandlerRegistry.register("immediate", ImmediateCleanupHandler)
CleanupHandlerRegistry.register("deferred", DeferredCleanupHandler)
CleanupHandlerRegistry.register("lazy", LazyCleanupHandler)
CleanupHandlerRegistry.register("noop", NoOpCleanupHandler)

# Custom handler support
@CleanupHandlerRegistry.register("financial_audit")
class FinancialAuditCleanupHandler(CleanupHandler):
    """Custom cleanup handler for financial operations."""

    def __init__(self, audit_retention_hours: int = 72):
        self.retention_hours = audit_retention_hours

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation):
        # Custom financial audit cleanup logic
        await self._log_to_audit_trail(operation)
        await self._schedule_extended_retention(operation)
# ----------------------------------------------------------------------------------------------
# fmt: on


AUDIT_TRAIL: list[dict[str, Any]] = []


class AuditedFinancialAuditCleanupHandler(FinancialAuditCleanupHandler):
    """The design's handler with its two audit steps filled in."""

    async def _log_to_audit_trail(self, operation: ConflictResolutionOperation) -> None:
        entry = {
            "operation": str(operation.ecs_id),
            "account": str(operation.target_entity_id),
            "status": operation.status.value,
            "reason": operation.error_message,
            "completed_at": operation.completed_at,
        }
        AUDIT_TRAIL.append(entry)
        log.info("audit: %s", entry)

    async def _schedule_extended_retention(self, operation: ConflictResolutionOperation) -> None:
        await self.retain_for(operation, minutes=self.retention_hours * 60)


CleanupHandlerRegistry.register("financial_audit", AuditedFinancialAuditCleanupHandler)


# fmt: off
# --- the design's example, verbatim -----------------------------------------------------------
# Custom cleanup for regulatory compliance
@with_conflict_resolution(
    pre_ecs=PreECSConfig(enabled=True),
    cleanup=CleanupConfig(
        strategy=CleanupStrategy.CUSTOM,
        custom_cleanup_handler="financial_audit",
        retention_minutes=4320  # 72 hours for financial audit
    )
)
async def financial_transaction(account: Account, amount: Decimal) -> Account:
    account.process_transaction(amount)
    return account
# ----------------------------------------------------------------------------------------------
# fmt: on


async def run_example() -> dict[str, object]:
    """Four concurrent transactions on one account: the three losers are audited and kept 72 h."""
    account = Account(balance=Decimal("100.00"))
    before = len(AUDIT_TRAIL)
    results = await asyncio.gather(
        *(financial_transaction(account, Decimal(a)) for a in ("10.00", "-5.00", "7.50", "1.25")),
        return_exceptions=True,
    )
    rt = get_runtime()
    zombies = await rt.registry.zombies(account.ecs_id)
    return {
        "balance": account.balance,
        "rejected": sum(isinstance(r, OperationRejectedError) for r in results),
        "audited": len(AUDIT_TRAIL) - before,
        "retained": len(zombies),
        "kept_until": sorted({str(z.cleanup_scheduled_at) for z in zombies}),
    }


def main() -> None:
    outcome = asyncio.run(run_example())
    print(f"balance {outcome['balance']}; {outcome['rejected']} transactions rejected")
    print(f"{outcome['audited']} audit entries; {outcome['retained']} records retained")
    print(f"kept until {outcome['kept_until']}")


if __name__ == "__main__":
    main()
