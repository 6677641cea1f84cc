"""Redis against a hand-written Lua script: what contend's coordination costs over the least a
user would write by hand (issue 13's baseline).

One local redis-server, started for the run on a free port; one process; TASKS concurrent tasks,
each making sequential deposits on an account of its own, so no call ever meets another. Variants:

- ``lua``: the peer, a compare-and-set script written the way a user would with redis-py's asyncio
  client: the client keeps each account's state and version; one ``EVALSHA`` per deposit reads
  the version, compares, and writes the state and the version + 1 (a mismatch returns the stored
  state for a retry);
- ``watch``: ``WATCH``, ``GET``, then ``MULTI``/``SET``/``EXEC`` (retried on a ``WatchError``);
- ``lock``: redis-py's asyncio ``Lock`` around ``GET`` + ``SET``;
- ``occ``: contend, OCC only (staging off);
- ``staged``: contend, staged + OCC (the default staging config);
- ``staged0``: the same with the backend's ``min_window_ms=0``;
- ``wait``: staged + OCC under the ``wait`` conflict policy.

For each: ops/s, and its ratio to the Lua peer of the same run (the variants take turns, each
repetition runs every variant once; medians); round trips per call (writes to a socket, counted
in redis-py's connection class, while one task alone makes sequential calls); Redis commands run
inside scripts per call (``INFO commandstats``: every command Redis ran, minus those the client
sent, counted in the same class); Redis CPU per call (``INFO cpu``: used_cpu_sys +
used_cpu_user). The last rows count the client's machine instructions (valgrind, as
instructions.py does: two runs of different length, the difference over the extra calls) per
round trip of redis-py's asyncio client against a lean asyncio + hiredis client, and per call of
the Lua peer and of contend, so the transport's share of a call is known.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from _common import Account, Row, deposit, instructions, main, row  # noqa: E402
from redis.asyncio.connection import AbstractConnection  # noqa: E402
from redis.exceptions import WatchError  # noqa: E402
from redis_throughput import _start_redis  # noqa: E402

from contend import PreECSConfig, Runtime, with_conflict_resolution  # noqa: E402
from contend.backends.redis import RedisBackend  # noqa: E402

TASKS = 32
VARIANTS: dict[str, str] = {
    "lua": "hand-written Lua compare-and-set (the peer)",
    "watch": "WATCH/MULTI/EXEC",
    "lock": "redis-py asyncio Lock + GET/SET",
    "occ": "contend, OCC only",
    "staged": "contend, staged + OCC (default)",
    "staged0": "contend, staged + OCC, min_window_ms=0",
    "wait": "contend, staged + OCC, wait policy",
}
PEER = "lua"

CAS = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then
  return {0, v, redis.call('HGET', KEYS[1], 'd') or ''}
end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 'v', v + 1)
return {1, v + 1}
"""


# the variants ------------------------------------------------------------------------------------
class Variant(Protocol):
    async def deposit(self, i: int) -> None: ...

    async def settle(self) -> None:
        """Until what the calls left to write in the background is written."""

    async def close(self) -> None: ...


class _Plain:
    """The hand-written variants: a client (decoding replies) and one key per account."""

    def __init__(self, client: Any, prefix: str, accounts: int = TASKS) -> None:
        self.client = client
        self.keys = [f"{prefix}:acct:{i}" for i in range(accounts)]

    async def settle(self) -> None:
        pass

    async def close(self) -> None:
        await self.client.aclose()


class LuaPeer(_Plain):
    """The peer: the client keeps state and version; one EVALSHA compares and writes."""

    def __init__(self, client: Any, prefix: str, accounts: int = TASKS) -> None:
        super().__init__(client, prefix, accounts)
        self.cas = self.client.register_script(CAS)
        self.state: list[dict[str, Any]] = [{"balance": 0} for _ in range(accounts)]
        self.version = [0] * accounts

    async def deposit(self, i: int) -> None:
        while True:
            new = {**self.state[i], "balance": self.state[i]["balance"] + 1}
            ok, version, *stored = await self.cas(
                keys=[self.keys[i]], args=[self.version[i], json.dumps(new)]
            )
            self.version[i] = int(version)
            if ok:
                self.state[i] = new
                return
            self.state[i] = json.loads(stored[0]) if stored[0] else {"balance": 0}


class WatchMultiExec(_Plain):
    async def deposit(self, i: int) -> None:
        key = self.keys[i]
        async with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    state = json.loads(raw) if raw else {"balance": 0}
                    state["balance"] += 1
                    pipe.multi()
                    pipe.set(key, json.dumps(state))
                    await pipe.execute()
                    return
                except WatchError:
                    continue


class LockGetSet(_Plain):
    async def deposit(self, i: int) -> None:
        key = self.keys[i]
        async with self.client.lock(f"{key}:lock", timeout=10, blocking_timeout=10):
            raw = await self.client.get(key)
            state = json.loads(raw) if raw else {"balance": 0}
            state["balance"] += 1
            await self.client.set(key, json.dumps(state))


class Contend:
    """contend's decorator on a RedisBackend, in the variant's staging config."""

    def __init__(self, backend: RedisBackend, variant: str, accounts: int = TASKS) -> None:
        self.backend = backend
        self.rt = Runtime(backend=backend, memory_probe=lambda: 0.0)
        pre_ecs: PreECSConfig | bool = {
            "occ": False,
            "wait": PreECSConfig(conflict_policy="wait"),
        }.get(variant, True)
        self.fn = with_conflict_resolution(pre_ecs=pre_ecs, occ=True, runtime=self.rt)(deposit)
        self.accounts = [Account() for _ in range(accounts)]

    async def deposit(self, i: int) -> None:
        await self.fn(self.accounts[i], 1)

    async def settle(self) -> None:
        await self.backend.flush()

    async def close(self) -> None:
        self.rt.cleanup.stop()
        await self.rt.aclose()


async def deposits_until(impl: Variant, tasks: int, stop: float) -> int:
    """`tasks` tasks, task i depositing on account i again and again until `time.time()` passes
    `stop`; how many deposits were made."""
    done = 0

    async def task(i: int) -> None:
        nonlocal done
        while time.time() < stop:
            await impl.deposit(i)
            done += 1

    await asyncio.gather(*(task(i) for i in range(tasks)))
    return done


def _make(variant: str, url: str, prefix: str) -> Variant:
    if variant in ("lua", "watch", "lock"):
        kind = {"lua": LuaPeer, "watch": WatchMultiExec, "lock": LockGetSet}[variant]
        return kind(aioredis.Redis.from_url(url, decode_responses=True), prefix)
    min_window_ms = 0 if variant == "staged0" else 2
    return Contend(RedisBackend.from_url(url, prefix=prefix, min_window_ms=min_window_ms), variant)


# counting ----------------------------------------------------------------------------------------
@dataclass
class Sent:
    """Writes to a socket (round trips: a pipeline is one) and commands packed, by every redis-py
    asyncio connection of this process while `counting()` is on."""

    writes: int = 0
    commands: int = 0


@contextlib.contextmanager
def counting() -> Iterator[Sent]:
    sent = Sent()
    send = AbstractConnection.send_packed_command
    pack = AbstractConnection.pack_command

    async def counted_send(self: Any, *args: Any, **kwargs: Any) -> None:
        sent.writes += 1
        await send(self, *args, **kwargs)

    def counted_pack(self: Any, *args: Any) -> Any:
        sent.commands += 1
        return pack(self, *args)

    AbstractConnection.send_packed_command = counted_send  # type: ignore[method-assign]
    AbstractConnection.pack_command = counted_pack  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        AbstractConnection.pack_command = pack  # type: ignore[method-assign]


@dataclass
class ServerStats:
    """What Redis says it did: commands by name (``INFO commandstats``) and CPU seconds."""

    commands: dict[str, int]
    cpu: float

    @classmethod
    def read(cls, client: redis.Redis) -> ServerStats:
        stats = client.info("commandstats")
        cpu = client.info("cpu")
        return cls(
            {
                name.removeprefix("cmdstat_"): int(v["calls"])
                for name, v in stats.items()
                if name != "cmdstat_info"
            },
            float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        )

    def since(self, before: ServerStats) -> ServerStats:
        return ServerStats(
            {
                k: n - before.commands.get(k, 0)
                for k, n in self.commands.items()
                if n != before.commands.get(k, 0)
            },
            self.cpu - before.cpu,
        )


@dataclass
class Measure:
    """One variant, one repetition."""

    ops: float
    round_trips: float
    in_scripts: float
    cpu_us: float
    by_command: dict[str, float]


async def _phase(variant: str, url: str, port: int, seconds: float, sequential: int) -> Measure:
    impl = _make(variant, url, f"peer-{variant}-{uuid.uuid4().hex[:8]}")
    server = redis.Redis(port=port, decode_responses=True)
    try:
        with counting() as sent:
            # first use, all at once: scripts loaded, entities registered, pub/sub subscribed,
            # and as many connections opened as the timed run will use
            await asyncio.gather(*(impl.deposit(i) for i in range(TASKS)))
            await impl.settle()

            writes = sent.writes
            for _ in range(sequential):
                await impl.deposit(0)
            await impl.settle()
            round_trips = (sent.writes - writes) / sequential

            before, commands = ServerStats.read(server), sent.commands
            started = time.perf_counter()
            done = await deposits_until(impl, TASKS, time.time() + seconds)
            elapsed = time.perf_counter() - started
            await impl.settle()
            delta = ServerStats.read(server).since(before)
            client_commands = sent.commands - commands
    finally:
        await impl.close()
        server.close()
    return Measure(
        ops=done / elapsed,
        round_trips=round_trips,
        in_scripts=(sum(delta.commands.values()) - client_commands) / done,
        cpu_us=delta.cpu * 1e6 / done,
        by_command={k: n / done for k, n in delta.commands.items()},
    )


# client instructions (valgrind) ------------------------------------------------------------------
CLIENT_WORKLOADS = ("redis-py", "lean", "lua", "occ", "staged")


class _Lean(asyncio.Protocol):
    """The least an asyncio client does per round trip: pack, write, parse with hiredis, wake."""

    def __init__(self) -> None:
        import hiredis

        self.pack = hiredis.pack_command
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport = cast(asyncio.Transport, None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.popleft().set_result(reply)

    def call(self, *args: str) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.transport.write(self.pack(args))
        return fut


async def _client_child(workload: str, calls: int, port: int) -> None:
    url = f"redis://127.0.0.1:{port}/0"
    if workload == "lean":
        _, lean = await asyncio.get_running_loop().create_connection(_Lean, "127.0.0.1", port)
        for _ in range(calls):
            await lean.call("GET", "k")
        return
    if workload == "redis-py":
        client = aioredis.Redis.from_url(url, decode_responses=True)
        await client.get("k")
        for _ in range(calls):
            await client.get("k")
        await client.aclose()
        return
    impl = _make(workload, url, f"vg-{workload}-{uuid.uuid4().hex[:8]}")
    await impl.deposit(0)
    for _ in range(calls):
        await impl.deposit(0)
    await impl.settle()
    await impl.close()


def _instructions(workload: str, calls: int, port: int) -> int:
    return instructions(Path(__file__).resolve(), "--child", workload, str(calls), str(port))


def _client_rows(port: int, quick: bool, staged_round_trips: float) -> list[Row]:
    if shutil.which("valgrind") is None:
        return [
            row(
                "client instructions per round trip",
                None,
                "instr",
                note="valgrind is not installed (Debian: apt-get install valgrind)",
            )
        ]
    # (short, long) runs: a round trip is cheap, so the transport runs make more of them
    calls = {
        True: {"transport": (200, 2200), "call": (50, 350)},
        False: {"transport": (400, 6400), "call": (100, 1100)},
    }[quick]

    def per(workload: str) -> float:
        short, long = calls["transport" if workload in ("redis-py", "lean") else "call"]
        extra = _instructions(workload, long, port) - _instructions(workload, short, port)
        return extra / (long - short)

    with ThreadPoolExecutor(max_workers=2) as pool:
        got = dict(zip(CLIENT_WORKLOADS, pool.map(per, CLIENT_WORKLOADS), strict=True))
    spread = "start-up excluded (two runs, the difference over the extra calls)"
    return [
        row(
            "client instructions per round trip, redis-py asyncio (GET)",
            got["redis-py"],
            "instr",
            baseline=got["lean"],
            note=f"baseline: a lean asyncio Protocol + hiredis client, the same GET; {spread}",
        ),
        row(
            f"client instructions per call, {VARIANTS['lua']}",
            got["lua"],
            "instr",
            baseline=got["redis-py"],
            note="baseline: one redis-py round trip",
        ),
        row(
            f"client instructions per call, {VARIANTS['occ']}",
            got["occ"],
            "instr",
            baseline=got["lua"],
            note="baseline: the Lua peer's call",
        ),
        row(
            f"client instructions per call, {VARIANTS['staged']}",
            got["staged"],
            "instr",
            baseline=got["lua"],
            note="baseline: the Lua peer's call",
        ),
        row(
            "transport's share of a staged call's client instructions",
            100 * staged_round_trips * got["redis-py"] / got["staged"],
            "%",
            note=f"{staged_round_trips:.2f} round trips x redis-py's instructions per GET round "
            "trip (a script's round trip carries more arguments: a lower bound)",
        ),
    ]


# the run -----------------------------------------------------------------------------------------
def _median(measures: list[Measure], field: str) -> float:
    return float(statistics.median(getattr(m, field) for m in measures))


def _tagged(r: Row, variant: str, figure: str) -> Row:
    return {**r, "variant": variant, "figure": figure}


def _variant_rows(variant: str, ms: list[Measure], peer: list[Measure]) -> list[Row]:
    label = VARIANTS[variant]
    is_peer = variant == PEER
    top = sorted(
        ((k, statistics.median(m.by_command.get(k, 0.0) for m in ms)) for k in ms[0].by_command),
        key=lambda kv: -kv[1],
    )
    commands = ", ".join(f"{k} {n:.1f}" for k, n in top[:8] if n >= 0.05)
    return [
        _tagged(
            row(
                f"{label}: ops/s",
                _median(ms, "ops"),
                "ops/s",
                baseline=None if is_peer else _median(peer, "ops"),
                note=f"{TASKS} tasks, one account each" if is_peer else "",
            ),
            variant,
            "ops",
        ),
        _tagged(
            row(f"{label}: round trips per call", _median(ms, "round_trips"), "RT"),
            variant,
            "round_trips",
        ),
        _tagged(
            row(
                f"{label}: Redis commands inside scripts per call",
                _median(ms, "in_scripts"),
                "cmds",
                note=f"every command Redis ran, per call: {commands}",
            ),
            variant,
            "in_scripts",
        ),
        _tagged(
            row(
                f"{label}: Redis CPU per call",
                _median(ms, "cpu_us"),
                "µs",
                baseline=None if is_peer else _median(peer, "cpu_us"),
            ),
            variant,
            "cpu_us",
        ),
    ]


def _goal_rows(results: dict[str, list[Measure]]) -> list[Row]:
    peer = _median(results[PEER], "ops")
    return [
        row(
            "goal: staged + OCC against the Lua peer",
            _median(results["staged"], "ops") / peer,
            "x",
            target=">= 0.5",
        ),
        row(
            "goal: OCC only against the Lua peer",
            _median(results["occ"], "ops") / peer,
            "x",
            target=">= 0.8",
        ),
        row(
            "goal: round trips per uncontended staged call",
            _median(results["staged"], "round_trips"),
            "RT",
            target="<= 2",
        ),
        row(
            "goal: Redis commands inside scripts per staged call",
            _median(results["staged"], "in_scripts"),
            "cmds",
            target="<= 12",
        ),
    ]


def run(quick: bool) -> list[Row]:
    seconds, reps, sequential = (1.0, 1, 50) if quick else (3.0, 3, 200)
    proc, port = _start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    results: dict[str, list[Measure]] = {v: [] for v in VARIANTS}
    try:
        for _ in range(reps):
            for variant in VARIANTS:
                results[variant].append(
                    asyncio.run(_phase(variant, url, port, seconds, sequential))
                )
        rows: list[Row] = []
        for variant, measures in results.items():
            rows.extend(_variant_rows(variant, measures, results[PEER]))
        rows.extend(_goal_rows(results))
        rows.extend(_client_rows(port, quick, _median(results["staged"], "round_trips")))
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def summary(rows: list[Row]) -> str:
    """The variants' rows as one line each: ops/s, ratio to the peer, RT, commands, CPU."""
    head = ("variant", "ops/s", "vs peer", "RT/call", "cmds in scripts", "Redis CPU µs/call")
    table: dict[str, dict[str, Row]] = {}
    for r in rows:
        if "variant" in r:
            table.setdefault(r["variant"], {})[r["figure"]] = r
    lines = [head]
    for variant, figures in table.items():
        ops = figures["ops"]
        ratio = 1.0 if variant == PEER else ops["ratio"]
        lines.append(
            (
                VARIANTS[variant],
                f"{ops['value']:,.0f}",
                f"{ratio:.2f}",
                f"{figures['round_trips']['value']:.2f}",
                f"{figures['in_scripts']['value']:.1f}",
                f"{figures['cpu_us']['value']:.1f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _run_with_summary(quick: bool) -> list[Row]:
    rows = run(quick)
    print(summary(rows), end="\n\n")
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        asyncio.run(_client_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        main(_run_with_summary, __doc__ or "")
