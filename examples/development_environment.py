"""The design's "Development Environment" example, runnable.

Only the import line differs from the design, plus the `UserProfile` entity (with
`apply_updates()`) the example presupposes and a small driver.
"""

from __future__ import annotations

import asyncio
from typing import Any

from contend import (
    CleanupConfig,
    CleanupStrategy,
    Entity,
    OperationPriority,
    OperationRejectedError,
    PreECSConfig,
    get_runtime,
    with_conflict_resolution,
)


class UserProfile(Entity):
    name: str = ""
    email: str = ""
    preferences: dict[str, Any] = {}

    def apply_updates(self, updates: dict[str, Any]) -> None:
        for key, value in updates.items():
            if key in type(self).model_fields and key not in ("ecs_id", "version"):
                setattr(self, key, value)
            else:
                self.preferences = {**self.preferences, key: value}


# fmt: off
# --- the design's example, verbatim -----------------------------------------------------------
# Debug-friendly cleanup
@with_conflict_resolution(
    pre_ecs=PreECSConfig(enabled=True),
    cleanup=CleanupConfig(
        strategy=CleanupStrategy.DEFERRED,
        retention_minutes=120,  # 2-hour debugging window
        debug_retention_priorities=[OperationPriority.LOW, OperationPriority.NORMAL]
    )
)
async def update_user_profile(user: UserProfile, updates: dict) -> UserProfile:
    user.apply_updates(updates)
    return user
# ----------------------------------------------------------------------------------------------
# fmt: on


async def run_example() -> dict[str, object]:
    """Three concurrent edits of one profile: the losers stay inspectable for two hours."""
    user = UserProfile(name="ada", email="ada@example.org")
    results = await asyncio.gather(
        update_user_profile(user, {"email": "ada@lovelace.example"}),
        update_user_profile(user, {"theme": "dark"}),
        update_user_profile(user, {"name": "Ada"}),
        return_exceptions=True,
    )
    rt = get_runtime()
    zombies = await rt.registry.zombies(user.ecs_id)
    return {
        "email": user.email,
        "rejected": sum(isinstance(r, OperationRejectedError) for r in results),
        "zombies": len(zombies),
        "kept_until": sorted(str(z.cleanup_scheduled_at) for z in zombies),
        "messages": [z.error_message for z in zombies],
    }


def main() -> None:
    outcome = asyncio.run(run_example())
    print(f"email now {outcome['email']}; {outcome['rejected']} edits rejected")
    print(f"{outcome['zombies']} rejected edits kept for debugging until {outcome['kept_until']}")
    for message in outcome["messages"]:  # type: ignore[attr-defined]
        print(f"  {message}")


if __name__ == "__main__":
    main()
