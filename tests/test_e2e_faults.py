"""End to end: faults on either side of the bridge, each with an exact outcome the client sees, and
the proxy serving normally afterwards.

Upstream side: the socket closing between deltas with 1000/1001/1006/1011, a 2 MiB frame.
Client side: leaving before the first byte or during a JSON answer, pipelined requests, fifty
clients at once, a client that reads far slower than the upstream writes (backpressure, measured
as the mitmdump process's RSS). Security: the loopback server refuses anything without the
per-process secret. Scope: flows the bridge does not match reach the server byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import OVERSIZED_BYTES, FakeUpstream, split_text
from tests.harness import Mitmdump, wait_until

AUTH = {"authorization": "Bearer sk-faults"}


# --------------------------------------------------------------------------- helpers


def expected_text(text: str) -> str:
    """The fake's answer to a one-message conversation whose user text is ``text``."""
    return f"echo: {text} | context: 1 user messages | {text}"


def wait_for_new_log(bridge: Mitmdump, since: int, pattern: str, timeout: float = 10) -> str:
    """The first log line after line number ``since`` that matches ``pattern``."""
    found: list[str] = []

    def seen() -> bool:
        found.extend(ln for ln in bridge.lines[since:] if re.search(pattern, ln))
        return bool(found)

    wait_until(seen, timeout, f"a log line matching {pattern!r}")
    return found[0]


def client_for(bridge: Mitmdump) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.base_url, api_key="sk-faults", max_retries=0, timeout=30)


def assert_still_serves(bridge: Mitmdump) -> None:
    """A normal JSON and a normal streamed request both succeed, and nothing crashed."""
    client = client_for(bridge)
    whole = client.responses.create(model="m", input="still serving")
    assert whole.status == "completed"
    assert whole.output_text == expected_text("still serving")
    events = list(client.responses.create(model="m", input="still streaming", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == expected_text("still streaming")
    assert "Traceback" not in bridge.output, bridge.output


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """``(event field, parsed data)`` of each frame of a bridged SSE body (strictly framed)."""
    events = []
    for frame in body.decode().split("\n\n"):
        if not frame.strip():
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(fields) == {"event", "data"}, frame[:200]
        data = json.loads(fields["data"])
        assert data["type"] == fields["event"]
        events.append((fields["event"], data))
    return events


def deltas_of(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [data["delta"] for kind, data in events if kind == "response.output_text.delta"]


def raw_request(
    method: str,
    path: str,
    body: bytes | dict[str, Any] = b"",
    headers: list[tuple[str, str]] | None = None,
    host: str = "127.0.0.1",
) -> bytes:
    """The bytes of one HTTP/1.1 request with a Content-Length body."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if data or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(stream: Any) -> RawResponse:
    """Read one HTTP/1.1 response (Content-Length or chunked) from a binary file object."""
    raw = bytearray()
    status_line = stream.readline()
    raw += status_line
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        raw += line
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    raw += b"\r\n"
    response = RawResponse(int(status_line.split()[1]), headers, b"")
    body = bytearray()
    if (response.header("transfer-encoding") or "").lower() == "chunked":
        while True:
            size_line = stream.readline()
            raw += size_line
            size = int(size_line.split(b";")[0], 16)
            chunk = stream.read(size + 2)
            raw += chunk
            assert chunk.endswith(b"\r\n")
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body += stream.read(int(response.header("content-length") or 0))
        raw += body
    response.body, response.raw = bytes(body), bytes(raw)
    return response


def exchange_raw(port: int, requests: list[bytes], timeout: float = 30) -> list[RawResponse]:
    """Write every request back to back on one connection (pipelined), then read the answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(requests))
        stream = sock.makefile("rb")
        return [read_response(stream) for _ in requests]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def client(shared_bridge: Mitmdump) -> openai.OpenAI:
    return client_for(shared_bridge)


# --------------------------------------------------------------------------- upstream faults


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011])
def test_close_between_deltas_is_an_sse_error_naming_the_code(
    shared_bridge: Mitmdump, client: openai.OpenAI, code: int
) -> None:
    text = f"closing fake:close={code} fake:phase=mid"
    got = httpx.post(
        f"{shared_bridge.base_url}/responses",
        json={"model": "m", "input": text, "stream": True},
        headers=AUTH,
        timeout=30,
    )
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/event-stream")
    events = sse_events(got.content)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "error"  # the stream ends with the error event, nothing after it
    assert "response.completed" not in kinds
    # created + 2 deltas reached the client before the close ("mid"), exactly as sent.
    assert deltas_of(events) == split_text(expected_text(text), 4)[:2]
    error = events[-1][1]
    assert error["code"] == error["error"]["code"] == "upstream_closed"
    assert str(code) in error["message"] and error["message"] == error["error"]["message"]
    assert error["message"].startswith("The upstream socket closed before the response finished")

    # The openai SDK raises on it.
    with pytest.raises(openai.APIError) as caught:
        for _ in client.responses.create(model="m", input=text, stream=True):
            pass
    assert str(code) in caught.value.message
    assert_still_serves(shared_bridge)


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011])
def test_close_between_deltas_is_502_naming_the_code_for_json(
    shared_bridge: Mitmdump, client: openai.OpenAI, code: int
) -> None:
    text = f"closing fake:close={code} fake:phase=mid"
    got = httpx.post(
        f"{shared_bridge.base_url}/responses",
        json={"model": "m", "input": text},
        headers=AUTH,
        timeout=30,
    )
    assert got.status_code == 502
    assert got.headers["content-type"].startswith("application/json")
    error = got.json()["error"]
    assert error["code"] == "upstream_closed" and error["type"] == "upstream_error"
    assert str(code) in error["message"]
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="m", input=text)
    assert caught.value.status_code == 502 and str(code) in caught.value.message
    assert_still_serves(shared_bridge)


@pytest.mark.parametrize("stream", [True, False])
def test_two_mebibyte_frame_passes_through(
    shared_bridge: Mitmdump, client: openai.OpenAI, stream: bool
) -> None:
    text = "big fake:garbage=oversized"
    filler = ("0123456789abcdef" * (OVERSIZED_BYTES // 16 + 1))[:OVERSIZED_BYTES]
    if stream:
        events = list(client.responses.create(model="m", input=text, stream=True))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        assert filler in deltas  # one delta frame of exactly 2 MiB, unchanged
        final = events[-1].response
    else:
        final = client.responses.create(model="m", input=text)
    assert final.status == "completed"
    assert len(final.output_text) == len(expected_text(text)) + OVERSIZED_BYTES
    assert final.output_text.replace(filler, "") == expected_text(text)
    assert_still_serves(shared_bridge)


# --------------------------------------------------------------------------- client faults


def running(fake: FakeUpstream) -> int:
    """Responses the fake is generating right now, on every socket and lane."""
    return sum(s.in_flight + (s.task is not None and not s.task.done()) for s in fake._sessions)


def response_of(fake: FakeUpstream, text: str) -> tuple[Any, str] | None:
    """The fake's socket and the id of the response it made for the request with ``text``."""
    for session in fake._sessions:
        for response_id in session.record.response_ids:
            context = fake.contexts.get(response_id) or [{}]
            content = context[-1].get("content")
            if isinstance(content, list) and content and content[0].get("text") == text:
                return session, response_id
    return None


def assert_socket_settled(fake: FakeUpstream, text: str, client: openai.OpenAI) -> None:
    """After a client left (stateful, well within the drain timeout): the bridge read the
    answer to the request with ``text`` to its end and kept its socket, usable for that
    answer's chain. Never parked mid-response, and not closed either."""
    wait_until(lambda: response_of(fake, text), timeout=15, what="the upstream to answer")
    found = response_of(fake, text)
    assert found is not None, f"the upstream made no response for {text!r}"
    session, response_id = found
    wait_until(
        lambda: session.record.closed or response_id in session.responses,
        timeout=15,
        what="the upstream socket to be closed or its answer finished",
    )
    assert not session.record.closed, "the socket was closed instead of drained and kept"
    assert response_id in session.responses, "the upstream turn ended without completing"
    connections = fake.connections
    # No pause: a follow-up that arrives while the bridge still drains waits for the drain.
    raw = client.responses.with_raw_response.create(
        model="m", input="after the leaver", store=False, previous_response_id=response_id
    )
    follow = raw.parse()
    assert raw.headers["x-responses-bridge"] == "reused"
    assert follow.previous_response_id == response_id
    assert "| context: 2 user messages |" in follow.output_text
    assert follow.output_text.startswith("echo: after the leaver")
    assert fake.connections == connections  # served on the drained socket itself
    assert session.record.response_ids[-1] == follow.id


def test_client_leaving_before_the_first_byte(
    shared_bridge: Mitmdump, shared_fake: FakeUpstream, client: openai.OpenAI
) -> None:
    logged = len(shared_bridge.lines)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{shared_bridge.base_url}/responses",
            json={
                "model": "m",
                "input": "leaving early fake:slow=400 fake:deltas=1",
                "stream": True,
                "store": False,
            },
            headers=AUTH,
            timeout=httpx.Timeout(30, read=0.2),
        )
    # The bridge saw the client go before any upstream event arrived (response.created is 400 ms
    # away): no byte had been written to it.
    line = wait_for_new_log(shared_bridge, logged, r"-> - stream ws new · 0 events .*client side")
    assert "Client disconnected" in line
    assert_socket_settled(shared_fake, "leaving early fake:slow=400 fake:deltas=1", client)
    assert_still_serves(shared_bridge)


def test_client_leaving_during_a_json_answer(
    shared_bridge: Mitmdump, shared_fake: FakeUpstream, client: openai.OpenAI
) -> None:
    logged = len(shared_bridge.lines)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{shared_bridge.base_url}/responses",
            json={"model": "m", "input": "leaving mid json fake:slow=150", "store": False},
            headers=AUTH,
            timeout=httpx.Timeout(30, read=0.7),
        )
    line = wait_for_new_log(shared_bridge, logged, r"-> - json ws new · \d+ events .*client side")
    events = int(re.search(r"· (\d+) events", line).group(1))  # type: ignore[union-attr]
    assert 1 <= events < 12, line  # it left after response.created, before the answer ended
    assert_socket_settled(shared_fake, "leaving mid json fake:slow=150", client)
    assert_still_serves(shared_bridge)


def test_client_leaving_during_the_request_body(
    shared_bridge: Mitmdump, shared_fake: FakeUpstream
) -> None:
    connections, logged = shared_fake.connections, len(shared_bridge.lines)
    whole = raw_request(
        "POST",
        "/v1/responses",
        {"model": "m", "input": "cut short " * 100, "stream": True},
        [("Content-Type", "application/json")],
    )
    with socket.create_connection(("127.0.0.1", shared_bridge.port), timeout=10) as sock:
        sock.sendall(whole[: len(whole) // 2])
        time.sleep(0.2)
    # mitmproxy ended the flow before its request hooks, so the bridge never took it: nothing
    # was answered or opened, and no bridge state is left for it.
    wait_for_new_log(shared_bridge, logged, r"without sending complete message body")
    assert shared_fake.connections == connections  # nothing reached the upstream
    # (An earlier test's line may still come in; one for this flow would say "client side".)
    assert not [ln for ln in shared_bridge.lines[logged:] if "client side" in ln]
    assert_still_serves(shared_bridge)


def test_pipelined_requests_on_one_connection(shared_bridge: Mitmdump) -> None:
    headers = [("Content-Type", "application/json"), ("Authorization", "Bearer sk-faults")]
    answers = exchange_raw(
        shared_bridge.port,
        [
            raw_request(
                "POST", "/v1/responses", {"model": "m", "input": "one", "stream": True}, headers
            ),
            raw_request("POST", "/v1/responses", b"{not json", headers),
            raw_request("POST", "/v1/responses", {"model": "m", "input": "three"}, headers),
            raw_request(
                "POST",
                "/v1/responses",
                {"model": "m", "input": "four fake:error=429:rate_limit_exceeded", "stream": True},
                headers,
            ),
            raw_request(
                "POST", "/v1/responses", {"model": "m", "input": "five", "stream": True}, headers
            ),
        ],
    )
    first, second, third, fourth, fifth = answers
    assert first.status == 200
    assert (first.header("content-type") or "").startswith("text/event-stream")
    events = sse_events(first.body)
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == expected_text("one")
    assert "".join(deltas_of(events)) == expected_text("one")
    assert second.status == 400 and second.json()["error"]["type"] == "invalid_request_error"
    assert third.status == 200 and third.json()["output"][0]["content"][0]["text"] == (
        expected_text("three")
    )
    assert fourth.status == 429 and fourth.json()["error"]["code"] == "rate_limit_exceeded"
    assert fifth.status == 200
    assert "".join(deltas_of(sse_events(fifth.body))) == expected_text("five")
    assert_still_serves(shared_bridge)


def test_http10_client_gets_a_stream_it_can_read(shared_bridge: Mitmdump) -> None:
    request = raw_request(
        "POST",
        "/v1/responses",
        {"model": "m", "input": "an old client", "stream": True},
        [("Content-Type", "application/json")],
    ).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    received = bytearray()
    with socket.create_connection(("127.0.0.1", shared_bridge.port), timeout=10) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):  # HTTP/1.0: the body ends when the connection closes
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 200 ", head), head
    assert b"text/event-stream" in head.lower()
    assert b"transfer-encoding" not in head.lower(), head
    events = sse_events(body)
    assert events[0][0] == "response.created" and events[-1][0] == "response.completed"
    assert "".join(deltas_of(events)) == expected_text("an old client")


def test_fifty_concurrent_streams(shared_bridge: Mitmdump, shared_fake: FakeUpstream) -> None:
    count = 50
    connections, sent = shared_fake.connections, len(shared_fake.requests)

    async def one(http: httpx.AsyncClient, index: int) -> tuple[int, list[tuple[str, Any]]]:
        text = f"client {index} fake:slow=20"
        async with http.stream(
            "POST",
            "/responses",
            json={"model": "m", "input": text, "stream": True},
            headers=AUTH,
        ) as streamed:
            body = b"".join([chunk async for chunk in streamed.aiter_bytes()])
        return streamed.status_code, sse_events(body)

    async def run() -> tuple[list[tuple[int, list[tuple[str, Any]]]], int]:
        peak = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, running(shared_fake))
                await asyncio.sleep(0.01)

        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(
            base_url=shared_bridge.base_url, timeout=60, limits=limits
        ) as http:
            sampler = asyncio.create_task(sample())
            results = await asyncio.gather(*(one(http, i) for i in range(count)))
            done.set()
            await sampler
        return list(results), peak

    results, peak = asyncio.run(run())
    for index, (status, events) in enumerate(results):
        assert status == 200
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
        assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
        text = expected_text(f"client {index} fake:slow=20")
        assert "".join(deltas_of(events)) == text
        assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == text
    assert len(shared_fake.requests) == sent + count  # none resent
    # On lanes: at most 16 responses per socket, so four new sockets (or fewer, when sockets
    # of earlier tests still had lanes free), never one each.
    assert shared_fake.connections - connections <= 4
    assert max(r.max_in_flight for r in shared_fake.sockets) <= 16
    assert peak >= 10, f"only {peak} responses ever ran at once"
    # Never more than responses_bridge_max_sessions (64) open: idle ones made room.
    wait_until(lambda: shared_fake.open_sockets <= 64, what="at most 64 open sockets")
    assert_still_serves(shared_bridge)


def test_slow_reader_is_backpressured(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    """A client that reads ~1 KiB per 5 ms while the upstream sends as fast as it can.

    2000 deltas of ~12 KiB: 24 MiB of text, ~120 MiB of SSE (the three ``*.done`` events and
    ``response.completed`` each repeat the text). Sized so that the deltas alone are well over
    what the loopback sockets between the fake, the bridge, mitmproxy and the client can hold
    (~16 MB here: Linux autotunes each buffer to a few MB); with 1 KiB deltas the whole answer
    would fit in those kernel buffers and prove nothing. With backpressure the upstream stalls
    and mitmdump grows by little more than what the kernel took (the bridge keeps the bytes it
    wrote for the flow); a bridge that buffered grows by the answer (measured: +90 to +300 MB
    in these 2.5 s when the loopback server skips ``drain()``). Bound asserted: < 60 MB.
    """
    bridge = start_bridge(fake)
    pid = bridge.process.pid
    warm = httpx.post(f"{bridge.base_url}/responses", json={"model": "m", "input": "warm"})
    assert warm.status_code == 200
    deltas = 2000
    filler = "x" * (12 * 1024 * deltas // 2)  # the answer echoes the input twice
    text = f"{filler} fake:deltas={deltas}"
    request = raw_request(
        "POST",
        "/v1/responses",
        {"model": "m", "input": text, "stream": True},
        [("Content-Type", "application/json"), ("Authorization", "Bearer sk-faults")],
    )
    deadline = time.monotonic() + 15  # the whole exchange is bounded
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=15) as sock:
        before_request = rss_mb(pid)
        sock.sendall(request)
        received = bytearray(sock.recv(1024))
        assert received.startswith(b"HTTP/1.1 200 "), bytes(received[:200])
        # The request has been read, parsed and sent upstream; the answer has just started.
        baseline = peak = rss_mb(pid)
        slow_until = time.monotonic() + 2.5
        while time.monotonic() < slow_until:
            received += sock.recv(1024)
            time.sleep(0.005)
            peak = max(peak, rss_mb(pid))
        slow_bytes = len(received)
        while not received.endswith(b"\r\n0\r\n\r\n"):  # then it reads the rest at full speed
            assert time.monotonic() < deadline, f"only {len(received)} bytes after 15 s"
            chunk = sock.recv(1 << 20)
            assert chunk, "the connection closed before the answer ended"
            received += chunk
    growth = peak - baseline
    assert growth < 60, (
        f"mitmdump RSS grew {growth:.0f} MB while the client read {slow_bytes} bytes "
        f"(before the request {before_request:.0f} MB, at the first byte {baseline:.0f} MB)"
    )
    assert slow_bytes < len(received) // 100  # the slow phase really was a small part
    # The whole answer arrived, complete and correct.
    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert b"content-type: text/event-stream" in head.lower()
    body = bytearray()
    position = 0
    while (size := int(chunked[position : chunked.index(b"\r\n", position)], 16)) != 0:
        start = chunked.index(b"\r\n", position) + 2
        body += chunked[start : start + size]
        assert chunked[start + size : start + size + 2] == b"\r\n"
        position = start + size + 2
    frames = [frame.split(b"\n", 1) for frame in bytes(body).split(b"\n\n") if frame]
    kinds = [event.removeprefix(b"event: ").decode() for event, _ in frames]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    pieces = [
        json.loads(data.removeprefix(b"data: "))["delta"]
        for event, data in frames
        if event == b"event: response.output_text.delta"
    ]
    answer = expected_text(text)
    assert len(pieces) == deltas and "".join(pieces) == answer
    final = json.loads(frames[-1][1].removeprefix(b"data: "))["response"]
    assert final["output"][0]["content"][0]["text"] == answer
    assert_still_serves(bridge)


# --------------------------------------------------------------------------- security


def test_loopback_server_refuses_requests_without_the_secret(
    shared_bridge: Mitmdump, shared_fake: FakeUpstream
) -> None:
    line = [ln for ln in shared_bridge.lines if "answering bridged requests from" in ln][-1]
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
    assert port != shared_bridge.port
    connections, requests = shared_fake.connections, len(shared_fake.requests)
    body = {"model": "m", "input": "sneaking in", "stream": True}
    for extra in (
        [],
        [("x-responses-bridge-secret", "wrong")],
        [("x-responses-bridge-secret", "x" * 43), ("x-responses-bridge-flow", "guessed-flow")],
        [("x-responses-bridge-secret", "")],
    ):
        headers = [("Content-Type", "application/json"), *extra]
        (answer,) = exchange_raw(port, [raw_request("POST", "/v1/responses", body, headers)])
        assert answer.status == 403, answer.raw
        assert answer.header("content-type") == "application/json"
        assert answer.header("connection") == "close"
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "internal endpoint" in error["message"]
    with httpx.Client(timeout=10) as local:  # any other method and path alike
        assert local.get(f"http://127.0.0.1:{port}/").status_code == 403
    assert shared_fake.connections == connections
    assert len(shared_fake.requests) == requests
    assert_still_serves(shared_bridge)


def test_a_clients_own_internal_headers_are_dropped_not_trusted(
    shared_bridge: Mitmdump, shared_fake: FakeUpstream
) -> None:
    """A client that sends the bridge's internal headers itself (guessing another flow's id)
    is answered as usual: its values are dropped before the loopback hop and never forwarded."""
    spoofed = {
        "x-responses-bridge-flow": "another-flows-id",
        "x-responses-bridge-secret": "guessed",
    }
    client = client_for(shared_bridge)
    connections = shared_fake.connections
    for stream in (False, True):
        raw = client.responses.with_raw_response.create(
            model="m", input=f"spoofing {stream}", stream=stream, extra_headers=spoofed
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["x-responses-bridge"] in ("new", "reused")
        if stream:
            events = list(raw.parse())
            response = events[-1].response
        else:
            response = raw.parse()
        assert response.output_text == expected_text(f"spoofing {stream}")
    for headers in shared_fake.handshake_headers[connections:]:
        assert not any(name.startswith("x-responses-bridge") for name in headers), headers
    assert_still_serves(shared_bridge)


# --------------------------------------------------------------------------- scope


@dataclass
class Recorder:
    """A plain HTTP/1.1 server that records every request's exact bytes and answers with fixed
    bytes (Connection: close)."""

    answer: bytes
    requests: list[bytes] = field(default_factory=list)
    port: int = 0


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    body = b'{"plain": "http", "untouched": true}'
    record = Recorder(
        b"HTTP/1.1 207 Multi-Status\r\nX-Upstream-Case: KeepMe\r\nx-dup: 1\r\nx-dup: 2\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
        % (len(body), body)
    )

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline()
                if not line:
                    return
                head += line
            length = re.search(rb"(?im)^content-length:\s*(\d+)", bytes(head))
            data = self.rfile.read(int(length.group(1))) if length else b""
            record.requests.append(bytes(head) + data)
            self.wfile.write(record.answer)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield record
    server.shutdown()
    server.server_close()


def test_unmatched_flows_pass_byte_for_byte(recorder: Recorder, start_bridge: StartBridge) -> None:
    """Everything the bridge does not match reaches the server exactly as the client sent it,
    and the server's answer reaches the client exactly as sent."""
    reverse = f"reverse:http://127.0.0.1:{recorder.port}"
    everything = start_bridge(None, mode=reverse)
    openai_only = start_bridge(None, "responses_bridge_hosts=api.openai.com", mode=reverse)
    host = f"127.0.0.1:{recorder.port}"  # what reverse mode puts in Host anyway
    custom = [
        ("Authorization", "Bearer sk-passthrough"),
        ("X-Mixed-Case", "Value"),
        ("x-dup", "a"),
        ("x-dup", "b"),
        ("Content-Type", "application/json"),
    ]
    body = {"model": "m", "input": "not for the bridge", "stream": True}
    cases = [
        (everything, raw_request("GET", "/v1/models?limit=2", headers=custom, host=host)),
        (everything, raw_request("POST", "/v1/chat/completions", body, custom, host)),
        (everything, raw_request("POST", "/v1/responses/resp_1/cancel", body, custom, host)),
        (everything, raw_request("GET", "/v1/responses", headers=custom, host=host)),
        (everything, raw_request("DELETE", "/v1/responses", headers=custom, host=host)),
        (everything, raw_request("POST", "/v1/responses_beta", body, custom, host)),
        (everything, raw_request("PUT", "/v1/responses", body, custom, host)),
        (openai_only, raw_request("POST", "/v1/responses", body, custom, host)),
        (openai_only, raw_request("POST", "/v1/responses", b"{not json", custom, host)),
    ]
    for index, (bridge, sent) in enumerate(cases):
        (answer,) = exchange_raw(bridge.port, [sent])
        assert len(recorder.requests) == index + 1, sent
        assert recorder.requests[index] == sent
        assert answer.raw == recorder.answer, (answer.raw, recorder.answer)
    for bridge in (everything, openai_only):
        assert "responses-bridge: " in bridge.output  # the addon is loaded ...
        assert not re.search(r"responses-bridge: \w+ /", bridge.output)  # ... and bridged nothing
