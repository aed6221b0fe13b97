"""Unit tests for ``responses_bridge.protocol.events``: classification, errors and the response
folder."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responses_bridge.protocol.events import (
    TERMINAL_TYPES,
    EventKind,
    ResponseFolder,
    classify,
    error_object,
    error_status,
)

PROPERTY_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

FULL_USAGE = {
    "input_tokens": 12,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 20},
    "total_tokens": 42,
}


def base_response(status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "model": "gpt-5",
        "output": [],
        "usage": None,
        **extra,
    }


def message_item(item_id: str = "msg_1", text: str = "Hello!") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


REASONING = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "Thinking about the weather."}],
    "encrypted_content": "gAAAAABo-opaque-blob==",
}
FUNCTION_CALL = {
    "id": "fc_1",
    "type": "function_call",
    "status": "completed",
    "call_id": "call_abc",
    "name": "get_weather",
    "arguments": '{"location":"Paris"}',
}


def item_added(index: int, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "response.output_item.added", "output_index": index, "item": item}


def item_done(index: Any, item: Any) -> dict[str, Any]:
    return {"type": "response.output_item.done", "output_index": index, "item": item}


def text_stream(terminal_response: dict[str, Any]) -> list[dict[str, Any]]:
    """A recorded plain-text answer, ending in ``response.completed`` with the given response."""
    msg = message_item()
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": base_response()},
        {"type": "response.in_progress", "response": base_response()},
        item_added(0, {**msg, "status": "in_progress", "content": []}),
        {
            "type": "response.content_part.added",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hel",
        },
        {
            "type": "response.output_text.delta",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "lo!",
        },
        {
            "type": "response.output_text.done",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "text": "Hello!",
        },
        {
            "type": "response.content_part.done",
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": msg["content"][0],
        },
        item_done(0, msg),
        {"type": "response.completed", "response": terminal_response},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def feed_all(
    folder: ResponseFolder, events: list[dict[str, Any]]
) -> list[tuple[dict[str, Any], bool]]:
    return [folder.feed(event) for event in events]


# --- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"type": "response.created"}, EventKind.CREATED),
        ({"type": "response.completed"}, EventKind.TERMINAL),
        ({"type": "response.failed"}, EventKind.TERMINAL),
        ({"type": "response.incomplete"}, EventKind.TERMINAL),
        ({"type": "error"}, EventKind.ERROR),
        ({"type": "codex.rate_limits"}, EventKind.VENDOR),
        ({"type": "codex.response.metadata"}, EventKind.VENDOR),
        ({"type": "responsesapi.websocket_timing"}, EventKind.VENDOR),
        ({"type": "response.in_progress"}, EventKind.OTHER),
        ({"type": "response.output_text.delta"}, EventKind.OTHER),
        ({"type": "response.output_item.done"}, EventKind.OTHER),
        ({"type": "response.queued"}, EventKind.OTHER),
        ({"type": "response.done"}, EventKind.OTHER),
        ({"type": "codex"}, EventKind.OTHER),
        ({"type": "Response.Completed"}, EventKind.OTHER),
        ({"type": "ERROR"}, EventKind.OTHER),
        ({"type": ""}, EventKind.OTHER),
        ({"type": None}, EventKind.OTHER),
        ({"type": 5}, EventKind.OTHER),
        ({}, EventKind.OTHER),
        ({"response": {"status": "completed"}}, EventKind.OTHER),
    ],
)
def test_classify(event: dict[str, Any], kind: EventKind) -> None:
    assert classify(event) is kind


def test_terminal_types() -> None:
    assert frozenset({"response.completed", "response.failed", "response.incomplete"}) == (
        TERMINAL_TYPES
    )


# --- error_status ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ({"type": "error", "status": 400}, 400),
        ({"type": "error", "status_code": 429}, 429),
        ({"type": "error", "status": 401, "status_code": 429}, 401),
        ({"type": "error", "status": 400, "error": {"status": 500}}, 400),
        ({"type": "error", "error": {"status": 404}}, 404),
        ({"type": "error", "error": {"status_code": 503}}, 503),
        ({"type": "error", "status": True, "status_code": 429}, 429),
        ({"type": "error", "status": 200, "error": {"status": 409}}, 409),
        ({"type": "error", "status": 400}, 400),
        ({"type": "error", "status": 599}, 599),
        ({"type": "error", "status": 399}, None),
        ({"type": "error", "status": 600}, None),
        ({"type": "error", "status": 200}, None),
        ({"type": "error", "status": -400}, None),
        ({"type": "error", "status": True}, None),
        ({"type": "error", "status": False}, None),
        ({"type": "error", "status": "400"}, None),
        ({"type": "error", "status": 400.0}, None),
        ({"type": "error", "status": None}, None),
        ({"type": "error", "error": {"status": True}}, None),
        ({"type": "error", "error": {"status": 700}}, None),
        ({"type": "error", "error": "boom"}, None),
        ({"type": "error", "error": None}, None),
        ({"type": "error"}, None),
        ({}, None),
    ],
)
def test_error_status(event: dict[str, Any], status: int | None) -> None:
    assert error_status(event) == status


def test_error_status_of_a_response_error_object() -> None:
    # relay_json also asks for the status of response.failed's error object.
    assert error_status({"code": "server_error", "message": "m"}) is None
    assert error_status({"code": "rate_limit_exceeded", "status": 429}) == 429


# --- error_object ------------------------------------------------------------------------------


def test_error_object_nested() -> None:
    nested = {
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "message": "Previous response with id 'resp_1' not found.",
        "param": "previous_response_id",
    }
    event = {"type": "error", "status": 400, "error": nested, "sequence_number": 2}
    result = error_object(event)
    assert result == nested
    assert result is not nested
    result["message"] = "changed"
    assert nested["message"] == "Previous response with id 'resp_1' not found."


def test_error_object_nested_empty_dict_is_used() -> None:
    assert error_object({"type": "error", "error": {}}) == {}


def test_error_object_flat() -> None:
    event = {
        "type": "error",
        "code": "websocket_connection_limit_reached",
        "message": "Responses websocket connection limit reached (60 minutes).",
        "param": None,
        "sequence_number": 5,
    }
    # The flat event's "type" is the event type ("error"), not the error's type.
    assert error_object(event) == {
        "code": "websocket_connection_limit_reached",
        "message": "Responses websocket connection limit reached (60 minutes).",
        "param": None,
    }


def test_error_object_flat_partial() -> None:
    assert error_object({"type": "error", "message": "only a message"}) == {
        "message": "only a message"
    }


@pytest.mark.parametrize(
    "event",
    [
        {"type": "error"},
        {"type": "error", "sequence_number": 3},
        {"type": "error", "error": "not an object"},
        {"type": "error", "error": None},
        {},
    ],
)
def test_error_object_empty(event: dict[str, Any]) -> None:
    assert error_object(event) == {"message": "The upstream sent an error event without details."}


# --- ResponseFolder: normal streams ------------------------------------------------------------


def test_normal_text_stream_is_unchanged() -> None:
    terminal_response = base_response("completed", output=[message_item()], usage=FULL_USAGE)
    events = text_stream(terminal_response)
    snapshot = copy.deepcopy(events)
    folder = ResponseFolder()
    results = feed_all(folder, events)
    for event, (out, changed) in zip(events, results, strict=True):
        assert out is event
        assert changed is False
    assert events == snapshot
    assert folder.events == len(events)
    assert folder.created == base_response()
    assert folder.created is events[0]["response"]
    assert folder.terminal is events[-1]
    assert folder.done_items() == [message_item()]


def test_empty_answer_stays_empty_and_unchanged() -> None:
    terminal = {
        "type": "response.completed",
        "response": base_response("completed", output=[], usage=FULL_USAGE),
    }
    folder = ResponseFolder()
    folder.feed({"type": "response.created", "response": base_response()})
    out, changed = folder.feed(terminal)
    assert changed is False
    assert out is terminal
    assert out["response"]["output"] == []
    assert folder.done_items() == []


def test_empty_answer_without_output_gets_empty_list() -> None:
    response = base_response("completed", usage=FULL_USAGE)
    del response["output"]
    folder = ResponseFolder()
    out, changed = folder.feed({"type": "response.completed", "response": response})
    assert changed is True
    assert out["response"]["output"] == []
    assert "output" not in response  # input not mutated


def test_null_output_without_items_becomes_empty_list() -> None:
    folder = ResponseFolder()
    out, changed = folder.feed(
        {"type": "response.completed", "response": base_response("completed", output=None)}
    )
    assert changed is True
    assert out["response"]["output"] == []


# --- ResponseFolder: thin terminal frames ------------------------------------------------------


@pytest.mark.parametrize("thin", ["absent", "empty", "null"])
def test_thin_completed_is_rebuilt(thin: str) -> None:
    terminal_response = base_response("completed", usage=FULL_USAGE)
    if thin == "absent":
        del terminal_response["output"]
    elif thin == "null":
        terminal_response["output"] = None
    events = text_stream(terminal_response)
    snapshot = copy.deepcopy(events)
    folder = ResponseFolder()
    results = feed_all(folder, events)
    assert all(changed is False for _out, changed in results[:-1])
    out, changed = results[-1]
    assert changed is True
    assert out is not events[-1]
    assert out == {
        "type": "response.completed",
        "sequence_number": len(events) - 1,
        "response": {**terminal_response, "output": [message_item()]},
    }
    assert folder.terminal is out
    assert events == snapshot  # the upstream's events are not mutated


def test_thin_terminal_rebuilt_in_output_index_order_when_done_events_are_out_of_order() -> None:
    folder = ResponseFolder()
    folder.feed({"type": "response.created", "response": base_response()})
    folder.feed(item_done(2, message_item("msg_2", "second")))
    folder.feed(item_done(0, REASONING))
    folder.feed(item_done(1, FUNCTION_CALL))
    folder.feed(item_done(3, message_item("msg_3", "third")))
    out, changed = folder.feed(
        {"type": "response.completed", "response": base_response("completed", usage=FULL_USAGE)}
    )
    assert changed is True
    assert out["response"]["output"] == [
        REASONING,
        FUNCTION_CALL,
        message_item("msg_2", "second"),
        message_item("msg_3", "third"),
    ]
    assert out["response"]["output"][0]["encrypted_content"] == "gAAAAABo-opaque-blob=="


def test_function_call_and_reasoning_items_are_preserved() -> None:
    folder = ResponseFolder()
    events = [
        {"type": "response.created", "response": base_response()},
        item_added(0, {**REASONING, "summary": []}),
        item_done(0, REASONING),
        item_added(1, {**FUNCTION_CALL, "status": "in_progress", "arguments": ""}),
        {
            "type": "response.function_call_arguments.delta",
            "item_id": "fc_1",
            "output_index": 1,
            "delta": '{"location":',
        },
        {
            "type": "response.function_call_arguments.done",
            "item_id": "fc_1",
            "output_index": 1,
            "arguments": '{"location":"Paris"}',
        },
        item_done(1, FUNCTION_CALL),
        {"type": "response.completed", "response": base_response("completed", output=[])},
    ]
    results = feed_all(folder, events)
    out, changed = results[-1]
    assert changed is True
    output = out["response"]["output"]
    assert output == [REASONING, FUNCTION_CALL]
    assert output[0] is REASONING and output[1] is FUNCTION_CALL
    assert output[1]["arguments"] == '{"location":"Paris"}'
    assert output[0]["encrypted_content"] == "gAAAAABo-opaque-blob=="


def test_full_terminal_with_same_items_is_unchanged() -> None:
    folder = ResponseFolder()
    folder.feed(item_done(0, REASONING))
    folder.feed(item_done(1, FUNCTION_CALL))
    terminal = {
        "type": "response.completed",
        "response": base_response(
            "completed",
            output=[copy.deepcopy(REASONING), copy.deepcopy(FUNCTION_CALL)],
            usage=FULL_USAGE,
        ),
    }
    out, changed = folder.feed(terminal)
    assert changed is False
    assert out is terminal


def test_partial_output_done_item_wins_and_missing_items_are_appended() -> None:
    stale_message = {**message_item(), "status": "in_progress", "content": []}
    folder = ResponseFolder()
    folder.feed(item_done(0, REASONING))
    folder.feed(item_done(1, message_item()))
    folder.feed(item_done(2, FUNCTION_CALL))
    terminal: dict[str, Any] = {
        "type": "response.completed",
        "response": base_response("completed", output=[stale_message], usage=FULL_USAGE),
    }
    out, changed = folder.feed(terminal)
    assert changed is True
    assert out["response"]["output"] == [message_item(), REASONING, FUNCTION_CALL]
    assert terminal["response"]["output"] == [stale_message]  # input not mutated


def test_partial_output_keeps_items_unknown_to_the_folder() -> None:
    extra = {"id": "ws_1", "type": "web_search_call", "status": "completed"}
    folder = ResponseFolder()
    folder.feed(item_done(0, message_item()))
    out, changed = folder.feed(
        {
            "type": "response.completed",
            "response": base_response(
                "completed",
                output=[extra, {"type": "message", "content": []}, "odd"],
                usage=FULL_USAGE,
            ),
        }
    )
    assert changed is True
    assert out["response"]["output"] == [
        extra,
        {"type": "message", "content": []},
        "odd",
        message_item(),
    ]


def test_unhashable_ids_do_not_crash() -> None:
    folder = ResponseFolder()
    folder.feed(item_done(0, {"id": ["not", "a", "string"], "type": "message"}))
    folder.feed(item_done(1, message_item()))
    out, changed = folder.feed(
        {
            "type": "response.completed",
            "response": base_response(
                "completed", output=[{"id": {"x": 1}, "type": "message"}], usage=FULL_USAGE
            ),
        }
    )
    assert changed is True
    # Items whose id is not a string cannot be matched; like id-less items, a done one counts as
    # present when the output already has such an item.
    assert out["response"]["output"] == [{"id": {"x": 1}, "type": "message"}, message_item()]


def test_done_items_with_bad_or_repeated_index_keep_arrival_order() -> None:
    a, b, c, d, e = ({"id": name, "type": "message"} for name in "abcde")
    folder = ResponseFolder()
    folder.feed(item_done(None, c))
    folder.feed(item_done(1, b))
    folder.feed(item_done(True, d))
    folder.feed(item_done(0, a))
    folder.feed(item_done(1, e))  # a second item for index 1
    folder.feed({"type": "response.output_item.done", "item": {"id": "f"}})  # no index at all
    folder.feed(item_done("2", {"id": "g"}))
    assert folder.done_items() == [a, b, c, d, e, {"id": "f"}, {"id": "g"}]


def test_done_events_without_an_item_object_are_ignored() -> None:
    folder = ResponseFolder()
    for item in (None, "x", ["a"], 3):
        _out, changed = folder.feed(item_done(0, item))
        assert changed is False
    folder.feed({"type": "response.output_item.done", "output_index": 0})
    assert folder.done_items() == []


def test_output_item_added_is_not_used_for_the_rebuild() -> None:
    folder = ResponseFolder()
    folder.feed(item_added(0, message_item()))
    out, _changed = folder.feed(
        {"type": "response.completed", "response": base_response("completed", usage=FULL_USAGE)}
    )
    assert out["response"]["output"] == []


@pytest.mark.parametrize(
    ("kind", "status"),
    [("response.failed", "failed"), ("response.incomplete", "incomplete")],
)
def test_other_terminal_types_are_repaired(kind: str, status: str) -> None:
    response = base_response(status, usage=FULL_USAGE)
    del response["output"]
    if kind == "response.failed":
        response["error"] = {"code": "server_error", "message": "The server had an error."}
    else:
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    folder = ResponseFolder()
    folder.feed(item_done(0, REASONING))
    out, changed = folder.feed({"type": kind, "response": response})
    assert changed is True
    assert out["type"] == kind
    assert out["response"] == {**response, "output": [REASONING]}
    assert folder.terminal is out


# --- ResponseFolder: usage ---------------------------------------------------------------------


def repaired_usage(usage: Any) -> tuple[Any, bool]:
    folder = ResponseFolder()
    out, changed = folder.feed(
        {"type": "response.completed", "response": base_response("completed", usage=usage)}
    )
    return out["response"]["usage"], changed


def test_usage_details_are_added_when_missing() -> None:
    usage = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
    fixed, changed = repaired_usage(usage)
    assert changed is True
    assert fixed == {
        "input_tokens": 3,
        "output_tokens": 5,
        "total_tokens": 8,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    assert usage == {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}


def test_usage_existing_values_are_kept() -> None:
    fixed, changed = repaired_usage(copy.deepcopy(FULL_USAGE))
    assert changed is False
    assert fixed == FULL_USAGE


def test_usage_details_merge_missing_fields_only() -> None:
    usage = {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 2, "audio_tokens": 1},
        "output_tokens_details": {"text_tokens": 9},
    }
    fixed, changed = repaired_usage(usage)
    assert changed is True
    assert fixed == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 2, "audio_tokens": 1},
        "output_tokens_details": {"text_tokens": 9, "reasoning_tokens": 0},
    }
    assert usage["output_tokens_details"] == {"text_tokens": 9}


def test_usage_null_details_are_replaced() -> None:
    fixed, changed = repaired_usage(
        {"input_tokens_details": None, "output_tokens_details": {"reasoning_tokens": None}}
    )
    assert changed is True
    assert fixed == {
        "input_tokens_details": {"cached_tokens": 0},
        # The field exists (even if null): it is the upstream's value and kept.
        "output_tokens_details": {"reasoning_tokens": None},
    }


@pytest.mark.parametrize("usage", [None, 0, "n/a", []])
def test_usage_that_is_not_an_object_is_left_alone(usage: Any) -> None:
    fixed, changed = repaired_usage(usage)
    assert changed is False
    assert fixed == usage


def test_absent_usage_is_not_added() -> None:
    response = base_response("completed", output=[])
    del response["usage"]
    folder = ResponseFolder()
    out, changed = folder.feed({"type": "response.completed", "response": response})
    assert changed is False
    assert "usage" not in out["response"]


# --- ResponseFolder: terminal without a response object ----------------------------------------


def test_terminal_without_response_uses_created_and_done_items() -> None:
    folder = ResponseFolder()
    created = base_response()
    folder.feed({"type": "response.created", "response": created})
    folder.feed(item_done(0, message_item()))
    terminal = {"type": "response.completed", "sequence_number": 9}
    out, changed = folder.feed(terminal)
    assert changed is True
    assert out == {
        "type": "response.completed",
        "sequence_number": 9,
        "response": {**created, "status": "completed", "output": [message_item()]},
    }
    assert created == base_response()  # the created response object is not mutated
    assert terminal == {"type": "response.completed", "sequence_number": 9}
    assert folder.terminal is out


@pytest.mark.parametrize("response", [None, "resp_1", [], 7])
def test_terminal_with_non_object_response_and_no_created(response: Any) -> None:
    folder = ResponseFolder()
    out, changed = folder.feed({"type": "response.incomplete", "response": response})
    assert changed is True
    assert out["response"] == {"status": "incomplete", "output": []}


# --- synthesize_created ------------------------------------------------------------------------


def test_synthesize_created() -> None:
    terminal = {
        "type": "response.completed",
        "sequence_number": 4,
        "response": base_response("completed", output=[message_item()], usage=FULL_USAGE),
    }
    snapshot = copy.deepcopy(terminal)
    created = ResponseFolder().synthesize_created(terminal)
    assert created == {
        "type": "response.created",
        "response": base_response("in_progress", output=[], usage=FULL_USAGE),
    }
    assert terminal == snapshot


@pytest.mark.parametrize("terminal", [{"type": "response.failed"}, {"type": "x", "response": 3}])
def test_synthesize_created_without_response(terminal: dict[str, Any]) -> None:
    assert ResponseFolder().synthesize_created(terminal) == {
        "type": "response.created",
        "response": {"status": "in_progress", "output": []},
    }


def test_synthesized_created_then_terminal_is_consistent() -> None:
    # The relay's path for an upstream that skipped response.created.
    terminal = {
        "type": "response.completed",
        "response": base_response("completed", output=[], usage=FULL_USAGE),
    }
    folder = ResponseFolder()
    created = folder.synthesize_created(terminal)
    out, changed = folder.feed(created)
    assert changed is False and out is created
    assert folder.created == created["response"]
    out, changed = folder.feed(terminal)
    assert changed is False
    assert out["response"]["status"] == "completed"


# --- truncated streams -------------------------------------------------------------------------


def test_truncated_stream_has_no_terminal() -> None:
    events = text_stream(base_response("completed", output=[message_item()], usage=FULL_USAGE))
    folder = ResponseFolder()
    feed_all(folder, events[:-1])
    assert folder.terminal is None
    assert folder.created == base_response()
    assert folder.done_items() == [message_item()]
    assert folder.events == len(events) - 1


def test_truncated_before_any_item() -> None:
    folder = ResponseFolder()
    feed_all(folder, text_stream(base_response("completed"))[:5])
    assert folder.terminal is None
    assert folder.done_items() == []


def test_vendor_and_error_events_pass_through() -> None:
    folder = ResponseFolder()
    vendor = {"type": "codex.rate_limits", "primary": {"used_percent": 5}}
    error = {"type": "error", "status": 400, "error": {"message": "m"}}
    assert folder.feed(vendor) == (vendor, False)
    assert folder.feed(error) == (error, False)
    assert folder.terminal is None
    assert folder.events == 2


def test_created_with_non_object_response_is_ignored() -> None:
    folder = ResponseFolder()
    folder.feed({"type": "response.created", "response": None})
    assert folder.created is None
    folder.feed({"type": "response.created"})
    assert folder.created is None


# --- properties --------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-3, max_value=1 << 40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=4,
)
item_ids = (
    st.sampled_from(["a", "b", "c"])
    | st.none()
    | st.lists(st.integers(0, 1), max_size=1)
    | json_values
)
items = st.fixed_dictionaries(
    {},
    optional={
        "id": item_ids,
        "type": st.sampled_from(["message", "function_call", "reasoning"]),
        "content": json_values,
        "encrypted_content": st.text(max_size=8),
    },
)
details = (
    st.none()
    | json_values
    | st.dictionaries(
        st.sampled_from(["cached_tokens", "reasoning_tokens", "other"]), json_scalars, max_size=2
    )
)
usages = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": st.integers(0, 100),
        "input_tokens_details": details,
        "output_tokens_details": details,
    },
)
responses = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=4),
        "status": st.sampled_from(["in_progress", "completed", "failed"]),
        "output": st.lists(items | json_values, max_size=3) | json_values,
        "usage": usages | json_values,
    },
)
EVENT_TYPES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.output_item.done",
    "response.output_text.delta",
    "response.completed",
    "response.failed",
    "response.incomplete",
    "error",
    "codex.rate_limits",
]
events = st.fixed_dictionaries(
    {
        "type": st.one_of(
            st.sampled_from(EVENT_TYPES),
            st.sampled_from(["response.output_item.done", *sorted(TERMINAL_TYPES)]),
            st.sampled_from(["response.output_item.done", "response.completed"]),
            st.text(max_size=12),
        )
    },
    optional={
        "response": responses | json_values,
        "item": items | json_values,
        "output_index": st.integers(-2, 4) | json_values,
        "sequence_number": st.integers(0, 100),
        "error": json_values,
    },
)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(st.lists(events, max_size=10))
def test_folder_never_raises_and_terminals_have_output_lists(
    sequence: list[dict[str, Any]],
) -> None:
    folder = ResponseFolder()
    for event in sequence:
        snapshot = copy.deepcopy(event)
        classify(event)
        error_status(event)
        assert isinstance(error_object(event), dict)
        out, changed = folder.feed(event)
        assert event == snapshot  # never mutated
        if not changed:
            assert out is event
        if event["type"] in TERMINAL_TYPES:
            assert folder.terminal is out
            response = out["response"]
            assert isinstance(response, dict)
            assert isinstance(response["output"], list)
            original = event.get("response")
            if not isinstance(original, dict):
                original = folder.created or {}
            original_output = original.get("output")
            if not isinstance(original_output, list) or not original_output:
                assert response["output"] == folder.done_items()
            else:
                output_ids = {
                    o["id"]
                    for o in response["output"]
                    if isinstance(o, dict) and isinstance(o.get("id"), str)
                }
                for item in folder.done_items():
                    if isinstance(item.get("id"), str):
                        assert item["id"] in output_ids
            usage = response.get("usage")
            if isinstance(usage, dict):
                assert isinstance(usage["input_tokens_details"], dict)
                assert "cached_tokens" in usage["input_tokens_details"]
                assert isinstance(usage["output_tokens_details"], dict)
                assert "reasoning_tokens" in usage["output_tokens_details"]
            created = folder.synthesize_created(out)
            assert created["type"] == "response.created"
            assert created["response"]["output"] == []
            assert created["response"]["status"] == "in_progress"
        else:
            assert changed is False
    assert folder.events == len(sequence)
    assert all(isinstance(item, dict) for item in folder.done_items())


ABSENT = object()
keyed_items = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b", "c"]) | st.lists(st.integers(0, 1), max_size=1) | st.none()},
    optional={"type": st.sampled_from(["message", "reasoning"]), "n": st.integers(0, 2)},
)


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(
    st.lists(st.tuples(st.integers(0, 4) | json_scalars, keyed_items | items), max_size=5),
    st.just(ABSENT) | st.lists(keyed_items | items | json_scalars, max_size=4) | json_scalars,
    st.just(ABSENT) | usages | json_scalars,
    st.sampled_from(sorted(TERMINAL_TYPES)),
)
def test_repair_property(
    done: list[tuple[Any, dict[str, Any]]], output: Any, usage: Any, kind: str
) -> None:
    folder = ResponseFolder()
    for index, item in done:
        folder.feed(item_done(index, item))
    response: dict[str, Any] = {"id": "resp_1", "status": "completed"}
    if output is not ABSENT:
        response["output"] = output
    if usage is not ABSENT:
        response["usage"] = usage
    terminal = {"type": kind, "response": response}
    snapshot = copy.deepcopy(terminal)
    out, changed = folder.feed(terminal)
    assert terminal == snapshot
    assert out["type"] == kind
    fixed = out["response"]
    assert isinstance(fixed["output"], list)
    assert fixed["id"] == "resp_1"
    done_items = folder.done_items()
    assert sorted(map(repr, done_items)) == sorted(repr(item) for _index, item in done)
    if not isinstance(output, list) or not output:
        assert fixed["output"] == done_items
    else:
        assert len(fixed["output"]) >= len(output)
        output_ids = {
            o["id"] for o in fixed["output"] if isinstance(o, dict) and isinstance(o.get("id"), str)
        }
        for item in done_items:
            if isinstance(item.get("id"), str):
                assert item["id"] in output_ids
    if not changed:
        assert out is terminal
        assert fixed["output"] == output
