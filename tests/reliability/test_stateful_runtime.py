"""Random interleavings of calls, outcomes, clock moves, sweeps and queries against one runtime.

The machine drives a real Runtime on a FakeClock in an event loop of its own. Every decorated call
awaits a gate the machine resolves (succeed or fail) or cancels, so the machine decides when calls
end. The backend is the real MemoryBackend, subclassed only to remember each record it is given
and which task created it, so the invariants can look at every record, including those that
already left.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from contend import (
    CleanupConfig,
    CleanupHandler,
    CleanupHandlerRegistry,
    CleanupStrategy,
    ConflictResolutionOperation,
    FakeClock,
    MemoryBackend,
    OCCConfig,
    OperationCleanedEvent,
    OperationStatus,
    with_conflict_resolution,
)
from contend.testing import Account, make_runtime

CUSTOM_NAME = "reliability-stateful-custom"
ZOMBIE = {OperationStatus.FAILED, OperationStatus.REJECTED, OperationStatus.CANCELLED}
TERMINAL = ZOMBIE | {OperationStatus.SUCCEEDED}
ANYTIME_REASONS = {"immediate", "cap", "pressure", "force", "custom"}


class ObservedBackend(MemoryBackend):
    """The in-memory backend, remembering every record and the task that submitted it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[UUID, ConflictResolutionOperation] = {}
        self.task_of: dict[UUID, asyncio.Task[Any] | None] = {}

    async def add_operation(self, op: ConflictResolutionOperation) -> None:
        self.seen[op.ecs_id] = op
        self.task_of[op.ecs_id] = asyncio.current_task()
        await super().add_operation(op)


class HalfAndHalf(CleanupHandler):
    """Removes records of odd priority at once, keeps the others for two minutes."""

    async def handle_operation_rejection(self, operation: ConflictResolutionOperation) -> None:
        if operation.priority % 2:
            await self.remove(operation)
        else:
            await self.retain_for(operation, minutes=2)


async def _body(account: Account, gate: asyncio.Future[str]) -> int:
    outcome = await asyncio.shield(gate)
    if outcome == "fail":
        raise ValueError("the machine said fail")
    account.balance += 1
    return account.balance


STRATEGIES = st.sampled_from(list(CleanupStrategy))


class RuntimeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        CleanupHandlerRegistry.register(CUSTOM_NAME, HalfAndHalf)
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.backend = ObservedBackend()
        self.pressure = 0.0
        self.rt = make_runtime(backend=self.backend, clock=self.clock)
        self.cleaned: list[tuple[OperationCleanedEvent, float]] = []
        self.rt.events.subscribe(OperationCleanedEvent, self._on_cleaned)
        self.targets = [self.loop.run_until_complete(self._register(Account())) for _ in range(3)]
        self.functions: list[Any] = []
        self.calls: list[tuple[asyncio.Task[Any], asyncio.Future[str]]] = []
        self.first_terminal: dict[UUID, OperationStatus] = {}
        self.ever_zombie: set[UUID] = set()
        self.names = itertools.count()

    async def _register(self, account: Account) -> Account:
        committed = await self.rt.registry.register(account)
        assert isinstance(committed, Account)
        return committed

    def _on_cleaned(self, event: OperationCleanedEvent) -> None:
        self.cleaned.append((event, self.clock.time()))

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @staticmethod
    def _peek(coro: Any) -> Any:
        """Result of a backend read that never suspends, without letting any task run."""
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value
        coro.close()
        raise AssertionError("a backend read suspended")

    def _spin(self, rounds: int) -> None:
        async def spin() -> None:
            for _ in range(rounds):
                await asyncio.sleep(0)

        self._run(spin())

    def _make(self, cleanup: CleanupConfig, *, staged: bool = True, occ: bool = False) -> None:
        async def body(account: Account, gate: asyncio.Future[str]) -> int:
            return await _body(account, gate)

        body.__qualname__ = f"fn{next(self.names)}"
        fn = with_conflict_resolution(
            pre_ecs=staged,
            occ=OCCConfig(max_retries=1, base_delay_ms=0.0) if occ else False,
            cleanup=cleanup,
            runtime=self.rt,
        )(body)
        self.functions.append(fn)

    @initialize(strategy=STRATEGIES)
    def first_function(self, strategy: CleanupStrategy) -> None:
        self._make(_cleanup(strategy, cap=100, retention=30))

    @rule(
        strategy=STRATEGIES,
        cap=st.sampled_from([1, 2, 5, 100]),
        retention=st.sampled_from([0, 1, 30]),
        staged=st.booleans(),
        occ=st.booleans(),
    )
    @precondition(lambda self: len(self.functions) < 6)
    def new_function(
        self, strategy: CleanupStrategy, cap: int, retention: int, staged: bool, occ: bool
    ) -> None:
        self._make(_cleanup(strategy, cap=cap, retention=retention), staged=staged, occ=occ)

    @rule(
        fn=st.integers(0, 5),
        where=st.integers(0, 2),
        priorities=st.lists(st.integers(1, 10), min_size=1, max_size=4),
    )
    def submit(self, fn: int, where: int, priorities: list[int]) -> None:
        decorated = self.functions[fn % len(self.functions)]
        account = self.targets[where]
        for p in priorities:
            gate: asyncio.Future[str] = self.loop.create_future()
            task = self.loop.create_task(decorated.with_priority(p)(account, gate))
            self.calls.append((task, gate))

    @rule(rounds=st.integers(1, 5))
    def progress(self, rounds: int) -> None:
        self._spin(rounds)

    @rule(picks=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["ok", "fail"]))))
    @precondition(lambda self: any(not g.done() for _, g in self.calls))
    def finish(self, picks: list[tuple[int, str]]) -> None:
        for pick, outcome in picks:
            open_gates = [g for _, g in self.calls if not g.done()]
            if open_gates:
                open_gates[pick % len(open_gates)].set_result(outcome)
        self._spin(3)

    @rule(pick=st.integers(0, 10_000))
    @precondition(lambda self: any(not t.done() for t, _ in self.calls))
    def cancel(self, pick: int) -> None:
        running = [t for t, _ in self.calls if not t.done()]
        running[pick % len(running)].cancel()
        self._spin(3)

    @rule(seconds=st.sampled_from([1, 30, 61, 119, 600, 1800, 3600]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self._spin(4)

    @rule()
    def sweep(self) -> None:
        self._run(self.rt.cleanup.sweep())

    @rule(pressure=st.sampled_from([0.0, 0.5, 0.95]))
    def set_pressure(self, pressure: float) -> None:
        self.rt.memory.set_probe(lambda: pressure)

    @rule(where=st.integers(0, 2), pick=st.integers(0, 10_000))
    def query(self, where: int, pick: int) -> None:
        ids = list(self.backend.seen)
        op_id = ids[pick % len(ids)] if ids else None
        self._run(self._query(self.targets[where].ecs_id, op_id))

    async def _query(self, target_id: UUID, op_id: UUID | None) -> None:
        now = self.clock.now()
        zombies = await self.rt.registry.zombies()
        on_target = await self.rt.registry.operations_for_target(target_id)
        for op in zombies + on_target:
            assert not (
                op.cleanup_strategy is CleanupStrategy.LAZY
                and op.cleanup_scheduled_at is not None
                and op.cleanup_scheduled_at <= now
            ), "a query returned a lazy zombie that was due"
        assert {o.ecs_id for o in zombies} == {o.ecs_id for o in await self.backend.zombies()}
        assert {o.ecs_id for o in on_target} == {
            o.ecs_id for o in await self.backend.operations_for_target(target_id)
        }
        if op_id is not None:
            got = await self.rt.registry.get_operation(op_id)
            assert got is None or got is self.backend.seen[op_id].view()

    # invariants ---------------------------------------------------------------------------------
    @invariant()
    def one_state_each_and_terminal_states_stick(self) -> None:
        buckets: Counter[UUID] = Counter()
        for status in OperationStatus:
            for op in self._peek(self.backend.operations_with_status(status)):
                assert op.status is status, f"{op.ecs_id} indexed as {status} but is {op.status}"
                buckets[op.ecs_id] += 1
        assert all(n == 1 for n in buckets.values())
        assert len(buckets) == self.backend.operation_count()
        for op_id, op in self.backend.seen.items():
            first = self.first_terminal.get(op_id)
            if first is not None:
                assert op.status is first, f"terminal {first} of {op_id} became {op.status}"
            elif op.status in TERMINAL:
                self.first_terminal[op_id] = op.status
            if op.status in ZOMBIE:
                self.ever_zombie.add(op_id)

    @invariant()
    def answered_callers_have_terminal_records(self) -> None:
        for op_id, task in self.backend.task_of.items():
            if task is not None and task.done():
                assert self.backend.seen[op_id].status in TERMINAL

    @invariant()
    def zombie_counter_matches_records(self) -> None:
        present = self._peek(self.backend.zombies())
        assert all(op.status in ZOMBIE for op in present)
        assert self.backend.zombie_count == len(present)
        in_registry = [
            op for op in self.backend.seen.values() if op.status in ZOMBIE and self._present(op)
        ]
        assert len(in_registry) == len(present)
        gauge = sum(
            s.value
            for m in self.rt.metrics.current_zombie_count_by_target.collect()
            for s in m.samples
        )
        assert gauge == len(present)

    @invariant()
    def removals_counted_and_announced_once(self) -> None:
        left = {i for i in self.ever_zombie if not self._present(self.backend.seen[i])}
        announced = Counter(e.op_id for e, _ in self.cleaned)
        assert all(n == 1 for n in announced.values()), "a removal was announced twice"
        assert set(announced) == left
        assert sum(self.rt.cleanup.removed.values()) == len(left)

    @invariant()
    def nothing_leaves_early(self) -> None:
        for event, at in self.cleaned:
            if event.reason in ANYTIME_REASONS:
                continue
            op = self.backend.seen[event.op_id]
            assert event.reason in {"ttl", "lazy"}, event.reason
            assert op.cleanup_scheduled_at is not None
            assert at >= op.cleanup_scheduled_at.timestamp(), (
                f"{event.op_id} left by {event.reason} at {at}, due "
                f"{op.cleanup_scheduled_at.timestamp()}"
            )

    def _present(self, op: ConflictResolutionOperation) -> bool:
        return self._peek(self.backend.get_operation(op.ecs_id)) is op

    def teardown(self) -> None:
        try:
            for task, _ in self.calls:
                task.cancel()
            tasks = [t for t, _ in self.calls]
            if tasks:
                self._run(asyncio.gather(*tasks, return_exceptions=True))
            self.answered_callers_have_terminal_records()
            self.one_state_each_and_terminal_states_stick()
            self.zombie_counter_matches_records()
            self.removals_counted_and_announced_once()
            assert self.backend.coordinator.in_flight() == 0
        finally:
            self.rt.cleanup.stop()
            self._spin(2)
            self.loop.close()
            CleanupHandlerRegistry.unregister(CUSTOM_NAME)


def _cleanup(strategy: CleanupStrategy, *, cap: int, retention: int) -> CleanupConfig:
    if strategy is CleanupStrategy.DEFERRED and retention == 0:
        retention = 1
    return CleanupConfig(
        strategy=strategy,
        retention_minutes=retention,
        max_zombie_count_per_target=cap,
        force_cleanup_threshold=100,
        custom_cleanup_handler=CUSTOM_NAME if strategy is CleanupStrategy.CUSTOM else None,
        cleanup_check_interval_seconds=10,
    )


RuntimeMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRuntimeMachine = RuntimeMachine.TestCase
