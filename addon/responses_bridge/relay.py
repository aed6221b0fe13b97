"""Answer one bridged request: choose the upstream socket, send the turn, relay or fold the events.

This is the I/O core between the loopback server (client side), ``sessions`` (which socket) and
``upstream`` (the websocket). The HTTP status is decided before anything is committed: a failure
before ``response.created`` is a real HTTP error with a JSON body; after it, an SSE ``error``
event ends the stream. A continuation whose socket is gone is resent in full (rehydrated), never
as a delta on a fresh socket; a client that leaves mid-answer is drained so its socket stays usable.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from responses_bridge import sse
from responses_bridge.aggregate import (
    EventKind,
    ResponseFolder,
    classify,
    error_object,
    error_status,
)
from responses_bridge.chaining import candidate_keys, chain_key, fields_fingerprint, item_digests
from responses_bridge.errors import (
    BridgeError,
    ChainBusy,
    PreviousResponseNotFound,
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamResponseError,
    UpstreamTimeout,
)
from responses_bridge.report import rate_limit_headers
from responses_bridge.server import IncomingRequest, ResponseWriter
from responses_bridge.sessions import ChainNode, Registry, Route, Session
from responses_bridge.translate import (
    ClientRequest,
    build_create_frame,
    chatgpt_compat_enabled,
    forwardable_headers,
    input_items,
    parse_client_request,
    redact_headers,
    rehydrated_frame,
)
from responses_bridge.upstream import UpstreamSocket, open_socket

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
]
_MAX_EVENTS_BEFORE_CREATED = 1000
_RETRYABLE_CODES = frozenset({"previous_response_not_found", "websocket_connection_limit_reached"})


@dataclass(frozen=True)
class Settings:
    """The options one request is answered with: a snapshot, safe from a reconfigure."""

    connect_timeout: float = 15.0
    idle_timeout: float = 300.0
    drain_timeout: float = 30.0
    chatgpt_compat: str = "auto"
    forward_vendor_events: bool = False
    keepalive: float = 15.0  # seconds of upstream silence before an SSE comment; 0 = off
    max_body_bytes: int = 32 * 1024 * 1024
    stateful: bool = True
    rehydrate: bool = True
    auto_chain: bool = True
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
    socket_age: float = 0.0
    error: str | None = None
    sse_body: bytearray = field(default_factory=bytearray)
    finished: float | None = None
    sink: ClientSink | None = None
    task: asyncio.Task[Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)  # what went over the websocket
    first_event_at: float | None = None
    rate_limits: dict[str, Any] | None = None
    error_code: str | None = None
    retried: bool = False
    last_event_at: float = field(default_factory=time.monotonic)

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
        if event.get("type") == "codex.rate_limits":
            self.rate_limits = event

    def bytes_relayed(self) -> int:
        return self.sink.writer.bytes_sent if self.sink is not None else 0

    def inspection(self) -> dict[str, Any]:
        """The websocket side of this request, for ``flow.metadata`` (no credentials in it)."""
        return {
            "upstream": self.upstream_url,
            "socket": self.socket_state,
            "socket_age_s": round(self.socket_age, 3),
            "status": self.status,
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
    upstream is read on (draining) for at most ``drain_timeout`` seconds."""

    def __init__(self, writer: ResponseWriter, exchange: Exchange) -> None:
        self.writer = writer
        self.exchange = exchange
        self.gone = False
        self._deadline: float | None = None

    @property
    def started(self) -> bool:
        return self.writer.started

    def leave(self) -> None:
        if self.gone:
            return
        self.gone = True
        self._deadline = time.monotonic() + self.exchange.settings.drain_timeout
        self.writer.abort()

    def drain_remaining(self) -> float:
        """Seconds left to drain after the client left (infinite while it is here)."""
        if self._deadline is None:
            return float("inf")
        return self._deadline - time.monotonic()

    async def _guard(self, coroutine: Any) -> None:
        if self.gone:
            coroutine.close()
            return
        try:
            await coroutine
        except (ConnectionError, OSError):
            self.leave()

    async def start_stream(self, headers: list[tuple[str, str]]) -> None:
        await self._guard(self.writer.start_stream(200, SSE_HEADERS + headers))
        self.writer.started = True

    async def write(self, data: bytes) -> None:
        await self._guard(self.writer.write(data))

    async def end_stream(self) -> None:
        await self._guard(self.writer.end_stream())

    async def send_json(self, status: int, payload: Any, headers: list[tuple[str, str]]) -> None:
        await self._guard(self.writer.send_json(status, payload, headers))


@dataclass
class Turn:
    """What one request asks for, worked out once."""

    frame: dict[str, Any]  # the response.create frame for the request as the client sent it
    new_items: list[dict[str, Any]]  # its input as items
    owner: str
    previous_id: str | None
    upstream_resolves: bool  # store: true on a non-ChatGPT upstream: unknown ids may resolve
    fingerprint: str | None = None  # automatic chaining, when the request is eligible
    digests: list[str] | None = None


@dataclass
class Plan:
    """One attempt: the frame to send, on which socket, and how it extends the chain."""

    frame: dict[str, Any]
    label: str
    turn_items: list[dict[str, Any]]  # the input items the upstream sees as new in this turn
    session: Session | None = None  # a leased, retained socket; None opens a fresh one
    parent: ChainNode | None = None
    continues: bool = False  # the frame continues a chain the bridge may not know in full
    show_previous: bool = False  # put the client's previous_response_id back into events
    shown_previous_id: str | None = None
    fallback: Plan | None = None  # what to send instead if this attempt fails before output


async def answer(
    exchange: Exchange, request: IncomingRequest, writer: ResponseWriter, registry: Registry
) -> None:
    """Answer ``request`` on ``writer`` through the upstream's websocket mode."""
    settings = exchange.settings
    sink = exchange.sink = ClientSink(writer, exchange)
    try:
        client = parse_client_request(request.body, max_bytes=settings.max_body_bytes)
        exchange.stream = client.stream
        if client.stream:
            writer.on_chunk = exchange.sse_body.extend  # kept for the flow once it finishes
        compat = chatgpt_compat_enabled(settings.chatgpt_compat, exchange.upstream_url)
        turn = _turn(client, compat, registry.owner_of(request.headers), settings)
        connect = partial(
            open_socket,
            exchange.upstream_url,
            forwardable_headers(request.headers),
            connect_timeout=settings.connect_timeout,
            ssl_context=settings.ssl_context,
            proxy=settings.proxy,
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "responses-bridge: upstream %s, upgrade headers %s",
                exchange.upstream_url,
                redact_headers(forwardable_headers(request.headers)),
            )
        plan = _first_plan(registry, exchange, turn)
        for attempt_number in (1, 2):
            session = plan.session or await registry.open(
                turn.owner, exchange.upstream_url, connect
            )
            exchange.socket_state = plan.label
            exchange.socket_age = registry.clock() - session.opened_at
            exchange.events = 0
            exchange.last_event_at = time.monotonic()
            socket = session.socket
            assert isinstance(socket, UpstreamSocket)
            attempt: dict[str, Any] = {"socket": plan.label, "sent": plan.frame, "events": []}
            exchange.attempts.append(attempt)
            retain_as: str | None = None
            try:
                async with registry.lease(session) as lease:
                    try:
                        if logger.isEnabledFor(logging.DEBUG):
                            logger.debug("responses-bridge: ws > %s", sse.dumps(plan.frame)[:500])
                        await socket.send_event(plan.frame)
                        relay = relay_stream if client.stream else relay_json
                        folder = await relay(socket, sink, exchange, plan)
                    except BridgeError as exc:
                        retry = (
                            None
                            if attempt_number > 1 or sink.started
                            else _retry_plan(exc, plan, exchange)
                        )
                        if retry is None:
                            raise
                        logger.info(
                            "responses-bridge: %s; resending as %s", exc.message, retry.label
                        )
                        exchange.retried = True
                        plan = retry
                        continue
                    retain_as = lease.retain_as = _remember(registry, exchange, turn, plan, folder)
                    if retain_as is not None and turn.digests is not None:
                        assert turn.fingerprint is not None
                        outputs = item_digests(folder.done_items())
                        lease.chain_key = chain_key(turn.fingerprint, turn.digests + outputs)
            finally:
                attempt["socket_end"] = (
                    {"retained_as": retain_as} if retain_as else socket.end_state()
                )
            return
    except BridgeError as exc:
        exchange.error = f"{type(exc).__name__}: {exc.message}"
        exchange.error_code = exc.code or type(exc).__name__
        if not sink.started:
            await sink.send_json(exc.status, exc.body(), list(exc.headers.items()))
        elif not writer.finished:
            await sink.write(sse.encode_event(sse.error_event(exc)))
            await sink.end_stream()
    finally:
        exchange.status = writer.status
        exchange.finished = time.monotonic()


def _turn(client: ClientRequest, compat: bool, owner: str, settings: Settings) -> Turn:
    raw_input = client.body.get("input")
    turn = Turn(
        frame=build_create_frame(client.body, chatgpt_compat=compat),
        new_items=input_items(raw_input),
        owner=owner,
        previous_id=client.previous_response_id,
        upstream_resolves=not compat and client.store is not False,
    )
    eligible_input = isinstance(raw_input, str) or (
        isinstance(raw_input, list) and all(isinstance(item, dict) for item in raw_input)
    )
    if settings.auto_chain and settings.stateful and turn.previous_id is None and eligible_input:
        turn.fingerprint = fields_fingerprint(turn.frame)
        turn.digests = item_digests(turn.new_items)
    return turn


def _remember(
    registry: Registry, exchange: Exchange, turn: Turn, plan: Plan, folder: ResponseFolder
) -> str | None:
    """Record a finished turn's transcript; the response id to retain its socket as, if any."""
    terminal = folder.terminal
    if terminal is None or terminal["type"] == "response.failed" or not exchange.settings.stateful:
        return None
    response_id = terminal["response"].get("id")
    if not isinstance(response_id, str):
        return None
    registry.record(
        response_id,
        turn.owner,
        exchange.upstream_url,
        plan.parent,
        plan.turn_items + folder.done_items(),
        continues=plan.continues,
    )
    return response_id


def _first_plan(registry: Registry, exchange: Exchange, turn: Turn) -> Plan:
    upstream = exchange.upstream_url
    previous_id = turn.previous_id
    fresh = Plan(turn.frame, "new", turn.new_items, continues=previous_id is not None)
    if previous_id is None:
        if turn.digests is None or turn.fingerprint is None:
            return fresh
        match = registry.route_auto(
            turn.owner, upstream, candidate_keys(turn.fingerprint, turn.digests)
        )
        if match is None:
            return fresh
        session, held = match
        head = session.continuing
        assert head is not None
        delta = turn.new_items[held:]
        return Plan(
            {**turn.frame, "input": delta, "previous_response_id": head},
            "chained",
            delta,
            session=session,
            parent=registry.chain(head, turn.owner, upstream),
            continues=True,
            show_previous=True,  # the client sent none: its answer shows none
            fallback=fresh,
        )
    if not exchange.settings.stateful:
        return fresh
    decision = registry.route(
        turn.owner, upstream, previous_id, upstream_resolves=turn.upstream_resolves
    )
    if decision.route is Route.REUSE:
        parent = registry.chain(previous_id, turn.owner, upstream)
        return Plan(
            turn.frame,
            "reused",
            turn.new_items,
            session=decision.session,
            parent=parent,
            continues=True,
        )
    if decision.route in (Route.REHYDRATE, Route.FORK) and exchange.settings.rehydrate:
        assert decision.node is not None
        return _rehydrated(
            turn.frame, decision.node, turn.new_items, previous_id, decision.route.value
        )
    if decision.route is Route.BUSY or decision.route is Route.FORK:
        raise ChainBusy(previous_id)
    if decision.route is Route.PASS:
        return fresh
    raise PreviousResponseNotFound(previous_id)


def _rehydrated(
    frame: dict[str, Any],
    node: ChainNode,
    new_items: list[dict[str, Any]],
    previous_id: str,
    label: str,
) -> Plan:
    return Plan(
        rehydrated_frame(frame, node.transcript() or [], new_items),
        label,
        new_items,
        parent=node,
        continues=True,
        show_previous=True,
        shown_previous_id=previous_id,
    )


def _retry_plan(exc: BridgeError, plan: Plan, exchange: Exchange) -> Plan | None:
    """A second attempt on a fresh socket, when that is safe and can succeed."""
    retryable = exc.code in _RETRYABLE_CODES or (
        isinstance(exc, UpstreamClosed) and plan.session is not None and exchange.events == 0
    )
    if not retryable or exchange.sink is None or exchange.sink.gone:
        return None
    if plan.fallback is not None:
        return plan.fallback
    previous_id = plan.frame.get("previous_response_id")
    if not isinstance(previous_id, str):
        # A full request (no previous_response_id) can be resent as it is, on a fresh socket.
        return replace(plan, session=None)
    if not exchange.settings.rehydrate or plan.parent is None:
        return None
    if plan.parent.transcript() is None:
        return None
    return _rehydrated(plan.frame, plan.parent, plan.turn_items, previous_id, "rehydrated")


def _bridge_headers(exchange: Exchange) -> list[tuple[str, str]]:
    headers = [
        ("x-responses-bridge", exchange.socket_state),
        ("x-responses-bridge-socket-age", f"{exchange.socket_age:.1f}"),
    ]
    if exchange.rate_limits is not None:
        headers += rate_limit_headers(exchange.rate_limits)
    return headers


async def _next_event(
    socket: UpstreamSocket, sink: ClientSink, exchange: Exchange
) -> tuple[dict[str, Any], str]:
    """The next upstream event, within the idle timeout (or what is left of the drain time),
    sending an SSE keep-alive comment to a streaming client while the upstream is silent."""
    settings = exchange.settings
    while True:
        idle_left = settings.idle_timeout - (time.monotonic() - exchange.last_event_at)
        budget = min(idle_left, sink.drain_remaining())
        ticking = sink.started and not sink.gone and settings.keepalive > 0
        wait = min(budget, settings.keepalive) if ticking else budget
        try:
            if wait <= 0:
                raise UpstreamTimeout("no time left")
            event, raw = await socket.receive(wait)
        except UpstreamTimeout as exc:
            if wait < budget:
                await sink.write(sse.KEEPALIVE)
                continue
            if sink.gone:
                raise UpstreamTimeout(
                    "The client left and the upstream did not finish within "
                    f"{settings.drain_timeout:g} s (responses_bridge_drain_timeout)."
                ) from exc
            raise UpstreamTimeout(
                f"The upstream sent nothing for {settings.idle_timeout:g} s "
                "(responses_bridge_idle_timeout)."
            ) from exc
        exchange.received(event)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("responses-bridge: ws < %s", raw[:500])
        return event, raw


def _show_previous(event: dict[str, Any], plan: Plan) -> tuple[dict[str, Any], bool]:
    """Put the client's ``previous_response_id`` back into a rehydrated answer's events."""
    response = event.get("response")
    if not plan.show_previous or not isinstance(response, dict):
        return event, False
    return {**event, "response": {**response, "previous_response_id": plan.shown_previous_id}}, True


async def relay_stream(
    socket: UpstreamSocket, sink: ClientSink, exchange: Exchange, plan: Plan
) -> ResponseFolder:
    """Relay upstream events as SSE, committing ``200`` at ``response.created``."""
    settings = exchange.settings
    folder = ResponseFolder()
    held: list[tuple[dict[str, Any], str | None]] = []

    async def forward(event: dict[str, Any], raw: str | None) -> None:
        fixed, changed = folder.feed(event)
        fixed, shown = _show_previous(fixed, plan)
        await sink.write(sse.encode_event(fixed, None if changed or shown else raw))

    while True:
        event, raw = await _next_event(socket, sink, exchange)
        kind = classify(event)
        if kind is EventKind.VENDOR:
            if sink.started and settings.forward_vendor_events:
                await sink.write(sse.encode_event(event, raw))
            continue
        if kind is EventKind.ERROR:
            failure = UpstreamResponseError(error_object(event), status=error_status(event))
            if not sink.started:
                raise failure
            sequence = event.get("sequence_number")
            error_event = sse.error_event(failure, sequence if isinstance(sequence, int) else None)
            await sink.write(sse.encode_event(error_event))
            await sink.end_stream()
            exchange.error = f"upstream error: {failure.message}"
            exchange.error_code = failure.code or "upstream_error"
            return folder
        if not sink.started:
            if kind is EventKind.OTHER:
                held.append((event, raw))
                if len(held) > _MAX_EVENTS_BEFORE_CREATED:
                    raise UpstreamProtocolError(
                        f"The upstream sent {len(held)} events without response.created."
                    )
                continue
            # response.created (or a terminal event without one) commits the 200.
            await sink.start_stream(_bridge_headers(exchange))
            first = (
                (event, raw)
                if kind is EventKind.CREATED
                else (folder.synthesize_created(event), None)
            )
            for early, early_raw in [first, *held]:
                await forward(early, early_raw)
            held.clear()
            if kind is EventKind.CREATED:
                continue
        await forward(event, raw)
        if kind is EventKind.TERMINAL:
            await sink.end_stream()
            return folder


async def relay_json(
    socket: UpstreamSocket, sink: ClientSink, exchange: Exchange, plan: Plan
) -> ResponseFolder:
    """Fold upstream events into the final Response object and send it as JSON."""
    folder = ResponseFolder()
    while True:
        event, _raw = await _next_event(socket, sink, exchange)
        kind = classify(event)
        if kind is EventKind.ERROR:
            raise UpstreamResponseError(error_object(event), status=error_status(event))
        terminal, _changed = folder.feed(event)
        if kind is not EventKind.TERMINAL:
            continue
        terminal, _shown = _show_previous(terminal, plan)
        response = terminal["response"]
        if terminal["type"] == "response.failed":
            failure = response.get("error")
            if not isinstance(failure, dict):
                failure = {"message": "The upstream reported response.failed without details."}
            raise UpstreamResponseError(
                {"type": "server_error", **failure}, status=error_status(failure)
            )
        await sink.send_json(200, response, _bridge_headers(exchange))
        return folder
