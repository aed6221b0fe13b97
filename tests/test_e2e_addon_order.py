"""End to end: the bridge starts a turn upstream as soon as mitmproxy has the whole request, from
the end of the addon chain, so whatever other addons do to a request in their ``request`` hooks
(built-in options, later scripts, an interception the user edits) is what goes upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import Mitmdump, wait_until

BODY = {"model": "m", "input": "original words", "stream": True}

# A script loaded after the bridge. It answers requests marked "x-answer-here" itself, rewrites
# the input of requests marked "x-rewrite", and intercepts requests marked "x-intercept", edits
# them 300 ms later (as a mitmweb user would) and resumes them.
LATER_SCRIPT = """
import asyncio, json, logging
from mitmproxy import http

class Later:
    def request(self, flow: http.HTTPFlow) -> None:
        if "x-answer-here" in flow.request.headers:
            flow.response = http.Response.make(
                299, b'{"answered": "by a later addon"}', {"content-type": "application/json"}
            )
        elif "x-rewrite" in flow.request.headers:
            body = json.loads(flow.request.content)
            body["input"] = "rewritten by a later addon"
            flow.request.content = json.dumps(body).encode()
        elif "x-intercept" in flow.request.headers:
            flow.intercept()
            asyncio.get_running_loop().call_later(0.3, self._edit_and_resume, flow)

    def response(self, flow: http.HTTPFlow) -> None:
        # After the bridge's own response hook: what it left on the finished flow.
        stream = type(flow.response.stream).__name__
        logging.getLogger("later").warning(f"later-addon: stream is a {stream} after response")

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            stream = type(flow.response.stream).__name__
            logging.getLogger("later").warning(f"later-addon: stream is a {stream} after error")

    def _edit_and_resume(self, flow: http.HTTPFlow) -> None:
        body = json.loads(flow.request.content)
        body["input"] = "edited while intercepted"
        flow.request.content = json.dumps(body).encode()
        flow.resume()

addons = [Later()]
"""


def sent_input(fake: FakeUpstream, index: int = 0) -> object:
    return fake.requests[index]["input"]


def test_builtin_modify_options_apply_before_the_turn_starts(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    # modify_headers / modify_body run after every script in mitmproxy's chain.
    bridge = start_bridge(
        fake,
        "modify_headers=/~q/authorization/Bearer sk-injected-by-mitmproxy",
        "modify_body=/~q/original words/modified words",
    )
    got = httpx.post(
        f"{bridge.base_url}/responses",
        json=BODY,
        headers={"authorization": "Bearer sk-from-client"},
        timeout=30,
    )
    assert got.status_code == 200
    assert "response.completed" in got.text
    assert fake.handshake_headers[0]["authorization"] == "Bearer sk-injected-by-mitmproxy"
    assert "modified words" in json.dumps(sent_input(fake))
    assert "original words" not in json.dumps(sent_input(fake))


def test_later_script_rewriting_the_request_is_what_goes_upstream(
    fake: FakeUpstream, later_bridge: Mitmdump
) -> None:
    got = post(later_bridge, BODY, "x-rewrite")
    assert got.status_code == 200
    assert sent_input(fake) == "rewritten by a later addon"
    assert len(fake.requests) == 1


def test_later_script_answering_the_flow_starts_no_turn(
    fake: FakeUpstream, later_bridge: Mitmdump
) -> None:
    got = post(later_bridge, BODY, "x-answer-here")
    assert got.status_code == 299
    assert got.json() == {"answered": "by a later addon"}
    time.sleep(0.5)  # a turn started by mistake would have reached the fake by now
    assert fake.connections == 0 and fake.requests == []
    # The bridge is still fine for the next request.
    again = post(later_bridge, BODY)
    assert again.status_code == 200 and "response.completed" in again.text


def test_intercepted_request_goes_upstream_as_edited(
    fake: FakeUpstream, later_bridge: Mitmdump
) -> None:
    for stream in (True, False):
        assert post(later_bridge, {**BODY, "stream": stream}, "x-intercept").status_code == 200
    assert [r["input"] for r in fake.requests] == ["edited while intercepted"] * 2


@pytest.fixture
def later_bridge(fake: FakeUpstream, confdir: Path, tmp_path: Path) -> Iterator[Mitmdump]:
    """The bridge with ``LATER_SCRIPT`` loaded after it."""
    script = tmp_path / "later_addon.py"
    script.write_text(LATER_SCRIPT)
    bridge = Mitmdump(
        [
            "--mode",
            f"reverse:http://127.0.0.1:{fake.port}",
            "--set",
            "responses_bridge_warm_sockets=0",
            "-s",
            str(script),
        ],
        confdir,
    )
    yield bridge
    bridge.stop()


def post(bridge: Mitmdump, body: dict[str, object], marker: str | None = None) -> httpx.Response:
    headers = {marker: "1"} if marker else {}
    return httpx.post(f"{bridge.base_url}/responses", json=body, headers=headers, timeout=30)


def test_a_finished_flow_keeps_no_stream_callable(
    fake: FakeUpstream, later_bridge: Mitmdump
) -> None:
    # The exchange's counting callable (and the SSE body it holds) must not live on with the
    # flow, which mitmweb keeps in memory.
    for stream in (True, False):
        answer = post(later_bridge, {**BODY, "stream": stream})
        assert answer.status_code == 200, answer.text[:300]

    def lines() -> list[str]:
        return [ln for ln in later_bridge.lines if "later-addon: stream is a" in ln]

    wait_until(lambda: len(lines()) == 2, what="both flows' response hooks")
    assert all("stream is a bool after response" in ln for ln in lines()), lines()


def test_a_flow_whose_client_left_keeps_no_stream_callable(
    fake: FakeUpstream, later_bridge: Mitmdump
) -> None:
    body = {**BODY, "input": "leaving early fake:deltas=200 fake:slow=20"}
    url = f"{later_bridge.base_url}/responses"
    with httpx.stream("POST", url, json=body, timeout=30) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_raw():
            if b"response.output_text.delta" in chunk:
                break  # leave mid-stream: mitmproxy runs the error hook
    line = later_bridge.wait_for_log(r"later-addon: stream is a \w+ after error")
    assert "stream is a bool after error" in line, line


def test_the_flow_log_line_is_written_after_the_response_hooks(
    fake: FakeUpstream, later_bridge: Mitmdump
) -> None:
    # mitmproxy sends the end of a streamed body only once every response hook has returned; the
    # bridge's log line (a record every addon's log hook sees) waits until then.
    answer = post(later_bridge, {**BODY, "stream": True})
    assert answer.status_code == 200, answer.text[:300]
    bridge_line = later_bridge.wait_for_log(r"responses-bridge: POST \S+ -> 200 stream")
    hook_line = later_bridge.wait_for_log(r"later-addon: stream is a \w+ after response")
    assert later_bridge.lines.index(hook_line) < later_bridge.lines.index(bridge_line)
