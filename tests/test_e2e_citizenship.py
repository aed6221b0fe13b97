"""End to end: a bridged flow is still a mitmproxy flow. mitmproxy's own features and other
scripts see it, with its own host, exactly as they see the pass-through flow it replaces, and
the bridge takes the request as they left it (see ``responses_bridge.mitm.hop``).

The upstream is named (``localhost``, the one name that resolves here), so every filter with
``~d localhost`` is one a user would write for their API host.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import Mitmdump, read_flows, wait_until

BODY = {"model": "m", "input": "original words", "stream": True}
DEFAULTS = "responses_bridge_warm_sockets=1"  # the default, which the shared fixture turns off


def named(fake: FakeUpstream) -> str:
    return f"reverse:http://localhost:{fake.port}"


def post(bridge: Mitmdump, body: dict[str, object] | None = None, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{bridge.base_url}/responses", json=body or BODY, headers=headers, timeout=30
    )


def test_block_list_blocks_a_bridged_request_with_its_own_status(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, DEFAULTS, "block_list=:~d localhost:403", mode=named(fake))
    got = post(bridge)
    assert got.status_code == 403
    time.sleep(0.3)  # a websocket opened by mistake would have reached the fake by now
    assert fake.connections == 0 and fake.requests == []
    assert not [line for line in bridge.lines if "responses-bridge: POST" in line]


def test_modify_headers_with_a_domain_filter_reaches_the_websocket_handshake(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(
        fake,
        DEFAULTS,
        "modify_headers=/~d localhost/Authorization/Bearer sk-injected",
        mode=named(fake),
    )
    got = post(bridge)
    assert got.status_code == 200 and "response.completed" in got.text
    assert fake.handshake_headers[0]["authorization"] == "Bearer sk-injected"


def test_modify_body_with_a_domain_filter_changes_what_the_websocket_sends(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(
        fake, DEFAULTS, "modify_body=/~d localhost/original words/modified", mode=named(fake)
    )
    assert post(bridge).status_code == 200
    assert fake.requests[0]["input"] == "modified"


def test_map_remote_moves_the_websocket_and_the_secret_stays_on_loopback(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    # The client's destination has nothing listening; map_remote sends it to the fake.
    dead = "localhost:9"
    bridge = start_bridge(
        None,
        DEFAULTS,
        f"map_remote=|//{dead}/|//127.0.0.1:{fake.port}/",
        mode=f"reverse:http://{dead}",
    )
    got = post(bridge)
    assert got.status_code == 200, got.text
    assert "response.completed" in got.text
    assert fake.connections >= 1 and len(fake.requests) == 1
    assert fake.sockets[0].path == "/v1/responses"
    assert not [h for h in fake.handshake_headers for k in h if k.startswith("x-responses-bridge")]
    line = bridge.wait_for_log(r"responses-bridge: POST /v1/responses -> 200")
    assert "ws new" in line


def test_stickyauth_adds_the_remembered_credential_to_a_later_request(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, "stickyauth=~d localhost", mode=named(fake))
    assert post(bridge, authorization="Bearer sk-sticky").status_code == 200
    assert post(bridge).status_code == 200
    # The second request ran on a lane of the socket opened with the remembered credential:
    # without it, its upgrade would differ and it would have opened a socket of its own.
    assert [h.get("authorization") for h in fake.handshake_headers] == ["Bearer sk-sticky"]
    assert len(fake.requests) == 2 and fake.connections == 1


def test_stickycookie_sends_the_cookie_on_the_websocket_handshake(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, "stickycookie=~d localhost", mode=named(fake))
    page = httpx.get(f"http://127.0.0.1:{bridge.port}/set-cookie?jar=choc", timeout=10)
    assert page.status_code == 200 and page.headers["set-cookie"].startswith("jar=choc")
    assert post(bridge).status_code == 200
    assert fake.handshake_headers[-1].get("cookie") == "jar=choc"


INTERCEPTOR = """
import asyncio, json
from mitmproxy import http
from mitmproxy.addons import intercept

class Operator:
    # Stands in for a mitmweb user: edits an intercepted request, then resumes it.
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.intercepted:
            asyncio.get_running_loop().call_later(0.3, self._edit, flow)

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.intercepted:
            asyncio.get_running_loop().call_later(0.1, flow.resume)

    def _edit(self, flow: http.HTTPFlow) -> None:
        body = json.loads(flow.request.content)
        body["input"] = f"edited while intercepted at {flow.request.host}"
        flow.request.content = json.dumps(body).encode()
        flow.resume()

addons = [intercept.Intercept(), Operator()]
"""

DOMAIN_SCRIPT = """
import logging
from mitmproxy import http

class Domain:
    def request(self, flow: http.HTTPFlow) -> None:
        logging.getLogger("domain").warning(f"domain-script: request {flow.request.url}")
        if flow.request.host == "localhost" and flow.request.port == PORT:
            flow.request.headers["x-seen-by-script"] = flow.request.pretty_url

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        logging.getLogger("domain").warning(f"domain-script: responseheaders {flow.request.url}")

    def response(self, flow: http.HTTPFlow) -> None:
        logging.getLogger("domain").warning(f"domain-script: response {flow.request.url}")

addons = [Domain()]
"""


def script_bridge(
    fake: FakeUpstream, confdir: Path, tmp_path: Path, text: str, *options: str
) -> Mitmdump:
    script = tmp_path / "later_script.py"
    script.write_text(text.replace("PORT", str(fake.port)))
    args = ["--mode", named(fake), "-s", str(script)]
    for option in options:
        args += ["--set", option]
    return Mitmdump(args, confdir)


@pytest.fixture
def scripts(fake: FakeUpstream, confdir: Path, tmp_path: Path) -> Iterator[list[Mitmdump]]:
    started: list[Mitmdump] = []
    yield started
    for bridge in started:
        bridge.stop()


def post_both_ways(bridge: Mitmdump) -> None:
    """One streamed and one JSON request, both answered."""
    for stream in (True, False):
        got = post(bridge, {**BODY, "stream": stream})
        assert got.status_code == 200, got.text


def test_an_intercept_filter_on_the_domain_holds_the_flow_and_the_edit_goes_upstream(
    fake: FakeUpstream, confdir: Path, tmp_path: Path, scripts: list[Mitmdump]
) -> None:
    bridge = script_bridge(fake, confdir, tmp_path, INTERCEPTOR, "intercept=~d localhost")
    scripts.append(bridge)
    post_both_ways(bridge)
    # The user saw (and edited) the flow with its own host, not the loopback server's.
    assert [r["input"] for r in fake.requests] == ["edited while intercepted at localhost"] * 2


def test_a_later_script_with_a_domain_condition_sees_the_flow_as_it_is(
    fake: FakeUpstream, confdir: Path, tmp_path: Path, scripts: list[Mitmdump]
) -> None:
    bridge = script_bridge(fake, confdir, tmp_path, DOMAIN_SCRIPT)
    scripts.append(bridge)
    assert post(bridge).status_code == 200
    url = f"http://localhost:{fake.port}/v1/responses"
    assert fake.handshake_headers[0]["x-seen-by-script"] == url
    for hook in ("request", "responseheaders", "response"):
        assert bridge.wait_for_log(f"domain-script: {hook} ").endswith(url)
    assert not [line for line in bridge.lines if "domain-script" in line and "127.0.0.1" in line]


def test_a_saved_bridged_flow_is_the_flow_the_client_sent(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    saved = tmp_path / "flows.mitm"
    bridge = start_bridge(fake, DEFAULTS, f"save_stream_file={saved}", mode=named(fake))
    assert post(bridge, authorization="Bearer sk-saved").status_code == 200
    assert post(bridge, {**BODY, "stream": False}).status_code == 200
    bridge.stop()
    flows = read_flows(saved)
    assert len(flows) == 2
    for flow in flows:
        assert flow.request.pretty_url == f"http://localhost:{fake.port}/v1/responses"
        assert not [k for k in flow.request.headers if k.lower().startswith("x-responses-bridge")]
        assert flow.response is not None and flow.response.status_code == 200
        assert flow.metadata["responses_bridge"]["upstream"] == fake.url().replace(
            "127.0.0.1", "localhost"
        )
    assert b"response.completed" in (flows[0].response.content or b"")
    assert json.loads(flows[1].response.content or b"")["status"] == "completed"


def test_background_requests_pass_through_to_the_http_endpoint(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    fake.http_responses = True
    bridge = start_bridge(fake, DEFAULTS, mode=named(fake))
    got = post(bridge, {"model": "m", "input": "later please", "background": True})
    assert got.status_code == 200, got.text
    assert got.headers.get("x-responses-bridge") is None  # not bridged
    assert fake.connections == 0 and fake.requests == []
    assert [r["body"]["background"] for r in fake.http_requests] == [True]
    line = bridge.wait_for_log(r"responses-bridge: POST /v1/responses: background")
    assert "not supported over the websocket" in line
    # The next request without it is bridged as usual.
    assert post(bridge).headers.get("x-responses-bridge") == "new"
    wait_until(lambda: fake.connections >= 1, what="the bridged request's websocket")


def test_a_streamed_request_body_is_bridged_and_later_hooks_see_its_own_host(
    fake: FakeUpstream, confdir: Path, tmp_path: Path, scripts: list[Mitmdump]
) -> None:
    # stream_large_bodies: the body goes to the loopback server as it arrives, before any
    # request hook; those hooks still see the flow's own destination.
    bridge = script_bridge(fake, confdir, tmp_path, DOMAIN_SCRIPT, "stream_large_bodies=1")
    scripts.append(bridge)
    post_both_ways(bridge)
    assert [r["input"] for r in fake.requests] == ["original words"] * 2
    # Its head was sent before the request hooks (as a pass-through's would be): what they
    # change does not reach the upstream, but they see the flow as the client sent it.
    url = f"http://localhost:{fake.port}/v1/responses"
    for hook in ("request", "responseheaders", "response"):
        assert bridge.wait_for_log(f"domain-script: {hook} ").endswith(url)
    assert not [line for line in bridge.lines if "domain-script" in line and "127.0.0.1" in line]
    # background cannot go over the websocket, and a streamed body cannot be passed through.
    got = post(bridge, {**BODY, "background": True})
    assert got.status_code == 400
    assert got.json()["error"]["code"] == "background_not_supported"
    assert len(fake.requests) == 2
