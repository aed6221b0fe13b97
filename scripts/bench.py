"""The responses-bridge benchmark (issue 6): the bridge against a plain mitmproxy and no proxy.

Everything runs on loopback, side by side, against the bundled fake upstream
(``tests/fake_upstream.py`` in its own process, with a simulated connection set-up cost,
``--handshake-delay``, on every new websocket and every new HTTP connection):

- **direct**: a websocket client (the websockets library) talking to the fake: the floor;
- **passthrough**: an HTTP SSE client (httpx) → ``mitmdump`` *without* the addon (reverse mode,
  ``stream_large_bodies=1`` so SSE is relayed as it comes; mitmproxy's default buffers it) → the
  fake's plain-HTTP endpoint;
- **bridge**: the same HTTP client → ``mitmdump -s addon/bridge.py`` (reverse mode) → the fake's
  websocket.

Figures (medians over the runs, with min and max):

1. time to the first ``response.output_text.delta``: a fresh request on a new client connection,
   a fresh request on a warm one, and a follow-up (bridge and direct: ``previous_response_id`` on
   the same upstream socket; passthrough: a fresh HTTP request carrying the whole context), with
   ``--think-ms`` (50) between turns as in an agent loop; and a fresh request sent right after
   another (the bridge's warm-socket pool is then still refilling: the worst case);
2. relay throughput: wall time and events/s of one stream of 10,000 deltas;
3. a 20-turn chain (2 KB of user text per turn) with the fake's input cost at 0.2 ms/KB: the
   bridge and direct send only the new turn, passthrough re-sends the whole context every turn;
   and each proxy's CPU per turn (from ``/proc``, in 10 ms ticks: about ±0.5 ms a turn);
4. 100 concurrent streams: all complete? p50/p99 time to first delta;
5. memory: mitmdump's RSS per retained idle session, over 500 sessions;
6. lanes, with and without (``responses_bridge_lanes=false``) in one run, against a fake with a
   150 ms handshake: upstream sockets opened for 100 concurrent conversations of a new key,
   time to first delta of a burst of 8 follow-ups (of 8 chains) and then of 8 fresh requests
   sent at once, and the proxy's CPU per fresh request over 40 sequential ones.
7. HTTP/2: ten streamed requests of about 1.8 s at once on one client connection (regular
   mode, mitmproxy's CA): the spread of their first deltas, the wall time of all ten, and the
   proxy's CPU per request (``--addon`` an older copy to compare).

Prints a table and the command line, writes ``bench.json`` and ``bench.png`` (figures 1-3) to
``--out`` (default ``docs/``). ``--quick`` is a smoke check (about 40 s); the default run takes
about 1.5-2 minutes on two cores. ``--figures 13`` runs a subset, ``--addon PATH`` measures a
patched copy of ``bridge.py`` (its ``responses_bridge`` package is imported from beside it), and
``--bridge-set NAME=VALUE`` passes an option to the bridging mitmdump. Run it as
``scripts/bench [--runs N] [--quick] [--out DIR] ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import platform
import re
import shlex
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from tests.h2client import StreamResult, post_streams  # noqa: E402
from tests.harness import ADDON, Mitmdump, stop_process  # noqa: E402

Json = dict[str, Any]
MODES = ("direct", "passthrough", "bridge")
AUTH = "Bearer sk-bench-not-a-real-key"
MODEL = "gpt-fake"
TERMINALS = (
    b"event: response.completed",
    b"event: response.failed",
    b"event: response.incomplete",
    b"event: error",
)
WS_TERMINALS = tuple('{"type": "' + t.decode().removeprefix("event: ") + '"' for t in TERMINALS)
WS_DELTA = '{"type": "response.output_text.delta"'
SSE_DELTA = b"event: response.output_text.delta"


class BenchError(Exception):
    """A request that did not end with response.completed."""


# --------------------------------------------------------------------------- processes


class FakeProcess:
    """``tests/fake_upstream.py`` in its own process (so it never competes for our GIL)."""

    def __init__(self, *, handshake_delay: float, input_cost: float, log: Path) -> None:
        self._log = log.open("ab")
        command = [
            sys.executable,
            str(ROOT / "tests" / "fake_upstream.py"),
            "--port",
            "0",
            "--http-responses",
            "--handshake-delay",
            str(handshake_delay),
            "--input-cost-ms-per-kb",
            str(input_cost),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env, cwd=ROOT
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        if not found:
            self.stop()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.port = int(found.group(1))

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/responses"

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@dataclass
class Stack:
    """One fake upstream and, in front of it, a plain mitmdump and a bridging one."""

    fake: FakeProcess
    proxies: dict[str, Mitmdump]

    def url(self, mode: str) -> str:
        return f"{self.proxies[mode].base_url}/responses"

    def proxy_cpu(self, mode: str) -> float | None:
        """CPU seconds the proxy of ``mode`` has used so far; None for ``direct`` (no proxy)."""
        proxy = self.proxies.get(mode)
        return cpu_seconds(proxy.process.pid) if proxy else None

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        self.fake.stop()


@contextlib.contextmanager
def stack(
    cfg: Config, *, input_cost: float = 0.0, bridge_options: tuple[str, ...] = ()
) -> Iterator[Stack]:
    fake = FakeProcess(
        handshake_delay=cfg.handshake_delay, input_cost=input_cost, log=cfg.tmp / "fake.log"
    )
    reverse = ["--mode", f"reverse:http://127.0.0.1:{fake.port}"]
    bridge_args = [*reverse]
    for option in (*cfg.bridge_set, *bridge_options):
        bridge_args += ["--set", option]
    plans = {
        # Without stream_large_bodies mitmproxy buffers a whole SSE answer (mitmproxy#4469).
        "passthrough": ([*reverse, "--set", "stream_large_bodies=1"], False),
        "bridge": (bridge_args, True),
    }
    proxies: dict[str, Mitmdump] = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {
                mode: pool.submit(Mitmdump, args, cfg.confdir, addon=addon, script=cfg.script)
                for mode, (args, addon) in plans.items()
            }
            for mode, future in futures.items():
                proxies[mode] = future.result()
        cfg.commands.setdefault("passthrough", mitmdump_command(plans["passthrough"][0], None))
        cfg.commands.setdefault("bridge", mitmdump_command(bridge_args, cfg.script))
        yield Stack(fake, proxies)
    finally:
        Stack(fake, proxies).stop()


def mitmdump_command(args: list[str], addon: Path | None) -> str:
    shown = str(addon.relative_to(ROOT)) if addon and addon.is_relative_to(ROOT) else str(addon)
    script = ["-s", shown] if addon else []
    return shlex.join(["mitmdump", "--listen-host", "127.0.0.1", *script, *args])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- clients


def user_message(text: str) -> Json:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


@dataclass
class Result:
    """One answered request, timed from just before the connection/request."""

    ttfd: float  # seconds to the first output_text delta
    total: float  # seconds to the terminal event
    events: int
    response: Json
    sent_bytes: int
    state: str = ""  # x-responses-bridge


class Client:
    """One conversation-capable client: a websocket (direct) or an HTTP connection pool."""

    def __init__(self, mode: str, url: str, *, pool: int = 4, auth: str = AUTH) -> None:
        self.mode = mode
        self.url = url
        self.ws: ClientConnection | None = None
        self.http: httpx.AsyncClient | None = None
        if mode != "direct":
            self.http = httpx.AsyncClient(
                timeout=httpx.Timeout(120, connect=30),
                limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
                headers={"authorization": auth},
                trust_env=False,
            )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.aclose()

    async def turn(self, body: Json) -> Result:
        if self.mode == "direct":
            return await self._ws_turn(body)
        return await self._sse_turn(body)

    async def _ws_turn(self, body: Json) -> Result:
        started = time.perf_counter()
        if self.ws is None:
            self.ws = await connect(
                self.url,
                additional_headers={"Authorization": AUTH},
                compression=None,
                max_size=None,
                proxy=None,
                open_timeout=30,
            )
        frame = json.dumps({"type": "response.create", **body})
        await self.ws.send(frame)
        first: float | None = None
        events = 0
        async for message in self.ws:
            assert isinstance(message, str)
            events += 1
            if first is None and message.startswith(WS_DELTA):
                first = time.perf_counter()
            if message.startswith(WS_TERMINALS):
                end = time.perf_counter()
                event = json.loads(message)
                if event["type"] != "response.completed":
                    raise BenchError(f"direct: {message[:300]}")
                return Result(
                    (first or end) - started, end - started, events, event["response"], len(frame)
                )
        raise BenchError("direct: the socket closed mid-answer")

    async def _sse_turn(self, body: Json) -> Result:
        assert self.http is not None
        payload = json.dumps({**body, "stream": True}).encode()
        started = time.perf_counter()
        first: float | None = None
        events = 0
        result: Result | None = None
        async with self.http.stream(
            "POST", self.url, content=payload, headers={"content-type": "application/json"}
        ) as response:
            if response.status_code != 200:
                text = (await response.aread())[:300]
                raise BenchError(f"{self.mode}: HTTP {response.status_code}: {text!r}")
            state = response.headers.get("x-responses-bridge", "")
            buffer = b""
            async for chunk in response.aiter_raw():
                if result is not None:
                    continue  # read the body to its end, so the connection is reused
                buffer += chunk
                pos = 0
                while result is None:
                    cut = buffer.find(b"\n\n", pos)
                    if cut < 0:
                        break
                    events += 1
                    if first is None and buffer.startswith(SSE_DELTA, pos):
                        first = time.perf_counter()
                    if buffer.startswith(TERMINALS, pos):
                        end = time.perf_counter()
                        frame = buffer[pos:cut]
                        event = json.loads(frame.split(b"\ndata: ", 1)[1])
                        if event.get("type") != "response.completed":
                            raise BenchError(f"{self.mode}: {frame[:300]!r}")
                        result = Result(
                            (first or end) - started,
                            end - started,
                            events,
                            event["response"],
                            len(payload),
                            state,
                        )
                    pos = cut + 2
                buffer = buffer[pos:]
        if result is None:
            raise BenchError(f"{self.mode}: the stream ended without a terminal event")
        return result


def request_body(items: list[Json], previous: str | None = None) -> Json:
    body: Json = {"model": MODEL, "input": items, "store": False}
    if previous is not None:
        body["previous_response_id"] = previous
    return body


class Conversation:
    """A chain of turns the way each mode continues one."""

    def __init__(self, client: Client, *, full_history: bool | None = None) -> None:
        self.client = client
        # A stateless HTTP client re-sends the whole history (always, through passthrough).
        self.full_history = client.mode == "passthrough" if full_history is None else full_history
        self.history: list[Json] = []
        self.previous: str | None = None

    async def say(self, text: str) -> Result:
        message = user_message(text)
        if self.full_history:
            body = request_body([*self.history, message])
        else:
            body = request_body([message], self.previous)
        result = await self.client.turn(body)
        self.history += [message, *result.response.get("output", [])]
        self.previous = result.response["id"]
        return result


# --------------------------------------------------------------------------- stats


def summary(values: list[float], scale: float = 1.0) -> Json:
    if not values:
        return {"n": 0}
    scaled = [v * scale for v in values]
    return {
        "n": len(scaled),
        "median": statistics.median(scaled),
        "min": min(scaled),
        "max": max(scaled),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def rotated(run: int) -> tuple[str, ...]:
    """The modes in a different order each run, so drift does not favour one of them."""
    shift = run % len(MODES)
    return MODES[shift:] + MODES[:shift]


# --------------------------------------------------------------------------- figures


@dataclass
class Config:
    runs: int
    deltas: int
    throughput_runs: int
    chain_runs: int
    chain_turns: int
    turn_bytes: int
    input_cost: float
    concurrency: int
    concurrency_rounds: int
    sessions: int
    handshake_delay: float
    think: float  # seconds between the turns of figure 1
    figure_timeout: float
    out: Path
    tmp: Path
    confdir: Path
    script: Path = ADDON
    figures: str = "1234567"
    lane_runs: int = 3
    bridge_set: tuple[str, ...] = ()
    commands: dict[str, str] = field(default_factory=dict)


LATENCY_KEYS = ("fresh_new_conn", "fresh_warm_conn", "follow_up", "fresh_back_to_back")


async def figure_latency(cfg: Config, st: Stack) -> Json:
    """Figure 1: time to first delta of a fresh request (on a new and on a warm client
    connection), of a follow-up, and of a fresh request sent right after another fresh one.

    Turns are ``cfg.think`` seconds apart, as in an agent loop, where every turn lasts at least
    a model's answer (the fake answers in milliseconds, far faster than any model). The last
    one is sent with no pause: the bridge's pool of pre-opened sockets is then still refilling
    (the worst case for a fresh request; ``responses_bridge_warm_sockets`` > 1 covers bursts).
    """
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in LATENCY_KEYS} for m in MODES}
    states: dict[str, set[str]] = {m: set() for m in MODES}
    for mode in MODES:  # warm every path once (imports, first-connection costs)
        client = Client(mode, target(st, mode))
        await Conversation(client).say("warm-up fake:deltas=8")
        await client.close()
    for run in range(cfg.runs):
        for mode in rotated(run):
            await asyncio.sleep(cfg.think)
            client = Client(mode, target(st, mode))
            try:
                chain = Conversation(client)
                fresh = await chain.say(f"Hello number {run}, how are you? fake:deltas=8")
                await asyncio.sleep(cfg.think)
                follow = await chain.say(f"And a follow-up to {run}. fake:deltas=8")
                await asyncio.sleep(cfg.think)
                other = await Conversation(client).say(f"A new topic {run}. fake:deltas=8")
                burst = await Conversation(client).say(f"At once another {run}. fake:deltas=8")
            finally:
                await client.close()
            for key, result in zip(LATENCY_KEYS, (fresh, other, follow, burst), strict=True):
                samples[mode][key].append(result.ttfd)
            states[mode].update({f"fresh:{fresh.state}", f"follow:{follow.state}"})
    return {
        "unit": "ms",
        "think_ms": cfg.think * 1000,
        "modes": {m: {k: summary(v, 1000) for k, v in samples[m].items()} for m in MODES},
        "bridge_socket_states": sorted(states["bridge"]),
        "raw_ms": {m: {k: [x * 1000 for x in v] for k, v in samples[m].items()} for m in MODES},
    }


async def figure_throughput(cfg: Config, st: Stack) -> Json:
    """Figure 2: one stream of ``cfg.deltas`` deltas: wall time and events/s."""
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    events: dict[str, int] = {}
    clients = {m: Client(m, target(st, m)) for m in MODES}
    try:
        for mode in MODES:
            await clients[mode].turn(request_body([user_message("warm-up fake:deltas=200")]))
        for run in range(cfg.throughput_runs):
            for mode in rotated(run):
                text = f"Stream {run} please. fake:deltas={cfg.deltas}"
                cpu_before = st.proxy_cpu(mode)
                result = await clients[mode].turn(request_body([user_message(text)]))
                cpu_after = st.proxy_cpu(mode)
                if cpu_before is not None and cpu_after is not None:
                    cpu[mode].append(cpu_after - cpu_before)
                walls[mode].append(result.total)
                rates[mode].append(result.events / result.total)
                events[mode] = result.events
    finally:
        for client in clients.values():
            await client.close()
    return {
        "deltas": cfg.deltas,
        "events": events,
        "modes": {
            m: {
                "wall_s": summary(walls[m]),
                "events_per_s": summary(rates[m]),
                "proxy_cpu_s": summary(cpu[m]),
            }
            for m in MODES
        },
    }


def turn_text(run: int, turn: int, size: int) -> str:
    words = (
        "the quick brown fox jumps over the lazy dog while the bridge keeps the socket "
        "warm and the chain grows one turn at a time "
    )
    head = f"Chain {run} turn {turn}: "
    filler = (words * (size // len(words) + 2))[: max(0, size - len(head))]
    return f"{head}{filler} fake:brief fake:deltas=16"


# Figure 3 also runs a stateless client (whole history every turn) through the bridge.
CHAIN_MODES = (*MODES, "bridge_full")


def chain_client(st: Stack, mode: str) -> tuple[Client, bool | None]:
    if mode == "bridge_full":
        return Client("bridge", target(st, "bridge")), True
    return Client(mode, target(st, mode)), None


async def figure_chain(cfg: Config, st: Stack) -> Json:
    """Figure 3: a chain of ``cfg.chain_turns`` turns with the fake's input cost on."""
    modes = CHAIN_MODES
    walls: dict[str, list[float]] = {m: [] for m in modes}
    per_turn: dict[str, list[list[float]]] = {m: [] for m in modes}
    per_turn_total: dict[str, list[list[float]]] = {m: [] for m in modes}
    uploaded: dict[str, list[int]] = {m: [] for m in modes}
    proxy_cpu: dict[str, list[float]] = {m: [] for m in modes}
    states: dict[str, set[str]] = {m: set() for m in modes}
    for mode in modes:
        client, full = chain_client(st, mode)
        await Conversation(client, full_history=full).say("warm-up fake:brief")
        await client.close()
    for run in range(cfg.chain_runs):
        for mode in modes[run % len(modes) :] + modes[: run % len(modes)]:
            client, full = chain_client(st, mode)
            chain = Conversation(client, full_history=full)
            ttfds: list[float] = []
            totals: list[float] = []
            sent = 0
            cpu_before = st.proxy_cpu(client.mode)
            started = time.perf_counter()
            try:
                for turn in range(1, cfg.chain_turns + 1):
                    result = await chain.say(turn_text(run, turn, cfg.turn_bytes))
                    ttfds.append(result.ttfd)
                    totals.append(result.total)
                    sent += result.sent_bytes
                    states[mode].add(result.state)
                    expected = f"context: {turn} user messages"
                    text = result.response["output"][0]["content"][0]["text"]
                    if expected not in text:
                        raise BenchError(f"{mode}: turn {turn} saw the wrong context: {text!r}")
            finally:
                await client.close()
            walls[mode].append(time.perf_counter() - started)
            cpu_after = st.proxy_cpu(client.mode)
            if cpu_before is not None and cpu_after is not None:
                proxy_cpu[mode].append(cpu_after - cpu_before)
            per_turn[mode].append(ttfds)
            per_turn_total[mode].append(totals)
            uploaded[mode].append(sent)
    medians = {
        m: [statistics.median(col) * 1000 for col in zip(*per_turn[m], strict=True)] for m in modes
    }
    return {
        "turns": cfg.chain_turns,
        "turn_bytes": cfg.turn_bytes,
        "input_cost_ms_per_kb": cfg.input_cost,
        "modes": {
            m: {
                "chain_wall_ms": summary(walls[m], 1000),
                "follow_up_ttfd_ms": summary([t for chain in per_turn[m] for t in chain[1:]], 1000),
                "last_turn_ttfd_ms": summary([chain[-1] for chain in per_turn[m]], 1000),
                "uploaded_bytes": summary([float(u) for u in uploaded[m]]),
                "proxy_cpu_per_turn_ms": (
                    summary(proxy_cpu[m], 1000 / cfg.chain_turns) if proxy_cpu[m] else None
                ),
            }
            for m in modes
        },
        "per_turn_ttfd_ms_median": medians,
        "per_turn_total_ms_median": {
            m: [statistics.median(col) * 1000 for col in zip(*per_turn_total[m], strict=True)]
            for m in modes
        },
        "bridge_socket_states": sorted(states["bridge"]),
        "bridge_full_socket_states": sorted(states["bridge_full"]),
    }


CONCURRENCY_WORKLOADS = {
    # 50 deltas 4 ms apart: the streams overlap, the way agents' parallel calls do.
    "streaming": "fake:deltas=50 fake:slow=4",
    # One delta, no pause: what is left is each proxy's own cost of a new connection and request,
    # all of it on mitmproxy's one thread (the floor for any addon).
    "one_delta": "fake:deltas=1",
}


async def concurrent_round(cfg: Config, st: Stack, mode: str, directives: str) -> Json:
    """``cfg.concurrency`` fresh requests at once, each on its own new connection."""
    clients = [Client(mode, target(st, mode), pool=1) for _ in range(cfg.concurrency)]
    gate = asyncio.Event()

    async def one(index: int, client: Client) -> Result:
        await gate.wait()
        text = f"Concurrent {index}. {directives}"
        return await client.turn(request_body([user_message(text)]))

    tasks = [asyncio.create_task(one(i, c)) for i, c in enumerate(clients)]
    await asyncio.sleep(0.05)
    cpu_before = st.proxy_cpu(mode)
    started = time.perf_counter()
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - started
    cpu_after = st.proxy_cpu(mode)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    ok = [o for o in outcomes if isinstance(o, Result)]
    errors = [repr(o)[:200] for o in outcomes if not isinstance(o, Result)]
    ttfd = [o.ttfd for o in ok]
    return {
        "completed": len(ok),
        "errors": errors[:5],
        "error_count": len(errors),
        "ttfd_p50_ms": percentile(ttfd, 0.5) * 1000 if ttfd else None,
        "ttfd_p99_ms": percentile(ttfd, 0.99) * 1000 if ttfd else None,
        "total_p50_ms": percentile([o.total for o in ok], 0.5) * 1000 if ok else None,
        "wall_ms": wall * 1000,
        "proxy_cpu_ms_per_stream": None if cpu is None else cpu * 1000 / cfg.concurrency,
    }


async def figure_concurrency(cfg: Config, st: Stack) -> Json:
    """Figure 4: ``cfg.concurrency`` streams at once, each on its own connection; the main
    workload overlapping streams, and one-delta streams for each proxy's floor."""
    rounds: dict[str, dict[str, list[Json]]] = {
        w: {m: [] for m in MODES} for w in CONCURRENCY_WORKLOADS
    }
    for run in range(cfg.concurrency_rounds):
        for workload, directives in CONCURRENCY_WORKLOADS.items():
            for mode in rotated(run):
                rounds[workload][mode].append(await concurrent_round(cfg, st, mode, directives))
    out: Json = {"concurrency": cfg.concurrency, "workloads": CONCURRENCY_WORKLOADS}
    for workload, by_mode in rounds.items():
        modes: Json = {}
        for mode in MODES:
            rs = by_mode[mode]
            modes[mode] = {
                "completed_min": min(r["completed"] for r in rs),
                "of": cfg.concurrency,
                **{
                    key: summary([r[key] for r in rs if r[key] is not None])
                    for key in (
                        "ttfd_p50_ms",
                        "ttfd_p99_ms",
                        "total_p50_ms",
                        "wall_ms",
                        "proxy_cpu_ms_per_stream",
                    )
                },
            }
        # The streaming workload's figures stay where earlier results have them.
        if workload == "streaming":
            out["rounds"] = by_mode
            out["modes"] = modes
        else:
            out[workload] = {"rounds": by_mode, "modes": modes}
    return out


async def figure_memory(cfg: Config) -> Json:
    """Figure 5: mitmdump RSS per retained idle session (and a passthrough baseline)."""
    fake = FakeProcess(handshake_delay=0.0, input_cost=0.0, log=cfg.tmp / "fake.log")
    reverse = ["--mode", f"reverse:http://127.0.0.1:{fake.port}"]
    results: Json = {"sessions": cfg.sessions}
    try:
        for mode in ("bridge", "passthrough"):
            if mode == "bridge":
                args = [
                    *reverse,
                    "--set",
                    f"responses_bridge_max_sessions={cfg.sessions + 100}",
                ]
                for option in cfg.bridge_set:
                    args += ["--set", option]
            else:
                args = [*reverse, "--set", "stream_large_bodies=1"]
            proxy = await asyncio.to_thread(
                Mitmdump, args, cfg.confdir, addon=mode == "bridge", script=cfg.script
            )
            try:
                results[mode] = await _fill_sessions(cfg, mode, proxy)
            finally:
                proxy.stop()
    finally:
        fake.stop()
    return results


async def _fill_sessions(cfg: Config, mode: str, proxy: Mitmdump) -> Json:
    pid = proxy.process.pid
    client = Client(mode, f"{proxy.base_url}/responses", pool=25)
    states: dict[str, int] = {}

    async def chains(count: int, tag: str) -> None:
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                index = queue.pop()
                result = await client.turn(
                    request_body([user_message(f"Session {tag}-{index}, hello.")])
                )
                states[result.state] = states.get(result.state, 0) + 1

        await asyncio.gather(*(worker() for _ in range(25)))

    try:
        await chains(50, "warm")
        await asyncio.sleep(1.0)
        fds_before = len(os.listdir(f"/proc/{pid}/fd"))
        before = rss_kib(pid)
        await chains(cfg.sessions, "idle")
        await asyncio.sleep(2.0)
        after = rss_kib(pid)
        fds_after = len(os.listdir(f"/proc/{pid}/fd"))
    finally:
        await client.close()
    return {
        "rss_before_kib": before,
        "rss_after_kib": after,
        "per_session_kib": (after - before) / cfg.sessions,
        "open_fds_added": fds_after - fds_before,
        "answers": states,
    }


LANE_VARIANTS = {"lanes": (), "no_lanes": ("responses_bridge_lanes=false",)}


async def figure_lanes(cfg: Config) -> Json:
    """Figure 6: what lanes change for one key's many conversations (see the docstring)."""
    fake = FakeProcess(handshake_delay=0.15, input_cost=0.0, log=cfg.tmp / "fake.log")
    reverse = ["--mode", f"reverse:http://127.0.0.1:{fake.port}"]
    proxies: dict[str, Mitmdump] = {}
    samples: dict[str, dict[str, list[float]]] = {
        v: {"sockets_for_100": [], "burst_follow_up_p50_ms": [], "burst_ttfd_p50_ms": [],
            "burst_ttfd_max_ms": [], "cpu_ms_per_fresh": []}
        for v in LANE_VARIANTS
    }  # fmt: skip
    stats_url = f"http://127.0.0.1:{fake.port}/fake-stats"

    async def connections() -> int:
        async with httpx.AsyncClient(trust_env=False) as http:
            return int((await http.get(stats_url)).json()["connections"])

    async def fresh(url: str, text: str, auth: str = AUTH) -> Result:
        client = Client("bridge", url, pool=1, auth=auth)
        try:
            return await client.turn(request_body([user_message(text)]))
        finally:
            await client.close()

    async def burst(clients: list[Client], bodies: list[Json]) -> list[float]:
        """Time to first delta (ms) of each body sent at once, each on its own client made
        beforehand (making an httpx client costs milliseconds of the bench's own CPU)."""
        results = await asyncio.gather(*(c.turn(b) for c, b in zip(clients, bodies, strict=True)))
        return [r.ttfd * 1000 for r in results]

    try:
        for variant, options in LANE_VARIANTS.items():
            args = [*reverse, "--set", "responses_bridge_max_sessions=2000"]
            for option in (*cfg.bridge_set, *options):
                args += ["--set", option]
            proxies[variant] = await asyncio.to_thread(
                Mitmdump, args, cfg.confdir, addon=True, script=cfg.script
            )
        for run in range(cfg.lane_runs):
            order = list(LANE_VARIANTS)[:: 1 if run % 2 == 0 else -1]
            for variant in order:
                proxy = proxies[variant]
                url = f"{proxy.base_url}/responses"
                got = samples[variant]
                # A key of its own per run and variant: its sockets are all opened here.
                key = f"Bearer sk-bench-lanes-{variant}-{run}"
                before = await connections()
                await asyncio.gather(
                    *(fresh(url, f"Conversation {run}-{i}. fake:deltas=8", key) for i in range(100))
                )
                got["sockets_for_100"].append(await connections() - before)
                clients = [Client("bridge", url, pool=1) for _ in range(8)]
                try:
                    heads = [
                        await c.turn(
                            request_body([user_message(f"Chain {run}-{i}. fake:deltas=8")])
                        )
                        for i, c in enumerate(clients)
                    ]
                    await asyncio.sleep(0.5)  # the warm pool, where there is one, is refilled
                    follow = await burst(
                        clients,
                        [
                            request_body([user_message("Go on. fake:deltas=8")], h.response["id"])
                            for h in heads
                        ],
                    )
                    await asyncio.sleep(0.5)
                    ttfd = await burst(
                        clients,
                        [
                            request_body([user_message(f"Burst {run}-{i}. fake:deltas=8")])
                            for i in range(8)
                        ],
                    )
                finally:
                    for c in clients:
                        await c.close()
                got["burst_follow_up_p50_ms"].append(percentile(follow, 0.5))
                got["burst_ttfd_p50_ms"].append(percentile(ttfd, 0.5))
                got["burst_ttfd_max_ms"].append(max(ttfd))
                cpu_before = cpu_seconds(proxy.process.pid)
                for index in range(40):
                    await fresh(url, f"Sequential {run}-{index}. fake:deltas=8")
                    await asyncio.sleep(0.02)
                spent = cpu_seconds(proxy.process.pid) - cpu_before
                got["cpu_ms_per_fresh"].append(spent * 1000 / 40)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        fake.stop()
    return {
        "handshake_ms": 150,
        "runs": cfg.lane_runs,
        "variants": {
            v: {key: summary(values) for key, values in got.items()} for v, got in samples.items()
        },
        "raw": samples,
    }


H2_STREAMS = 10


async def figure_http2(cfg: Config) -> Json:
    """Figure 7: ten streamed requests at once on one HTTP/2 client connection (regular mode,
    mitmproxy's CA), each about a second long: the spread of their first deltas, the wall time
    of all ten, and the proxy's CPU per request."""
    fake = FakeProcess(handshake_delay=0.0, input_cost=0.0, log=cfg.tmp / "fake-h2.log")
    args = ["--mode", "regular", "--set", f"responses_bridge_upstream={fake.ws_url}"]
    for option in cfg.bridge_set:
        args += ["--set", option]
    got: dict[str, list[float]] = {
        "first_delta_spread_ms": [],
        "wall_s": [],
        "cpu_ms_per_request": [],
    }
    proxy: Mitmdump | None = None
    try:
        proxy = await asyncio.to_thread(
            Mitmdump, args, cfg.tmp / "h2-conf", addon=True, script=cfg.script
        )
        ca = ssl.create_default_context(cafile=str(proxy.confdir / "mitmproxy-ca-cert.pem"))
        headers = [("content-type", "application/json"), ("authorization", AUTH)]

        def batch(tag: str) -> list[bytes]:
            return [
                json.dumps(
                    request_body([user_message(f"{tag} {i}. fake:deltas=10 fake:slow=100")])
                    | {"stream": True}
                ).encode()
                for i in range(H2_STREAMS)
            ]

        async def send(tag: str) -> list[StreamResult]:
            [results] = await post_streams(
                ("127.0.0.1", proxy_port),
                "api.example.test:443",
                "/v1/responses",
                [batch(tag)],
                headers,
                ca,
                timeout=60,
            )
            return results

        proxy_port = proxy.port
        await send("warm-up")
        for run in range(cfg.lane_runs):
            cpu_before = cpu_seconds(proxy.process.pid)
            started = time.monotonic()
            results = await send(f"run {run}")
            wall = time.monotonic() - started
            spent = cpu_seconds(proxy.process.pid) - cpu_before
            firsts = [r.first_marker for r in results if r.first_marker is not None]
            if len(firsts) != H2_STREAMS or any(r.status != 200 for r in results):
                raise BenchError("figure 7: a stream did not answer")
            got["first_delta_spread_ms"].append((max(firsts) - min(firsts)) * 1000)
            got["wall_s"].append(wall)
            got["cpu_ms_per_request"].append(spent * 1000 / H2_STREAMS)
    finally:
        if proxy is not None:
            proxy.stop()
        fake.stop()
    return {
        "streams": H2_STREAMS,
        "runs": cfg.lane_runs,
        **{key: summary(values) for key, values in got.items()},
        "raw": got,
    }


def target(st: Stack, mode: str) -> str:
    return st.fake.ws_url if mode == "direct" else st.url(mode)


async def bounded(name: str, cfg: Config, coro: Awaitable[Json]) -> Json:
    started = time.perf_counter()
    print(f"· {name} …", end="", flush=True)
    try:
        result = await asyncio.wait_for(coro, cfg.figure_timeout)
    except TimeoutError:
        result = {"error": f"timed out after {cfg.figure_timeout:g} s"}
    except (BenchError, httpx.HTTPError, OSError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f" {result['seconds']} s" + (f"  ERROR {result['error']}" if "error" in result else ""))
    return result


def with_stack(
    cfg: Config, fn: Callable[[Config, Stack], Awaitable[Json]], **kwargs: Any
) -> Awaitable[Json]:
    async def run() -> Json:
        with stack(cfg, **kwargs) as st:
            return await fn(cfg, st)

    return run()


async def run_all(cfg: Config) -> Json:
    # Every stream of figure 4 leaves a retained session: room for all, so none is evicted.
    retained = cfg.concurrency * cfg.concurrency_rounds * len(CONCURRENCY_WORKLOADS)
    max_sessions = f"responses_bridge_max_sessions={retained + 64}"
    figures: list[tuple[str, str, Callable[[], Awaitable[Json]]]] = [
        ("1_latency", "figure 1: time to first delta", lambda: with_stack(cfg, figure_latency)),
        (
            "2_throughput",
            f"figure 2: one stream of {cfg.deltas} deltas",
            lambda: with_stack(cfg, figure_throughput),
        ),
        (
            "3_chain",
            f"figure 3: {cfg.chain_turns}-turn chain",
            lambda: with_stack(cfg, figure_chain, input_cost=cfg.input_cost),
        ),
        (
            "4_concurrency",
            f"figure 4: {cfg.concurrency} concurrent streams",
            lambda: with_stack(cfg, figure_concurrency, bridge_options=(max_sessions,)),
        ),
        (
            "5_memory",
            f"figure 5: memory over {cfg.sessions} idle sessions",
            lambda: figure_memory(cfg),
        ),
        ("6_lanes", "figure 6: lanes and no lanes", lambda: figure_lanes(cfg)),
        ("7_http2", "figure 7: ten HTTP/2 streams on one connection", lambda: figure_http2(cfg)),
    ]
    results: Json = {}
    for key, title, make in figures:
        if key[0] in cfg.figures:
            results[key] = await bounded(title, cfg, make())
    return results


# --------------------------------------------------------------------------- report


def fmt(s: Json | None, unit: str = "", digits: int = 1) -> str:
    if s is None:
        return "-"
    if not s.get("n"):
        return "n/a"
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


def ratio(bridge: Json | None, passthrough: Json | None) -> float | None:
    if not bridge or not passthrough or not bridge.get("n") or not passthrough.get("n"):
        return None
    if passthrough["median"] == 0:
        return None
    return float(bridge["median"]) / float(passthrough["median"])


def table(results: Json) -> tuple[str, list[Json]]:
    rows: list[tuple[Any, ...]] = []  # label, direct, passthrough, bridge, unit, digits, higher
    lat = results.get("1_latency", {}).get("modes")
    if lat:
        for key, label in (
            ("fresh_new_conn", "1 TTFD fresh, new connection"),
            ("fresh_warm_conn", "1 TTFD fresh, warm connection"),
            ("follow_up", "1 TTFD follow-up"),
            ("fresh_back_to_back", "1 TTFD fresh, right after a fresh"),
        ):
            rows.append((label, *(lat[m][key] for m in MODES), " ms", 1, False))
    thr = results.get("2_throughput", {}).get("modes")
    if thr:
        n = results["2_throughput"]["deltas"]
        rows.append((f"2 {n} deltas: wall", *(thr[m]["wall_s"] for m in MODES), " s", 2, False))
        rows.append(("2 events/s", *(thr[m]["events_per_s"] for m in MODES), "", 0, True))
        rows.append(
            ("2 proxy CPU per stream", *(thr[m]["proxy_cpu_s"] for m in MODES), " s", 2, False)
        )
    chain = results.get("3_chain", {}).get("modes")
    if chain:
        turns = results["3_chain"]["turns"]
        rows.append(
            (
                f"3 {turns}-turn chain: wall",
                *(chain[m]["chain_wall_ms"] for m in MODES),
                " ms",
                0,
                False,
            )
        )
        rows.append(
            ("3 TTFD turns 2+", *(chain[m]["follow_up_ttfd_ms"] for m in MODES), " ms", 1, False)
        )
        rows.append(
            (
                f"3 TTFD turn {turns}",
                *(chain[m]["last_turn_ttfd_ms"] for m in MODES),
                " ms",
                1,
                False,
            )
        )
        kib = {
            m: {k: (v / 1024 if k != "n" else v) for k, v in chain[m]["uploaded_bytes"].items()}
            for m in MODES
        }
        rows.append(("3 uploaded per chain", *(kib[m] for m in MODES), " KiB", 0, False))
        if "bridge_full" in chain:
            full = chain["bridge_full"]
            rows.append(
                (
                    "3 bridge, full history: wall",
                    None,
                    chain["passthrough"]["chain_wall_ms"],
                    full["chain_wall_ms"],
                    " ms",
                    0,
                    False,
                )
            )
            rows.append(
                (
                    "3 bridge, full history: TTFD 2+",
                    None,
                    chain["passthrough"]["follow_up_ttfd_ms"],
                    full["follow_up_ttfd_ms"],
                    " ms",
                    1,
                    False,
                )
            )
            if full.get("proxy_cpu_per_turn_ms"):
                rows.append(
                    (
                        "3 full history: proxy CPU/turn",
                        None,
                        chain["passthrough"]["proxy_cpu_per_turn_ms"],
                        full["proxy_cpu_per_turn_ms"],
                        " ms",
                        1,
                        False,
                    )
                )
    conc = results.get("4_concurrency", {}).get("modes")
    if conc:
        n = results["4_concurrency"]["concurrency"]
        done = {
            m: {
                "n": 1,
                "median": conc[m]["completed_min"],
                "min": conc[m]["completed_min"],
                "max": conc[m]["completed_min"],
            }
            for m in MODES
        }
        rows.append((f"4 {n} concurrent: completed (min)", *(done[m] for m in MODES), "", 0, True))
        rows.append(("4 TTFD p50", *(conc[m]["ttfd_p50_ms"] for m in MODES), " ms", 1, False))
        rows.append(("4 TTFD p99", *(conc[m]["ttfd_p99_ms"] for m in MODES), " ms", 1, False))
        rows.append(("4 all streams done", *(conc[m]["wall_ms"] for m in MODES), " ms", 0, False))
        light = results["4_concurrency"].get("one_delta", {}).get("modes")
        if light:
            rows.append(
                (
                    "4 one-delta streams: TTFD p99",
                    *(light[m]["ttfd_p99_ms"] for m in MODES),
                    " ms",
                    1,
                    False,
                )
            )
            cpu: list[Json | None] = [None]
            cpu += [light[m]["proxy_cpu_ms_per_stream"] for m in MODES[1:]]
            rows.append(("4 one-delta: proxy CPU/stream", *cpu, " ms", 2, False))
    lines = []
    header = f"{'figure':34} {'direct':26} {'passthrough':26} {'bridge':26} bridge/pass"
    lines += [header, "-" * len(header)]
    ratios = []
    for label, d, p, b, unit, digits, higher in rows:
        r = ratio(b, p)
        slower = None if r is None else (1 / r if higher else r)
        ratios.append({"figure": label.strip(), "bridge_over_passthrough": r, "slowdown": slower})
        flag = "  < slower" if slower is not None and slower > 1.1 else ""
        lines.append(
            f"{label:34} {fmt(d, unit, digits):26} {fmt(p, unit, digits):26} "
            f"{fmt(b, unit, digits):26} {'' if r is None else f'{r:.2f}x'}{flag}"
        )
    mem = results.get("5_memory", {})
    if "bridge" in mem:
        b, p = mem["bridge"], mem.get("passthrough", {})
        baseline = f"{p.get('per_session_kib', 0):.1f} KiB/request (baseline)"
        lines.append(
            f"{'5 RSS per retained idle session':34} {'-':26} {baseline:26} "
            f"{b['per_session_kib']:.1f} KiB/session"
        )
        lines.append(
            f"{'':34} {'':26} {'':26} "
            f"RSS {b['rss_before_kib'] / 1024:.0f}->{b['rss_after_kib'] / 1024:.0f} MiB, "
            f"+{b['open_fds_added']} fds"
        )
    lanes = results.get("6_lanes", {}).get("variants")
    if lanes:
        lines += ["", f"{'figure 6 (150 ms handshake)':34} {'lanes':26} {'no lanes':26}"]
        for key, label, unit, digits in (
            ("sockets_for_100", "6 sockets for 100 conversations", "", 0),
            ("burst_follow_up_p50_ms", "6 burst of 8 follow-ups: TTFD p50", " ms", 1),
            ("burst_ttfd_p50_ms", "6 burst of 8 fresh: TTFD p50", " ms", 1),
            ("burst_ttfd_max_ms", "6 burst of 8 fresh: TTFD max", " ms", 1),
            ("cpu_ms_per_fresh", "6 proxy CPU per fresh request", " ms", 2),
        ):
            lines.append(
                f"{label:34} {fmt(lanes['lanes'][key], unit, digits):26} "
                f"{fmt(lanes['no_lanes'][key], unit, digits):26}"
            )
    h2 = results.get("7_http2")
    if h2 and "wall_s" in h2:
        lines += ["", "figure 7 (10 HTTP/2 streams of ~1.8 s on one connection)"]
        for key, label, unit, digits in (
            ("first_delta_spread_ms", "7 first deltas: spread", " ms", 0),
            ("wall_s", "7 all ten: wall time", " s", 2),
            ("cpu_ms_per_request", "7 proxy CPU per request", " ms", 2),
        ):
            lines.append(f"{label:34} {fmt(h2[key], unit, digits):26}")
    return "\n".join(lines), ratios


def chart(results: Json, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no chart)")
        return False
    colors = {"direct": "#7f7f7f", "passthrough": "#1f77b4", "bridge": "#d62728"}
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    lat = results.get("1_latency", {}).get("modes")
    ax = axes[0]
    if lat:
        keys = LATENCY_KEYS
        names = (
            "fresh,\nnew connection",
            "fresh,\nwarm connection",
            "follow-up",
            "fresh, right\nafter a fresh",
        )
        width = 0.26
        for i, mode in enumerate(MODES):
            meds = [lat[mode][k]["median"] for k in keys]
            lows = [lat[mode][k]["median"] - lat[mode][k]["min"] for k in keys]
            highs = [lat[mode][k]["max"] - lat[mode][k]["median"] for k in keys]
            xs = [x + (i - 1) * width for x in range(len(keys))]
            ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=mode, color=colors[mode])
            tops = [lat[mode][k]["max"] for k in keys]
            for x, m, top in zip(xs, meds, tops, strict=True):
                ax.text(x, top, f"{m:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(keys)), names)
        ax.set_ylim(0, max(lat[m][k]["max"] for m in MODES for k in keys) * 1.12)
        ax.set_ylabel("ms to first delta (median, min-max)")
        ax.legend()
    ax.set_title("1. Time to first delta")
    thr = results.get("2_throughput", {})
    ax = axes[1]
    if thr.get("modes"):
        meds = [thr["modes"][m]["events_per_s"]["median"] for m in MODES]
        lows = [meds[i] - thr["modes"][m]["events_per_s"]["min"] for i, m in enumerate(MODES)]
        highs = [thr["modes"][m]["events_per_s"]["max"] - meds[i] for i, m in enumerate(MODES)]
        ax.bar(MODES, meds, yerr=[lows, highs], capsize=4, color=[colors[m] for m in MODES])
        for i, m in enumerate(MODES):
            wall = thr["modes"][m]["wall_s"]["median"]
            top = thr["modes"][m]["events_per_s"]["max"]
            ax.text(i, top, f"{meds[i]:,.0f}/s\n{wall:.2f} s", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(thr["modes"][m]["events_per_s"]["max"] for m in MODES) * 1.15)
        ax.set_ylabel("events/s (median, min-max)")
        ax.set_title(f"2. Relay throughput: one stream of {thr['deltas']:,} deltas")
    else:
        ax.set_title("2. Relay throughput")
    chain = results.get("3_chain", {})
    ax = axes[2]
    if chain.get("per_turn_ttfd_ms_median"):
        for mode in CHAIN_MODES:
            if mode not in chain["per_turn_ttfd_ms_median"]:
                continue
            series = chain["per_turn_ttfd_ms_median"][mode]
            wall = chain["modes"][mode]["chain_wall_ms"]["median"]
            full = mode == "bridge_full"
            ax.plot(
                range(1, len(series) + 1),
                series,
                marker="o",
                markersize=3,
                linestyle="--" if full else "-",
                color=colors["bridge" if full else mode],
                label=f"{'bridge, full history re-sent' if full else mode} (chain {wall:.0f} ms)",
            )
        turns = len(chain["per_turn_ttfd_ms_median"][MODES[0]])
        ax.set_xticks(range(1, turns + 1, max(1, turns // 10)))
        ax.set_xlabel("turn")
        ax.set_ylabel("ms to first delta (median)")
        ax.set_title(
            f"3. {chain['turns']}-turn chain, {chain['turn_bytes'] // 1024} KB/turn, "
            f"input cost {chain['input_cost_ms_per_kb']} ms/KB"
        )
        ax.legend()
        ax.set_ylim(bottom=0)
    else:
        ax.set_title("3. Chain")
    fig.suptitle(
        "responses-bridge on loopback: HTTP SSE via the bridge vs plain mitmproxy "
        "vs a direct websocket",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def environment() -> Json:
    from importlib.metadata import version

    import mitmproxy.version

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "addon"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "websockets": version("websockets"),
        "httpx": httpx.__version__,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "commit": commit + ("+dirty addon" if dirty else ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the bridge against plain mitmproxy and a direct websocket."
    )
    parser.add_argument("--runs", type=int, help="runs of figure 1 (default 30; quick 5)")
    parser.add_argument("--quick", action="store_true", help="a smoke check: few, small runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="results dir (docs/)")
    parser.add_argument(
        "--handshake-delay-ms",
        type=float,
        default=20.0,
        help="simulated connection set-up per new upstream socket/connection (default 20)",
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=50.0,
        help="pause between the turns of figure 1, as in an agent loop (default 50)",
    )
    parser.add_argument(
        "--addon",
        type=Path,
        default=ADDON,
        help="the bridge script to measure (default addon/bridge.py; a patched copy's "
        "responses_bridge package is imported from beside it)",
    )
    parser.add_argument(
        "--figures", default="1234567", help="which figures to run, e.g. 13 (default: all)"
    )
    parser.add_argument(
        "--bridge-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a mitmproxy option for the bridging mitmdump (repeatable), e.g. "
        "responses_bridge_warm_sockets=2",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    runs = args.runs or (5 if quick else 30)
    tmp = Path(tempfile.mkdtemp(prefix="responses-bridge-bench-"))
    cfg = Config(
        runs=runs,
        deltas=2000 if quick else 10_000,
        throughput_runs=2 if quick else max(3, runs // 6),
        chain_runs=1 if quick else max(3, runs // 6),
        chain_turns=20,
        turn_bytes=2048,
        input_cost=0.2,
        concurrency=100,
        concurrency_rounds=1 if quick else max(3, runs // 10),
        sessions=100 if quick else 500,
        handshake_delay=args.handshake_delay_ms / 1000,
        think=args.think_ms / 1000,
        figure_timeout=120.0 if quick else 240.0,
        out=args.out,
        tmp=tmp,
        confdir=tmp / "mitmproxy",
        script=args.addon.resolve(),
        figures=args.figures,
        bridge_set=tuple(args.bridge_set),
        lane_runs=1 if quick else 3,
    )
    command = shlex.join(["scripts/bench", *(argv if argv is not None else sys.argv[1:])])
    env = environment()
    print(f"$ {command}")
    print(
        f"  {env['cpu']} x{env['cpus']} · Python {env['python']} · mitmproxy {env['mitmproxy']}"
        f" · websockets {env['websockets']} · commit {env['commit']}"
    )
    print(
        f"  simulated connection set-up {cfg.handshake_delay * 1000:g} ms; figure 1 runs "
        f"{cfg.runs} ({cfg.think * 1000:g} ms between turns), "
        f"figure 2 runs {cfg.throughput_runs}, figure 3 chains {cfg.chain_runs}, "
        f"figure 4 rounds {cfg.concurrency_rounds}"
    )
    if cfg.script != ADDON:
        print(f"  bridge script: {cfg.script}")
    started = time.perf_counter()
    results = asyncio.run(run_all(cfg))
    text, ratios = table(results)
    elapsed = time.perf_counter() - started
    print()
    print(text)
    print(f"\nmedian [min-max]; total {elapsed:.0f} s")
    for mode, cmd in cfg.commands.items():
        print(f"  {mode}: {cmd}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command,
        "environment": env,
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in cfg.__dict__.items()
            if k not in ("tmp", "confdir", "out")
        },
        "seconds": round(elapsed, 1),
        "results": results,
        "ratios": ratios,
    }
    json_path = cfg.out / "bench.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    png = cfg.out / "bench.png"
    drew = chart(results, png)
    print(
        f"wrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path}"
        + (f" and {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}" if drew else "")
    )
    failed = [name for name, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
