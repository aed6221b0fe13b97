"""Answer one bridged request: send the planned turn, relay or fold the events, retry once.

This is the I/O core between the loopback server (client side), ``planning``/``sessions`` (which
socket) and ``upstream`` (the websocket). The HTTP status is decided before anything is committed:
a failure before ``response.created`` is a real HTTP error with a JSON body; after it, an SSE
``error`` event ends the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from responses_bridge.io.lanes import Lane, SharedSocket
from responses_bridge.io.loopback import IncomingRequest
from responses_bridge.io.upstream import UpstreamSocket, open_socket
from responses_bridge.protocol import sse
from responses_bridge.protocol.encoding import decode_body
from responses_bridge.protocol.errors import (
    BackgroundNotBridged,
    BridgeError,
    LanesRefused,
    ResponseInProgress,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamResponseError,
    UpstreamTimeout,
)
from responses_bridge.protocol.events import (
    EventKind,
    ResponseFolder,
    classify,
    error_object,
    error_status,
)
from responses_bridge.protocol.headers import (
    error_frame_headers,
    forwardable_headers,
    merged_headers,
    rate_limit_headers,
    redact_headers,
)
from responses_bridge.protocol.request import chatgpt_compat_enabled, parse_client_request
from responses_bridge.state.sessions import Registry
from responses_bridge.turn import planning
from responses_bridge.turn.exchange import ClientSink, Exchange
from responses_bridge.turn.planning import Plan

logger = logging.getLogger(__name__)

_MAX_EVENTS_BEFORE_CREATED = 1000
EventSocket = UpstreamSocket | Lane
# Upgrade refusals that say "no websocket endpoint here" (426 by the protocol; 404/405 from
# servers that only route POST): the request can still go over HTTP as it came.
NO_WEBSOCKET_MODE_STATUSES = frozenset({404, 405, 426})
_MAX_BATCH_BYTES = 64 * 1024
# How long a stream's first delta may hold back the rest of its burst, and how long, before it,
# a batch waits for the frames right behind it (see relay_stream).
FIRST_DELTA_WAIT = 0.01
PRE_DELTA_LINGER = 0.001


async def answer(
    exchange: Exchange, request: IncomingRequest, sink: ClientSink, registry: Registry
) -> None:
    """Answer ``request`` into ``sink`` through the upstream's websocket mode."""
    settings = exchange.settings
    exchange.sink = sink
    try:
        client = exchange.client
        body_size = exchange.body_size
        if client is None:
            body = decode_body(
                request.body, request.header("content-encoding"), settings.max_body_bytes
            )
            client = parse_client_request(body, max_bytes=settings.max_body_bytes)
            body_size = len(body)
        if client.body.get("background") is True:
            raise BackgroundNotBridged()
        exchange.stream = client.stream
        if client.stream:
            sink.stream_chunks_to(exchange.sse_body.extend)  # kept for the flow once it finishes
        compat = chatgpt_compat_enabled(settings.chatgpt_compat, exchange.upstream_url)
        upgrade_headers = forwardable_headers(request.headers)
        turn = planning.turn(
            client,
            compat,
            registry.owner_of(upgrade_headers, route=_route_of(exchange)),
            settings,
            upstream=exchange.upstream_url,
            registry=registry,
            body_size=body_size,
        )
        connect = partial(
            open_socket,
            exchange.upstream_url,
            upgrade_headers,
            connect_timeout=settings.connect_timeout,
            ssl_context=settings.ssl_context,
            proxy=settings.proxy,
            address=exchange.upstream_address,
        )
        # Lanes: this owner's conversations share its socket, unless the upstream refused them.
        shared = (
            partial(_open_shared, connect)
            if settings.lanes and registry.lanes.allows(exchange.upstream_url)
            else None
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "responses-bridge: upstream %s, upgrade headers %s",
                exchange.upstream_url,
                redact_headers(upgrade_headers),
            )
        # A follow-up of a response still being generated (a client that left mid-stream and
        # continued at once) waits for it rather than finding nothing.
        if (
            turn.previous_id is not None
            and settings.stateful
            and not await registry.settled(
                turn.previous_id, turn.owner, exchange.upstream_url, timeout=settings.drain_timeout
            )
        ):
            raise ResponseInProgress(turn.previous_id, settings.drain_timeout)
        plan = planning.first_plan(registry, exchange, turn)
        retries = 0
        for _attempt in range(4):  # one retry, plus a resend for each refused lane
            session = plan.session or await registry.open(
                turn.owner, exchange.upstream_url, connect, shared=shared
            )
            if settings.stateful and session.carrier is None:
                # Refill the warm pool so the next fresh request of this owner finds a socket
                # already open, even one sent while this answer still streams; not before the
                # client has this answer's first output, as a handshake's CPU would delay it
                # (everything runs on mitmproxy's one thread).
                exchange.after_first_output = partial(
                    registry.keep_warm, turn.owner, exchange.upstream_url, connect
                )
            exchange.on_created = partial(registry.producing, session)
            exchange.socket_state = plan.label
            exchange.socket_age = registry.clock() - session.opened_at
            exchange.events = 0
            exchange.last_event_at = time.monotonic()
            socket = session.socket
            assert isinstance(socket, (UpstreamSocket, Lane))
            exchange.socket_id = socket.label
            exchange.upstream_headers = socket.take_handshake_headers()
            attempt: dict[str, Any] = {
                "socket": plan.label,
                "socket_id": socket.label,
                "sent": plan.frame,
                "events": [],
            }
            exchange.attempts.append(attempt)
            retain_as: str | None = None
            try:
                async with registry.lease(session) as lease:
                    try:
                        if logger.isEnabledFor(logging.DEBUG):
                            logger.debug("responses-bridge: ws > %s", sse.dumps(plan.frame)[:500])
                        await socket.send_event(plan.frame)
                        if isinstance(socket, Lane):
                            exchange.lane = attempt["lane"] = socket.name
                        exchange.dispatched.set()
                        relay = relay_stream if client.stream else relay_json
                        folder = await relay(socket, sink, exchange, plan)
                    except BridgeError as exc:
                        if isinstance(exc, LanesRefused) and not sink.started:
                            if exc.upstream_wide:
                                registry.lanes.refused(exchange.upstream_url)
                                shared = None
                            if plan.session is None:
                                # Never shown to the client: the same request again, on
                                # another socket (without a lane, if the upstream refused).
                                logger.info("responses-bridge: %s; resending it", exc.message)
                                continue
                        retry = (
                            None
                            if retries or sink.started
                            else planning.retry_plan(exc, plan, exchange)
                        )
                        if retry is None:
                            raise
                        retries += 1
                        logger.info(
                            "responses-bridge: %s; resending as %s", exc.message, retry.label
                        )
                        exchange.retried = True
                        plan = retry
                        continue
                    retain_as = lease.retain_as = planning.remember(
                        registry, exchange, turn, plan, folder
                    )
                    if retain_as is not None:
                        lease.chain_key = planning.accepted_chain_key(registry, turn, folder)
            finally:
                attempt["socket_end"] = (
                    {"retained_as": retain_as} if retain_as else socket.end_state()
                )
                if isinstance(socket, Lane) and socket.carrier.refused:
                    registry.lanes.refused(exchange.upstream_url)  # it ignored stream_id
            return
        raise LanesRefused("The upstream refused every lane.", upstream_wide=False)
    except BridgeError as exc:
        exchange.error = f"{type(exc).__name__}: {exc.message}"
        exchange.error_code = exc.code or type(exc).__name__
        exchange.no_websocket_mode = (
            isinstance(exc, UpstreamRejected) and exc.status in NO_WEBSOCKET_MODE_STATUSES
        )
        if not sink.started:
            headers = merged_headers(exchange.upstream_headers, exc.headers.items())
            await sink.send_json(exc.status, exc.body(), headers)
        elif not sink.finished:
            await sink.write(sse.encode_event(sse.error_event(exc)))
            await sink.end_stream()
    finally:
        exchange.dispatched.set()
        exchange.status = sink.status
        exchange.finished = time.monotonic()


async def _open_shared(connect: Callable[[], Awaitable[UpstreamSocket]]) -> SharedSocket:
    return SharedSocket(await connect())


def _route_of(exchange: Exchange) -> str:
    """How this exchange's socket reaches the upstream (part of whose socket it is): the
    upstream proxy with its credentials and the address dialled, if any."""
    return f"{exchange.settings.proxy or ''} {exchange.upstream_address or ''}"


def _bridge_headers(exchange: Exchange) -> list[tuple[str, str]]:
    headers = [
        ("x-responses-bridge", exchange.socket_state),
        ("x-responses-bridge-socket-age", f"{exchange.socket_age:.1f}"),
    ]
    if exchange.rate_limits is not None:
        headers += rate_limit_headers(exchange.rate_limits)
    if exchange.upstream_headers:
        return merged_headers(exchange.upstream_headers, headers)
    return headers


async def _next_event(
    socket: EventSocket, sink: ClientSink, exchange: Exchange
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
        _note(exchange, event, raw)
        return event, raw


async def _next_event_within(
    socket: EventSocket, sink: ClientSink, exchange: Exchange, linger: float
) -> tuple[dict[str, Any], str] | None:
    """The next upstream event if it is waiting or comes within ``linger`` seconds, else None."""
    if socket.has_pending():
        return await _next_event(socket, sink, exchange)
    try:
        event, raw = await socket.receive(linger)
    except UpstreamTimeout:
        return None
    _note(exchange, event, raw)
    return event, raw


def _note(exchange: Exchange, event: dict[str, Any], raw: str) -> None:
    exchange.received(event)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("responses-bridge: ws < %s", raw[:500])


def _show_previous(event: dict[str, Any], plan: Plan) -> tuple[dict[str, Any], bool]:
    """Put the client's ``previous_response_id`` back into a rehydrated answer's events."""
    response = event.get("response")
    if not plan.show_previous or not isinstance(response, dict):
        return event, False
    return {**event, "response": {**response, "previous_response_id": plan.shown_previous_id}}, True


async def relay_stream(
    socket: EventSocket, sink: ClientSink, exchange: Exchange, plan: Plan
) -> ResponseFolder:
    """Relay upstream events as SSE, committing ``200`` at ``response.created``."""
    settings = exchange.settings
    folder = ResponseFolder()
    held: list[tuple[dict[str, Any], str | None]] = []

    batch: list[bytes] = []
    batch_bytes = 0
    first_delta_out = False

    async def forward(event: dict[str, Any], raw: str | None, *, last: bool = False) -> None:
        # Frames that are already waiting go out in one write: each write is a chunk that
        # mitmproxy handles on its own, which dominates the cost of a fast stream. The last one
        # is left for end_stream, which sends it with the end of the body.
        nonlocal batch_bytes, first_delta_out
        fixed, changed = folder.feed(event)
        text = None if changed else raw
        shown_event, shown = _show_previous(fixed, plan)
        if shown and text is not None:
            response = fixed["response"]
            # The one occurrence the text edit finds must be the response's own field.
            text = (
                sse.with_previous_response_id(
                    text, response["previous_response_id"], plan.shown_previous_id
                )
                if "previous_response_id" in response
                else None
            )
        frame = sse.encode_event(shown_event, text)
        batch.append(frame)
        batch_bytes += len(frame)
        if last:
            return
        if not first_delta_out and str(fixed["type"]).endswith(".delta"):
            # The first delta goes out ahead of the rest of a burst that is already waiting:
            # mitmproxy forwards it on this same thread, so it would otherwise wait until the
            # whole burst was relayed. Before it, the loop below lingers for the frames behind
            # a batch instead, so the head and everything up to the first delta reach the client
            # in one piece (each piece costs mitmproxy and the client a round of work).
            first_delta_out = True
            await flush()
            if sink.attached and not sink.gone:
                await exchange.until_forwarded(len(exchange.sse_body), FIRST_DELTA_WAIT)
            exchange.first_output_sent()
        elif batch_bytes >= _MAX_BATCH_BYTES or (first_delta_out and not socket.has_pending()):
            await flush()

    async def flush() -> None:
        nonlocal batch_bytes
        if batch:
            data = b"".join(batch)
            batch.clear()
            batch_bytes = 0
            await sink.write(data)

    while True:
        try:
            if batch and not first_delta_out:
                received = await _next_event_within(socket, sink, exchange, PRE_DELTA_LINGER)
                if received is None:
                    await flush()
                    continue
                event, raw = received
            else:
                event, raw = await _next_event(socket, sink, exchange)
        except BridgeError:
            await flush()  # what was relayed so far goes out before the error
            raise
        kind = classify(event)
        if kind is EventKind.VENDOR:
            if sink.started and settings.forward_vendor_events:
                await flush()
                await sink.write(sse.encode_event(event, raw))
            continue
        if kind is EventKind.ERROR:
            failure = _error_frame_failure(event)
            if not sink.started:
                raise failure
            sequence = event.get("sequence_number")
            error_event = sse.error_event(failure, sequence if isinstance(sequence, int) else None)
            await flush()
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
        terminal = kind is EventKind.TERMINAL
        await forward(event, raw, last=terminal)
        if terminal:
            await sink.end_stream(b"".join(batch))
            return folder


async def relay_json(
    socket: EventSocket, sink: ClientSink, exchange: Exchange, plan: Plan
) -> ResponseFolder:
    """Fold upstream events into the final Response object and send it as JSON."""
    folder = ResponseFolder()
    while True:
        event, _raw = await _next_event(socket, sink, exchange)
        kind = classify(event)
        if kind is EventKind.ERROR:
            raise _error_frame_failure(event)
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


def _error_frame_failure(event: dict[str, Any]) -> UpstreamResponseError:
    """An upstream ``error`` frame as the error the client gets, its passed headers included."""
    return UpstreamResponseError(
        error_object(event), status=error_status(event), headers=error_frame_headers(event)
    )
