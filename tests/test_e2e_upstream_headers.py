"""End to end: what the upstream says in headers reaches the client, as over HTTP (issue 23).

The websocket handshake's response headers go to the answer of the request that opened the
socket; an error frame's ``headers`` go to the HTTP error answer before the first byte, or into
the SSE ``error`` event after it; a refused upgrade's retry hints go to the error answer. Only
the allowlist in ``protocol.headers`` passes: never a cookie or the upgrade's own headers.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import Mitmdump

HANDSHAKE = [
    ("x-request-id", "req_ws_{n}"),
    ("openai-processing-ms", "31"),
    ("openai-organization", "org-fake"),
    ("x-ratelimit-remaining-requests", "59"),
    ("x-codex-plan-type", "plus"),
    ("set-cookie", "__cf_bm=upstream-secret"),
    ("x-internal-shard", "7"),
]


def post(bridge: Mitmdump, body: dict[str, Any], key: str = "sk-test") -> httpx.Response:
    return httpx.post(
        f"{bridge.base_url}/responses",
        content=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
    )


def sse_events(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_the_handshake_headers_reach_the_request_that_opened_the_socket(
    fake: FakeUpstream, start_bridge: StartBridge, stream: bool
) -> None:
    fake.handshake_response_headers = HANDSHAKE
    bridge = start_bridge(fake)
    first = post(bridge, {"model": "m", "input": "hello", "stream": stream})
    assert first.status_code == 200, first.text[:300]
    assert first.headers["x-request-id"] == "req_ws_1"
    assert first.headers["openai-processing-ms"] == "31"
    assert first.headers["openai-organization"] == "org-fake"
    assert first.headers["x-ratelimit-remaining-requests"] == "59"
    assert first.headers["x-codex-plan-type"] == "plus"
    assert "set-cookie" not in first.headers
    assert "x-internal-shard" not in first.headers
    assert "sec-websocket-accept" not in first.headers
    assert first.headers["x-responses-bridge"]  # the bridge's own headers stay
    response_id = first.json()["id"] if not stream else sse_events(first.text)[-1]["response"]["id"]
    # A follow-up on the same socket: the handshake described the first request, not this one.
    follow = post(
        bridge,
        {"model": "m", "input": "more", "stream": stream, "previous_response_id": response_id},
    )
    assert follow.status_code == 200, follow.text[:300]
    assert follow.headers["x-responses-bridge"] == "reused"
    assert "x-request-id" not in follow.headers
    assert len(fake.sockets) == 1


def test_each_socket_gives_its_own_handshake_headers_to_its_first_answer(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    fake.handshake_response_headers = HANDSHAKE
    bridge = start_bridge(fake, "responses_bridge_lanes=false")
    ids = [
        post(bridge, {"model": "m", "input": f"c{i}"}).headers.get("x-request-id") for i in range(2)
    ]
    # No lanes, no warm sockets: each fresh conversation opened a socket of its own... but a
    # finished conversation's socket is retained for its chain, so the second opened another.
    assert ids == ["req_ws_1", "req_ws_2"]
    # With lanes, a second key's conversation opens its own shared socket.
    lanes = start_bridge(fake)
    a = post(lanes, {"model": "m", "input": "a"}, key="sk-a")
    b = post(lanes, {"model": "m", "input": "b"}, key="sk-b")
    again = post(lanes, {"model": "m", "input": "a2"}, key="sk-a")
    assert a.headers["x-request-id"] == "req_ws_3"
    assert b.headers["x-request-id"] == "req_ws_4"
    assert "x-request-id" not in again.headers  # a new lane of sk-a's socket
    assert len(fake.sockets) == 4


def test_an_error_frame_s_headers_reach_the_http_error(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    for stream in (False, True):
        answer = post(
            bridge,
            {"model": "m", "input": "x fake:error=429 fake:error_headers", "stream": stream},
        )
        assert answer.status_code == 429, answer.text[:300]
        assert answer.headers["retry-after"] == "7"
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
        assert answer.headers["x-ratelimit-reset-requests"] == "7s"
        assert "set-cookie" not in answer.headers
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    # The real SDK sees them as it would over HTTP (its retry logic reads retry-after).
    client = openai.OpenAI(base_url=bridge.base_url, api_key="sk-test", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="m", input="x fake:error=429 fake:error_headers")
    assert caught.value.response.headers["retry-after"] == "7"


def test_an_error_frame_s_headers_stay_in_the_sse_error_event_after_the_first_byte(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    answer = post(
        bridge,
        {
            "model": "m",
            "input": "x fake:error=429 fake:error_headers fake:phase=mid",
            "stream": True,
        },
    )
    assert answer.status_code == 200
    error = sse_events(answer.text)[-1]
    assert error["type"] == "error"
    assert error["headers"] == {
        "retry-after": "7",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "7s",
    }
    assert error["error"]["code"] == "rate_limit_exceeded"


def test_a_refused_upgrade_s_retry_hint_reaches_the_client(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    fake.handshake_status = 429
    fake.handshake_response_headers = [("retry-after", "11"), ("set-cookie", "x=y")]
    bridge = start_bridge(fake)
    answer = post(bridge, {"model": "m", "input": "x", "stream": True})
    assert answer.status_code == 429, answer.text[:300]
    assert answer.headers["retry-after"] == "11"
    assert "set-cookie" not in answer.headers
