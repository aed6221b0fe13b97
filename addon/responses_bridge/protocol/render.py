"""A Responses SSE body rendered as readable text (the contentview's text): the answer, tool
calls, reasoning and errors. Pure."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from responses_bridge.protocol.events import TERMINAL_TYPES
from responses_bridge.protocol.sse import decode_all


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
