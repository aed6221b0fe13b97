"""mitmproxy glue for responses-bridge: options, hooks and the redirect to the loopback server.

Run ``mitmdump -s addon/bridge.py``. Every ``POST …/v1/responses`` (or the ChatGPT backend's
``…/backend-api/codex/responses``) is pointed, in ``requestheaders``, at an embedded loopback
server that answers it through the upstream's websocket mode; the flow gets its original URL back
in ``responseheaders``, so mitmweb shows and saves it as the client sent it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable
from typing import Any

import certifi
from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ReverseMode, UpstreamMode

from responses_bridge import hop, relay, report, sessions, translate, upstream, view
from responses_bridge.bodies import decode_body
from responses_bridge.errors import BridgeError
from responses_bridge.exchange import ClientSink, Exchange, Settings
from responses_bridge.server import (
    INTERNAL_ERROR,
    SECRET_HEADER,
    IncomingRequest,
    LoopbackServer,
    ResponseWriter,
    error_body,
)

logger = logging.getLogger("responses_bridge")

# How long a turn started from the ``request`` hook waits for mitmproxy to deliver the request to
# the loopback server (normally well under a millisecond; a flow that never gets there is ended
# earlier by the ``response``/``error`` hooks).
_ATTACH_TIMEOUT = 30.0
# Objects alive this long after start, and then every period, are frozen out of the garbage
# collector's full collections (see _freeze_long_lived_objects). The delay lets a reloaded
# instance's closing tasks end first, so the old instance is collected, not frozen.
_FREEZE_DELAY = 5.0
_REFREEZE_PERIOD = 600.0


def _seconds(name: str, value: str, *, allow_zero: bool = False) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise exceptions.OptionsError(
            f"{name} must be a number of seconds, not {value!r}"
        ) from None
    valid = seconds >= 0 if allow_zero else seconds > 0
    if not valid or seconds == float("inf"):
        kind = "a non-negative" if allow_zero else "a positive"
        raise exceptions.OptionsError(f"{name} must be {kind} number of seconds, not {value!r}")
    return seconds


class ResponsesBridge:
    """Bridges Responses API requests onto the upstream's websocket mode."""

    def __init__(self) -> None:
        self._secret = secrets.token_urlsafe(32)
        self._server = LoopbackServer(
            self._serve,
            self._secret,
            lambda: self._settings.max_body_bytes,
            on_head=self._arrived,
        )
        self._server_task: asyncio.Task[None] | None = None
        self._exchanges: dict[str, Exchange] = {}
        # Flows pointed at the loopback server whose head it has not read yet.
        self._originals: dict[str, tuple[http.HTTPFlow, hop.Original]] = {}
        # Upstreams without a websocket mode (426 on the upgrade) -> until when to pass through.
        self._http_only: dict[str, float] = {}
        self._http_only_period = 600.0
        # Flows passed through over HTTP instead -> their SSE body, kept for inspection.
        self._passed_through: dict[str, bytearray] = {}
        self._registry = sessions.Registry()
        self._stats = report.Stats()
        self._view = view.make_view()
        self._sweeper: asyncio.Task[None] | None = None
        self._freezer: asyncio.Task[None] | None = None
        self._host_patterns: tuple[str, ...] = ()
        self._settings = Settings()
        self._router = hop.Router(self)
        self._restorer = hop.Restorer(self)

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        view.register(self._view)
        loader.add_option(
            "responses_bridge",
            bool,
            True,
            "Bridge Responses API requests onto the upstream's websocket mode.",
        )
        loader.add_option(
            "responses_bridge_hosts",
            str,
            "",
            "Comma-separated host patterns to bridge (globs like *.openai.com); "
            "empty bridges all hosts.",
        )
        loader.add_option(
            "responses_bridge_upstream",
            str,
            "",
            "A ws:// or wss:// URL to send every bridged request to; "
            "empty uses the flow's own destination.",
        )
        loader.add_option(
            "responses_bridge_chatgpt_compat",
            str,
            "auto",
            "ChatGPT backend rules (store=false, no truncation/max_output_tokens): "
            "auto, on or off.",
            choices=["auto", "on", "off"],
        )
        loader.add_option(
            "responses_bridge_stateful",
            bool,
            True,
            "Keep upstream sockets so previous_response_id continues on the socket that holds it.",
        )
        loader.add_option(
            "responses_bridge_rehydrate",
            bool,
            True,
            "Keep each chain's transcript so a chain whose socket is gone continues on a fresh "
            "socket with its full context.",
        )
        loader.add_option(
            "responses_bridge_auto_chain",
            bool,
            True,
            "Chain full-history requests on the client's behalf: when a request resends a retained "
            "chain's conversation plus new items, send only the new items with "
            "previous_response_id on that chain's socket.",
        )
        loader.add_option(
            "responses_bridge_max_sessions",
            int,
            64,
            "Most upstream sockets open at once (retained and in flight).",
        )
        loader.add_option(
            "responses_bridge_warm_sockets",
            int,
            1,
            "Upstream sockets opened ahead per credential and upstream, so a fresh request does "
            "not wait for a handshake (within max_sessions; closed after session_ttl idle).",
        )
        loader.add_option(
            "responses_bridge_http_only_period",
            str,
            "600",
            "Seconds an upstream that refused the websocket upgrade (426, 404, 405: no websocket "
            "mode) gets its requests passed through over HTTP before its websocket is tried "
            "again; 0 tries every request.",
        )
        loader.add_option(
            "responses_bridge_session_ttl",
            str,
            "600",
            "Seconds an idle retained socket is kept.",
        )
        loader.add_option(
            "responses_bridge_max_socket_age",
            str,
            "3300",
            "Seconds after which a socket is not used again (the upstream ends them at 60 min).",
        )
        loader.add_option(
            "responses_bridge_drain_timeout",
            str,
            "30",
            "Seconds to keep reading an answer whose client left, so its socket stays usable.",
        )
        loader.add_option(
            "responses_bridge_transcript_max_bytes",
            int,
            16 * 1024 * 1024,
            "Largest transcript kept per chain for rehydration; a longer chain is not rehydrated.",
        )
        loader.add_option(
            "responses_bridge_transcripts_total_bytes",
            int,
            256 * 1024 * 1024,
            "Bytes (as compact JSON) of all kept transcripts together; beyond it the least "
            "recently used chains' transcripts are dropped.",
        )
        loader.add_option(
            "responses_bridge_connect_timeout",
            str,
            "15",
            "Seconds to wait for the upstream websocket handshake.",
        )
        loader.add_option(
            "responses_bridge_idle_timeout",
            str,
            "300",
            "Seconds of upstream silence after which a response fails "
            "(504 before the stream starts).",
        )
        loader.add_option(
            "responses_bridge_max_body_bytes",
            int,
            32 * 1024 * 1024,
            "Largest request body accepted; larger ones get 413.",
        )
        loader.add_option(
            "responses_bridge_keepalive",
            str,
            "15",
            "Seconds of upstream silence after which a streaming client gets an SSE comment "
            "line (keeps clients and other proxies from timing out); 0 turns it off.",
        )
        loader.add_option(
            "responses_bridge_forward_vendor_events",
            bool,
            False,
            "Forward vendor events (codex.*, responsesapi.*) to clients after response.created.",
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        # mitmproxy puts the root logger at DEBUG and filters in its handlers, so without this
        # logger.isEnabledFor(DEBUG) is always true: every relayed frame would be formatted and
        # pushed through an add_log hook over all addons (half the proxy's CPU on a fast stream).
        debug = getattr(opts, "termlog_verbosity", "info") == "debug"
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        if opts.responses_bridge_chatgpt_compat not in ("auto", "on", "off"):
            raise exceptions.OptionsError(
                "responses_bridge_chatgpt_compat must be auto, on or off, not "
                f"{opts.responses_bridge_chatgpt_compat!r}"
            )
        try:
            translate.validate_upstream_override(opts.responses_bridge_upstream)
        except ValueError as exc:
            raise exceptions.OptionsError(f"responses_bridge_upstream {exc}") from None
        for name in (
            "responses_bridge_max_body_bytes",
            "responses_bridge_max_sessions",
            "responses_bridge_transcript_max_bytes",
            "responses_bridge_transcripts_total_bytes",
        ):
            if getattr(opts, name) <= 0:
                raise exceptions.OptionsError(f"{name} must be positive")
        self._host_patterns = translate.parse_host_patterns(opts.responses_bridge_hosts)
        self._settings = Settings(
            connect_timeout=_seconds(
                "responses_bridge_connect_timeout", opts.responses_bridge_connect_timeout
            ),
            idle_timeout=_seconds(
                "responses_bridge_idle_timeout", opts.responses_bridge_idle_timeout
            ),
            chatgpt_compat=opts.responses_bridge_chatgpt_compat,
            forward_vendor_events=opts.responses_bridge_forward_vendor_events,
            keepalive=_seconds(
                "responses_bridge_keepalive", opts.responses_bridge_keepalive, allow_zero=True
            ),
            max_body_bytes=opts.responses_bridge_max_body_bytes,
            stateful=opts.responses_bridge_stateful,
            rehydrate=opts.responses_bridge_rehydrate,
            auto_chain=opts.responses_bridge_auto_chain,
            drain_timeout=_seconds(
                "responses_bridge_drain_timeout", opts.responses_bridge_drain_timeout
            ),
            ssl_context=self._upstream_ssl_context(),
        )
        limits = self._registry.limits
        limits.max_sessions = opts.responses_bridge_max_sessions
        limits.session_ttl = _seconds(
            "responses_bridge_session_ttl", opts.responses_bridge_session_ttl
        )
        limits.max_socket_age = _seconds(
            "responses_bridge_max_socket_age", opts.responses_bridge_max_socket_age
        )
        limits.transcript_max_bytes = opts.responses_bridge_transcript_max_bytes
        limits.transcripts_total_bytes = opts.responses_bridge_transcripts_total_bytes
        limits.keep_transcripts = opts.responses_bridge_rehydrate
        self._http_only_period = _seconds(
            "responses_bridge_http_only_period",
            opts.responses_bridge_http_only_period,
            allow_zero=True,
        )
        if opts.responses_bridge_warm_sockets < 0:
            raise exceptions.OptionsError("responses_bridge_warm_sockets must be 0 or more")
        limits.warm_sockets = opts.responses_bridge_warm_sockets

    def running(self) -> None:
        if ctx.options.connection_strategy != "lazy":
            logger.info(
                "responses-bridge: setting connection_strategy=lazy, so mitmproxy does not dial a "
                "bridged request's destination before the addon has routed it."
            )
            ctx.options.update(connection_strategy="lazy")
        if self._server_task is None:
            port = self._server.bind()
            self._server_task = asyncio.get_running_loop().create_task(
                self._server.serve(), name="responses-bridge loopback server"
            )
            logger.info("responses-bridge: answering bridged requests from 127.0.0.1:%d", port)
        hop.install(ctx.master.addons, self._restorer, self._router)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_forever(), name="responses-bridge session sweeper"
            )
        if self._freezer is None:
            self._freezer = asyncio.get_running_loop().create_task(
                self._freeze_forever(), name="responses-bridge garbage collector freeze"
            )

    def done(self) -> Awaitable[Any]:
        view.unregister(self._view)
        hop.uninstall(ctx.master.addons, self._restorer, self._router)
        if self._stats.requests:
            logger.info("responses-bridge: counters %s", json.dumps(self._stats.as_dict()))
        # Frozen objects are never collected: an unloaded bridge leaves nothing frozen. (After a
        # reload the next instance's first freeze, which unfreezes first, would do it too.)
        gc.unfreeze()
        tasks = [e.task for e in self._exchanges.values() if e.task is not None]
        for task in [*tasks, self._sweeper, self._freezer]:
            if task is not None:
                task.cancel()
        pending = [self._server.close(), self._registry.close_all(), *tasks]
        return asyncio.gather(*pending, return_exceptions=True)

    # -- hooks -------------------------------------------------------------------------------

    def route_streamed(self, flow: http.HTTPFlow) -> None:
        """Called by the router at the end of ``requestheaders`` for a streamed request body,
        which goes to the server before any ``request`` hook runs."""
        self._take(flow, body=False)

    async def route(self, flow: http.HTTPFlow) -> None:
        """Called by the router at the end of the ``request`` hooks: take the flow if it is
        bridged and start its upstream turn at once, so the websocket round trip overlaps
        mitmproxy's hand-over of the request to the loopback server."""
        if not self._take(flow, body=True):
            return
        exchange = self.start_early(flow)
        if exchange is not None:
            # Hold this flow's hook (not mitmproxy) until the frame is sent: otherwise the turn's
            # first step queues behind mitmproxy's own per-hook work for this flow.
            await exchange.dispatched.wait()
            self.fall_back_to_http(flow, exchange)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        kept = self._passed_through.get(flow.id)
        if kept is not None:
            assert flow.response is not None
            if _is_event_stream(flow.response):
                # Stream it as it comes (mitmproxy would buffer the whole answer), keeping a copy.
                def tee(chunk: bytes, kept: bytearray = kept) -> bytes:
                    kept.extend(chunk)
                    return chunk

                flow.response.stream = tee
            return
        exchange = self._exchanges.get(flow.id)
        if exchange is None:
            return
        self._put_back(flow)
        assert flow.response is not None
        if _is_event_stream(flow.response):
            # Streamed as it comes; the exchange counts what mitmproxy has sent on.
            flow.response.stream = exchange.forwarded

    def response(self, flow: http.HTTPFlow) -> None:
        self._put_back(flow)
        kept = self._passed_through.pop(flow.id, None)
        if kept is not None:
            assert flow.response is not None
            if flow.response.raw_content is None:
                flow.response.content = bytes(kept)
            _drop_stream_callable(flow.response)
            return
        exchange = self._exchanges.pop(flow.id, None)
        if exchange is None:
            return
        assert flow.response is not None
        _drop_stream_callable(flow.response)
        if exchange.no_websocket_mode:
            self._mark_http_only(exchange.upstream_url)
        if exchange.sink is not None and not exchange.sink.attached:
            exchange.client_gone()  # answered by something else: never reached the bridge
        if flow.response.raw_content is None and exchange.stream:
            flow.response.content = bytes(exchange.sse_body)
        self._finish(flow, exchange)
        exchange.first_output_sent()

    def error(self, flow: http.HTTPFlow) -> None:
        self._put_back(flow)
        if flow.response is not None:
            _drop_stream_callable(flow.response)
        self._passed_through.pop(flow.id, None)
        exchange = self._exchanges.pop(flow.id, None)
        if exchange is not None:
            exchange.client_gone()
            exchange.error = (
                exchange.error or f"client side: {flow.error.msg if flow.error else 'error'}"
            )
            exchange.error_code = exchange.error_code or "client_disconnected"
            self._finish(flow, exchange)
            exchange.first_output_sent()

    # -- commands ----------------------------------------------------------------------------

    @command.command("responses_bridge.sessions")
    def sessions(self) -> str:
        """List retained upstream sessions (JSON lines: response id, owner fingerprint,
        upstream, age, idle time, turns, transcript size)."""
        return "\n".join(json.dumps(row) for row in self._registry.snapshot())

    @command.command("responses_bridge.close")
    def close(self, response_id: str) -> str:
        """Close the retained session of one response id, or every idle session with ``all``."""
        closed = self._registry.close_idle(None if response_id == "all" else response_id)
        return f"closed {closed} session(s)"

    @command.command("responses_bridge.stats")
    def stats(self) -> str:
        """Counters: requests, streamed, reused, rehydrated, forked, errors by kind, bytes."""
        return json.dumps(
            {
                **self._stats.as_dict(),
                "open_sockets": self._registry.open_sockets,
                "transcript_bytes": self._registry.transcript_bytes,
            }
        )

    # -- internals ---------------------------------------------------------------------------

    def _take(self, flow: http.HTTPFlow, *, body: bool) -> bool:
        """Decide whether ``flow``, as the other addons left it, is bridged; if so, record its
        exchange and point it at the loopback server. ``body``: the request body is here."""
        if flow.id in self._exchanges:
            return True  # routed at requestheaders (a streamed body)
        if flow.response or flow.error or not flow.live or not ctx.options.responses_bridge:
            return False
        request = flow.request
        if request.method != "POST" or not translate.is_responses_path(request.path):
            return False
        mode = flow.client_conn.proxy_mode
        target = translate.destination(
            request.scheme,
            request.host,
            request.port,
            request.path,
            sni=flow.client_conn.sni,
            host_header=request.host_header,
            # What the client connected to; a reverse proxy's destination is its own option.
            dialled=None if isinstance(mode, ReverseMode) else flow.server_conn.address,
        )
        if not translate.host_matches(target.name, self._host_patterns):
            return False
        if self._server_task is None:
            logger.warning(
                "responses-bridge: not running yet; %s passes through", request.pretty_url
            )
            return False
        override = ctx.options.responses_bridge_upstream
        upstream_url = override or target.url
        if self._http_only.get(upstream_url, 0.0) > time.monotonic():
            self._passed_through[flow.id] = bytearray()
            return False
        client = None
        if body and request.raw_content is not None:
            client = self._parse(request)
            if client is not None and client[0].body.get("background") is True:
                self._pass_through(
                    flow,
                    "background: true is not supported over the websocket; sent over HTTP "
                    "as it came",
                )
                return False
        settings = self._settings
        proxy = _upstream_proxy(flow)
        if proxy is not None:
            settings = dataclasses.replace(settings, proxy=proxy)
        exchange = Exchange(flow.id, upstream_url, settings)
        exchange.upstream_address = None if override else target.address
        if client is not None:
            exchange.client, exchange.body_size = client
        self._exchanges[flow.id] = exchange
        self._originals[flow.id] = (flow, hop.redirect(flow, self._server.port, self._secret))
        return True

    def _parse(self, request: http.Request) -> tuple[translate.ClientRequest, int] | None:
        """The request body, parsed once for the turn; None if it is not valid (the turn then
        answers with the error)."""
        assert request.raw_content is not None
        limit = self._settings.max_body_bytes
        try:
            raw = decode_body(request.raw_content, request.headers.get("content-encoding"), limit)
            return translate.parse_client_request(raw, max_bytes=limit), len(raw)
        except BridgeError:
            return None

    def _pass_through(self, flow: http.HTTPFlow, why: str) -> None:
        """Send ``flow`` on over HTTP as it came (its SSE body kept for inspection)."""
        self._passed_through[flow.id] = bytearray()
        note = f"responses-bridge: {why}"
        flow.comment = f"{flow.comment}\n{note}" if flow.comment else note
        logger.info("responses-bridge: %s %s: %s", flow.request.method, flow.request.path, why)

    def sent(self, flow: http.HTTPFlow) -> None:
        """mitmproxy has sent ``flow``'s head on: it gets its own destination back."""
        self._put_back(flow)

    def _arrived(self, request: IncomingRequest) -> None:
        """The loopback server has read a bridged request's head: mitmproxy has sent it, so
        the flow gets its own destination back before any later hook sees it."""
        routed = self._originals.get(request.header(hop.FLOW_HEADER) or "")
        if routed is not None:
            self._put_back(routed[0])

    def _put_back(self, flow: http.HTTPFlow, *, proxy_authorization: bool = False) -> None:
        routed = self._originals.pop(flow.id, None)
        if routed is not None:
            hop.restore(flow, routed[1], proxy_authorization=proxy_authorization)

    def start_early(self, flow: http.HTTPFlow) -> Exchange | None:
        """Start a bridged flow's upstream turn from the end of the ``request`` hooks, when
        mitmproxy is about to send exactly this request to the loopback server."""
        exchange = self._exchanges.get(flow.id)
        request = flow.request
        if (
            exchange is None
            or exchange.task is not None
            or flow.response is not None
            or flow.intercepted  # the user may still edit it in mitmweb
            or not flow.live
            or request.raw_content is None  # a streamed request body
            or len(request.raw_content) > exchange.settings.max_body_bytes
            or (request.host, request.port) != ("127.0.0.1", self._server.port)
            or request.headers.get(SECRET_HEADER) != self._secret
        ):
            return None  # the loopback server starts it when the request arrives, as usual
        incoming = IncomingRequest(
            request.method,
            request.path,
            list(request.headers.items(multi=True)),
            request.raw_content,
            request.http_version,
        )
        sink = ClientSink(exchange, attach_timeout=_ATTACH_TIMEOUT)
        exchange.sink = sink
        task = asyncio.get_running_loop().create_task(
            self._answer_early(exchange, incoming, sink), name="responses-bridge turn"
        )
        task.add_done_callback(lambda _task: exchange.dispatched.set())  # even if cancelled
        exchange.task = task
        return exchange

    def fall_back_to_http(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        """After an early start: if the upstream has no websocket mode (426, 404 or 405 on the
        upgrade) and nothing reached the client, send the request on as it came, over HTTP,
        and do the same with this upstream's next requests for a while."""
        # Nothing can have reached the client: this runs from the request hook, before mitmproxy
        # sends the request to the loopback server that the answer would be written to.
        routed = self._originals.get(flow.id)
        if not exchange.no_websocket_mode or routed is None:
            return
        original = routed[1]
        self._exchanges.pop(flow.id, None)
        exchange.client_gone()  # the answer that was waiting for the loopback hop is dropped
        # As a pass-through would, a plain-HTTP request via an upstream proxy carries that
        # proxy's credentials again (UpstreamAuth's header); an HTTPS one never does.
        via_proxy_in_clear = original.server_conn.via is not None and original.scheme == "http"
        self._put_back(flow, proxy_authorization=via_proxy_in_clear)
        flow.server_conn = original.server_conn
        self._passed_through[flow.id] = bytearray()
        self._mark_http_only(exchange.upstream_url)
        note = (
            f"responses-bridge: {exchange.upstream_url} has no websocket mode; "
            "sent over HTTP as it came"
        )
        flow.comment = f"{flow.comment}\n{note}" if flow.comment else note

    def _mark_http_only(self, upstream_url: str) -> None:
        if self._http_only.get(upstream_url, 0.0) <= time.monotonic():
            period = self._http_only_period
            logger.info(
                "responses-bridge: %s has no websocket mode (the upgrade was refused); %s",
                upstream_url,
                f"its Responses requests pass through over HTTP for the next {period:g} s"
                if period
                else "this request passes through over HTTP, the next one tries again",
            )
        self._http_only[upstream_url] = time.monotonic() + self._http_only_period

    async def _answer_early(
        self, exchange: Exchange, request: IncomingRequest, sink: ClientSink
    ) -> None:
        try:
            await relay.answer(exchange, request, sink, self._registry)
        except Exception:
            # Nobody may await this task (the request can fail to reach the loopback server),
            # so its failure is logged and answered here, as the server does for its handlers.
            logger.exception("responses-bridge: internal error while answering a request")
            if not sink.started:
                await sink.send_json(500, error_body(INTERNAL_ERROR, "server_error"), [])

    async def _serve(self, request: IncomingRequest, writer: ResponseWriter) -> None:
        flow_id = request.header(hop.FLOW_HEADER) or ""
        exchange = self._exchanges.get(flow_id)
        if exchange is not None and exchange.task is not None:
            sink = exchange.sink
            if sink is not None and not sink.attached and not exchange.task.done():
                sink.attach(writer)  # the turn already runs (start_early): it writes here now
                await exchange.task
                return
            exchange = None
        if exchange is None:
            await writer.send_json(
                404,
                error_body(
                    "Unknown or finished bridged flow.", "invalid_request_error", "unknown_flow"
                ),
            )
            return
        exchange.task = asyncio.current_task()
        sink = ClientSink(exchange, writer, attach_timeout=_ATTACH_TIMEOUT)
        await relay.answer(exchange, request, sink, self._registry)

    async def _freeze_forever(self) -> None:
        await asyncio.sleep(_FREEZE_DELAY)
        frozen = _freeze_long_lived_objects()
        logger.info(
            "responses-bridge: %d objects from start-up moved out of the garbage collector's full "
            "collections (gc.freeze), which no longer walk them with mitmproxy's thread stopped; "
            "collected and frozen again every %g s.",
            frozen,
            _REFREEZE_PERIOD,
        )
        while True:
            await asyncio.sleep(_REFREEZE_PERIOD)
            _freeze_long_lived_objects()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self._registry.limits.session_ttl / 4))
            self._registry.sweep()

    def _upstream_ssl_context(self) -> ssl.SSLContext:
        """Verify upstream TLS exactly as mitmproxy's own upstream connections do."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
        if ctx.options.ssl_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        cafile = ctx.options.ssl_verify_upstream_trusted_ca
        capath = ctx.options.ssl_verify_upstream_trusted_confdir
        try:
            if cafile is None and capath is None:
                context.load_verify_locations(cafile=certifi.where())
            else:
                context.load_verify_locations(cafile=cafile, capath=capath)
        except (OSError, ssl.SSLError) as exc:
            raise exceptions.OptionsError(
                f"responses-bridge cannot load trusted certificates: {exc}"
            ) from exc
        return context

    def _finish(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        """Attach the websocket conversation to the flow, count it, log one line."""
        flow.metadata["responses_bridge"] = exchange.inspection()
        comment = report.flow_comment(
            exchange.socket_state, exchange.events, exchange.first_event_ms(), exchange.duration()
        )
        flow.comment = f"{flow.comment}\n{comment}" if flow.comment else comment
        self._stats.count(
            stream=exchange.stream,
            socket_state=exchange.socket_state,
            error_code=exchange.error_code,
        )
        self._stats.retried += exchange.retried
        self._stats.bytes_relayed += exchange.bytes_relayed()
        self._log(flow, exchange)

    def _log(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        status = exchange.status if exchange.status is not None else "-"
        mode = "stream" if exchange.stream else "json"
        line = (
            f"responses-bridge: {flow.request.method} {flow.request.path} -> {status} {mode} "
            f"ws {exchange.socket_state} · {exchange.events} events · "
            f"{exchange.duration() * 1000:.0f} ms · {exchange.upstream_url}"
        )
        if exchange.error:
            line += f" · {exchange.error}"
        # mitmproxy sends the end of the body to the client only after the response hooks, and
        # a log record costs more than the rest of this hook (every addon's log hook sees it):
        # it is written once this hook has returned.
        asyncio.get_running_loop().call_soon(logger.info, line)


def _freeze_long_lived_objects() -> int:
    """Collect everything (frozen objects included), then move every object alive now to the
    permanent generation, which the cyclic garbage collector never scans.

    Once started, the process holds about 85,000 objects (modules, mitmproxy's and the addons'
    state), and a full collection walked all of them with mitmproxy's one thread stopped: 57 ms
    each under sequential full-history turns, 4 ms once they were frozen (README, Performance).
    Done again every period, so an object that was frozen and has since become garbage (another
    script's old module after a reload, a closed session) waits at most that long."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _drop_stream_callable(response: http.Response) -> None:
    """Once the flow is over, our stream callable goes: it would keep its exchange (or the tee's
    copy of the body) alive for as long as mitmweb keeps the flow. mitmproxy no longer calls it
    then, so any callable can go."""
    if callable(response.stream):
        response.stream = True


def _is_event_stream(response: http.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


def _upstream_proxy(flow: http.HTTPFlow) -> str | None:
    """The upstream proxy URL when the flow came in through ``--mode upstream:…``."""
    mode = flow.client_conn.proxy_mode
    if not isinstance(mode, UpstreamMode):
        return None
    host, port = mode.address
    return upstream.proxy_url(mode.scheme, host, port, ctx.options.upstream_auth)


addons = [ResponsesBridge()]
