"""The internal hop: pointing a bridged flow at the loopback server, last, and putting it back.

mitmproxy streams only what a server sends, so a bridged flow is sent to the embedded loopback
server (see ``io.loopback``). That redirect is done by ``Router``, an addon appended at the very end
of mitmproxy's addon chain: every other addon and filter (block_list, modify_headers,
map_remote, stickyauth, intercept, other scripts) has seen the request exactly as it would a
pass-through flow, with its own scheme, host, port and headers, and has changed it as it liked,
before the bridge takes it. The flow gets its original destination back as soon as the loopback
server has its head, before any later hook sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple, Protocol

from mitmproxy import connection, http

from responses_bridge.io.loopback import SECRET_HEADER

FLOW_HEADER = "x-responses-bridge-flow"
INTERNAL_HEADERS = frozenset({SECRET_HEADER.encode(), FLOW_HEADER.encode()})
_PROXY_AUTHORIZATION = b"proxy-authorization"


class Original(NamedTuple):
    """What the redirect changed on the request, to put back."""

    scheme: str
    host: str
    port: int
    authority: str
    host_header: str | None
    server_conn: connection.Server
    # mitmproxy's UpstreamAuth adds it to plain-HTTP requests in upstream mode: it is for the
    # upstream proxy, so it never goes to the loopback server, a saved flow or the websocket.
    proxy_authorization: tuple[tuple[bytes, bytes], ...]


def without_internal_headers(
    fields: tuple[tuple[bytes, bytes], ...],
) -> tuple[tuple[bytes, bytes], ...]:
    """Header fields with the bridge's internal headers removed."""
    return tuple(field for field in fields if field[0].lower() not in INTERNAL_HEADERS)


def redirect(flow: http.HTTPFlow, port: int, secret: str) -> Original:
    """Point ``flow`` at the loopback server on ``port``; returns what to put back."""
    request = flow.request
    fields = request.headers.fields
    original = Original(
        request.scheme,
        request.host,
        request.port,
        request.authority,
        request.host_header,
        flow.server_conn,
        tuple(f for f in fields if f[0].lower() == _PROXY_AUTHORIZATION),
    )
    if flow.server_conn.via is not None:
        # Upstream mode: the internal hop gets a direct server connection, never via the proxy
        # (elsewhere the flow's own has no proxy, and a new one costs ~20 µs a request).
        flow.server_conn = connection.Server(address=None)
    # One assignment of the raw fields (each Headers item operation costs ~10 µs); a client's
    # own copies of the internal headers are dropped, never forwarded.
    request.headers.fields = (
        *(
            f
            for f in fields
            if f[0].lower() not in INTERNAL_HEADERS and f[0].lower() != _PROXY_AUTHORIZATION
        ),
        (SECRET_HEADER.encode(), secret.encode()),
        (FLOW_HEADER.encode(), flow.id.encode()),
    )
    request.scheme = "http"
    request.host = "127.0.0.1"
    request.port = port
    return original


def restore(flow: http.HTTPFlow, original: Original, *, proxy_authorization: bool = False) -> None:
    """Give ``flow`` its original destination back, without the internal headers.
    ``proxy_authorization`` puts back what UpstreamAuth had added (for the HTTP fallback,
    which goes to that proxy as a pass-through would)."""
    request = flow.request
    fields = without_internal_headers(request.headers.fields)
    if proxy_authorization:
        fields = (*fields, *original.proxy_authorization)
    request.headers.fields = fields
    request.scheme = original.scheme
    request.host = original.host
    request.port = original.port
    request.authority = original.authority
    if original.host_header is None:
        request.headers.pop("host", None)
    else:
        request.host_header = original.host_header


class Routing(Protocol):
    """What the router and the restorer ask of the bridge."""

    def route_streamed(self, flow: http.HTTPFlow) -> None: ...

    def refuse_oversized(self, flow: http.HTTPFlow) -> None: ...

    async def route(self, flow: http.HTTPFlow) -> None: ...

    def sent(self, flow: http.HTTPFlow) -> None: ...


class Restorer:
    """The first addon in mitmproxy's chain. A streamed request body's flow was pointed at the
    loopback server in ``requestheaders``; mitmproxy runs the ``request`` hooks only once its
    head is sent, and this gives the flow its own destination back before any of them."""

    def __init__(self, routing: Routing) -> None:
        self._routing = routing

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.raw_content is None:  # streamed, so already sent
            self._routing.sent(flow)


def install(addons: Any, restorer: Restorer, router: Router) -> None:
    """Put ``restorer`` first and ``router`` last in mitmproxy's addon chain (``addons``, its
    ``AddonManager``)."""
    if restorer not in addons:
        addons.add(restorer)
        # AddonManager only appends; its chain is a plain list, in the order hooks run.
        addons.chain.remove(restorer)
        addons.chain.insert(0, restorer)
    if router not in addons:
        addons.add(router)


def uninstall(addons: Any, *installed: object) -> None:
    """Take the addons ``install`` added out of the chain again."""
    for addon in installed:
        if addon in addons:
            addons.remove(addon)


class Router:
    """The last addon in mitmproxy's chain: hands each flow to the bridge once every other
    addon has had it. Its hooks do nothing else."""

    def __init__(self, routing: Routing) -> None:
        self._routing = routing

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # A streamed request body (stream_large_bodies) goes to its server right after these
        # hooks, before any request hook; the flow is back as it was once the head arrives.
        if flow.response is not None:
            return
        if flow.request.stream:
            self._routing.route_streamed(flow)
        else:
            self._routing.refuse_oversized(flow)

    async def request(self, flow: http.HTTPFlow) -> None:
        # An interception (mitmweb, the intercept option) holds the flow after this hook: the
        # bridge takes the request as the user left it. A killed flow is no longer intercepted
        # but is never resumed, so the wait looks again every second.
        while flow.intercepted:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(flow.wait_for_resume(), 1.0)
        await self._routing.route(flow)
