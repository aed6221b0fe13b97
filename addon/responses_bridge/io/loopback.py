"""The embedded loopback HTTP/1.1 server that answers bridged flows.

mitmproxy cannot stream a body an addon makes itself, but it streams what a server sends. So the
addon points each bridged flow at this server, which runs on mitmproxy's own event loop, bound to
127.0.0.1 only, and answers only requests that carry the per-process secret header.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

SECRET_HEADER = "x-responses-bridge-secret"
_MAX_HEAD_BYTES = 64 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class IncomingRequest:
    """One request as mitmproxy sent it to the loopback server."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    version: str = "HTTP/1.1"

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


class ClientStalled(ConnectionError):
    """The client read nothing for ``write_timeout`` seconds while more of its answer waited."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the client read nothing for {seconds:g} s")
        self.seconds = seconds


@dataclass
class ResponseWriter:
    """Writes one HTTP/1.1 response: a whole JSON body, or a chunked stream."""

    stream: asyncio.StreamWriter
    started: bool = False
    finished: bool = False
    status: int | None = None
    bytes_sent: int = 0
    on_chunk: Callable[[bytes], None] | None = field(default=None, repr=False)
    chunked: bool = True  # False for an HTTP/1.0 request: the body ends when the connection does
    # Seconds a write may wait for mitmproxy to take more (it stops reading when its client
    # does); then the connection is dropped with ``ClientStalled``. None waits for ever.
    write_timeout: float | None = None

    _unsent_head: bytes = field(default=b"", repr=False)

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _framed(self, data: bytes) -> bytes:
        """``data`` as one chunk (or as it is in a close-delimited body), after the head if that
        is still unsent: one write, so mitmproxy reads the head and the first events together."""
        head, self._unsent_head = self._unsent_head, b""
        if not data:
            return head
        if self.on_chunk is not None:
            self.on_chunk(data)
        self.bytes_sent += len(data)
        return head + (b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    async def send_json(
        self, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
    ) -> None:
        """Send a complete JSON response."""
        assert not self.started, "response already started"
        try:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:  # a lone surrogate from the upstream: escape it
            body = json.dumps(payload, separators=(",", ":")).encode()
        all_headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        all_headers += headers or []
        self.started, self.finished, self.status = True, True, status
        self.stream.write(self._head(status, all_headers) + body)
        self.bytes_sent += len(body)
        await self._drain()

    async def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Commit the status of a streamed response; its head goes out with the first chunk."""
        assert not self.started, "response already started"
        self.started, self.status = True, status
        framing = ("transfer-encoding", "chunked") if self.chunked else ("connection", "close")
        self._unsent_head = self._head(status, [*headers, framing])

    async def write(self, data: bytes) -> None:
        """Send one chunk and wait until the transport can take more (backpressure)."""
        if not data:
            return
        self.stream.write(self._framed(data))
        await self._drain()

    def abort(self) -> None:
        """Drop the connection to mitmproxy at once (the client has gone)."""
        self.finished = True
        self.stream.transport.abort()

    async def end_stream(self, last: bytes = b"") -> None:
        """Send ``last`` (if any) and the end of the body, in one write."""
        if self.finished:
            return
        self.finished = True
        data = self._framed(last)
        if not self.chunked:
            if data:
                self.stream.write(data)
            self.stream.close()  # a close-delimited body ends here
            return
        self.stream.write(data + b"0\r\n\r\n")
        await self._drain()

    async def _drain(self) -> None:
        transport = self.stream.transport
        # Below the low-water mark the transport is not paused and drain() returns at once: no
        # timer for that (most writes), as arming one per chunk costs CPU on fast streams.
        if self.write_timeout is None or (
            transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[0]
        ):
            await self.stream.drain()
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.stream.drain()
        except TimeoutError:
            self.abort()
            raise ClientStalled(self.write_timeout) from None


Handler = Callable[[IncomingRequest, ResponseWriter], Awaitable[None]]


MAX_LISTENERS = 32


class LoopbackServer:
    """Serves ``handler`` on 127.0.0.1 to requests that carry the secret header, on one port
    or, when asked for more (``port_at``), on up to ``MAX_LISTENERS``."""

    def __init__(
        self,
        handler: Handler,
        secret: str,
        max_body_bytes: Callable[[], int],
        on_head: Callable[[IncomingRequest], None] | None = None,
    ) -> None:
        """``on_head`` is called with each authenticated request as soon as its head is read,
        before its body (which mitmproxy may still be streaming)."""
        self._handler = handler
        self._on_head = on_head
        self._secret = secret.encode()
        self._max_body_bytes = max_body_bytes
        self._listeners: list[socket.socket] = []
        self._servers: list[asyncio.Server] = []
        self._starting: set[asyncio.Task[None]] = set()
        self._serving = False
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.ports: list[int] = []  # one per listener, in the order they were bound

    @property
    def port(self) -> int:
        """The first listener's port (0 before ``bind``)."""
        return self.ports[0] if self.ports else 0

    def bind(self) -> int:
        """Bind and listen synchronously so the port is known before the first flow."""
        if not self._listeners:
            self._bind_one()
        return self.port

    def _bind_one(self) -> socket.socket:
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say TCP, and
        # accepted sockets inherit it. Without it Nagle + delayed ACKs add ~40 ms per answer.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(512)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listeners.append(listener)
        self.ports.append(listener.getsockname()[1])
        return listener

    def port_at(self, index: int) -> int:
        """The port of listener ``index`` (0 to ``MAX_LISTENERS - 1``), bound now if it is new;
        it accepts as soon as the event loop runs again (until then connections wait in the
        kernel's backlog). Falls back to the last port if no new one can be bound."""
        index = min(index, MAX_LISTENERS - 1)
        while len(self._listeners) <= index:
            try:
                listener = self._bind_one()
            except OSError as exc:  # out of ports or descriptors: share the ones there are
                logger.warning("responses-bridge: cannot open another loopback port: %s", exc)
                return self.ports[-1] if self.ports else self.bind()
            if self._serving:
                task = asyncio.get_running_loop().create_task(
                    self._start(listener), name="responses-bridge loopback listener"
                )
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)
        return self.ports[index]

    def listens_on(self, host: str, port: int) -> bool:
        """Whether ``host``:``port`` is one of this server's listeners."""
        return host == "127.0.0.1" and port in self.ports

    async def serve(self) -> None:
        """Start accepting connections on the bound sockets."""
        self.bind()
        self._serving = True
        for listener in self._listeners:
            await self._start(listener)

    async def _start(self, listener: socket.socket) -> None:
        self._servers.append(
            await asyncio.start_server(self._on_connection, sock=listener, limit=_MAX_HEAD_BYTES)
        )

    async def close(self) -> None:
        """Stop listening and drop every connection; handlers still running after a second
        are cancelled."""
        self._serving = False
        for task in self._starting:
            task.cancel()
        if self._starting:
            await asyncio.wait(list(self._starting))
        for server in self._servers:
            server.close()
        for listener in self._listeners:
            listener.close()  # those never served; closing a served one again is harmless
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _done, pending = await asyncio.wait(list(self._connections), timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # This task is the connection's top level (asyncio's start_server made it, and on
            # Python 3.11 reports a cancelled one as an error): a cancellation ends it quietly.
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; True when the connection may carry another."""
        response = ResponseWriter(writer)
        try:
            request = await self._read_request(reader)
        except _BadRequest as exc:
            await response.send_json(
                exc.status,
                error_body(
                    str(exc),
                    "invalid_request_error",
                    "request_too_large" if exc.status == 413 else None,
                ),
                [("connection", "close")],
            )
            return False
        if request is None:
            return False
        response.chunked = request.version != "HTTP/1.0"
        try:
            await self._handler(request, response)
        except Exception:
            logger.exception("responses-bridge: internal error while answering a request")
            if not response.started:
                await response.send_json(
                    500,
                    error_body(INTERNAL_ERROR, "server_error"),
                )
            else:
                return False
        if not response.finished or writer.transport.is_closing():
            return False  # unfinished, or abort()ed: never serve a request buffered behind it
        if request.version == "HTTP/1.0":
            return False
        return (request.header("connection") or "").lower() != "close"

    async def _read_request(self, reader: asyncio.StreamReader) -> IncomingRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest(400, "Incomplete request head.") from exc
            return None
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest(431, "Request head too large.") from exc
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _BadRequest(400, "Malformed request line.") from exc
        headers = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, "Malformed header line.")
            headers.append((name.strip(), value.strip()))
        request = IncomingRequest(method, target, headers, b"", version.strip())
        secret = (request.header(SECRET_HEADER) or "").encode()
        if not hmac.compare_digest(secret, self._secret):
            raise _BadRequest(
                403,
                "This is responses-bridge's internal endpoint; "
                "it only answers requests routed by the addon.",
            )
        if self._on_head is not None:
            self._on_head(request)
        request.body = await self._read_body(reader, request)
        return request

    async def _read_body(self, reader: asyncio.StreamReader, request: IncomingRequest) -> bytes:
        limit = self._max_body_bytes()
        if (request.header("transfer-encoding") or "").lower() == "chunked":
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise _BadRequest(400, "Malformed chunked body.") from exc
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    return bytes(body)
                if len(body) + size > limit:
                    raise _BadRequest(413, f"The request body is larger than {limit} bytes.")
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        length_text = request.header("content-length") or "0"
        if not length_text.isdigit():
            raise _BadRequest(400, "Invalid Content-Length.")
        length = int(length_text)
        if length > limit:
            raise _BadRequest(
                413,
                f"The request body is {length} bytes; this bridge accepts at "
                f"most {limit} (responses_bridge_max_body_bytes).",
            )
        return await reader.readexactly(length) if length else b""


INTERNAL_ERROR = "Internal error in responses-bridge; see the proxy log."


def error_body(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}
