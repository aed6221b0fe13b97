"""Unit tests for ``responses_bridge.mitm.passthrough``: the upstreams passed through over HTTP
for a while (with an injected clock) and the flows passed through, streamed with a copy kept
(with mitmproxy's test flows)."""

from __future__ import annotations

import logging

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from responses_bridge.mitm.passthrough import (
    HttpOnly,
    PassedThrough,
    drop_stream_callable,
    is_event_stream,
)

UP = "wss://api.example.test/v1/responses"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answered(content_type: str | None) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    assert flow.response is not None
    if content_type is not None:
        flow.response.headers["content-type"] = content_type
    return flow


# -- HttpOnly ---------------------------------------------------------------------------------


def test_a_marked_upstream_is_passed_through_for_the_period_only() -> None:
    clock = Clock()
    http_only = HttpOnly(clock)
    http_only.period = 60.0
    assert UP not in http_only
    http_only.mark(UP)
    assert UP in http_only
    assert "wss://other.test/v1/responses" not in http_only
    clock.now += 59.9
    assert UP in http_only
    clock.now += 0.1  # exactly the period: tried again
    assert UP not in http_only


def test_the_default_period_is_ten_minutes() -> None:
    clock = Clock()
    http_only = HttpOnly(clock)
    http_only.mark(UP)
    clock.now += 599
    assert UP in http_only
    clock.now += 1
    assert UP not in http_only


def test_a_zero_period_passes_only_the_current_request_through() -> None:
    http_only = HttpOnly(Clock())
    http_only.period = 0.0
    http_only.mark(UP)
    assert UP not in http_only


def test_marking_again_extends_the_period() -> None:
    clock = Clock()
    http_only = HttpOnly(clock)
    http_only.period = 10.0
    http_only.mark(UP)
    clock.now += 8
    http_only.mark(UP)
    clock.now += 8
    assert UP in http_only


def test_a_reconfigured_period_applies_from_the_next_mark() -> None:
    clock = Clock()
    http_only = HttpOnly(clock)
    http_only.mark(UP)
    http_only.period = 5.0
    clock.now += 100
    assert UP in http_only  # the first mark's 600 s still run
    http_only.mark(UP)
    clock.now += 5
    assert UP not in http_only


@pytest.mark.parametrize("key", [None, 42, b"wss://api.example.test/v1/responses"])
def test_only_a_url_string_can_be_passed_through(key: object) -> None:
    http_only = HttpOnly(Clock())
    http_only.mark(UP)
    assert key not in http_only


def test_the_upstreams_kept_are_bounded_expired_ones_going_first() -> None:
    clock = Clock()
    http_only = HttpOnly(clock, max_entries=3)
    http_only.period = 10.0
    http_only.mark("wss://old-1.test")
    http_only.mark("wss://old-2.test")
    clock.now += 20  # both expired
    http_only.period = 100.0
    http_only.mark("wss://a.test")
    assert len(http_only) == 3  # within the bound: nothing is cleaned up yet
    http_only.mark("wss://b.test")
    assert len(http_only) == 2  # past it: every expired entry goes, not only the one too many
    assert "wss://a.test" in http_only and "wss://b.test" in http_only


def test_past_the_bound_the_earliest_ending_goes() -> None:
    clock = Clock()
    http_only = HttpOnly(clock, max_entries=2)
    http_only.period = 100.0
    http_only.mark("wss://a.test")
    clock.now += 1
    http_only.mark("wss://b.test")
    clock.now += 1
    http_only.mark("wss://a.test")  # marked again: now it ends last
    http_only.mark("wss://c.test")
    assert len(http_only) == 2
    assert "wss://b.test" not in http_only
    assert "wss://a.test" in http_only and "wss://c.test" in http_only


def test_the_log_says_it_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    http_only = HttpOnly(clock)
    http_only.period = 30.0
    with caplog.at_level(logging.INFO, logger="responses_bridge"):
        http_only.mark(UP)
        clock.now += 10
        http_only.mark(UP)  # still within the period: no second line
        clock.now += 100
        http_only.period = 0.0
        http_only.mark(UP)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert UP in messages[0] and "for the next 30 s" in messages[0]
    assert "the next one tries again" in messages[1]


# -- PassedThrough ----------------------------------------------------------------------------


def test_add_records_the_flow_and_why(caplog: pytest.LogCaptureFixture) -> None:
    passed = PassedThrough()
    quiet, noted = tflow.tflow(), tflow.tflow()
    noted.comment = "the user's note"
    with caplog.at_level(logging.INFO, logger="responses_bridge"):
        passed.add(quiet)
        passed.add(noted, "background: true")
    assert quiet.id in passed and noted.id in passed
    assert "some-other-id" not in passed
    assert quiet.comment == ""
    assert noted.comment == "the user's note\nresponses-bridge: background: true"
    assert len(caplog.records) == 1
    assert "background: true" in caplog.records[0].getMessage()
    fresh = tflow.tflow()
    passed.add(fresh, "why")
    assert fresh.comment == "responses-bridge: why"  # no leading newline on an empty comment


def test_a_passed_through_event_stream_is_streamed_with_a_copy_kept() -> None:
    passed = PassedThrough()
    flow = answered("text/event-stream; charset=utf-8")
    passed.add(flow)
    assert passed.responseheaders(flow) is True
    assert flow.response is not None
    tee = flow.response.stream
    assert callable(tee)
    assert tee(b"event: a\n") == b"event: a\n"  # passed on unchanged
    assert tee(b"data: {}\n\n") == b"data: {}\n\n"
    flow.response.raw_content = None  # as mitmproxy leaves a streamed body
    assert passed.response(flow) is True
    assert flow.response.content == b"event: a\ndata: {}\n\n"
    assert flow.response.stream is True  # the callable (and its copy) is let go
    assert flow.id not in passed


def test_a_passed_through_json_answer_is_left_to_mitmproxy() -> None:
    passed = PassedThrough()
    flow = answered("application/json")
    passed.add(flow)
    assert passed.responseheaders(flow) is True
    assert flow.response is not None
    assert flow.response.stream is False
    assert passed.response(flow) is True
    assert flow.response.content == b"message"


def test_a_body_mitmproxy_kept_is_not_replaced_by_the_copy() -> None:
    """With ``store_streamed_bodies`` (12.x) mitmproxy keeps the body itself."""
    passed = PassedThrough()
    flow = answered("text/event-stream")
    passed.add(flow)
    passed.responseheaders(flow)
    assert flow.response is not None and callable(flow.response.stream)
    flow.response.stream(b"copy")
    flow.response.content = b"what mitmproxy kept"
    passed.response(flow)
    assert flow.response.content == b"what mitmproxy kept"
    assert flow.response.stream is True


def test_flows_not_passed_through_are_left_alone() -> None:
    passed = PassedThrough()
    flow = answered("text/event-stream")
    assert passed.responseheaders(flow) is False
    assert flow.response is not None and flow.response.stream is False
    assert passed.response(flow) is False
    assert flow.response.content == b"message"


def test_discard_forgets_a_flow() -> None:
    passed = PassedThrough()
    flow = answered("text/event-stream")
    passed.add(flow)
    passed.discard(flow.id)
    passed.discard(flow.id)  # twice, or for a flow never added: harmless
    passed.discard("unknown")
    assert flow.id not in passed
    assert passed.responseheaders(flow) is False


def test_each_flow_keeps_its_own_copy() -> None:
    passed = PassedThrough()
    one, two = answered("text/event-stream"), answered("text/event-stream")
    for flow in (one, two):
        passed.add(flow)
        passed.responseheaders(flow)
    assert one.response is not None and two.response is not None
    assert callable(one.response.stream) and callable(two.response.stream)
    one.response.stream(b"one")
    two.response.stream(b"two")
    for flow in (one, two):
        assert flow.response is not None
        flow.response.raw_content = None
        passed.response(flow)
    assert (one.response.content, two.response.content) == (b"one", b"two")


# -- is_event_stream and drop_stream_callable -------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/event-stream", True),
        ("text/event-stream; charset=utf-8", True),
        ("text/event-stream;charset=UTF-8", True),
        ("application/json", False),
        ("text/plain", False),
        ("", False),
        (None, False),
    ],
)
def test_is_event_stream(content_type: str | None, expected: bool) -> None:
    flow = answered(content_type)
    if content_type is None:
        assert flow.response is not None
        flow.response.headers.pop("content-type", None)
    assert flow.response is not None
    assert is_event_stream(flow.response) is expected


def test_is_event_stream_ignores_the_case_of_the_media_type() -> None:
    flow = answered("Text/Event-Stream; charset=utf-8")
    assert flow.response is not None
    assert is_event_stream(flow.response)


def test_drop_stream_callable_keeps_the_streaming_flag_only() -> None:
    flow = answered("text/event-stream")
    assert flow.response is not None
    flow.response.stream = lambda chunk: chunk
    drop_stream_callable(flow.response)
    assert flow.response.stream is True
    drop_stream_callable(flow.response)
    assert flow.response.stream is True
    flow.response.stream = False
    drop_stream_callable(flow.response)
    assert flow.response.stream is False
