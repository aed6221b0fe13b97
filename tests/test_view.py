"""Unit tests for ``responses_bridge.mitm.view``: the "Responses SSE" contentview."""

from __future__ import annotations

from typing import Any

from mitmproxy import contentviews
from mitmproxy.test import taddons, tflow

from responses_bridge.mitm import view
from tests.test_render import STREAM


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
