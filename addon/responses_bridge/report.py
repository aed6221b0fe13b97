"""Pure reporting: rate-limit headers, the flow comment, counters, and a readable rendering of a
Responses SSE body (the contentview's text). No I/O and no mitmproxy here."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from responses_bridge.aggregate import TERMINAL_TYPES
from responses_bridge.sse import decode_all

_WINDOW_FIELDS = {
    "used_percent": "used-percent",
    "window_minutes": "window-minutes",
    "resets_in_seconds": "reset-after-seconds",
    "reset_after_seconds": "reset-after-seconds",
    "reset_at": "reset-at",
}


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value)
        return text if text.isprintable() and "\n" not in text else None
    return None


def rate_limit_headers(event: dict[str, Any]) -> list[tuple[str, str]]:
    """``x-codex-*`` response headers for a ``codex.rate_limits`` event (the names Codex reads
    from the HTTP backend: ``x-codex-primary-used-percent``, ``…-window-minutes``, …)."""
    limits = event.get("rate_limits")
    if not isinstance(limits, dict):
        limits = event
    headers: list[tuple[str, str]] = []
    for window in ("primary", "secondary"):
        details = limits.get(window)
        if not isinstance(details, dict):
            continue
        for key, value in details.items():
            name = _WINDOW_FIELDS.get(key, key.replace("_", "-"))
            text = _scalar(value)
            if text is not None:
                headers.append((f"x-codex-{window}-{name}", text))
    credits = event.get("credits")
    if isinstance(credits, dict):
        for key, value in credits.items():
            text = _scalar(value)
            if text is not None:
                headers.append((f"x-codex-credits-{key.replace('_', '-')}", text))
    return headers


def flow_comment(
    socket_state: str, events: int, first_event_ms: float | None, duration_s: float
) -> str:
    """``ws reused · 57 events · first event 180 ms · 2.4 s``."""
    parts = [f"ws {socket_state}", f"{events} events"]
    if first_event_ms is not None:
        parts.append(f"first event {first_event_ms:.0f} ms")
    parts.append(f"{duration_s:.1f} s")
    return " · ".join(parts)


@dataclass
class Stats:
    """Counters for the ``responses_bridge.stats`` command and the shutdown log line."""

    requests: int = 0
    streamed: int = 0
    json: int = 0
    new: int = 0
    reused: int = 0
    rehydrated: int = 0
    forked: int = 0
    chained: int = 0
    retried: int = 0
    bytes_relayed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def count(self, *, stream: bool | None, socket_state: str, error_code: str | None) -> None:
        self.requests += 1
        if stream is True:
            self.streamed += 1
        elif stream is False:
            self.json += 1
        if socket_state in ("new", "reused", "rehydrated", "forked", "chained"):
            setattr(self, socket_state, getattr(self, socket_state) + 1)
        if error_code:
            self.errors[error_code] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "streamed": self.streamed,
            "json": self.json,
            "new": self.new,
            "reused": self.reused,
            "rehydrated": self.rehydrated,
            "forked": self.forked,
            "chained": self.chained,
            "retried": self.retried,
            "bytes_relayed": self.bytes_relayed,
            "errors": dict(sorted(self.errors.items())),
        }


def render_sse_text(body: bytes) -> str:
    """A Responses SSE body as readable text: the answer, tool calls, reasoning and errors."""
    lines: list[str] = []
    texts: dict[tuple[Any, Any], list[str]] = {}  # joined once at the end: linear
    calls: dict[Any, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    for message in decode_all(body):
        try:
            event = json.loads(message.data)
        except ValueError:
            lines.append(f"[unparsable event {message.event}: {message.data[:200]}]")
            continue
        if not isinstance(event, dict):
            continue
        kind = str(event.get("type") or message.event)
        counts[kind] += 1
        if kind == "response.created":
            response = event.get("response") or {}
            lines.append(f"response {response.get('id')} · model {response.get('model')}")
        elif kind == "response.output_text.delta":
            key = (event.get("output_index"), event.get("content_index"))
            texts.setdefault(key, []).append(str(event.get("delta", "")))
        elif kind == "response.output_item.done":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                calls[item.get("call_id")] = item
        elif kind in TERMINAL_TYPES:
            response = event.get("response") or {}
            usage = response.get("usage") or {}
            for item in response.get("output") or []:
                if isinstance(item, dict) and item.get("type") == "function_call":
                    calls.setdefault(item.get("call_id"), item)
            lines.append(
                f"{kind.removeprefix('response.')} · status {response.get('status')} · "
                f"{usage.get('input_tokens', '?')} in / {usage.get('output_tokens', '?')} out"
            )
            if response.get("error"):
                lines.append(f"error: {json.dumps(response['error'], ensure_ascii=False)}")
        elif kind == "error":
            nested = event.get("error")
            error = nested if isinstance(nested, dict) else event
            lines.append(f"error {error.get('code')}: {error.get('message')}")
    for (output_index, _content), parts in sorted(texts.items(), key=lambda kv: str(kv[0])):
        lines.append(f"--- message (output {output_index}) ---")
        lines.append("".join(parts))
    for call in calls.values():
        lines.append(f"--- tool call {call.get('name')} ({call.get('call_id')}) ---")
        lines.append(str(call.get("arguments", "")))
    summary = ", ".join(f"{n} {k}" for k, n in counts.most_common())
    lines.append(f"--- {sum(counts.values())} events: {summary}")
    return "\n".join(lines)


def looks_like_responses_sse(body: bytes) -> bool:
    """Cheap check for the contentview's priority: an SSE body with ``response.*`` events."""
    head = body[:4096]
    return (
        b"event: response." in head or b'"type":"response.' in head or b'"type": "response.' in head
    )
