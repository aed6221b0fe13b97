"""Unit tests for ``responses_bridge.protocol.render``: a Responses SSE body as readable text."""

from __future__ import annotations

from responses_bridge.protocol.render import render_sse_text
from responses_bridge.protocol.sse import encode_event

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
    text = render_sse_text(STREAM)
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
    text = render_sse_text(b"event: x\ndata: {not json\n\ndata: [1]\n\n: comment\n\n")
    assert "[unparsable event x: {not json]" in text
