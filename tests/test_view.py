"""The "Responses SSE" contentview and the pure reporting helpers behind it."""

from __future__ import annotations

from typing import Any

from mitmproxy import contentviews
from mitmproxy.test import taddons, tflow

from responses_bridge import report, view
from responses_bridge.sse import encode_event

STREAM = b"".join(
    encode_event(event)
    for event in [
        {"type": "response.created", "response": {"id": "resp_1", "model": "gpt-x"}},
        {
            "type": "response.output_text.delta",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
        },
        {
            "type": "response.output_text.delta",
            "output_index": 0,
            "content_index": 0,
            "delta": "lo",
        },
        {
            "type": "response.output_item.done",
            "output_index": 1,
            "item": {
                "type": "function_call",
                "call_id": "call_9",
                "name": "get_weather",
                "arguments": '{"city":"Oslo"}',
            },
        },
        {"type": "error", "error": {"code": "server_error", "message": "boom"}},
        {
            "type": "response.completed",
            "response": {
                "id": "resp_1",
                "status": "completed",
                "usage": {"input_tokens": 3, "output_tokens": 5},
            },
        },
    ]
)


def test_render_assembles_the_answer() -> None:
    text = report.render_sse_text(STREAM)
    assert "response resp_1 · model gpt-x" in text
    assert "--- message (output 0) ---\nHello" in text
    assert '--- tool call get_weather (call_9) ---\n{"city":"Oslo"}' in text
    assert "error server_error: boom" in text
    assert "completed · status completed · 3 in / 5 out" in text
    assert text.endswith(
        "--- 6 events: 2 response.output_text.delta, 1 response.created, "
        "1 response.output_item.done, 1 error, 1 response.completed"
    )


def test_render_survives_garbage() -> None:
    text = report.render_sse_text(b"event: x\ndata: {not json\n\ndata: [1]\n\n: comment\n\n")
    assert "[unparsable event x: {not json]" in text


def test_rate_limit_headers() -> None:
    headers = dict(
        report.rate_limit_headers(
            {
                "type": "codex.rate_limits",
                "rate_limits": {
                    "primary": {
                        "used_percent": 12.5,
                        "resets_in_seconds": 9,
                        "window_minutes": 300,
                        "nested": {"x": 1},
                    },
                    "secondary": None,
                },
                "credits": {"has_credits": False, "balance": None},
            }
        )
    )
    assert headers == {
        "x-codex-primary-used-percent": "12.5",
        "x-codex-primary-reset-after-seconds": "9",
        "x-codex-primary-window-minutes": "300",
        "x-codex-credits-has-credits": "false",
    }
    assert report.rate_limit_headers({"type": "codex.rate_limits"}) == []


def test_flow_comment() -> None:
    assert report.flow_comment("reused", 57, 180.4, 2.44) == (
        "ws reused · 57 events · first event 180 ms · 2.4 s"
    )
    assert report.flow_comment("new", 0, None, 0.01) == "ws new · 0 events · 0.0 s"


def test_stats_counts() -> None:
    stats = report.Stats()
    stats.count(stream=True, socket_state="reused", error_code=None)
    stats.count(stream=False, socket_state="new", error_code="upstream_closed")
    stats.count(stream=None, socket_state="new", error_code="invalid_json")
    data = stats.as_dict()
    assert (data["requests"], data["streamed"], data["json"]) == (3, 1, 1)
    assert (data["new"], data["reused"]) == (2, 1)
    assert data["errors"] == {"invalid_json": 1, "upstream_closed": 1}


def _auto_render(flow: Any) -> tuple[str, str]:
    """(view name, text) as mitmproxy picks the view automatically, on 11 and on 12."""
    if hasattr(contentviews, "prettify_message"):
        result = contentviews.prettify_message(flow.response, flow)
        return result.view_name, result.text
    description, lines, _error = contentviews.get_message_content_view("auto", flow.response, flow)
    text = "\n".join("".join(part for _style, part in line) for line in lines)
    return description, text


def test_the_view_is_picked_for_responses_streams() -> None:
    the_view = view.make_view()
    with taddons.context():
        view.register(the_view)
        try:
            flow = tflow.tflow(resp=True)
            flow.response.headers["content-type"] = "text/event-stream; charset=utf-8"
            flow.response.content = STREAM
            name, text = _auto_render(flow)
            assert name == view.NAME
            assert "Hello" in text and "get_weather" in text
            other = tflow.tflow(resp=True)
            other.response.headers["content-type"] = "text/event-stream"
            other.response.content = b"event: ping\ndata: {}\n\n"
            assert _auto_render(other)[0] != view.NAME
            view.register(view.make_view())  # a script reload registers again: no error
        finally:
            view.unregister(the_view)
