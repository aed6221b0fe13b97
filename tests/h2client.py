"""A small HTTP/2 client for tests: many concurrent streams on one connection, through an HTTP
proxy's CONNECT tunnel and TLS (ALPN ``h2``), each stream's events timed as they arrive.

httpx offers ``http/1.1`` before ``h2`` in a tunnel, and mitmproxy takes the first protocol a
client offers; curl multiplexes but cannot time each stream's events. Built on ``h2``, which
mitmproxy depends on.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset


@dataclass
class StreamResult:
    """What one stream received, and when (``time.monotonic()``)."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    first_marker: float | None = None  # when ``marker`` first appeared in the body
    chunks: int = 0  # DATA frames received
    ended: float | None = None
    reset: bool = False


async def post_streams(
    proxy: tuple[str, int],
    authority: str,
    path: str,
    batches: list[list[bytes]],
    headers: list[tuple[str, str]],
    ca: ssl.SSLContext,
    *,
    marker: bytes = b"response.output_text.delta",
    timeout: float = 30,
) -> list[list[StreamResult]]:
    """On one HTTP/2 connection to ``authority`` (``host:port``) through the proxy, POST each
    batch's bodies at once, each on its own stream, the next batch once the last has ended;
    returns each stream's result, by batch."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(*proxy)
        try:
            writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                raise ConnectionError(f"CONNECT refused: {head[:100]!r}")
            ca.set_alpn_protocols(["h2"])
            await writer.start_tls(ca, server_hostname=authority.rsplit(":", 1)[0])
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                raise ConnectionError("the proxy did not agree to HTTP/2")
            conn = H2Connection(config=H2Configuration(client_side=True, header_encoding="utf-8"))
            conn.initiate_connection()
            conn.increment_flow_control_window(2**30)
            return [
                await _exchange(conn, reader, writer, authority, path, bodies, headers, marker)
                for bodies in batches
            ]
        finally:
            writer.close()


async def _exchange(
    conn: H2Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    authority: str,
    path: str,
    bodies: list[bytes],
    headers: list[tuple[str, str]],
    marker: bytes,
) -> list[StreamResult]:
    results: dict[int, StreamResult] = {}
    for body in bodies:
        stream_id = conn.get_next_available_stream_id()
        request_headers = [
            (":method", "POST"),
            (":authority", authority),
            (":scheme", "https"),
            (":path", path),
            ("content-length", str(len(body))),
            *headers,
        ]
        conn.send_headers(stream_id, request_headers)
        conn.send_data(stream_id, body, end_stream=True)
        results[stream_id] = StreamResult()
    writer.write(conn.data_to_send())
    await writer.drain()
    while any(r.ended is None for r in results.values()):
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("the proxy closed the connection")
        now = time.monotonic()
        for event in conn.receive_data(data):
            result = results.get(getattr(event, "stream_id", 0) or 0)
            if result is None:
                continue
            if isinstance(event, ResponseReceived):
                result.headers = dict(event.headers)  # type: ignore[arg-type]
                result.status = int(result.headers.get(":status", "0"))
            elif isinstance(event, DataReceived):
                result.body += event.data
                result.chunks += 1
                if result.first_marker is None and marker in result.body:
                    result.first_marker = now
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                result.ended = now
            elif isinstance(event, StreamReset):
                result.reset, result.ended = True, now
        writer.write(conn.data_to_send())
    return [results[k] for k in sorted(results)]
