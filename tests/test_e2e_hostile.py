"""End to end: hostile input and crossed identities (issue 22). Each request runs on a socket
opened with its own upgrade headers, a redirect on the upgrade is never followed, and no client
can make the proxy do unbounded work, hold a socket for ever or take the whole pool."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream, FakeUpstreamThread
from tests.harness import Mitmdump, wait_until

WARM = "responses_bridge_warm_sockets=1"  # the default, said out loud (the fixture turns it off)


def post(
    bridge: Mitmdump, body: dict[str, object] | bytes, headers: dict[str, str], timeout: float = 30
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{bridge.base_url}/responses",
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=timeout,
    )


def socket_of(fake: FakeUpstream, response_id: str) -> dict[str, str]:
    """The upgrade headers of the socket that produced ``response_id``."""
    for record in fake.sockets:
        if response_id in record.response_ids:
            return record.headers
    raise AssertionError(f"no socket produced {response_id}")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (
            {"authorization": "Bearer sk-1", "openai-project": "proj_a", "session_id": "sess-a"},
            {"authorization": "Bearer sk-1", "openai-project": "proj_b", "session_id": "sess-b"},
        ),
        ({"x-api-key": "client-one"}, {"x-api-key": "client-two"}),
        ({"authorization": "Bearer k", "x-goog-api-key": "g1"}, {"authorization": "Bearer k"}),
    ],
)
@pytest.mark.parametrize("lanes", [True, False])
def test_a_request_never_runs_on_a_socket_opened_with_other_headers(
    fake: FakeUpstream,
    start_bridge: StartBridge,
    first: dict[str, str],
    second: dict[str, str],
    lanes: bool,
) -> None:
    bridge = start_bridge(fake, WARM, f"responses_bridge_lanes={str(lanes).lower()}")
    one = post(bridge, {"model": "m", "input": "one"}, first)
    assert one.status_code == 200, one.text
    # The first answer left a shared socket with lanes free (lanes), or a warm socket and a
    # retained one (without): none may serve the second request, nor its follow-up chain on.
    if not lanes:
        wait_until(lambda: fake.connections >= 2, what="the warm socket")
    two = post(bridge, {"model": "m", "input": "two"}, second)
    assert two.status_code == 200, two.text
    follow = post(
        bridge, {"model": "m", "input": "three", "previous_response_id": one.json()["id"]}, second
    )
    for response in (two, follow.json() if follow.status_code == 200 else None):
        if response is None:
            continue
        data = response.json() if isinstance(response, httpx.Response) else response
        headers = socket_of(fake, data["id"])
        for name, value in second.items():
            assert headers.get(name) == value, (name, headers)
        for name in set(first) - set(second):
            assert name not in headers, (name, headers)
    # The follow-up of another identity's response is not continued on its socket: the
    # upstream decides (it resolves unknown ids with store: true, which the fake does not have).
    assert follow.status_code in (200, 400)


@pytest.mark.parametrize("lanes", [True, False])
def test_the_same_client_keeps_its_warm_socket_whatever_its_request_ids(
    fake: FakeUpstream, start_bridge: StartBridge, lanes: bool
) -> None:
    bridge = start_bridge(fake, WARM, f"responses_bridge_lanes={str(lanes).lower()}")
    base = {"authorization": "Bearer sk-1", "openai-project": "proj_a"}
    assert post(bridge, {"model": "m", "input": "a"}, {**base, "x-request-id": "r1"}).is_success
    if lanes:
        again = post(bridge, {"model": "m", "input": "b"}, {**base, "x-request-id": "r2"})
        assert again.headers["x-responses-bridge"] == "new"
        # A new lane of the shared socket: per-request ids do not count.
        assert fake.connections == 1 and again.json()["id"] in fake.sockets[0].response_ids
        return
    wait_until(lambda: fake.connections >= 2, what="the warm socket")
    again = post(bridge, {"model": "m", "input": "b"}, {**base, "x-request-id": "r2"})
    assert again.headers["x-responses-bridge"] == "new"
    # The warm socket (the second one opened) served it: per-request ids do not count. (A
    # third may open afterwards: the warm pool is refilled.)
    served_by = [r.index for r in fake.sockets if again.json()["id"] in r.response_ids]
    assert served_by == [1]


def test_a_redirect_on_the_upgrade_is_a_502_and_is_never_followed(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    elsewhere = FakeUpstreamThread()
    target = elsewhere.start()
    try:
        fake.handshake_redirect = target.url()
        bridge = start_bridge(fake)
        for stream in (False, True):
            answer = post(
                bridge,
                {"model": "m", "input": "x", "stream": stream},
                {"authorization": "Bearer sk-secret", "api-key": "azure", "x-api-key": "k"},
            )
            assert answer.status_code == 502
            error = answer.json()["error"]
            assert "redirect" in error["message"] and "302" in error["message"]
        assert target.handshake_headers == []  # nothing, credentials least of all, went there
    finally:
        elsewhere.stop()


def test_an_oversized_content_length_is_refused_before_the_body_is_read(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, "responses_bridge_max_body_bytes=1000")
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/responses HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500000000\r\n\r\n"
        )
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "request_too_large"
    bridge.wait_for_log(r"POST /v1/responses -> 413")
    assert fake.connections == 0


@pytest.mark.parametrize("depth", [150, 900, 50_000])
def test_deep_nesting_is_a_400_logged_in_one_line(
    fake: FakeUpstream, start_bridge: StartBridge, depth: int
) -> None:
    bridge = start_bridge(fake)
    body = b'{"model": "m", "input": [{"a": ' + b"[" * depth + b"]" * depth + b"}]}"
    answer = post(bridge, body, {"authorization": "Bearer sk-1"})
    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    bridge.wait_for_log(r"POST /v1/responses -> 400")
    assert "Traceback" not in bridge.output
    assert fake.connections == 0


def _stalled_reader(bridge: Mitmdump) -> socket.socket:
    """A client that asks for a long stream and then reads nothing."""
    text = "x" * 2_000_000 + " fake:deltas=20000"
    body = json.dumps({"model": "m", "stream": True, "input": text}).encode()
    conn = socket.create_connection(("127.0.0.1", bridge.port))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.sendall(
        b"POST /v1/responses HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer sk-staller\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    return conn


def test_a_client_that_stops_reading_loses_its_stream_not_the_socket(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(
        fake, "responses_bridge_write_timeout=2", "responses_bridge_drain_timeout=5"
    )
    conn = _stalled_reader(bridge)
    try:
        bridge.wait_for_log(r"read nothing for 2 s \(responses_bridge_write_timeout\)", 30)
        # The turn was drained to its end upstream, so its socket is free again.
        wait_until(lambda: fake.open_sockets <= 1, 30, "the stalled turn's socket let go")
        other = post(bridge, {"model": "m", "input": "hi"}, {"authorization": "Bearer sk-2"})
        assert other.status_code == 200
    finally:
        conn.close()
    assert "Traceback" not in bridge.output


def test_one_owner_cannot_take_every_socket(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(
        fake,
        "responses_bridge_max_sessions=4",
        "responses_bridge_max_sessions_per_owner=2",
        "responses_bridge_idle_timeout=6",
    )
    hog = {"authorization": "Bearer sk-hog"}
    held: list[httpx.Response | Exception] = []

    def hold() -> None:
        try:
            held.append(post(bridge, {"model": "m", "input": "fake:silent"}, hog, timeout=20))
        except Exception as exc:
            held.append(exc)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    # Both turns reached the upstream (on lanes of one shared socket).
    wait_until(lambda: sum(len(r.frames) for r in fake.sockets) >= 2, 10, "two silent turns")
    refused = post(bridge, {"model": "m", "input": "more"}, hog)
    assert refused.status_code == 503
    assert "responses_bridge_max_sessions_per_owner" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"
    started = time.monotonic()
    other = post(bridge, {"model": "m", "input": "hi"}, {"authorization": "Bearer sk-other"})
    assert other.status_code == 200
    assert time.monotonic() - started < 5  # it never waited for the hog's sockets
    for thread in threads:
        thread.join(30)
    assert len(held) == 2
