"""The bridged flows in flight: which flows are bridged, each one's exchange, and starting its
upstream turn.

``BridgedFlows`` is what ``hop.Router`` hands every flow to once the other addons have had it.
A bridged flow's turn starts right there, while mitmproxy hands the request over to the loopback
server (which then only carries the answer back); one whose body was streamed starts when the
loopback server has it. The addon's hooks look flows up here and end them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from mitmproxy import ctx, http
from mitmproxy.proxy.mode_specs import ReverseMode, UpstreamMode

from responses_bridge.io import upstream
from responses_bridge.io.loopback import (
    INTERNAL_ERROR,
    IncomingRequest,
    LoopbackServer,
    ResponseWriter,
    error_body,
)
from responses_bridge.mitm import hop
from responses_bridge.mitm.options import Config
from responses_bridge.mitm.passthrough import HttpOnly, PassedThrough
from responses_bridge.protocol.encoding import decode_body
from responses_bridge.protocol.errors import BridgeError
from responses_bridge.protocol.request import (
    ClientRequest,
    Destination,
    destination,
    host_matches,
    is_responses_path,
    parse_client_request,
)
from responses_bridge.state.sessions import Registry
from responses_bridge.turn import relay
from responses_bridge.turn.exchange import ClientSink, Exchange

logger = logging.getLogger("responses_bridge")

# How long a turn started from the ``request`` hook waits for mitmproxy to deliver the request to
# the loopback server (normally well under a millisecond; a flow that never gets there is ended
# earlier by the ``response``/``error`` hooks).
ATTACH_TIMEOUT = 30.0


class BridgedFlows:
    """See the module docstring; implements ``hop.Routing``."""

    def __init__(
        self,
        registry: Registry,
        secret: str,
        config: Callable[[], Config],
        is_running: Callable[[], bool],
    ) -> None:
        self._registry = registry
        self._secret = secret
        self._config = config
        self._is_running = is_running
        self.server = LoopbackServer(
            self._serve,
            secret,
            lambda: self._config().settings.max_body_bytes,
            on_head=self._arrived,
        )
        self.listeners = hop.Listeners(self.server)
        self.exchanges: dict[str, Exchange] = {}
        # Flows pointed at the loopback server whose head mitmproxy has not sent yet.
        self._originals: dict[str, tuple[http.HTTPFlow, hop.Original]] = {}
        self.http_only = HttpOnly()
        self.passed_through = PassedThrough()

    # -- hop.Routing -------------------------------------------------------------------------

    def route_streamed(self, flow: http.HTTPFlow) -> None:
        """At the end of ``requestheaders``, a streamed request body, which goes to the server
        before any ``request`` hook runs."""
        self._take(flow, body=False)

    async def route(self, flow: http.HTTPFlow) -> None:
        """At the end of the ``request`` hooks: take the flow if it is bridged and start its
        upstream turn at once, so the websocket round trip overlaps mitmproxy's hand-over of
        the request to the loopback server."""
        if not self._take(flow, body=True):
            return
        exchange = self._start_early(flow)
        if exchange is not None:
            # Hold this flow's hook (not mitmproxy) until the frame is sent: otherwise the turn's
            # first step queues behind mitmproxy's own per-hook work for this flow.
            await exchange.dispatched.wait()
            self._fall_back_to_http(flow, exchange)

    def sent(self, flow: http.HTTPFlow) -> None:
        """mitmproxy has sent ``flow``'s head on: it gets its own destination back."""
        self.put_back(flow)

    # -- taking a flow -----------------------------------------------------------------------

    def _bridged_destination(self, flow: http.HTTPFlow) -> tuple[Config, Destination, str] | None:
        """Where ``flow``, as the other addons left it, would be bridged to (its configuration,
        destination and upstream URL), or None if the bridge leaves it alone."""
        if flow.response or flow.error or not flow.live or not ctx.options.responses_bridge:
            return None
        request = flow.request
        if request.method != "POST" or not is_responses_path(request.path):
            return None
        config = self._config()
        mode = flow.client_conn.proxy_mode
        target = destination(
            request.scheme,
            request.host,
            request.port,
            request.path,
            sni=flow.client_conn.sni,
            host_header=request.host_header,
            # What the client connected to; a reverse proxy's destination is its own option.
            dialled=None if isinstance(mode, ReverseMode) else flow.server_conn.address,
        )
        if not host_matches(target.name, config.host_patterns):
            return None
        return config, target, config.upstream_override or target.url

    def refuse_oversized(self, flow: http.HTTPFlow) -> None:
        """At the end of ``requestheaders``: a bridged request whose ``Content-Length`` is over
        ``max_body_bytes`` gets 413 without mitmproxy reading (and buffering) its body."""
        declared = flow.request.headers.get("content-length", "")
        if not declared.isdigit():
            return
        bridged = self._bridged_destination(flow)
        if bridged is None:
            return
        limit = bridged[0].settings.max_body_bytes
        if int(declared) <= limit:
            return
        # A response set here would wait until mitmproxy has buffered the whole body: streamed
        # to the loopback server instead, the body meets a 413 there at its head.
        flow.request.stream = True
        self.route_streamed(flow)

    def _take(self, flow: http.HTTPFlow, *, body: bool) -> bool:
        """Decide whether ``flow``, as the other addons left it, is bridged; if so, record its
        exchange and point it at the loopback server. ``body``: the request body is here."""
        if flow.id in self.exchanges:
            return True  # routed at requestheaders (a streamed body)
        bridged = self._bridged_destination(flow)
        if bridged is None:
            return False
        config, target, upstream_url = bridged
        request = flow.request
        if not self._is_running():
            logger.warning(
                "responses-bridge: not running yet; %s passes through", request.pretty_url
            )
            return False
        if upstream_url in self.http_only:
            self.passed_through.add(flow)
            return False
        client = None
        if body and request.raw_content is not None:
            client = self._parse(request, config.settings.max_body_bytes)
            if client is not None and client[0].body.get("background") is True:
                self.passed_through.add(
                    flow,
                    "background: true is not supported over the websocket; sent over HTTP "
                    "as it came",
                )
                return False
        settings = config.settings
        proxy = _upstream_proxy(flow)
        if proxy is not None:
            settings = dataclasses.replace(settings, proxy=proxy)
        exchange = Exchange(flow.id, upstream_url, settings)
        exchange.upstream_address = None if config.upstream_override else target.address
        if client is not None:
            exchange.client, exchange.body_size = client
        self.exchanges[flow.id] = exchange
        port = self.listeners.port_for(flow)
        self._originals[flow.id] = (flow, hop.redirect(flow, port, self._secret))
        return True

    @staticmethod
    def _parse(request: http.Request, limit: int) -> tuple[ClientRequest, int] | None:
        """The request body, parsed once for the turn; None if it is not valid (the turn then
        answers with the error)."""
        assert request.raw_content is not None
        try:
            raw = decode_body(request.raw_content, request.headers.get("content-encoding"), limit)
            return parse_client_request(raw, max_bytes=limit), len(raw)
        except BridgeError:
            return None

    def put_back(self, flow: http.HTTPFlow, *, proxy_authorization: bool = False) -> None:
        """Give ``flow`` its own destination back, if it is still pointed at loopback."""
        routed = self._originals.pop(flow.id, None)
        if routed is not None:
            hop.restore(flow, routed[1], proxy_authorization=proxy_authorization)

    def _arrived(self, request: IncomingRequest) -> None:
        """The loopback server has read a bridged request's head: mitmproxy has sent it, so
        the flow gets its own destination back before any later hook sees it."""
        routed = self._originals.get(request.header(hop.FLOW_HEADER) or "")
        if routed is not None:
            self.put_back(routed[0])

    # -- starting a turn ---------------------------------------------------------------------

    def _start_early(self, flow: http.HTTPFlow) -> Exchange | None:
        """Start a bridged flow's upstream turn from the end of the ``request`` hooks, when
        mitmproxy is about to send exactly this request to the loopback server."""
        exchange = self.exchanges.get(flow.id)
        request = flow.request
        if (
            exchange is None
            or exchange.task is not None
            or flow.response is not None
            or flow.intercepted
            or not flow.live
            or request.raw_content is None  # a streamed request body
            or len(request.raw_content) > exchange.settings.max_body_bytes
            or not self.server.listens_on(request.host, request.port)
        ):
            return None  # the loopback server starts it when the request arrives
        incoming = IncomingRequest(
            request.method,
            request.path,
            list(request.headers.items(multi=True)),
            request.raw_content,
            request.http_version,
        )
        sink = ClientSink(exchange, attach_timeout=ATTACH_TIMEOUT)
        exchange.sink = sink
        task = asyncio.get_running_loop().create_task(
            self._answer_early(exchange, incoming, sink), name="responses-bridge turn"
        )
        task.add_done_callback(lambda _task: exchange.dispatched.set())  # even if cancelled
        exchange.task = task
        return exchange

    def _fall_back_to_http(self, flow: http.HTTPFlow, exchange: Exchange) -> None:
        """After an early start: if the upstream has no websocket mode (426, 404 or 405 on the
        upgrade) and nothing reached the client, send the request on as it came, over HTTP,
        and do the same with this upstream's next requests for a while."""
        # Nothing can have reached the client: this runs from the request hook, before mitmproxy
        # sends the request to the loopback server that the answer would be written to.
        routed = self._originals.get(flow.id)
        if not exchange.no_websocket_mode or routed is None:
            return
        original = routed[1]
        self.exchanges.pop(flow.id, None)
        self.listeners.release(flow.id)
        exchange.client_gone()  # the answer that was waiting for the loopback hop is dropped
        # As a pass-through would, a plain-HTTP request via an upstream proxy carries that
        # proxy's credentials again (UpstreamAuth's header); an HTTPS one never does.
        via_proxy_in_clear = original.server_conn.via is not None and original.scheme == "http"
        self.put_back(flow, proxy_authorization=via_proxy_in_clear)
        flow.server_conn = original.server_conn
        self.http_only.mark(exchange.upstream_url)
        self.passed_through.add(flow)
        note = (
            f"responses-bridge: {exchange.upstream_url} has no websocket mode; "
            "sent over HTTP as it came"
        )
        flow.comment = f"{flow.comment}\n{note}" if flow.comment else note

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
        """The loopback server's handler: attach the answer of a turn that already runs, or
        run the turn of a request that arrives first here (a streamed body)."""
        exchange = self.exchanges.get(request.header(hop.FLOW_HEADER) or "")
        if exchange is not None and exchange.task is not None:
            sink = exchange.sink
            if sink is not None and not sink.attached and not exchange.task.done():
                sink.attach(writer)  # the turn already runs (started early): it writes here
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
        sink = ClientSink(exchange, writer, attach_timeout=ATTACH_TIMEOUT)
        await relay.answer(exchange, request, sink, self._registry)

    def tasks(self) -> list[asyncio.Task[object]]:
        """The turns still running (to cancel at shutdown)."""
        return [e.task for e in self.exchanges.values() if e.task is not None]

    def close(self) -> list[Awaitable[object]]:
        """What to await at shutdown: the loopback server's end."""
        return [self.server.close()]


def _upstream_proxy(flow: http.HTTPFlow) -> str | None:
    """The upstream proxy URL when the flow came in through ``--mode upstream:…``."""
    mode = flow.client_conn.proxy_mode
    if not isinstance(mode, UpstreamMode):
        return None
    host, port = mode.address
    return upstream.proxy_url(mode.scheme, host, port, ctx.options.upstream_auth)
