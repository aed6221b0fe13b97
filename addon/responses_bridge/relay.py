"""Answer one bridged request: open the upstream socket, send the turn, relay or fold the events.

This is the I/O core between the loopback server (client side) and ``upstream`` (websocket side).
The HTTP status is decided before anything is committed: a failure before ``response.created`` is a
real HTTP error with a JSON body; after it, an SSE ``error`` event that ends the stream.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from responses_bridge import sse
from responses_bridge.aggregate import (
    EventKind,
    ResponseFolder,
    classify,
    error_object,
    error_status,
)
from responses_bridge.errors import BridgeError, UpstreamProtocolError, UpstreamResponseError
from responses_bridge.server import IncomingRequest, ResponseWriter
from responses_bridge.translate import (
    build_create_frame,
    chatgpt_compat_enabled,
    forwardable_headers,
    parse_client_request,
)
from responses_bridge.upstream import UpstreamSocket, open_socket

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]
_MAX_EVENTS_BEFORE_CREATED = 1000


@dataclass(frozen=True)
class Settings:
    """The options one request is answered with: a snapshot, safe from a reconfigure."""

    connect_timeout: float = 15.0
    idle_timeout: float = 300.0
    chatgpt_compat: str = "auto"
    forward_vendor_events: bool = False
    max_body_bytes: int = 32 * 1024 * 1024
    ssl_context: ssl.SSLContext | None = None
    proxy: str | None = None


@dataclass
class Exchange:
    """One bridged request: recorded by the addon in ``requestheaders``, filled in as it runs."""

    flow_id: str
    upstream_url: str
    settings: Settings
    started: float = field(default_factory=time.monotonic)
    stream: bool | None = None
    status: int | None = None
    events: int = 0
    socket_state: str = "new"
    error: str | None = None
    sse_body: bytearray = field(default_factory=bytearray)
    finished: float | None = None

    def duration(self) -> float:
        return (self.finished or time.monotonic()) - self.started


async def answer(exchange: Exchange, request: IncomingRequest, writer: ResponseWriter) -> None:
    """Answer ``request`` on ``writer`` through a fresh upstream socket."""
    settings = exchange.settings
    socket: UpstreamSocket | None = None
    try:
        client = parse_client_request(request.body, max_bytes=settings.max_body_bytes)
        exchange.stream = client.stream
        compat = chatgpt_compat_enabled(settings.chatgpt_compat, exchange.upstream_url)
        frame = build_create_frame(client.body, chatgpt_compat=compat)
        socket = await open_socket(
            exchange.upstream_url,
            forwardable_headers(request.headers),
            connect_timeout=settings.connect_timeout,
            ssl_context=settings.ssl_context,
            proxy=settings.proxy,
        )
        await socket.send_event(frame)
        if client.stream:
            writer.on_chunk = exchange.sse_body.extend
            await relay_stream(socket, writer, exchange)
        else:
            await relay_json(socket, writer, exchange)
    except BridgeError as exc:
        exchange.error = f"{type(exc).__name__}: {exc.message}"
        if not writer.started:
            await writer.send_json(exc.status, exc.body(), list(exc.headers.items()))
        elif not writer.finished:
            await writer.write(sse.encode_event(sse.error_event(exc)))
            await writer.end_stream()
    finally:
        exchange.status = writer.status
        exchange.finished = time.monotonic()
        if socket is not None:
            await socket.close()


async def relay_stream(socket: UpstreamSocket, writer: ResponseWriter, exchange: Exchange) -> None:
    """Relay upstream events as SSE, committing ``200`` at ``response.created``."""
    settings = exchange.settings
    folder = ResponseFolder()
    held: list[tuple[dict[str, Any], str | None]] = []
    while True:
        event, raw = await socket.receive(settings.idle_timeout)
        exchange.events += 1
        kind = classify(event)
        if kind is EventKind.VENDOR:
            if writer.started and settings.forward_vendor_events:
                await writer.write(sse.encode_event(event, raw))
            continue
        if kind is EventKind.ERROR:
            failure = UpstreamResponseError(error_object(event), status=error_status(event))
            if not writer.started:
                raise failure
            sequence = event.get("sequence_number")
            await writer.write(
                sse.encode_event(
                    sse.error_event(failure, sequence if isinstance(sequence, int) else None)
                )
            )
            await writer.end_stream()
            exchange.error = f"upstream error: {failure.message}"
            return
        if not writer.started:
            if kind is EventKind.OTHER:
                held.append((event, raw))
                if len(held) > _MAX_EVENTS_BEFORE_CREATED:
                    raise UpstreamProtocolError(
                        f"The upstream sent {len(held)} events without response.created."
                    )
                continue
            # response.created (or a terminal event without one) commits the 200.
            await writer.start_stream(200, SSE_HEADERS)
            if kind is EventKind.CREATED:
                held.insert(0, (event, raw))
            else:
                held.insert(0, (folder.synthesize_created(event), None))
            for early, early_raw in held:
                fixed, changed = folder.feed(early)
                await writer.write(sse.encode_event(fixed, None if changed else early_raw))
            held.clear()
            if kind is EventKind.CREATED:
                continue
        fixed, changed = folder.feed(event)
        await writer.write(sse.encode_event(fixed, None if changed else raw))
        if kind is EventKind.TERMINAL:
            await writer.end_stream()
            return


async def relay_json(socket: UpstreamSocket, writer: ResponseWriter, exchange: Exchange) -> None:
    """Fold upstream events into the final Response object and send it as JSON."""
    folder = ResponseFolder()
    while True:
        event, _raw = await socket.receive(exchange.settings.idle_timeout)
        exchange.events += 1
        kind = classify(event)
        if kind is EventKind.ERROR:
            raise UpstreamResponseError(error_object(event), status=error_status(event))
        if kind is not EventKind.TERMINAL:
            folder.feed(event)
            continue
        terminal, _changed = folder.feed(event)
        response = terminal["response"]
        if terminal["type"] == "response.failed":
            failure = response.get("error")
            if not isinstance(failure, dict):
                failure = {"message": "The upstream reported response.failed without details."}
            raise UpstreamResponseError(
                {"type": "server_error", **failure}, status=error_status(failure)
            )
        await writer.send_json(200, response)
        return
