"""The loopback HTTP/1.1 server, spoken to by a real asyncio client over 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from responses_bridge.io.loopback import (
    MAX_LISTENERS,
    SECRET_HEADER,
    IncomingRequest,
    LoopbackServer,
    ResponseWriter,
)

SECRET = "test-secret-0123456789"
TIMEOUT = 5.0
Handler = Callable[[IncomingRequest, ResponseWriter], Awaitable[None]]


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    chunks: list[bytes] | None = None  # set for a chunked reply

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one HTTP/1.1 response, checking the chunked framing strictly."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")[:-2]
    version, status, reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    reply = Reply(int(status), reason, headers, b"")
    if reply.header("transfer-encoding") == "chunked":
        assert reply.header("content-length") is None
        reply.chunks = []
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
            assert re.fullmatch(rb"[0-9a-f]+\r\n", size_line), size_line
            size = int(size_line[:-2], 16)
            if size == 0:
                assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\r\n"
                break
            reply.chunks.append(await asyncio.wait_for(reader.readexactly(size), TIMEOUT))
            assert await asyncio.wait_for(reader.readexactly(2), TIMEOUT) == b"\r\n"
        reply.body = b"".join(reply.chunks)
    else:
        length = reply.header("content-length")
        assert length is not None
        reply.body = await asyncio.wait_for(reader.readexactly(int(length)), TIMEOUT)
    return reply


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection (a reset counts as a close)."""
    data = bytearray()
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), TIMEOUT):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


def raw_request(
    target: str = "/v1/responses",
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    secret: str | None = SECRET,
) -> bytes:
    all_headers = [("Host", "127.0.0.1")]
    if secret is not None:
        all_headers.append(("X-Responses-Bridge-Secret", secret))
    all_headers += headers or []
    if body is not None:
        all_headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers)
    return (head + "\r\n").encode("latin-1") + (body or b"")


@dataclass
class Recorder:
    """A handler that records each request and answers with a JSON echo."""

    requests: list[IncomingRequest] = field(default_factory=list)

    async def __call__(self, request: IncomingRequest, writer: ResponseWriter) -> None:
        self.requests.append(request)
        await writer.send_json(
            200,
            {"target": request.target, "body": request.body.decode(), "note": "é"},
            [("x-echo", "1")],
        )


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def exchange(self, data: bytes) -> Reply:
        await self.send(data)
        return await read_reply(self.reader)

    async def closed_by_server(self) -> bool:
        return await read_to_end(self.reader) == b""


class Harness:
    def __init__(self) -> None:
        self.servers: list[LoopbackServer] = []
        self.clients: list[Client] = []

    async def start(self, handler: Handler, max_body: int | Callable[[], int] = 1000) -> int:
        limit = max_body if callable(max_body) else (lambda: max_body)
        server = LoopbackServer(handler, SECRET, limit)
        self.servers.append(server)
        port = server.bind()
        await server.serve()
        return port

    async def connect(self, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = Client(reader, writer)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            client.writer.close()
        for server in self.servers:
            await server.close()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.aclose()


def assert_openai_error(reply: Reply, status: int, error_type: str) -> dict[str, Any]:
    assert reply.status == status
    assert reply.header("content-type") == "application/json"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


# -- binding and the secret -------------------------------------------------------------------


async def test_binds_127_0_0_1_only(harness: Harness) -> None:
    server = LoopbackServer(Recorder(), SECRET, lambda: 1000)
    harness.servers.append(server)
    port = server.bind()
    assert port > 0
    assert server.port == port
    assert [s.getsockname() for s in server._listeners] == [("127.0.0.1", port)]
    await server.serve()
    assert [s.getsockname() for srv in server._servers for s in srv.sockets] == [
        ("127.0.0.1", port)
    ]
    client = await harness.connect(port)
    assert (await client.exchange(raw_request(body=b"{}"))).status == 200


async def test_more_ports_are_bound_on_demand_and_all_serve(harness: Harness) -> None:
    recorder = Recorder()
    server = LoopbackServer(recorder, SECRET, lambda: 1000)
    harness.servers.append(server)
    await server.serve()
    assert server.ports == [server.port]
    third = server.port_at(2)  # binds the second and the third
    assert len(server.ports) == 3 and server.ports[2] == third
    assert len(set(server.ports)) == 3
    assert server.port_at(1) == server.ports[1]  # already bound: the same port
    for port in server.ports:
        assert server.listens_on("127.0.0.1", port)
        client = await harness.connect(port)  # accepted once the loop has run the start
        assert (await client.exchange(raw_request(body=b"{}"))).status == 200
    assert not server.listens_on("127.0.0.2", server.port)
    assert not server.listens_on("127.0.0.1", 1)
    # Bounded: an index past the last listener gets the last one.
    assert server.port_at(10_000) == server.ports[-1]
    assert len(server.ports) == MAX_LISTENERS
    await server.close()
    for port in server.ports:
        with pytest.raises(OSError):
            await harness.connect(port)


async def test_a_port_that_cannot_be_bound_falls_back_to_the_last(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LoopbackServer(Recorder(), SECRET, lambda: 1000)
    harness.servers.append(server)
    await server.serve()

    def out_of_descriptors() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(server, "_bind_one", out_of_descriptors)
    assert server.port_at(3) == server.port
    assert server.ports == [server.port]


async def test_serve_binds_when_not_bound(harness: Harness) -> None:
    server = LoopbackServer(Recorder(), SECRET, lambda: 1000)
    harness.servers.append(server)
    await server.serve()
    assert server.port > 0
    client = await harness.connect(server.port)
    assert (await client.exchange(raw_request(body=b"{}"))).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("X-Responses-Bridge-Secret", "x" * len(SECRET))],
        [("X-Responses-Bridge-Secret", SECRET[:-1])],
        [("X-Responses-Bridge-Secret", SECRET + "x")],
        [("X-Responses-Bridge-Secret", "")],
        [("X-Responses-Bridge-Secrets", SECRET)],
        [("Authorization", f"Bearer {SECRET}")],
    ],
    ids=["missing", "wrong", "prefix", "longer", "empty", "other-name", "elsewhere"],
)
async def test_without_the_secret_403_and_no_handler(
    harness: Harness, headers: list[tuple[str, str]]
) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    reply = await client.exchange(raw_request(secret=None, headers=headers))
    error = assert_openai_error(reply, 403, "invalid_request_error")
    assert error["param"] is None and error["code"] is None
    assert SECRET not in reply.body.decode()
    assert await client.closed_by_server()
    assert recorder.requests == []


async def test_secret_header_name_is_case_insensitive(harness: Harness) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    request = raw_request(secret=None, headers=[(SECRET_HEADER.upper(), SECRET)], body=b"")
    assert (await client.exchange(request)).status == 200
    assert len(recorder.requests) == 1


# -- requests ---------------------------------------------------------------------------------


async def test_a_request_reaches_the_handler(harness: Harness) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    body = '{"model": "m", "input": "héllo"}'.encode()
    reply = await client.exchange(
        raw_request(
            "/v1/responses?x=1",
            headers=[("Content-Type", "application/json"), ("X-Odd", "  a: b  ")],
            body=body,
        )
    )
    assert (reply.status, reply.reason) == (200, "OK")
    assert reply.json() == {"target": "/v1/responses?x=1", "body": body.decode(), "note": "é"}
    assert reply.header("x-echo") == "1"
    assert reply.header("content-length") == str(len(reply.body))
    [request] = recorder.requests
    assert request.method == "POST"
    assert request.target == "/v1/responses?x=1"
    assert request.body == body
    assert request.headers == [
        ("Host", "127.0.0.1"),
        ("X-Responses-Bridge-Secret", SECRET),
        ("Content-Type", "application/json"),
        ("X-Odd", "a: b"),
        ("Content-Length", str(len(body))),
    ]
    assert request.header("content-type") == "application/json"
    assert request.header("X-ODD") == "a: b"
    assert request.header("missing") is None


async def test_a_chunked_request_body(harness: Harness) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    head = raw_request(headers=[("Transfer-Encoding", "chunked")])
    chunked = b'5\r\n{"a":\r\nA;ext=1\r\n "0123456"\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n'
    reply = await client.exchange(head + chunked)
    assert reply.status == 200
    [request] = recorder.requests
    assert request.body == b'{"a": "0123456"}'
    assert request.header("transfer-encoding") == "chunked"
    # The trailer was consumed: the connection carries the next request cleanly.
    assert (await client.exchange(raw_request("/next", body=b"x"))).json()["body"] == "x"


async def test_a_request_without_a_body(harness: Harness) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    assert (await client.exchange(raw_request("/v1/models", method="GET"))).status == 200
    [request] = recorder.requests
    assert (request.method, request.target, request.body) == ("GET", "/v1/models", b"")


async def test_keep_alive_and_connection_close(harness: Harness) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    first = await client.exchange(raw_request("/one", body=b"1"))
    second = await client.exchange(raw_request("/two", body=b"22"))
    assert (first.json()["target"], second.json()["target"]) == ("/one", "/two")
    # Pipelined requests are answered in order.
    await client.send(raw_request("/three", body=b"3") + raw_request("/four", body=b"4"))
    assert (await read_reply(client.reader)).json()["target"] == "/three"
    assert (await read_reply(client.reader)).json()["target"] == "/four"
    last = await client.exchange(raw_request("/bye", body=b"", headers=[("Connection", "close")]))
    assert last.json()["target"] == "/bye"
    assert await client.closed_by_server()
    assert [r.target for r in recorder.requests] == ["/one", "/two", "/three", "/four", "/bye"]


async def test_a_body_over_the_limit_is_413_before_the_handler(harness: Harness) -> None:
    recorder = Recorder()
    limit = [100]
    port = await harness.start(recorder, max_body=lambda: limit[0])
    client = await harness.connect(port)
    # Only the head is sent: the server must answer without waiting for the body.
    reply = await client.exchange(raw_request(headers=[("Content-Length", "101")]))
    error = assert_openai_error(reply, 413, "invalid_request_error")
    assert "100" in error["message"]
    assert await client.closed_by_server()
    # Exactly the limit is fine.
    client = await harness.connect(port)
    assert (await client.exchange(raw_request(body=b"x" * 100))).status == 200
    # The limit is read per request (options can change while running).
    limit[0] = 50
    reply = await client.exchange(raw_request(body=b"x" * 51))
    assert_openai_error(reply, 413, "invalid_request_error")
    assert [len(r.body) for r in recorder.requests] == [100]


@pytest.mark.parametrize(
    "chunks",
    [b"65\r\n", b"3c\r\n" + b"x" * 60 + b"\r\n3c\r\n"],
    ids=["one-chunk", "cumulative"],
)
async def test_a_chunked_body_over_the_limit_is_413(harness: Harness, chunks: bytes) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder, max_body=100))
    reply = await client.exchange(raw_request(headers=[("Transfer-Encoding", "chunked")]) + chunks)
    assert_openai_error(reply, 413, "invalid_request_error")
    assert await client.closed_by_server()
    assert recorder.requests == []


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"POST /v1/responses HTTP/1.1\r\nNoColonHere\r\n\r\n",
        raw_request(headers=[("Content-Length", "abc")]),
        raw_request(headers=[("Content-Length", "-1")]),
        raw_request(headers=[("Transfer-Encoding", "chunked")]) + b"zz\r\n",
    ],
    ids=["request-line", "short-request-line", "header-line", "length", "negative", "chunk"],
)
async def test_a_malformed_request_is_400(harness: Harness, data: bytes) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    reply = await client.exchange(data)
    assert_openai_error(reply, 400, "invalid_request_error")
    assert reply.header("connection") == "close"
    assert await client.closed_by_server()
    assert recorder.requests == []


async def test_a_truncated_head_is_400(harness: Harness) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    await client.send(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\n")
    client.writer.write_eof()
    reply = await read_reply(client.reader)
    assert_openai_error(reply, 400, "invalid_request_error")
    assert recorder.requests == []


async def test_a_head_over_64_kib_is_431_before_the_handler(harness: Harness) -> None:
    recorder = Recorder()
    client = await harness.connect(await harness.start(recorder))
    huge = [("X-Filler", "y" * 70_000)]
    reply = await client.exchange(raw_request(headers=huge, body=b"{}"))
    assert_openai_error(reply, 431, "invalid_request_error")
    assert await client.closed_by_server()
    assert recorder.requests == []


# -- handler failures -------------------------------------------------------------------------


async def test_a_failing_handler_is_500_and_the_server_keeps_serving(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()

    async def handler(request: IncomingRequest, writer: ResponseWriter) -> None:
        if request.target == "/boom":
            raise RuntimeError("handler bug")
        await recorder(request, writer)

    port = await harness.start(handler)
    client = await harness.connect(port)
    with caplog.at_level(logging.ERROR, logger="responses_bridge.io.loopback"):
        reply = await client.exchange(raw_request("/boom", body=b"{}"))
    assert_openai_error(reply, 500, "server_error")
    assert "handler bug" not in reply.body.decode()
    assert any("handler bug" in (r.exc_text or "") for r in caplog.records)
    # The same connection and a new one both still work.
    assert (await client.exchange(raw_request("/ok", body=b"{}"))).status == 200
    other = await harness.connect(port)
    assert (await other.exchange(raw_request("/ok2", body=b"{}"))).status == 200
    assert [r.target for r in recorder.requests] == ["/ok", "/ok2"]


async def test_a_handler_failing_mid_stream_drops_the_connection(harness: Harness) -> None:
    recorder = Recorder()

    async def handler(request: IncomingRequest, writer: ResponseWriter) -> None:
        if request.target == "/boom":
            await writer.start_stream(200, [])
            await writer.write(b"partial")
            raise RuntimeError("handler bug")
        await recorder(request, writer)

    port = await harness.start(handler)
    client = await harness.connect(port)
    await client.send(raw_request("/boom", body=b"{}"))
    data = await read_to_end(client.reader)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"7\r\npartial\r\n")  # no last chunk: the client sees a cut stream
    other = await harness.connect(port)
    assert (await other.exchange(raw_request("/ok", body=b"{}"))).status == 200


async def test_a_handler_that_never_answers_closes_the_connection(harness: Harness) -> None:
    async def handler(request: IncomingRequest, writer: ResponseWriter) -> None:
        return None

    client = await harness.connect(await harness.start(handler))
    await client.send(raw_request(body=b"{}"))
    assert await client.closed_by_server()


# -- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("last", [b"", b"data: last\n\n"])
async def test_a_streamed_response_is_chunked(harness: Harness, last: bytes) -> None:
    pieces = [b"data: 1\n\n", b"", b"x" * 70_000, "data: é\n\n".encode(), b"\r\n0\r\n\r\n"]
    seen: list[bytes] = []
    writers: list[ResponseWriter] = []
    recorder = Recorder()

    async def handler(request: IncomingRequest, writer: ResponseWriter) -> None:
        if request.target != "/stream":
            await recorder(request, writer)
            return
        writers.append(writer)
        writer.on_chunk = seen.append
        await writer.start_stream(
            200, [("content-type", "text/event-stream"), ("x-responses-bridge", "new")]
        )
        assert writer.started and not writer.finished
        for piece in pieces:
            await writer.write(piece)
        await writer.end_stream(last)  # the last chunk and the end of the body, together
        await writer.end_stream(b"never sent")  # a second end is a no-op

    client = await harness.connect(await harness.start(handler))
    reply = await client.exchange(raw_request("/stream", body=b"{}"))
    expected = [p for p in [*pieces, last] if p]
    assert (reply.status, reply.reason) == (200, "OK")
    assert reply.header("content-type") == "text/event-stream"
    assert reply.header("x-responses-bridge") == "new"
    assert reply.chunks == expected
    assert seen == expected
    [writer] = writers
    assert writer.finished
    assert writer.status == 200
    assert writer.bytes_sent == sum(map(len, expected))
    # Nothing stray after the last chunk: the connection carries the next request.
    assert (await client.exchange(raw_request("/after", body=b"{}"))).json()["target"] == "/after"


async def test_abort_drops_the_connection(harness: Harness) -> None:
    recorder = Recorder()
    aborted = asyncio.Event()

    async def handler(request: IncomingRequest, writer: ResponseWriter) -> None:
        if request.target != "/abort":
            await recorder(request, writer)
            return
        await writer.start_stream(200, [])
        await writer.write(b"partial")
        writer.abort()
        assert writer.finished
        await writer.end_stream()  # after an abort nothing more is written
        aborted.set()

    port = await harness.start(handler)
    client = await harness.connect(port)
    # A second request pipelined behind the aborted one must not be served.
    await client.send(raw_request("/abort", body=b"{}") + raw_request("/behind", body=b"{}"))
    data = await read_to_end(client.reader)
    await asyncio.wait_for(aborted.wait(), TIMEOUT)
    assert b"0\r\n\r\n" not in data
    assert b"/behind" not in data
    other = await harness.connect(port)
    assert (await other.exchange(raw_request("/ok", body=b"{}"))).status == 200
    assert [r.target for r in recorder.requests] == ["/ok"]


# -- shutdown ---------------------------------------------------------------------------------


async def test_close_cancels_open_connections(harness: Harness) -> None:
    recorder = Recorder()
    entered = asyncio.Event()
    outcome: list[str] = []

    async def handler(request: IncomingRequest, writer: ResponseWriter) -> None:
        if request.target != "/hang":
            await recorder(request, writer)
            return
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    server = LoopbackServer(handler, SECRET, lambda: 1000)
    port = server.bind()
    await server.serve()
    idle = await harness.connect(port)
    assert (await idle.exchange(raw_request("/ok", body=b"{}"))).status == 200
    busy = await harness.connect(port)
    await busy.send(raw_request("/hang", body=b"{}"))
    await asyncio.wait_for(entered.wait(), TIMEOUT)

    await asyncio.wait_for(server.close(), TIMEOUT)
    assert outcome == ["cancelled"]
    assert await busy.closed_by_server()
    assert await idle.closed_by_server()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_close_before_serving_releases_the_port() -> None:
    server = LoopbackServer(Recorder(), SECRET, lambda: 1000)
    port = server.bind()
    await server.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
