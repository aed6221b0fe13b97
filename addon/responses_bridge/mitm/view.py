"""The "Responses SSE" contentview: a Responses API event stream rendered as readable text (the
assembled answer, tool calls, errors), for bridged and non-bridged flows alike.

mitmproxy 12 has the ``Contentview`` API; 11 has the older ``View`` class. ``make_view`` builds
the right one; the text itself comes from the pure ``protocol.render.render_sse_text``.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import contentviews

from responses_bridge.protocol.render import looks_like_responses_sse, render_sse_text

NAME = "Responses SSE"
_LEGACY = not hasattr(contentviews, "Contentview")  # mitmproxy 11


def _priority(data: bytes, content_type: str | None) -> float:
    if (content_type or "").startswith("text/event-stream") and looks_like_responses_sse(data):
        return 2.0  # above mitmproxy's generic text views
    return -1.0


def make_view() -> Any:
    """A contentview instance for the running mitmproxy version."""
    if not _LEGACY:

        class ResponsesSSEContentview:
            name = NAME
            syntax_highlight = "none"

            def prettify(self, data: bytes, metadata: Any) -> str:
                return render_sse_text(data)

            def render_priority(self, data: bytes, metadata: Any) -> float:
                return _priority(data, getattr(metadata, "content_type", None))

            def __lt__(self, other: Any) -> bool:
                return bool(self.name < other.name)

        return ResponsesSSEContentview()

    class ViewResponsesSSE(contentviews.View):  # type: ignore[misc,name-defined,unused-ignore]
        name = NAME

        def __call__(self, data: bytes, **metadata: Any) -> Any:
            return NAME, contentviews.format_text(render_sse_text(data))  # type: ignore[attr-defined,unused-ignore]

        def render_priority(self, data: bytes, **metadata: Any) -> float:
            return _priority(data, metadata.get("content_type"))

    return ViewResponsesSSE()


def register(view: Any) -> None:
    """Add the view (replacing one of the same name, e.g. after a script reload)."""
    if _LEGACY:  # mitmproxy 11 refuses duplicates
        existing = contentviews.get(NAME)  # type: ignore[attr-defined,unused-ignore]
        if existing is not None:
            contentviews.remove(existing)  # type: ignore[attr-defined,arg-type,unused-ignore]
    contentviews.add(view)


def unregister(view: Any) -> None:
    """Remove the view where mitmproxy can (11); 12 replaces it by name on the next add."""
    if _LEGACY and contentviews.get(NAME) is view:  # type: ignore[attr-defined,unused-ignore]
        contentviews.remove(view)  # type: ignore[attr-defined,arg-type,unused-ignore]
