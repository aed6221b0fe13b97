"""One bridged request's state: the options it runs with, what happened on the websocket (for
inspection), and the client side, which may leave at any time (then the answer is drained)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from responses_bridge.io.loopback import ClientStalled, ResponseWriter
from responses_bridge.protocol.request import ClientRequest

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]


@dataclass(frozen=True)
class Settings:
    """The options one request is answered with: a snapshot, safe from a reconfigure."""

    connect_timeout: float = 15.0
    idle_timeout: float = 300.0
    drain_timeout: float = 30.0
    write_timeout: float = 60.0  # a streaming client reading nothing while more waits
    chatgpt_compat: str = "auto"
    forward_vendor_events: bool = False
    keepalive: float = 15.0  # seconds of upstream silence before an SSE comment; 0 = off
    max_body_bytes: int = 32 * 1024 * 1024
    stateful: bool = True
    rehydrate: bool = True
    auto_chain: bool = True
    lanes: bool = True  # conversations of one owner share a socket, each on its own lane
    ssl_context: ssl.SSLContext | None = None
    proxy: str | None = None


@dataclass
class Exchange:
    """One bridged request: recorded when the addon takes its flow, filled in as it runs."""

    flow_id: str
    upstream_url: str
    settings: Settings
    # Dialled instead of resolving the URL's host (transparent and local capture modes).
    upstream_address: tuple[str, int] | None = None
    # The request body, when the addon parsed it already (its parsed form, decoded length).
    client: ClientRequest | None = None
    body_size: int = 0
    started: float = field(default_factory=time.monotonic)
    stream: bool | None = None
    status: int | None = None
    events: int = 0
    socket_state: str = "new"
    socket_age: float = 0.0
    socket_id: str | None = None  # the upstream connection (shared by lanes, or its own)
    lane: str | None = None  # the stream_id this response ran under, on a shared socket
    error: str | None = None
    sse_body: bytearray = field(default_factory=bytearray)
    finished: float | None = None
    sink: ClientSink | None = None
    task: asyncio.Task[Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # what went over the websocket
    first_event_at: float | None = None
    rate_limits: dict[str, Any] | None = None
    # The upstream's headers for the client: the handshake's, when this request opened the socket.
    upstream_headers: list[tuple[str, str]] = field(default_factory=list)
    # Called with the response id when the upstream announces it (response.created).
    on_created: Callable[[str], None] | None = None
    no_websocket_mode: bool = False  # the upgrade was refused with 404, 405 or 426
    error_code: str | None = None
    retried: bool = False
    last_event_at: float = field(default_factory=time.monotonic)
    # Set once the turn's frame is on the wire (or the turn will send none): an early-started
    # turn holds mitmproxy's request hook until then, so the send is not queued behind it.
    dispatched: asyncio.Event = field(default_factory=asyncio.Event)
    # Run once, when the client has the answer's first output (a stream's first delta passed
    # on by mitmproxy) or else when mitmproxy is done with the flow (answer delivered, client gone).
    after_first_output: Callable[[], None] | None = None
    # Bytes of the SSE body mitmproxy has sent on to the client (counted by ``forwarded``).
    forwarded_bytes: int = 0
    _forward_waiter: tuple[int, asyncio.Future[None]] | None = None

    def forwarded(self, chunk: bytes) -> bytes:
        """The flow's ``Response.stream`` callable: mitmproxy calls it with each chunk of the SSE
        body as it sends it on to the client; it passes the chunk unchanged and counts it."""
        self.forwarded_bytes += len(chunk)
        waiter = self._forward_waiter
        if waiter is not None and self.forwarded_bytes >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)
        return chunk

    @property
    def awaiting_forward(self) -> bool:
        return self._forward_waiter is not None

    async def until_forwarded(self, size: int, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until mitmproxy has sent the first ``size`` bytes
        of the SSE body on to the client."""
        if self.forwarded_bytes >= size:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._forward_waiter = (size, future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass  # e.g. another addon replaced the stream callable: go on regardless
        finally:
            self._forward_waiter = None

    def duration(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def first_event_ms(self) -> float | None:
        if self.first_event_at is None:
            return None
        return (self.first_event_at - self.started) * 1000

    def received(self, event: dict[str, Any]) -> None:
        """Note one upstream event (for inspection and the counters)."""
        now = time.monotonic()
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        self.events += 1
        if self.attempts:
            self.attempts[-1]["events"].append(
                {"t_ms": round((now - self.started) * 1000, 1), "event": event}
            )
        kind = event.get("type")
        if kind == "response.created":
            response = event.get("response")
            response_id = response.get("id") if isinstance(response, dict) else None
            if isinstance(response_id, str) and self.on_created is not None:
                self.on_created(response_id)
        elif kind == "codex.rate_limits":
            self.rate_limits = event

    def first_output_sent(self) -> None:
        """Run ``after_first_output`` if it is set (once)."""
        callback, self.after_first_output = self.after_first_output, None
        if callback is not None:
            callback()

    def bytes_relayed(self) -> int:
        writer = self.sink.writer if self.sink is not None else None
        return writer.bytes_sent if writer is not None else 0

    def inspection(self) -> dict[str, Any]:
        """The websocket side of this request, for ``flow.metadata`` (no credentials in it)."""
        return {
            "upstream": self.upstream_url,
            "socket": self.socket_state,
            "socket_age_s": round(self.socket_age, 3),
            "socket_id": self.socket_id,
            "lane": self.lane,
            "status": self.status,
            # Of a stream: how much of its SSE body mitmproxy sent on to the client.
            "sent_to_client_bytes": self.forwarded_bytes if self.stream else None,
            "error": self.error,
            "rate_limits": self.rate_limits,
            "attempts": self.attempts,
        }

    def client_gone(self) -> None:
        """The client disconnected: drain the upstream (stateful) or stop at once."""
        if self.sink is not None:
            self.sink.leave()
        if not self.settings.stateful and self.task is not None and not self.task.done():
            self.task.cancel()


class ClientSink:
    """The client side of one exchange; after the client leaves, writes are dropped and the
    upstream is read on (draining) for at most ``drain_timeout`` seconds.

    A sink may be made before the loopback request it answers has arrived (the addon starts the
    upstream turn as soon as mitmproxy has the whole request): writes then wait, at most
    ``attach_timeout`` seconds, for ``attach``."""

    def __init__(
        self, exchange: Exchange, writer: ResponseWriter | None = None, *, attach_timeout: float
    ) -> None:
        # What the sink needs of its exchange, not the exchange itself: the exchange holds the
        # sink, and a cycle would leave both (and the turn's events) to the garbage collector.
        self._drain_timeout = exchange.settings.drain_timeout
        self._write_timeout = exchange.settings.write_timeout
        self.stalled = False  # the client stopped reading (see ResponseWriter.write_timeout)
        self._dispatched = exchange.dispatched
        self.writer: ResponseWriter | None = None
        self.gone = False
        self._committed = False  # a stream was started, even if the client had already left
        self.on_chunk: Callable[[bytes], None] | None = None
        self._attached = asyncio.Event()
        self._attach_timeout = attach_timeout
        self._deadline: float | None = None
        if writer is not None:
            self.attach(writer)

    @property
    def attached(self) -> bool:
        return self.writer is not None

    @property
    def started(self) -> bool:
        return self._committed or (self.writer is not None and self.writer.started)

    @property
    def finished(self) -> bool:
        return self.writer is not None and self.writer.finished

    @property
    def status(self) -> int | None:
        return self.writer.status if self.writer is not None else None

    def attach(self, writer: ResponseWriter) -> None:
        """Connect the loopback response this sink writes to."""
        self.writer = writer
        writer.on_chunk = self.on_chunk
        writer.write_timeout = self._write_timeout
        if self.gone:
            writer.abort()
        self._attached.set()

    def leave(self) -> None:
        if self.gone:
            return
        self.gone = True
        self._deadline = time.monotonic() + self._drain_timeout
        if self.writer is not None:
            self.writer.abort()
        self._attached.set()  # nothing waits for a writer that will not come
        self._dispatched.set()

    def drain_remaining(self) -> float:
        """Seconds left to drain after the client left (infinite while it is here)."""
        if self._deadline is None:
            return float("inf")
        return self._deadline - time.monotonic()

    async def _ready(self) -> ResponseWriter | None:
        if self.writer is None and not self.gone:
            self._dispatched.set()  # the hook that brings the writer must not wait
            try:
                await asyncio.wait_for(self._attached.wait(), self._attach_timeout)
            except TimeoutError:
                self.leave()
        return None if self.gone else self.writer

    async def _guard(self, write: Callable[[ResponseWriter], Awaitable[None]]) -> None:
        writer = await self._ready()
        if writer is None:
            return
        try:
            await write(writer)
        except ClientStalled as exc:
            logger.warning(
                "responses-bridge: %s (responses_bridge_write_timeout); its answer ends here",
                exc,
            )
            self.stalled = True
            self.leave()
        except (ConnectionError, OSError):
            self.leave()

    def stream_chunks_to(self, on_chunk: Callable[[bytes], None]) -> None:
        """Also hand every streamed chunk to ``on_chunk`` (the flow keeps the SSE body)."""
        self.on_chunk = on_chunk
        if self.writer is not None:
            self.writer.on_chunk = on_chunk

    async def start_stream(self, headers: list[tuple[str, str]]) -> None:
        self._committed = True
        await self._guard(lambda w: w.start_stream(200, SSE_HEADERS + headers))

    async def write(self, data: bytes) -> None:
        await self._guard(lambda w: w.write(data))

    async def end_stream(self, last: bytes = b"") -> None:
        await self._guard(lambda w: w.end_stream(last))

    async def send_json(self, status: int, payload: Any, headers: list[tuple[str, str]]) -> None:
        await self._guard(lambda w: w.send_json(status, payload, headers))
