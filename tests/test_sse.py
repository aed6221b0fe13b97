"""Unit tests for ``responses_bridge.protocol.sse``: frame encoding, error events and the
decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responses_bridge.protocol import sse
from responses_bridge.protocol.errors import InvalidRequest, UpstreamResponseError, UpstreamTimeout
from responses_bridge.protocol.sse import (
    KEEPALIVE,
    SSEDecoder,
    SSEMessage,
    decode_all,
    dumps,
    encode_event,
    error_event,
)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

DELTA = {"type": "response.output_text.delta", "delta": "Hel", "output_index": 0}


def feed_all(decoder: SSEDecoder, *chunks: bytes) -> list[SSEMessage]:
    messages: list[SSEMessage] = []
    for chunk in chunks:
        messages.extend(decoder.feed(chunk))
    return messages


# --- encoding ----------------------------------------------------------------------------------


def test_dumps_is_compact_and_keeps_non_ascii() -> None:
    assert dumps({"a": 1, "b": [1, 2], "c": "é✓"}) == '{"a":1,"b":[1,2],"c":"é✓"}'


def test_encode_event_frame_format() -> None:
    frame = encode_event(DELTA)
    assert frame == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"Hel","output_index":0}\n\n'
    )


def test_encode_event_escapes_newlines_in_values() -> None:
    frame = encode_event({"type": "response.output_text.delta", "delta": "a\nb\r\nc"})
    assert frame == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"a\\nb\\r\\nc"}\n\n'
    )
    assert frame.count(b"\n") == 3  # event line, data line, blank line


def test_encode_event_reuses_one_line_raw_text() -> None:
    raw = '{ "type" : "response.output_text.delta", "delta": "Hel", "output_index": 0 }'
    frame = encode_event(DELTA, raw)
    assert frame == f"event: response.output_text.delta\ndata: {raw}\n\n".encode()


def test_encode_event_raw_is_used_verbatim_even_if_it_differs() -> None:
    # The caller promises raw is the event's own text; it is not re-checked.
    frame = encode_event({"type": "x"}, '{"type":"x","extra":1}')
    assert frame == b'event: x\ndata: {"type":"x","extra":1}\n\n'


@pytest.mark.parametrize(
    "raw",
    [
        '{\n  "type": "response.output_text.delta",\n  "delta": "Hel",\n  "output_index": 0\n}',
        '{"type": "response.output_text.delta",\r"delta": "Hel", "output_index": 0}',
        '{"type": "response.output_text.delta",\r\n"delta": "Hel", "output_index": 0}',
    ],
)
def test_encode_event_reserializes_multiline_raw(raw: str) -> None:
    assert encode_event(DELTA, raw) == encode_event(DELTA)
    assert encode_event(DELTA, raw) == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"Hel","output_index":0}\n\n'
    )


def test_encode_event_non_ascii_is_utf8() -> None:
    event = {"type": "response.output_text.delta", "delta": "héllo ✓ 😀 中文"}
    frame = encode_event(event)
    assert (
        frame
        == (
            'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            '"delta":"héllo ✓ 😀 中文"}\n\n'
        ).encode()
    )
    assert "😀".encode() in frame
    assert b"\\u" not in frame
    [message] = decode_all(frame)
    assert message.json() == event


def test_encode_event_non_ascii_raw() -> None:
    raw = '{"type":"response.output_text.delta","delta":"ü\\u00fc"}'
    frame = encode_event({"type": "response.output_text.delta", "delta": "üü"}, raw)
    assert frame == f"event: response.output_text.delta\ndata: {raw}\n\n".encode()


def test_encode_event_lone_surrogate_does_not_crash() -> None:
    # json.loads('"\\ud83d"') gives a lone surrogate; the frame must still be valid UTF-8.
    event = {"type": "response.output_text.delta", "delta": json.loads('"a\\ud83db"')}
    frame = encode_event(event)
    frame.decode("utf-8")  # strict: valid UTF-8
    [message] = decode_all(frame)
    assert message.event == "response.output_text.delta"
    assert message.json() == event


def test_keepalive_is_a_comment() -> None:
    assert KEEPALIVE == b": keep-alive\n\n"
    assert decode_all(KEEPALIVE) == []


# --- error events ------------------------------------------------------------------------------


def test_error_event_nested_and_flat() -> None:
    exc = InvalidRequest("bad", code="invalid_type", param="stream")
    event = error_event(exc)
    assert event == {
        "type": "error",
        "code": "invalid_type",
        "message": "bad",
        "param": "stream",
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "stream",
            "code": "invalid_type",
        },
    }
    assert "sequence_number" not in event


def test_error_event_sequence_number() -> None:
    assert error_event(UpstreamTimeout("slow"), 7)["sequence_number"] == 7
    assert error_event(UpstreamTimeout("slow"), 0)["sequence_number"] == 0


def test_error_event_from_upstream_error() -> None:
    upstream = {
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "message": "Previous response with id 'resp_1' not found.",
        "param": "previous_response_id",
    }
    event = error_event(UpstreamResponseError(upstream, status=400), 3)
    assert event == {
        "type": "error",
        "code": "previous_response_not_found",
        "message": "Previous response with id 'resp_1' not found.",
        "param": "previous_response_id",
        "error": upstream,
        "sequence_number": 3,
    }
    frame = encode_event(event)
    assert frame.startswith(b"event: error\ndata: ")
    [message] = decode_all(frame)
    assert message.event == "error"
    assert message.json() == event
    assert message.json()["error"]  # truthy: openai-python raises APIError on it


# --- decoding ----------------------------------------------------------------------------------


def test_decode_lf() -> None:
    data = b'event: a\ndata: {"type":"a"}\n\nevent: b\ndata: {"type":"b"}\n\n'
    assert decode_all(data) == [SSEMessage("a", '{"type":"a"}'), SSEMessage("b", '{"type":"b"}')]


def test_decode_crlf() -> None:
    data = b'event: a\r\ndata: {"type":"a"}\r\n\r\nevent: b\r\ndata: 2\r\n\r\n'
    assert decode_all(data) == [SSEMessage("a", '{"type":"a"}'), SSEMessage("b", "2")]


def test_decode_lone_cr() -> None:
    data = b"event: a\rdata: 1\r\revent: b\rdata: 2\r\r"
    assert decode_all(data) == [SSEMessage("a", "1"), SSEMessage("b", "2")]


def test_decode_lone_cr_streaming_waits_for_the_next_byte() -> None:
    decoder = SSEDecoder()
    # The final CR may be the first half of a CRLF: nothing is dispatched yet.
    assert feed_all(decoder, b"event: a\rdata: 1\r\r") == []
    assert feed_all(decoder, b"event: b") == [SSEMessage("a", "1")]
    assert feed_all(decoder, b"\rdata: 2") == []
    assert list(decoder.close()) == [SSEMessage("b", "2")]


def test_decode_mixed_line_endings() -> None:
    data = b"event: a\r\ndata: 1\n\revent: b\rdata: 2\n\r\n"
    assert decode_all(data) == [SSEMessage("a", "1"), SSEMessage("b", "2")]


def test_decode_crlf_split_across_chunks() -> None:
    decoder = SSEDecoder()
    messages = feed_all(decoder, b"event: a\r", b"\ndata: 1\r", b"\n\r", b"\n")
    assert messages == [SSEMessage("a", "1")]
    assert list(decoder.close()) == []


def test_decode_cr_then_other_chunk_is_a_line_end() -> None:
    decoder = SSEDecoder()
    assert feed_all(decoder, b"data: 1\r") == []
    assert feed_all(decoder, b"\r") == []  # pending: could still be CR + LF
    assert feed_all(decoder, b"data: 2\n\n") == [
        SSEMessage("message", "1"),
        SSEMessage("message", "2"),
    ]


def test_decode_comments() -> None:
    data = b": keep-alive\n\n: another comment\nevent: a\n: between fields\ndata: 1\n\n:\n\n"
    assert decode_all(data) == [SSEMessage("a", "1")]


def test_decode_multiline_data() -> None:
    data = b'event: a\ndata: {"x":\ndata: 1}\ndata:\n\n'
    [message] = decode_all(data)
    assert message == SSEMessage("a", '{"x":\n1}\n')
    assert message.json() == {"x": 1}


def test_decode_field_details() -> None:
    # No space after the colon; only one leading space stripped; unknown fields and id/retry
    # ignored; a line without a colon is a field name with an empty value.
    data = b"event:a\ndata:  two spaces\nid: 5\nretry: 100\nfoo: bar\ndata\n\n"
    assert decode_all(data) == [SSEMessage("a", " two spaces\n")]


def test_decode_default_event_name() -> None:
    assert decode_all(b"data: hi\n\n") == [SSEMessage("message", "hi")]


def test_decode_event_name_resets_between_messages() -> None:
    assert decode_all(b"event: a\ndata: 1\n\ndata: 2\n\n") == [
        SSEMessage("a", "1"),
        SSEMessage("message", "2"),
    ]


def test_decode_blank_lines_alone_dispatch_nothing() -> None:
    assert decode_all(b"\n\n\r\n\r\r\n") == []
    assert decode_all(b"") == []


def test_event_without_data_is_not_dispatched() -> None:
    # SSE spec: a message with an empty data buffer is dropped (its event name too).
    assert decode_all(b"event: a\n\ndata: 1\n\n") == [SSEMessage("message", "1")]


def test_decode_empty_data_line_is_dispatched() -> None:
    assert decode_all(b"data:\n\n") == [SSEMessage("message", "")]


def test_decode_one_byte_at_a_time() -> None:
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": "resp_1", "output": []}},
        {"type": "response.output_text.delta", "delta": "héllo 😀\n"},
        {"type": "response.completed", "response": {"id": "resp_1", "output": []}},
    ]
    stream = KEEPALIVE + b"".join(encode_event(e) for e in events)
    for ending in (b"\n", b"\r\n", b"\r"):
        data = stream.replace(b"\n", ending)
        decoder = SSEDecoder()
        messages: list[SSEMessage] = []
        for i in range(len(data)):
            messages.extend(decoder.feed(data[i : i + 1]))
        messages.extend(decoder.close())
        assert [m.event for m in messages] == [e["type"] for e in events]
        assert [m.json() for m in messages] == events


def test_decode_utf8_split_inside_character() -> None:
    frame = encode_event({"type": "t", "text": "😀"})
    cut = frame.index("😀".encode()) + 2
    decoder = SSEDecoder()
    messages = feed_all(decoder, frame[:cut], frame[cut:])
    assert [m.json() for m in messages] == [{"type": "t", "text": "😀"}]


def test_decode_invalid_utf8_is_replaced() -> None:
    assert decode_all(b"data: a\xffb\n\n") == [SSEMessage("message", "a\ufffdb")]


def test_missing_final_blank_line_lf() -> None:
    decoder = SSEDecoder()
    assert feed_all(decoder, b'event: a\ndata: {"type":"a"}\n') == []
    assert list(decoder.close()) == [SSEMessage("a", '{"type":"a"}')]
    assert list(decoder.close()) == []  # nothing left


def test_missing_final_newline() -> None:
    decoder = SSEDecoder()
    assert feed_all(decoder, b'event: a\ndata: {"type":"a"}') == []
    assert list(decoder.close()) == [SSEMessage("a", '{"type":"a"}')]


@pytest.mark.parametrize(
    "data",
    [
        b"event: a\r\ndata: 1\r\n",
        b"event: a\rdata: 1\r",
        b"event: a\rdata: 1",
        b"event: a\ndata: 1\r",
    ],
)
def test_missing_final_blank_line_other_endings(data: bytes) -> None:
    assert decode_all(data) == [SSEMessage("a", "1")]


def test_close_after_only_a_comment() -> None:
    decoder = SSEDecoder()
    assert feed_all(decoder, b": keep-alive") == []
    assert list(decoder.close()) == []


def test_message_json() -> None:
    assert SSEMessage("a", '{"k": [1, "é"]}').json() == {"k": [1, "é"]}
    with pytest.raises(json.JSONDecodeError):
        SSEMessage("a", "not json").json()


def test_decode_all_roundtrips_encode_event() -> None:
    events: list[dict[str, Any]] = [
        {"type": "response.created", "sequence_number": 0, "response": {"id": "r", "output": []}},
        {"type": "response.output_text.delta", "sequence_number": 1, "delta": "a\nb"},
        {"type": "error", "error": {"message": "m"}, "code": None},
    ]
    messages = decode_all(b"".join(encode_event(e) for e in events))
    assert [(m.event, m.json()) for m in messages] == [(e["type"], e) for e in events]


# --- properties --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
# An SSE event name is one line; an empty one means "message".
event_types = st.text(min_size=1, max_size=30).filter(lambda t: "\n" not in t and "\r" not in t)
events = st.builds(
    lambda kind, rest: {**rest, "type": kind},
    event_types,
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(st.lists(events, max_size=5))
def test_roundtrip_property(sequence: list[dict[str, Any]]) -> None:
    messages = decode_all(b"".join(encode_event(e) for e in sequence))
    assert [m.event for m in messages] == [e["type"] for e in sequence]
    assert [m.json() for m in messages] == sequence


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(
    st.lists(events, min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    st.booleans(),
)
def test_roundtrip_split_property(
    sequence: list[dict[str, Any]], cuts: list[int], keepalives: bool
) -> None:
    joiner = KEEPALIVE if keepalives else b""
    data = joiner + joiner.join(encode_event(e) for e in sequence)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert b"".join(pieces) == data
    decoder = SSEDecoder()
    messages: list[SSEMessage] = []
    for piece in pieces:
        messages.extend(decoder.feed(piece))
    messages.extend(decoder.close())
    assert [m.event for m in messages] == [e["type"] for e in sequence]
    assert [m.json() for m in messages] == sequence


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(st.lists(events, min_size=1, max_size=4), st.sampled_from([b"\r\n", b"\r"]))
def test_roundtrip_other_line_endings_property(
    sequence: list[dict[str, Any]], ending: bytes
) -> None:
    # JSON escapes CR and LF inside strings, so only frame line ends are rewritten here.
    data = b"".join(encode_event(e) for e in sequence).replace(b"\n", ending)
    messages = decode_all(data)
    assert [m.event for m in messages] == [e["type"] for e in sequence]
    assert [m.json() for m in messages] == sequence


@PROPERTY_SETTINGS
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_decoder_never_raises_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    decoder = SSEDecoder()
    points = sorted({c % (len(data) + 1) for c in cuts})
    messages: list[SSEMessage] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        messages.extend(decoder.feed(data[a:b]))
    messages.extend(decoder.close())
    # Splitting never changes the result.
    assert messages == decode_all(data)
    for message in messages:
        assert "\n" not in message.event and "\r" not in message.event


def test_with_previous_response_id_edits_the_compact_text() -> None:
    event = {
        "type": "response.created",
        "response": {"id": "resp_2", "previous_response_id": "resp_1", "metadata": {}},
    }
    raw = sse.dumps(event)
    edited = sse.with_previous_response_id(raw, "resp_1", None)
    assert edited is not None
    assert json.loads(edited) == {
        **event,
        "response": {**event["response"], "previous_response_id": None},
    }
    back = sse.with_previous_response_id(edited, None, "resp_1")
    assert back is not None and json.loads(back) == event


def test_with_previous_response_id_edits_json_dumps_default_spacing() -> None:
    # Python's json.dumps (and so the fake upstream) writes ", " and ": ".
    event = {"type": "response.created", "response": {"previous_response_id": "resp_1", "n": 1}}
    edited = sse.with_previous_response_id(json.dumps(event), "resp_1", None)
    assert (
        edited == '{"type": "response.created", "response": {"previous_response_id": null, "n": 1}}'
    )
    spaced_colon = '{"response":{"previous_response_id" :\t"resp_1" }}'
    assert sse.with_previous_response_id(spaced_colon, "resp_1", "resp_0") == (
        '{"response":{"previous_response_id" :\t"resp_0" }}'
    )


def test_with_previous_response_id_declines_what_it_cannot_edit_safely() -> None:
    twice = (
        '{"type":"x","response":{"previous_response_id":"resp_1",'
        '"metadata":{"previous_response_id":"resp_1"}}}'
    )
    assert sse.with_previous_response_id(twice, "resp_1", None) is None
    other_value = '{"type":"x","response":{"previous_response_id":"resp_9"}}'
    assert sse.with_previous_response_id(other_value, "resp_1", None) is None
    longer_number = '{"type":"x","response":{"previous_response_id":12}}'
    assert sse.with_previous_response_id(longer_number, 1, None) is None
    # json.dumps("ré") is "r\\u00e9": the same value written unescaped is not recognised.
    unescaped = '{"type":"x","response":{"previous_response_id":"ré"}}'
    assert sse.with_previous_response_id(unescaped, "ré", None) is None
    missing = '{"type":"x","response":{"id":"resp_2"}}'
    assert sse.with_previous_response_id(missing, None, "resp_1") is None


_json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
_json_values = st.recursive(
    _json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "previous_response_id", "id", "é"]), inner, max_size=3
        )
    ),
    max_leaves=12,
)


@PROPERTY_SETTINGS
@given(
    response=st.dictionaries(st.sampled_from(["id", "output", "metadata", "x"]), _json_values),
    current=st.none() | st.integers() | st.text(max_size=12),
    shown=st.none() | st.text(max_size=12),
    separators=st.sampled_from([(",", ":"), (", ", ": "), (",", " : ")]),
    ensure_ascii=st.booleans(),
)
def test_with_previous_response_id_means_the_same_as_serializing_again(
    response: dict[str, Any],
    current: Any,
    shown: str | None,
    separators: tuple[str, str],
    ensure_ascii: bool,
) -> None:
    event = {
        "type": "response.completed",
        "response": {**response, "previous_response_id": current},
    }
    raw = json.dumps(event, separators=separators, ensure_ascii=ensure_ascii)
    edited = sse.with_previous_response_id(raw, current, shown)
    wanted = {**event, "response": {**event["response"], "previous_response_id": shown}}
    if edited is None:
        # Declined only when the name occurs elsewhere, or the value is written differently.
        unescaped = json.dumps(current, ensure_ascii=False) != json.dumps(current)
        assert raw.count('"previous_response_id"') > 1 or (not ensure_ascii and unescaped)
    else:
        assert json.loads(edited) == wanted


def test_with_previous_response_id_ignores_the_name_inside_strings() -> None:
    event = {
        "type": "response.completed",
        "response": {
            "previous_response_id": "resp_1",
            "output": [{"text": 'say "previous_response_id":"resp_1" twice'}],
        },
    }
    edited = sse.with_previous_response_id(sse.dumps(event), "resp_1", None)
    assert edited is not None
    parsed = json.loads(edited)
    assert parsed["response"]["previous_response_id"] is None
    assert parsed["response"]["output"] == event["response"]["output"]


def test_a_long_line_fed_a_byte_at_a_time_decodes_as_a_whole() -> None:
    # The decoder remembers how far it has looked for a line end; fed in small pieces, a long
    # line (and a CRLF split between two pieces) must still come out exactly once.
    body = (
        b"event: response.output_text.delta\r\ndata: " + b"x" * 5000 + b"\r\n\r\n"
        b": comment\rdata: two\n\n"
    )
    decoder = SSEDecoder()
    messages = [m for byte in range(len(body)) for m in decoder.feed(body[byte : byte + 1])]
    messages += list(decoder.close())
    assert messages == decode_all(body)
    assert [(m.event, len(m.data)) for m in messages] == [
        ("response.output_text.delta", 5000),
        ("message", 3),
    ]
