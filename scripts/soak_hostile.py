"""The hostile-client soak (issue 22): well-behaved clients beside hostile ones, loopback only.

Starts the fake upstream (``tests/fake_upstream.py``) in a process of its own and one ``mitmdump
-s addon/bridge.py`` with its defaults plus a short write timeout, then runs two phases of
``--seconds`` each: well-behaved clients alone (the baseline), then the same clients
beside hostile ones that send random keys and projects, random hosts and paths, deeply nested
and huge bodies, an oversized ``Content-Length``, read nothing of long streams (stalled
readers) or send half a request and stop (half-open connections). The hostile clients run in
a process of their own too: in one process, their own work (building 150,000-item bodies) and
the fake's would hold the interpreter lock while the well-behaved clients wait to read their
first delta, which would be measured as the proxy's delay.

Checks, exit status non-zero if any fails: every well-behaved request answered 200 with the
text the fake says it answered (nothing lost, nothing wrong); every answer, hostile ones too,
came from a socket whose upgrade carried that request's own key and project (nothing crosses
between identities); mitmdump's RSS after the hostile phase within ``--rss-mb`` of the
baseline's; the well-behaved clients' p99 first delta within 1.5x of the baseline's; no
traceback in mitmdump's log.

Run it as ``scripts/soak --hostile [--seconds 20] [--clients 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fake_upstream import FakeUpstream  # noqa: E402
from tests.harness import Mitmdump  # noqa: E402

GOOD = {"authorization": "Bearer sk-good", "openai-project": "proj_good"}
IDENTITY = ("authorization", "openai-project")


class Soak:
    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}/v1/responses"
        self.failures: list[str] = []
        self.sent_with: dict[str, dict[str, str]] = {}  # response id -> identity headers sent
        self.hostile_counts: dict[str, int] = {}

    # -- well-behaved clients ----------------------------------------------------------------

    async def good_client(self, index: int, until: float, delays: list[float]) -> int:
        sent = 0
        async with httpx.AsyncClient(timeout=30) as client:
            while time.monotonic() < until:
                text = f"client {index} turn {sent}"
                body = {"model": "m", "stream": True, "input": text}
                started = time.monotonic()
                first: float | None = None
                response_id = ""
                deltas: list[str] = []
                async with client.stream("POST", self.url, json=body, headers=GOOD) as answer:
                    if answer.status_code != 200:
                        self.failures.append(f"good request answered {answer.status_code}")
                        await answer.aread()
                        continue
                    async for line in answer.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        event = json.loads(line[6:])
                        if event["type"] == "response.created":
                            response_id = event["response"]["id"]
                        elif event["type"] == "response.output_text.delta":
                            if first is None:
                                first = time.monotonic() - started
                            deltas.append(event["delta"])
                if first is None or not "".join(deltas).startswith(f"echo: {text}"):
                    self.failures.append(f"good request {text!r}: wrong or empty answer")
                    continue
                delays.append(first)
                self.sent_with[response_id] = GOOD
                sent += 1
                await asyncio.sleep(0.02)
        return sent

    # -- hostile clients ---------------------------------------------------------------------

    async def hostile(self, until: float) -> None:
        kinds = [
            self.random_identity,
            self.random_route,
            self.deep_body,
            self.huge_body,
            self.oversized_length,
            self.stalled_reader,
            self.half_open,
        ]
        if self.args.kinds:
            kinds = [kind for kind in kinds if kind.__name__ in self.args.kinds.split(",")]
        async with httpx.AsyncClient(timeout=30) as client:
            while time.monotonic() < until:
                kind = random.choice(kinds)
                self.hostile_counts[kind.__name__] = self.hostile_counts.get(kind.__name__, 0) + 1
                # A hostile request may fail any way; only the proxy's health counts.
                with contextlib.suppress(TimeoutError, httpx.HTTPError, OSError):
                    await kind(client)

    async def random_identity(self, client: httpx.AsyncClient) -> None:
        identity = {
            "authorization": f"Bearer sk-{random.randrange(10**9)}",
            "openai-project": f"proj_{random.randrange(50)}",
        }
        answer = await client.post(
            self.url, json={"model": "m", "input": "hostile fake:brief"}, headers=identity
        )
        if answer.status_code == 200:
            self.sent_with[answer.json()["id"]] = identity

    async def random_route(self, client: httpx.AsyncClient) -> None:
        path = random.choice(["/v1/responses?x=1", "/x/v1/responses", "/v1/other", "/"])
        host = f"h{random.randrange(10**6)}.example"
        await client.post(
            f"http://127.0.0.1:{self.port}{path}",
            json={"model": "m", "input": "x"},
            headers={"host": host, **GOOD},
        )

    async def deep_body(self, client: httpx.AsyncClient) -> None:
        depth = random.choice([150, 5000, 100_000])
        body = b'{"model":"m","input":[{"a":' + b"[" * depth + b"]" * depth + b"}]}"
        answer = await client.post(self.url, content=body, headers=GOOD)
        if answer.status_code != 400:
            self.failures.append(f"deep body ({depth}) answered {answer.status_code}")

    async def huge_body(self, client: httpx.AsyncClient) -> None:
        body = json.dumps({"model": "m", "input": [{} for _ in range(150_000)]}).encode()
        identity = {"authorization": f"Bearer sk-{random.randrange(10**9)}"}
        answer = await client.post(self.url, content=body, headers=identity)
        if answer.status_code != 400:
            self.failures.append(f"150,000 items answered {answer.status_code}")

    async def oversized_length(self, client: httpx.AsyncClient) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            b"POST /v1/responses HTTP/1.1\r\nHost: api\r\nContent-Length: 900000000\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 413"):
            self.failures.append(f"oversized Content-Length answered {head[:20]!r}")
        writer.close()

    async def stalled_reader(self, client: httpx.AsyncClient) -> None:
        text = "y" * 300_000 + " fake:deltas=3000"
        body = json.dumps({"model": "m", "stream": True, "input": text}).encode()
        _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
        )
        writer.write(
            b"POST /v1/responses HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer sk-stall\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await asyncio.sleep(random.uniform(1, 4))  # never reads
        writer.transport.abort()

    async def half_open(self, client: httpx.AsyncClient) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"POST /v1/responses HTTP/1.1\r\nHost: api\r\nContent-Length: 100\r\n\r\n{")
        await asyncio.sleep(random.uniform(0.5, 2))
        writer.transport.abort()

    # -- phases ------------------------------------------------------------------------------

    async def good_phase(self) -> list[float]:
        until = time.monotonic() + self.args.seconds
        delays: list[float] = []
        clients = range(self.args.clients)
        await asyncio.gather(*(self.good_client(i, until, delays) for i in clients))
        return delays

    async def hostile_phase(self) -> None:
        until = time.monotonic() + self.args.seconds
        await asyncio.gather(*(self.hostile(until) for _ in range(self.args.hostile)))


def run_hostile(args: argparse.Namespace, port: int, results: Any) -> None:
    """The hostile clients, in their own process; sends back what they sent and found."""
    soak = Soak(args, port)
    results.put("ready")
    asyncio.run(soak.hostile_phase())
    results.put((soak.sent_with, soak.hostile_counts, soak.failures))


def run_fake(conn: Any, http_responses: bool) -> None:
    """The fake upstream, in its own process: sends its port, serves until told to stop, then
    sends each socket's identity headers and the response ids it made."""

    async def serve() -> None:
        async with FakeUpstream(port=0, http_responses=http_responses) as fake:
            conn.send(fake.port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            records = [
                ({name: record.headers.get(name) for name in IDENTITY}, record.response_ids)
                for record in fake.sockets
            ]
            conn.send(records)

    asyncio.run(serve())


def check_identities(
    records: list[tuple[dict[str, str | None], list[str]]],
    sent_with: dict[str, dict[str, str]],
    failures: list[str],
) -> int:
    """How many answers were checked against the upgrade of the socket that made them."""
    checked = 0
    for headers, response_ids in records:
        for response_id in response_ids:
            sent = sent_with.get(response_id)
            if sent is None:
                continue
            checked += 1
            for name, value in sent.items():
                if headers.get(name) != value:
                    failures.append(f"{response_id} ran on a socket opened with another {name}")
    return checked


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak the bridge with hostile clients.")
    parser.add_argument("--seconds", type=float, default=20, help="seconds per phase (20)")
    parser.add_argument("--clients", type=int, default=4, help="well-behaved clients (4)")
    parser.add_argument("--hostile", type=int, default=8, help="hostile clients (8)")
    parser.add_argument(
        "--passthrough",
        action="store_true",
        help="plain mitmdump passing everything through to the fake's HTTP endpoint (reference)",
    )
    parser.add_argument("--kinds", default="", help="only these hostile kinds, comma-separated")
    parser.add_argument("--rss-mb", type=float, default=60, help="RSS growth allowed (60)")
    args = parser.parse_args()
    args.seconds = min(args.seconds, 120)  # bounded in time whatever is asked
    spawn = multiprocessing.get_context("spawn")
    fake_conn, child_conn = spawn.Pipe()
    fake = spawn.Process(target=run_fake, args=(child_conn, args.passthrough), daemon=True)
    fake.start()
    fake_port = fake_conn.recv()
    options = ["responses_bridge_write_timeout=2", "responses_bridge_drain_timeout=5"]
    bridge = Mitmdump(
        [
            "--mode",
            f"reverse:http://127.0.0.1:{fake_port}",
            *(arg for option in ([] if args.passthrough else options) for arg in ("--set", option)),
        ],
        Path(tempfile.mkdtemp(prefix="soak-hostile-")),
        addon=not args.passthrough,
    )
    soak = Soak(args, bridge.port)
    try:
        baseline = asyncio.run(soak.good_phase())
        rss_before = rss_mb(bridge.process.pid)
        results = spawn.Queue()
        hostile = spawn.Process(target=run_hostile, args=(args, bridge.port, results), daemon=True)
        hostile.start()
        results.get(timeout=60)  # "ready": both phases start together
        mixed = asyncio.run(soak.good_phase())
        sent_with, soak.hostile_counts, hostile_failures = results.get(timeout=args.seconds + 60)
        hostile.join(10)
        if not args.passthrough:  # how plain mitmproxy answers them is not this soak's concern
            soak.failures += hostile_failures
        soak.sent_with.update(sent_with)
        time.sleep(6)  # stalled streams drained, half-open ones gone
        rss_after = rss_mb(bridge.process.pid)
        fake_conn.send("stop")
        checked = check_identities(fake_conn.recv(), soak.sent_with, soak.failures)
        traceback = "Traceback" in bridge.output  # before stopping: mitmproxy's own exit logs one
    finally:
        bridge.stop()
        fake.kill()
    ratio = p99(mixed) / p99(baseline)
    rows: list[tuple[str, Any]] = [
        ("well-behaved requests, baseline / beside hostile", f"{len(baseline)} / {len(mixed)}"),
        ("hostile requests by kind", dict(sorted(soak.hostile_counts.items()))),
        ("first delta p99, baseline / beside hostile (ms)",
         f"{p99(baseline) * 1000:.1f} / {p99(mixed) * 1000:.1f} (x{ratio:.2f})"),
        ("first delta median, baseline / beside hostile (ms)",
         f"{statistics.median(baseline) * 1000:.1f} / {statistics.median(mixed) * 1000:.1f}"),
        ("mitmdump RSS after baseline / after hostile (MB)", f"{rss_before:.0f} / {rss_after:.0f}"),
        ("answers checked against their socket's upgrade", checked),
    ]  # fmt: skip
    for name, value in rows:
        print(f"{name:<52} {value}")
    if ratio > 1.5:
        soak.failures.append(f"p99 first delta grew x{ratio:.2f} beside hostile clients")
    if rss_after - rss_before > args.rss_mb:
        soak.failures.append(f"RSS grew {rss_after - rss_before:.0f} MB")
    if traceback:
        soak.failures.append("a traceback in mitmdump's log")
    for failure in sorted(set(soak.failures)):
        print("FAIL", failure)
    print("PASS" if not soak.failures else f"{len(soak.failures)} failures")
    return 1 if soak.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
