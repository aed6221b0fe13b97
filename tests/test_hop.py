"""Unit tests for ``responses_bridge.mitm.hop``: the redirect to the loopback server and back, and
the two addons that place it at the ends of mitmproxy's chain (with mitmproxy's test flows)."""

from __future__ import annotations

import asyncio

from mitmproxy import connection, http
from mitmproxy.test import taddons, tflow

from responses_bridge.io.loopback import MAX_LISTENERS, SECRET_HEADER
from responses_bridge.mitm import hop


def api_flow() -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "POST",
        "https://api.openai.com/v1/responses",
        b"{}",
        {"authorization": "Bearer sk-x", "x-responses-bridge-secret": "forged"},
    )
    return flow


def test_redirect_points_the_flow_at_loopback_and_restore_undoes_it() -> None:
    flow = api_flow()
    before = (flow.request.url, flow.request.host_header, flow.request.authority)
    original = hop.redirect(flow, 4242, "s3cret")
    assert flow.request.url == "http://127.0.0.1:4242/v1/responses"
    # The client's forged copy of the internal header is gone; ours is there, once.
    assert flow.request.headers.get_all(SECRET_HEADER) == ["s3cret"]
    assert flow.request.headers[hop.FLOW_HEADER] == flow.id
    hop.restore(flow, original)
    assert (flow.request.url, flow.request.host_header, flow.request.authority) == before
    assert not [k for k in flow.request.headers if k.startswith("x-responses-bridge")]
    assert flow.request.headers["authorization"] == "Bearer sk-x"


def test_proxy_authorization_never_goes_to_loopback_and_comes_back_only_if_asked() -> None:
    flow = api_flow()
    flow.request.headers["proxy-authorization"] = "Basic dXNlcjpwYXNz"
    original = hop.redirect(flow, 4242, "s3cret")
    assert "proxy-authorization" not in flow.request.headers
    hop.restore(flow, original)
    assert "proxy-authorization" not in flow.request.headers
    flow.request.headers["proxy-authorization"] = "Basic dXNlcjpwYXNz"
    original = hop.redirect(flow, 4242, "s3cret")
    hop.restore(flow, original, proxy_authorization=True)
    assert flow.request.headers.get_all("proxy-authorization") == ["Basic dXNlcjpwYXNz"]


def test_an_upstream_proxy_flow_gets_a_direct_connection_for_the_hop() -> None:
    flow = api_flow()
    via = connection.Server(address=("api.openai.com", 443))
    via.via = ("http", ("proxy.local", 3128))
    flow.server_conn = via
    original = hop.redirect(flow, 4242, "s3cret")
    assert flow.server_conn is not via and flow.server_conn.via is None
    assert original.server_conn is via
    plain = api_flow()
    own = plain.server_conn
    hop.redirect(plain, 4242, "s3cret")
    assert plain.server_conn is own  # nothing to avoid: kept


def test_a_flow_without_a_host_header_gets_none_back() -> None:
    flow = api_flow()
    flow.request.headers.pop("host", None)
    original = hop.redirect(flow, 4242, "s3cret")
    hop.restore(flow, original)
    assert "host" not in flow.request.headers


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def route_streamed(self, flow: http.HTTPFlow) -> None:
        self.calls.append(("route_streamed", flow.id))

    def refuse_oversized(self, flow: http.HTTPFlow) -> None:
        self.calls.append(("refuse_oversized", flow.id))

    async def route(self, flow: http.HTTPFlow) -> None:
        self.calls.append(("route", flow.id))

    def sent(self, flow: http.HTTPFlow) -> None:
        self.calls.append(("sent", flow.id))


def test_router_routes_a_streamed_body_at_requestheaders_only() -> None:
    recorder = Recorder()
    router = hop.Router(recorder)
    buffered, streamed, answered = api_flow(), api_flow(), api_flow()
    streamed.request.stream = True
    answered.response = http.Response.make(403)  # another addon answered it (block_list)
    router.requestheaders(buffered)
    router.requestheaders(streamed)
    router.requestheaders(answered)
    # A buffered body is only checked against the size limit before mitmproxy reads it.
    assert recorder.calls == [("refuse_oversized", buffered.id), ("route_streamed", streamed.id)]


async def test_router_takes_an_intercepted_flow_once_it_is_resumed() -> None:
    recorder = Recorder()
    router = hop.Router(recorder)
    flow = api_flow()
    flow.intercept()
    routing = asyncio.ensure_future(router.request(flow))
    await asyncio.sleep(0.05)
    assert recorder.calls == []  # the user may still edit it
    flow.resume()
    await asyncio.wait_for(routing, 1)
    assert recorder.calls == [("route", flow.id)]


async def test_router_does_not_wait_forever_for_a_killed_intercepted_flow() -> None:
    recorder = Recorder()
    flow = api_flow()
    flow.intercept()
    routing = asyncio.ensure_future(hop.Router(recorder).request(flow))
    await asyncio.sleep(0.05)
    flow.kill()  # not intercepted any more, and never resumed
    await asyncio.wait_for(routing, 3)
    assert recorder.calls == [("route", flow.id)]  # the bridge then sees it killed


def test_restorer_acts_only_on_flows_whose_body_was_streamed() -> None:
    recorder = Recorder()
    restorer = hop.Restorer(recorder)
    buffered, streamed = api_flow(), api_flow()
    streamed.request.data.content = None
    restorer.request(buffered)
    restorer.request(streamed)
    assert recorder.calls == [("sent", streamed.id)]


def test_install_puts_the_restorer_first_and_the_router_last() -> None:
    recorder = Recorder()
    restorer, router = hop.Restorer(recorder), hop.Router(recorder)
    with taddons.context() as context:
        addons = context.master.addons
        before = list(addons.chain)
        hop.install(addons, restorer, router)
        hop.install(addons, restorer, router)  # once only
        assert addons.chain == [restorer, *before, router]
        hop.uninstall(addons, restorer, router)
        assert addons.chain == before


class _Ports:
    """A stand-in for ``LoopbackServer``'s port book-keeping (binds nothing)."""

    def __init__(self) -> None:
        self.ports = [5000]

    def port_at(self, index: int) -> int:
        index = min(index, MAX_LISTENERS - 1)
        while len(self.ports) <= index:
            self.ports.append(5000 + len(self.ports))
        return self.ports[index]


def flows_of(client: connection.Client, count: int) -> list[http.HTTPFlow]:
    made = [api_flow() for _ in range(count)]
    for flow in made:
        flow.client_conn = client
    return made


def test_listeners_give_each_port_at_most_five_of_a_client_connection_s_flows() -> None:
    server = _Ports()
    listeners = hop.Listeners(server)  # type: ignore[arg-type]
    h2_client = tflow.tclient_conn()
    streams = flows_of(h2_client, 12)
    ports = [listeners.port_for(f) for f in streams]
    assert ports == [5000] * 5 + [5001] * 5 + [5002] * 2
    # Another client connection starts on the first port again (mitmproxy counts per client).
    other = flows_of(tflow.tclient_conn(), 1)[0]
    assert listeners.port_for(other) == 5000
    # A stream that ends makes room on its port; the next one takes the first with room.
    listeners.release(streams[1].id)
    assert listeners.port_for(flows_of(h2_client, 1)[0]) == 5000
    listeners.release(streams[7].id)
    listeners.release(streams[7].id)  # twice is harmless
    assert listeners.port_for(flows_of(h2_client, 1)[0]) == 5001
    assert listeners.in_flight() == 13


def test_listeners_keep_an_http1_client_on_the_first_port_and_forget_idle_clients() -> None:
    listeners = hop.Listeners(_Ports())  # type: ignore[arg-type]
    client = tflow.tclient_conn()
    for flow in flows_of(client, 20):  # one request at a time: always the same port
        assert listeners.port_for(flow) == 5000
        listeners.release(flow.id)
    assert listeners.in_flight() == 0 and listeners._in_flight == {}


def test_listeners_are_bounded_and_a_flow_taken_twice_counts_once() -> None:
    listeners = hop.Listeners(_Ports())  # type: ignore[arg-type]
    client = tflow.tclient_conn()
    many = flows_of(client, MAX_LISTENERS * hop.CONNECTIONS_PER_ADDRESS + 3)
    ports = [listeners.port_for(f) for f in many]
    assert len(set(ports)) == MAX_LISTENERS  # past that, the least busy port is shared
    assert max(ports.count(p) for p in set(ports)) == hop.CONNECTIONS_PER_ADDRESS + 1
    again = many[0]
    assert listeners.port_for(again) == listeners.port_for(again)
    assert listeners.in_flight() == len(many)
