"""The internal hop: pointing a bridged flow at the loopback server, last, and putting it back.

mitmproxy streams only what a server sends, so a bridged flow is sent to the embedded loopback
server (see ``io.loopback``). That redirect is done by ``Router``, an addon appended at the very end
of mitmproxy's addon chain: every other addon and filter (block_list, modify_headers,
map_remote, stickyauth, intercept, other scripts) has seen the request exactly as it would a
pass-through flow, with its own scheme, host, port and headers, and has changed it as it liked,
before the bridge takes it. The flow gets its original destination back as soon as the loopback
server has its head, before any later hook sees it.

``Listeners`` picks the loopback port: mitmproxy lets one client connection hold at most five
connections to one server address at a time (``proxy/server.py``, ``max_conns``), and gives each
HTTP/2 stream bound for an HTTP/1.1 server a connection of its own, so an HTTP/2 client's sixth
concurrent bridged stream would wait for one of the first five to end. Each port takes at most
five of a client connection's flows at once; more go to further ports.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, NamedTuple, Protocol

from mitmproxy import connection, http

from responses_bridge.io.loopback import MAX_LISTENERS, SECRET_HEADER, LoopbackServer

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


# mitmproxy's limit on one client connection's concurrent connections to one address.
CONNECTIONS_PER_ADDRESS = 5


class Listeners:
    """Which loopback port each bridged flow is sent to: the first one on which the flow's
    client connection has fewer than ``CONNECTIONS_PER_ADDRESS`` flows in flight. An HTTP/1.1
    client (one request at a time) always gets the first port, and so keeps its keep-alive
    connection to the loopback server."""

    def __init__(self, server: LoopbackServer) -> None:
        self._server = server
        self._in_flight: dict[str, list[int]] = {}  # client connection id -> flows per port
        self._assigned: dict[str, tuple[str, int]] = {}  # flow id -> (client id, port index)

    def port_for(self, flow: http.HTTPFlow) -> int:
        """The port for ``flow``, counted as in flight there until ``release``."""
        self.release(flow.id)  # a flow taken again (replayed) counts once
        client = flow.client_conn.id
        counts = self._in_flight.setdefault(client, [])
        index = next((i for i, n in enumerate(counts) if n < CONNECTIONS_PER_ADDRESS), None)
        if index is None:
            if len(counts) < MAX_LISTENERS:
                index = len(counts)
                counts.append(0)
            else:  # every port is full for this client: it waits on the least busy one
                index = counts.index(min(counts))
        port = self._server.port_at(index)
        index = self._server.ports.index(port)  # the server may have fallen back to another
        while len(counts) <= index:
            counts.append(0)
        counts[index] += 1
        self._assigned[flow.id] = (client, index)
        return port

    def release(self, flow_id: str) -> None:
        """``flow_id`` has ended (or left the loopback hop): its port has room again."""
        assigned = self._assigned.pop(flow_id, None)
        if assigned is None:
            return
        client, index = assigned
        counts = self._in_flight.get(client)
        if counts is None:
            return
        counts[index] -= 1
        if not any(counts):
            del self._in_flight[client]

    def in_flight(self) -> int:
        """Flows counted on some port (what the tests check)."""
        return len(self._assigned)


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
