"""End to end: every upstream failure and bad input has a clear HTTP or SSE outcome."""

from __future__ import annotations

import gzip
import json
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
import zstandard
from mitmproxy import io

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import Mitmdump


def client_for(bridge: Mitmdump) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.base_url, api_key="sk-test", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def client(shared_bridge: Mitmdump) -> openai.OpenAI:
    return client_for(shared_bridge)


def post(bridge: Mitmdump, body: bytes | dict[str, object]) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{bridge.base_url}/responses",
        content=content,
        headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
        timeout=30,
    )


def assert_error_body(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["message"]
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'"text"', None),
        (b"\xff\xfe{}", None),
        ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "m", "input": 5}, "input"),
        ({"model": "m", "input": "x", "previous_response_id": 7}, "previous_response_id"),
        ({"model": "m", "input": "x", "store": "no"}, "store"),
    ],
)
def test_bad_input_is_400_and_nothing_is_sent(
    shared_bridge: Mitmdump,
    shared_fake: FakeUpstream,
    body: bytes | dict[str, object],
    param: str | None,
) -> None:
    before = shared_fake.connections
    error = assert_error_body(post(shared_bridge, body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert shared_fake.connections == before


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [
        ("error=400:invalid_model", 400, "invalid_model"),
        ("error_status_code=429:usage_limit_reached", 429, "usage_limit_reached"),
        ("usage_limit", 429, "usage_limit_reached"),
        ("limit", 400, "websocket_connection_limit_reached"),
    ],
)
def test_error_frame_before_created_is_http_error(
    client: openai.OpenAI, directive: str, status: int, code: str, stream: bool
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        result = client.responses.create(model="m", input=f"x fake:{directive}", stream=stream)
        if stream:
            list(result)  # type: ignore[arg-type]
    assert caught.value.status_code == status
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("directive", "fragment"),
    [
        ("close=1011", "1011"),
        ("close=1000", "1000"),
        ("close=1001", "1001"),
        ("close=1006", "1006"),
        ("garbage=nonjson", "not JSON"),
        ("garbage=typeless", "without a string 'type'"),
        ("garbage=binary", "binary frame"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_breakage_before_created_is_502(
    shared_bridge: Mitmdump, directive: str, fragment: str, stream: bool
) -> None:
    response = post(shared_bridge, {"model": "m", "input": f"x fake:{directive}", "stream": stream})
    error = assert_error_body(response, 502)
    assert fragment in str(error["message"])


@pytest.mark.parametrize(
    ("directive", "fragment"),
    [
        ("close=1011 fake:phase=mid", "1011"),
        ("close=1006 fake:phase=mid", "1006"),
        ("garbage=nonjson fake:phase=mid", "not JSON"),
        ("error=500:server_error fake:phase=after_created", "server_error"),
    ],
)
def test_breakage_mid_stream_is_sse_error(
    client: openai.OpenAI, directive: str, fragment: str
) -> None:
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for event in client.responses.create(model="m", input=f"x fake:{directive}", stream=True):
            seen.append(event.type)
    assert seen[0] == "response.created"
    assert fragment in str(caught.value.message) or fragment in json.dumps(caught.value.body)


@pytest.mark.parametrize("directive", ["close=1011 fake:phase=mid", "failed"])
def test_breakage_mid_answer_is_502_for_json(client: openai.OpenAI, directive: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="m", input=f"x fake:{directive}")
    assert caught.value.status_code == 502


def test_failed_stream_ends_with_response_failed(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="m", input="x fake:failed", stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"


def test_failed_without_an_error_object(shared_bridge: Mitmdump, client: openai.OpenAI) -> None:
    error = assert_error_body(
        post(shared_bridge, {"model": "m", "input": "x fake:failed=bare"}), 502
    )
    assert error["type"] == "server_error"
    assert "response.failed without details" in str(error["message"])
    # A stream passes it on as the upstream sent it.
    events = list(client.responses.create(model="m", input="x fake:failed=bare", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is None


def test_a_stream_holds_at_most_1000_events_before_created(shared_bridge: Mitmdump) -> None:
    body = {"model": "m", "input": "x fake:garbage=flood", "stream": True}
    error = assert_error_body(post(shared_bridge, body), 502)
    assert error["code"] == "upstream_protocol_error"
    assert "1001 events without response.created" in str(error["message"])


# (A stream with them before response.created: the test above.)
@pytest.mark.parametrize(
    ("stream", "phase"), [(False, "before_created"), (False, "mid"), (True, "mid")]
)
def test_many_unknown_events_are_passed_on(
    shared_bridge: Mitmdump, stream: bool, phase: str
) -> None:
    body = {"model": "m", "input": f"x fake:garbage=flood fake:phase={phase}", "stream": stream}
    response = post(shared_bridge, body)
    assert response.status_code == 200, response.text[:300]
    if stream:
        assert response.text.count("event: response.fake_noise\n") == 1001
        assert "event: response.completed\n" in response.text
    else:
        assert response.json()["output"][0]["content"][0]["text"].startswith("echo: x")


def test_close_after_completed_still_answers(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="m", input="x fake:close=1011 fake:phase=after_completed"
    )
    assert response.output_text.startswith("echo: x")


@pytest.mark.parametrize("status", [401, 403, 500, 503])
def test_upgrade_rejection_status_passes_through(
    fake: FakeUpstream, start_bridge: StartBridge, status: int
) -> None:
    bridge = start_bridge(fake)
    fake.handshake_status = status
    for stream in (False, True):
        error = assert_error_body(
            post(bridge, {"model": "m", "input": "x", "stream": stream}), status
        )
        assert str(status) in str(error["message"])


@pytest.mark.parametrize("refusal", [426, 404, 405])
def test_an_upstream_without_websocket_mode_is_passed_through_over_http(
    fake: FakeUpstream, start_bridge: StartBridge, refusal: int, tmp_path: Path
) -> None:
    fake.http_responses = True  # it answers POST /v1/responses over HTTP...
    fake.handshake_status = refusal  # ...and refuses the websocket upgrade
    saved = tmp_path / "flows.mitm"
    bridge = start_bridge(fake, f"save_stream_file={saved}")
    for stream in (True, False):
        response = post(bridge, {"model": "m", "input": f"plain {stream}", "stream": stream})
        assert response.status_code == 200, response.text[:300]
        assert "x-responses-bridge" not in response.headers  # the upstream's own answer
        if stream:
            assert "event: response.completed" in response.text
        else:
            assert response.json()["output"][0]["content"][0]["text"].startswith("echo: plain")
    # The upgrade was tried once; the bridge remembers, and the internal headers never left.
    assert len(fake.handshake_headers) == 1
    assert [r["path"] for r in fake.http_requests] == ["/v1/responses", "/v1/responses"]
    assert all(
        not k.startswith("x-responses-bridge") for r in fake.http_requests for k in r["headers"]
    )
    bridge.wait_for_log(r"has no websocket mode \(the upgrade was refused\)")
    # Streamed as it comes, not buffered: the first delta arrives while the upstream still
    # holds the rest of the answer (it goes silent after two deltas).
    with httpx.stream(
        "POST",
        f"{bridge.base_url}/responses",
        json={"model": "m", "input": "x fake:silent fake:phase=mid", "stream": True},
        timeout=httpx.Timeout(10),
    ) as streamed:
        assert streamed.status_code == 200
        lines = streamed.iter_lines()
        assert next(line for line in lines if line.startswith("event: ")) == (
            "event: response.created"
        )
        assert any(line == "event: response.output_text.delta" for line in lines)
    bridge.stop()
    with saved.open("rb") as file:
        flows = list(io.FlowReader(file).stream())
    streamed_flow, json_flow = flows[:2]
    assert "no websocket mode; sent over HTTP as it came" in streamed_flow.comment
    assert b"event: response.completed" in streamed_flow.response.content  # kept, though streamed
    assert json_flow.response.json()["status"] == "completed"


def without_websocket_mode(
    fake: FakeUpstream, start_bridge: StartBridge, *options: str
) -> Mitmdump:
    """The bridge in front of an upstream that answers over HTTP and refuses the upgrade."""
    fake.http_responses = True
    fake.handshake_status = 426
    return start_bridge(fake, *options)


def test_the_websocket_is_tried_again_after_the_http_only_period(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = without_websocket_mode(fake, start_bridge, "responses_bridge_http_only_period=1")
    assert post(bridge, {"model": "m", "input": "first"}).status_code == 200
    bridge.wait_for_log(r"over HTTP for the next 1 s")
    fake.handshake_status = None  # the upstream gains a websocket mode
    second = post(bridge, {"model": "m", "input": "second"})
    assert second.status_code == 200 and "x-responses-bridge" not in second.headers
    assert len(fake.handshake_headers) == 1  # within the period: not tried
    time.sleep(1.1)
    third = post(bridge, {"model": "m", "input": "third"})
    assert third.status_code == 200, third.text[:300]
    assert third.headers["x-responses-bridge"] == "new"  # bridged again
    assert len(fake.handshake_headers) == 2
    assert [r["path"] for r in fake.http_requests] == ["/v1/responses"] * 2


def test_an_http_only_period_of_zero_tries_the_websocket_every_time(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = without_websocket_mode(fake, start_bridge, "responses_bridge_http_only_period=0")
    for text in ("first", "second"):
        answer = post(bridge, {"model": "m", "input": text})
        assert answer.status_code == 200, answer.text[:300]
        assert answer.json()["output"][0]["content"][0]["text"].startswith(f"echo: {text}")
    assert len(fake.handshake_headers) == 2
    bridge.wait_for_log(r"this request passes through over HTTP, the next one tries again")


def test_without_the_early_start_the_refusal_is_answered_once_then_passed_through(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    # Streamed request bodies are answered by the loopback server, not from the request hook.
    bridge = without_websocket_mode(fake, start_bridge, "stream_large_bodies=1")
    error = assert_error_body(post(bridge, {"model": "m", "input": "first"}), 426)
    assert "no websocket mode" in str(error["message"])
    second = post(bridge, {"model": "m", "input": "second"})
    assert second.status_code == 200, second.text[:300]
    assert second.json()["output"][0]["content"][0]["text"].startswith("echo: second")
    assert len(fake.handshake_headers) == 1


def test_connect_refused_is_502(start_bridge: StartBridge) -> None:
    # Bound but not listening: connections are refused, and no other server (the bridge's own
    # loopback server included) can be given this port meanwhile.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        bridge = start_bridge(None, mode=f"reverse:http://127.0.0.1:{port}")
        error = assert_error_body(post(bridge, {"model": "m", "input": "x", "stream": True}), 502)
    assert error["code"] == "upstream_unavailable"


def test_connect_timeout_is_504(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    fake.handshake_delay = 3.0
    bridge = start_bridge(fake, "responses_bridge_connect_timeout=0.5")
    error = assert_error_body(post(bridge, {"model": "m", "input": "x"}), 504)
    assert "0.5" in str(error["message"])


def test_idle_timeout(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_idle_timeout=0.5")
    error = assert_error_body(post(bridge, {"model": "m", "input": "x fake:silent"}), 504)
    assert "0.5" in str(error["message"])
    with pytest.raises(openai.APIError) as caught:
        for _ in client_for(bridge).responses.create(
            model="m", input="x fake:silent fake:phase=mid", stream=True
        ):
            pass
    assert "0.5" in str(caught.value.message)


def test_body_too_large_is_413(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_max_body_bytes=1000")
    assert_error_body(post(bridge, {"model": "m", "input": "x" * 2000}), 413)
    assert fake.connections == 0


def post_encoded(bridge: Mitmdump, data: bytes, coding: str) -> httpx.Response:
    return httpx.post(
        f"{bridge.base_url}/responses",
        content=data,
        headers={
            "authorization": "Bearer sk-test",
            "content-type": "application/json",
            "content-encoding": coding,
        },
        timeout=30,
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("coding", ["zstd", "gzip"])
def test_a_compressed_request_body_is_decoded(
    shared_bridge: Mitmdump, coding: str, stream: bool
) -> None:
    # The Codex CLI sends its requests to the ChatGPT backend zstd-compressed (level 3).
    body = json.dumps({"model": "m", "input": "squeezed " * 200, "stream": stream}).encode()
    data = (
        zstandard.ZstdCompressor(level=3).compress(body)
        if coding == "zstd"
        else gzip.compress(body)
    )
    response = post_encoded(shared_bridge, data, coding)
    assert response.status_code == 200, response.text[:300]
    if stream:
        assert "event: response.completed" in response.text
        assert "echo: squeezed squeezed" in response.text
    else:
        assert response.json()["output"][0]["content"][0]["text"].startswith("echo: squeezed")


def test_bad_compressed_bodies_get_clear_errors(
    shared_bridge: Mitmdump, shared_fake: FakeUpstream
) -> None:
    before = shared_fake.connections
    error = assert_error_body(post_encoded(shared_bridge, b"{}", "br"), 415)
    assert error["code"] == "unsupported_content_encoding"
    error = assert_error_body(post_encoded(shared_bridge, b"not zstd at all", "zstd"), 400)
    assert error["code"] == "invalid_body_encoding"
    # 1 GiB of zeros in ~32 KiB: stopped at responses_bridge_max_body_bytes (32 MiB).
    compressor = zstandard.ZstdCompressor(level=3)
    writer = compressor.compressobj()
    zero = bytes(1024 * 1024)
    bomb = b"".join(writer.compress(zero) for _ in range(1024)) + writer.flush()
    error = assert_error_body(post_encoded(shared_bridge, bomb, "zstd"), 413)
    assert "decompresses (zstd) to more than" in str(error["message"])
    assert shared_fake.connections == before  # nothing was sent upstream


def test_proxy_keeps_serving_after_failures(client: openai.OpenAI) -> None:
    for directive in ("close=1006", "garbage=binary", "error=400:x"):
        with pytest.raises(openai.APIError):
            client.responses.create(model="m", input=f"x fake:{directive}")
    assert client.responses.create(model="m", input="still alive").output_text.startswith("echo")
