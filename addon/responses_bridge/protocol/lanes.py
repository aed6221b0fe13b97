"""Lanes, WebSocket mode's multiplexing, as values: the bridge's lane names, taking the echoed
``stream_id`` back out of an event, and telling an upstream that refuses lanes from one that
reports an ordinary error. No I/O.

A ``response.create`` with a ``stream_id`` runs on its own lane; lanes run concurrently on one
socket and every event of a laned response echoes its ``stream_id``. An upstream accepts at
most 32 distinct names per connection and runs at most 16 responses at once (more are queued),
so names are a small pool, reused once a response has ended.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

NAMES_PER_SOCKET = 32
MAX_LANES_PER_SOCKET = 16  # responses one connection runs at once; more wait in its queue
# Errors that say this connection takes no (more) lanes, echoed with the lane's name.
LANE_REFUSAL_CODES = frozenset({"invalid_stream_id", "unknown_parameter", "unsupported_parameter"})
STREAM_LIMIT_CODE = "websocket_stream_limit_reached"

_KEY = '"stream_id"'


def lane_names(count: int = NAMES_PER_SOCKET) -> list[str]:
    """The names the bridge gives lanes on one socket (``[A-Za-z0-9_.-]``, as upstreams ask)."""
    return [f"rb-{number}" for number in range(count)]


def without_stream_id(raw: str, name: str) -> str | None:
    """``raw`` (one event's JSON text) without its top-level ``"stream_id": name`` member, by a
    text edit that keeps the rest byte for byte; None when the edit is not certain (the key
    occurs more than once, or the member is not where the edit expects it)."""
    if raw.count(_KEY) != 1:
        return None
    match = _member(name).search(raw)
    if match is None:
        return None
    start, end = match.span()
    after = len(raw) - len(raw[end:].lstrip())
    if raw[after : after + 1] == ",":
        rest = raw[after + 1 :]
        return raw[:start] + rest.lstrip()
    before = len(raw[:start].rstrip())
    if raw[before - 1 : before] == ",":
        return raw[: before - 1] + raw[end:]
    return None


@cache
def _member(name: str) -> re.Pattern[str]:
    """The ``"stream_id": "<name>"`` member, compiled once per name (names are a small pool)."""
    return re.compile(r'"stream_id"\s*:\s*"' + re.escape(name) + '"')


def refuses_lanes(event: dict[str, Any], name: str, *, echoed_before: bool) -> bool:
    """Whether an ``error`` event that came before ``response.created`` on lane ``name`` says
    the upstream takes no lanes (not an ordinary error of the request).

    Liberal: an upstream that knows lanes echoes the name on every request-scoped error, so an
    error without the echo on a socket that never echoed is a refusal, as is one that names
    ``stream_id`` or carries a refusal code."""
    if event.get("type") != "error":
        return False
    error = event.get("error")
    details = error if isinstance(error, dict) else {}
    if details.get("code") in LANE_REFUSAL_CODES or details.get("param") == "stream_id":
        return True
    if event.get("stream_id") == name:
        return False
    return not echoed_before or "stream_id" in str(details.get("message", ""))


def error_code(event: dict[str, Any]) -> str | None:
    """The ``error.code`` of an ``error`` event, if it has one."""
    error = event.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
