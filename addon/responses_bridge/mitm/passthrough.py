"""Flows the bridge sends on over HTTP as they came, and the upstreams that get only that.

An upstream that refuses the websocket upgrade (426, 404, 405: no websocket mode) has its
Responses requests passed through over HTTP for ``http_only_period`` seconds. A passed-through
stream is still streamed as it comes (mitmproxy would otherwise buffer the whole answer), with a
copy kept so the flow shows its body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mitmproxy import http

logger = logging.getLogger("responses_bridge")


class HttpOnly:
    """Upstream URLs without a websocket mode, each until when it is passed through. At most
    ``max_entries`` are kept (clients choose the URLs), the expired and then the earliest
    ending first out."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, *, max_entries: int = 1024
    ) -> None:
        self.period = 600.0
        self.max_entries = max_entries
        self._clock = clock
        self._until: dict[str, float] = {}

    def __contains__(self, upstream_url: object) -> bool:
        return isinstance(upstream_url, str) and self._until.get(upstream_url, 0.0) > self._clock()

    def mark(self, upstream_url: str) -> None:
        """``upstream_url`` refused the upgrade: pass its requests through for a period."""
        now = self._clock()
        if self._until.get(upstream_url, 0.0) <= now:
            period = self.period
            logger.info(
                "responses-bridge: %s has no websocket mode (the upgrade was refused); %s",
                upstream_url,
                f"its Responses requests pass through over HTTP for the next {period:g} s"
                if period
                else "this request passes through over HTTP, the next one tries again",
            )
        self._until.pop(upstream_url, None)
        self._until[upstream_url] = now + self.period
        if len(self._until) > self.max_entries:
            self._until = {url: t for url, t in self._until.items() if t > now}
            while len(self._until) > self.max_entries:
                del self._until[min(self._until, key=self._until.__getitem__)]

    def __len__(self) -> int:
        return len(self._until)


class PassedThrough:
    """The flows being passed through, each with the copy of its SSE body."""

    def __init__(self) -> None:
        self._kept: dict[str, bytearray] = {}

    def add(self, flow: http.HTTPFlow, why: str | None = None) -> None:
        """Send ``flow`` on over HTTP as it came; ``why`` goes to its comment and the log."""
        self._kept[flow.id] = bytearray()
        if why is not None:
            note = f"responses-bridge: {why}"
            flow.comment = f"{flow.comment}\n{note}" if flow.comment else note
            logger.info("responses-bridge: %s %s: %s", flow.request.method, flow.request.path, why)

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._kept

    def responseheaders(self, flow: http.HTTPFlow) -> bool:
        """Stream a passed-through event stream as it comes, keeping a copy; True if it is
        passed through."""
        kept = self._kept.get(flow.id)
        if kept is None:
            return False
        assert flow.response is not None
        if is_event_stream(flow.response):

            def tee(chunk: bytes, kept: bytearray = kept) -> bytes:
                kept.extend(chunk)
                return chunk

            flow.response.stream = tee
        return True

    def response(self, flow: http.HTTPFlow) -> bool:
        """The flow is answered: it keeps the copy as its body; True if it was passed through."""
        kept = self._kept.pop(flow.id, None)
        if kept is None:
            return False
        assert flow.response is not None
        if flow.response.raw_content is None:
            flow.response.content = bytes(kept)
        drop_stream_callable(flow.response)
        return True

    def discard(self, flow_id: str) -> None:
        self._kept.pop(flow_id, None)


def is_event_stream(response: http.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.lower().startswith("text/event-stream")  # media types ignore case


def drop_stream_callable(response: http.Response) -> None:
    """Once the flow is over, a stream callable goes: it would keep its exchange (or the tee's
    copy of the body) alive for as long as mitmweb keeps the flow. mitmproxy no longer calls it
    then, so any callable can go."""
    if callable(response.stream):
        response.stream = True
