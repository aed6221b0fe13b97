"""Lanes as values (``protocol.lanes``) and the memory of upstreams that refuse them
(``state.lanes``)."""

from __future__ import annotations

import json

import pytest

from responses_bridge.protocol.lanes import (
    MAX_LANES_PER_SOCKET,
    NAMES_PER_SOCKET,
    lane_names,
    refuses_lanes,
    without_stream_id,
)
from responses_bridge.state.lanes import LaneSupport


def test_lane_names_are_valid_and_distinct() -> None:
    names = lane_names()
    assert len(set(names)) == NAMES_PER_SOCKET > MAX_LANES_PER_SOCKET
    assert all(name.replace("-", "").isalnum() and len(name) <= 256 for name in names)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.output_text.delta", "delta": "hi", "stream_id": "rb-3"},
        {"stream_id": "rb-3", "type": "response.created", "response": {"id": "r"}},
        {"type": "x", "stream_id": "rb-3", "sequence_number": 4},
    ],
)
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_without_stream_id_keeps_the_rest_exactly(
    event: dict[str, object], separators: tuple[str, str]
) -> None:
    raw = json.dumps(event, separators=separators)
    edited = without_stream_id(raw, "rb-3")
    assert edited is not None
    expected = {k: v for k, v in event.items() if k != "stream_id"}
    assert json.loads(edited) == expected
    assert edited == json.dumps(expected, separators=separators)


def test_without_stream_id_declines_when_unsure() -> None:
    nested = json.dumps({"type": "x", "stream_id": "rb-1", "item": {"stream_id": "rb-1"}})
    assert without_stream_id(nested, "rb-1") is None
    assert without_stream_id(json.dumps({"type": "x", "stream_id": "rb-2"}), "rb-1") is None
    # A quoted "stream_id" inside a string is escaped, so it is not the key.
    text = json.dumps({"type": "x", "delta": 'say "stream_id"', "stream_id": "rb-1"})
    assert json.loads(without_stream_id(text, "rb-1") or "null") == {
        "type": "x",
        "delta": 'say "stream_id"',
    }


def _error(code: str = "bad", **extra: object) -> dict[str, object]:
    return {"type": "error", "status": 400, "error": {"code": code, "message": "m"}, **extra}


def test_refusals_and_ordinary_errors() -> None:
    chatgpt = {
        "type": "error",
        "error": {"code": "unknown_parameter", "message": "Unknown parameter: 'stream_id'."},
    }
    assert refuses_lanes(chatgpt, "rb-0", echoed_before=True)
    assert refuses_lanes(_error(), "rb-0", echoed_before=False)  # no echo, never echoed
    assert refuses_lanes(_error("invalid_stream_id", stream_id="rb-0"), "rb-0", echoed_before=True)
    # An upstream that knows lanes echoes the name on a request's own error.
    assert not refuses_lanes(_error(stream_id="rb-0"), "rb-0", echoed_before=False)
    assert not refuses_lanes(_error(), "rb-0", echoed_before=True)
    assert not refuses_lanes({"type": "response.created"}, "rb-0", echoed_before=False)


def test_lane_support_is_remembered_and_bounded() -> None:
    support = LaneSupport(max_entries=2)
    assert support.allows("wss://a/v1/responses")
    support.refused("wss://a/v1/responses")
    assert not support.allows("wss://a/v1/responses")
    support.refused("wss://b")
    support.refused("wss://c")
    assert len(support) == 2 and support.allows("wss://a/v1/responses")
