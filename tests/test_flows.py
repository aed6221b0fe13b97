"""Unit tests for ``responses_bridge.mitm.flows``: which flows ``BridgedFlows`` takes, how it
points them at the loopback server and back, and the fall-back to HTTP, in a mitmproxy test
context with its test flows.

What needs a running proxy (starting a turn early from the ``request`` hook, the loopback
server answering a turn) is covered by the end-to-end tests through real ``mitmdump``; nothing
here starts a turn, opens a socket or binds a port."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mitmproxy import connection, http
from mitmproxy.addons.upstream_auth import UpstreamAuth
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from responses_bridge.io.loopback import SECRET_HEADER, IncomingRequest
from responses_bridge.mitm import hop, options
from responses_bridge.mitm.flows import BridgedFlows, _upstream_proxy
from responses_bridge.mitm.options import Config
from responses_bridge.state.sessions import Registry
from responses_bridge.turn.exchange import Exchange

API = "https://api.openai.com/v1/responses"
WS_API = "wss://api.openai.com/v1/responses"
BODY = json.dumps({"model": "m", "input": "hi", "stream": True}).encode()


class Declaring:
    def load(self, loader: Any) -> None:
        options.declare(loader)


class Bridge:
    """A ``BridgedFlows`` with the options in ``tctx`` and a switch for ``is_running``."""

    def __init__(self, tctx: taddons.context) -> None:
        self.tctx = tctx
        self.running = True
        self.flows = BridgedFlows(Registry(), "s3cret", self.config, lambda: self.running)

    def config(self) -> Config:
        return options.parse(self.tctx.options)


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    with taddons.context(Declaring(), UpstreamAuth()) as tctx:
        tctx.options.update(ssl_insecure=True)  # no CA bundle to load for each parse
        yield Bridge(tctx)


def api_flow(
    method: str = "POST", url: str = API, body: bytes = BODY, **headers: str
) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = http.Request.make(
        method, url, body, {"authorization": "Bearer sk-x", "content-type": "application/json"}
    )
    for name, value in headers.items():
        flow.request.headers[name] = value
    return flow


# -- taking a flow ----------------------------------------------------------------------------


async def test_a_responses_request_is_taken_and_pointed_at_loopback(bridge: Bridge) -> None:
    flow = api_flow()
    bridge.flows.route_streamed(flow)
    exchange = bridge.flows.exchanges[flow.id]
    assert exchange.flow_id == flow.id
    assert exchange.upstream_url == WS_API
    assert exchange.upstream_address is None
    assert exchange.client is None  # a streamed body is parsed by the turn, when it is there
    assert (flow.request.scheme, flow.request.host) == ("http", "127.0.0.1")
    assert flow.request.port == bridge.flows.server.port
    assert flow.request.headers[SECRET_HEADER] == "s3cret"
    assert flow.request.headers[hop.FLOW_HEADER] == flow.id
    bridge.flows.route_streamed(flow)  # routed once: a second call changes nothing
    assert bridge.flows.exchanges[flow.id] is exchange
    bridge.flows.sent(flow)
    assert flow.request.url == API
    assert SECRET_HEADER not in flow.request.headers
    bridge.flows.sent(flow)  # put back once only
    assert flow.request.url == API


async def test_a_body_that_is_here_is_parsed_once_for_the_turn(bridge: Bridge) -> None:
    flow = api_flow()
    assert bridge.flows._take(flow, body=True)
    exchange = bridge.flows.exchanges[flow.id]
    assert exchange.client is not None and exchange.client.stream is True
    assert exchange.client.body["input"] == "hi"
    assert exchange.body_size == len(BODY)


async def test_an_unparsable_body_is_still_taken_for_the_turn_to_answer(bridge: Bridge) -> None:
    flow = api_flow(body=b"{not json")
    assert bridge.flows._take(flow, body=True)
    assert bridge.flows.exchanges[flow.id].client is None


async def test_a_codex_path_is_taken_too(bridge: Bridge) -> None:
    flow = api_flow(url="https://chatgpt.com/backend-api/codex/responses?x=1")
    bridge.flows.route_streamed(flow)
    assert flow.id in bridge.flows.exchanges


@pytest.mark.parametrize(
    "change",
    ["get", "path", "answered", "error", "not_live", "bridge_off", "host_not_listed"],
)
async def test_flows_that_are_not_bridged_are_left_alone(bridge: Bridge, change: str) -> None:
    flow = api_flow()
    if change == "get":
        flow.request.method = "GET"
    elif change == "path":
        flow.request.path = "/v1/chat/completions"
    elif change == "answered":
        flow.response = http.Response.make(200, b"{}")
    elif change == "error":
        flow.error = tflow.terr()
    elif change == "not_live":
        flow.live = False
    elif change == "bridge_off":
        bridge.tctx.options.update(responses_bridge=False)
    else:
        bridge.tctx.options.update(responses_bridge_hosts="*.example.test")
    assert not bridge.flows._take(flow, body=True)  # never route(): it would start a turn
    assert bridge.flows.exchanges == {}
    assert flow.request.host != "127.0.0.1"
    assert flow.id not in bridge.flows.passed_through


async def test_a_listed_host_is_taken(bridge: Bridge) -> None:
    bridge.tctx.options.update(responses_bridge_hosts="*.example.test, API.OPENAI.COM")
    flow = api_flow()
    bridge.flows.route_streamed(flow)
    assert flow.id in bridge.flows.exchanges


async def test_nothing_is_taken_before_the_bridge_runs(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    bridge.running = False
    flow = api_flow()
    with caplog.at_level(logging.WARNING, logger="responses_bridge"):
        bridge.flows.route_streamed(flow)
    assert bridge.flows.exchanges == {}
    assert "not running yet" in caplog.text and API in caplog.text


async def test_an_upstream_without_websocket_mode_is_passed_through(bridge: Bridge) -> None:
    bridge.flows.http_only.mark(WS_API)
    flow = api_flow()
    assert not bridge.flows._take(flow, body=True)
    assert bridge.flows.exchanges == {}
    assert flow.id in bridge.flows.passed_through
    assert flow.request.url == API
    assert flow.comment == ""  # said once, when the upstream was marked


async def test_background_requests_are_passed_through_with_a_note(bridge: Bridge) -> None:
    flow = api_flow(body=json.dumps({"model": "m", "input": "hi", "background": True}).encode())
    assert not bridge.flows._take(flow, body=True)
    assert bridge.flows.exchanges == {}
    assert flow.id in bridge.flows.passed_through
    assert flow.request.url == API
    assert flow.comment.startswith("responses-bridge: background: true is not supported")


async def test_the_upstream_override_replaces_the_destination(bridge: Bridge) -> None:
    bridge.tctx.options.update(responses_bridge_upstream="ws://127.0.0.1:9/v1/responses")
    flow = api_flow()
    bridge.flows.route_streamed(flow)
    exchange = bridge.flows.exchanges[flow.id]
    assert exchange.upstream_url == "ws://127.0.0.1:9/v1/responses"
    assert exchange.upstream_address is None


async def test_an_address_the_client_dialled_is_kept_for_the_websocket(bridge: Bridge) -> None:
    """Transparent mode: the flow names an IP address; the name comes from the SNI."""
    flow = api_flow(url="https://203.0.113.7/v1/responses")
    flow.client_conn.sni = "api.openai.com"
    flow.server_conn.address = ("203.0.113.7", 443)
    bridge.flows.route_streamed(flow)
    exchange = bridge.flows.exchanges[flow.id]
    assert exchange.upstream_url == WS_API
    assert exchange.upstream_address == ("203.0.113.7", 443)


# -- upstream proxy ---------------------------------------------------------------------------


async def test_upstream_mode_sends_the_websocket_through_that_proxy(bridge: Bridge) -> None:
    bridge.tctx.options.update(upstream_auth="user:p@ss")
    flow = api_flow()
    flow.client_conn.proxy_mode = ProxyMode.parse("upstream:http://proxy.test:3128")
    assert _upstream_proxy(flow) == "http://user:p%40ss@proxy.test:3128"
    bridge.flows.route_streamed(flow)
    assert bridge.flows.exchanges[flow.id].settings.proxy == "http://user:p%40ss@proxy.test:3128"


async def test_other_modes_have_no_upstream_proxy(bridge: Bridge) -> None:
    flow = api_flow()
    for mode in ("regular", "reverse:https://api.openai.com", "transparent"):
        flow.client_conn.proxy_mode = ProxyMode.parse(mode)
        assert _upstream_proxy(flow) is None
    bridge.flows.route_streamed(flow)
    assert bridge.flows.exchanges[flow.id].settings.proxy is None


# -- the loopback hop -------------------------------------------------------------------------


async def test_the_loopback_server_reading_the_head_puts_the_flow_back(bridge: Bridge) -> None:
    flow = api_flow()
    bridge.flows.route_streamed(flow)
    head = IncomingRequest("POST", "/v1/responses", [(hop.FLOW_HEADER, flow.id)], b"")
    bridge.flows._arrived(IncomingRequest("POST", "/v1/responses", [], b""))  # no flow named
    assert flow.request.host == "127.0.0.1"
    bridge.flows._arrived(head)
    assert flow.request.url == API
    assert flow.id in bridge.flows.exchanges  # the turn still runs


class Writer:
    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []

    async def send_json(self, status: int, payload: Any, headers: Any = ()) -> None:
        self.sent.append((status, payload))


async def test_the_loopback_server_answers_404_for_a_flow_it_does_not_know(
    bridge: Bridge,
) -> None:
    writer = Writer()
    request = IncomingRequest("POST", "/v1/responses", [(hop.FLOW_HEADER, "nope")], b"{}")
    await bridge.flows._serve(request, writer)  # type: ignore[arg-type]
    assert len(writer.sent) == 1
    status, payload = writer.sent[0]
    assert status == 404 and payload["error"]["code"] == "unknown_flow"


async def test_a_finished_turn_is_not_attached_again(bridge: Bridge) -> None:
    flow = api_flow()
    bridge.flows.route_streamed(flow)
    exchange = bridge.flows.exchanges[flow.id]

    async def done() -> None:
        return None

    exchange.task = asyncio.get_running_loop().create_task(done())
    await exchange.task
    writer = Writer()
    await bridge.flows._serve(
        IncomingRequest("POST", "/v1/responses", [(hop.FLOW_HEADER, flow.id)], b"{}"),
        writer,  # type: ignore[arg-type]
    )
    assert [status for status, _ in writer.sent] == [404]
    assert bridge.flows.tasks() == [exchange.task]


# -- falling back to HTTP ---------------------------------------------------------------------


def early(bridge: Bridge, flow: http.HTTPFlow, *, refused: bool) -> Exchange:
    bridge.flows.route_streamed(flow)
    exchange = bridge.flows.exchanges[flow.id]
    exchange.no_websocket_mode = refused
    return exchange


async def test_a_refused_upgrade_sends_the_request_on_over_http(bridge: Bridge) -> None:
    flow = api_flow()
    original_server = flow.server_conn
    exchange = early(bridge, flow, refused=True)
    bridge.flows._fall_back_to_http(flow, exchange)
    assert flow.id not in bridge.flows.exchanges
    assert flow.request.url == API and flow.server_conn is original_server
    assert not [k for k in flow.request.headers if k.startswith("x-responses-bridge")]
    assert flow.id in bridge.flows.passed_through
    assert WS_API in bridge.flows.http_only
    assert (
        flow.comment
        == f"responses-bridge: {WS_API} has no websocket mode; sent over HTTP as it came"
    )


async def test_an_accepted_upgrade_does_not_fall_back(bridge: Bridge) -> None:
    flow = api_flow()
    exchange = early(bridge, flow, refused=False)
    bridge.flows._fall_back_to_http(flow, exchange)
    assert bridge.flows.exchanges[flow.id] is exchange
    assert flow.request.host == "127.0.0.1"
    assert WS_API not in bridge.flows.http_only


async def test_a_flow_already_sent_on_does_not_fall_back(bridge: Bridge) -> None:
    flow = api_flow()
    exchange = early(bridge, flow, refused=True)
    bridge.flows.sent(flow)  # mitmproxy sent it to the loopback server: too late for HTTP
    bridge.flows._fall_back_to_http(flow, exchange)
    assert flow.id in bridge.flows.exchanges
    assert flow.id not in bridge.flows.passed_through


@pytest.mark.parametrize(("scheme", "restored"), [("http", True), ("https", False)])
async def test_the_fall_back_via_an_upstream_proxy_carries_its_credentials_only_in_clear(
    bridge: Bridge, scheme: str, restored: bool
) -> None:
    flow = api_flow(url=f"{scheme}://api.openai.com/v1/responses")
    flow.request.headers["proxy-authorization"] = "Basic dXNlcjpwYXNz"
    via = connection.Server(address=("api.openai.com", 443))
    via.via = ("http", ("proxy.test", 3128))
    flow.server_conn = via
    exchange = early(bridge, flow, refused=True)
    assert "proxy-authorization" not in flow.request.headers  # never to the loopback server
    bridge.flows._fall_back_to_http(flow, exchange)
    assert flow.server_conn is via
    assert ("proxy-authorization" in flow.request.headers) is restored
