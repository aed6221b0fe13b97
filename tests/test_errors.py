"""Unit tests for ``responses_bridge.protocol.errors``: statuses, codes and the rendered error
bodies."""

from __future__ import annotations

from typing import Any

import pytest

from responses_bridge.protocol.errors import (
    BodyTooLarge,
    BridgeError,
    InvalidRequest,
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamResponseError,
    UpstreamTimeout,
    UpstreamUnavailable,
)


def test_bridge_error_defaults() -> None:
    exc = BridgeError("boom")
    assert str(exc) == "boom"
    assert exc.message == "boom"
    assert exc.status == 502
    assert exc.error_type == "bridge_error"
    assert exc.code is None
    assert exc.param is None
    assert exc.headers == {}
    assert exc.error_object() == {
        "message": "boom",
        "type": "bridge_error",
        "param": None,
        "code": None,
    }
    assert exc.body() == {"error": exc.error_object()}


def test_bridge_error_overrides_are_per_instance() -> None:
    exc = BridgeError("nope", status=418, error_type="teapot_error", code="teapot", param="model")
    assert (exc.status, exc.error_type, exc.code, exc.param) == (
        418,
        "teapot_error",
        "teapot",
        "model",
    )
    assert exc.body() == {
        "error": {"message": "nope", "type": "teapot_error", "param": "model", "code": "teapot"}
    }
    # The class defaults are untouched.
    assert BridgeError.status == 502
    assert BridgeError.error_type == "bridge_error"
    assert BridgeError.code is None
    assert BridgeError("other").status == 502


def test_headers_are_copied() -> None:
    given = {"Retry-After": "3"}
    exc = BridgeError("later", headers=given)
    assert exc.headers == {"Retry-After": "3"}
    given["Retry-After"] = "99"
    assert exc.headers == {"Retry-After": "3"}
    # Instances do not share one headers dict.
    a, b = BridgeError("a"), BridgeError("b")
    a.headers["x"] = "1"
    assert b.headers == {}


@pytest.mark.parametrize(
    ("cls", "status", "error_type", "code"),
    [
        (InvalidRequest, 400, "invalid_request_error", "invalid_request"),
        (BodyTooLarge, 413, "invalid_request_error", "request_too_large"),
        (UpstreamError, 502, "upstream_error", "upstream_error"),
        (UpstreamUnavailable, 502, "upstream_error", "upstream_unavailable"),
        (UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
        (UpstreamRejected, 502, "upstream_error", "upstream_rejected_upgrade"),
        (UpstreamClosed, 502, "upstream_error", "upstream_closed"),
        (UpstreamProtocolError, 502, "upstream_error", "upstream_protocol_error"),
    ],
)
def test_subclass_defaults(cls: type[BridgeError], status: int, error_type: str, code: str) -> None:
    exc = cls("message text")
    assert isinstance(exc, BridgeError)
    assert exc.status == status
    assert exc.error_type == error_type
    assert exc.code == code
    assert exc.body() == {
        "error": {"message": "message text", "type": error_type, "param": None, "code": code}
    }


def test_hierarchy() -> None:
    assert issubclass(BodyTooLarge, InvalidRequest)
    for cls in (
        UpstreamUnavailable,
        UpstreamTimeout,
        UpstreamRejected,
        UpstreamClosed,
        UpstreamProtocolError,
    ):
        assert issubclass(cls, UpstreamError)
    assert not issubclass(UpstreamResponseError, UpstreamError)
    assert issubclass(UpstreamResponseError, BridgeError)
    assert issubclass(BridgeError, Exception)


def test_subclass_status_can_be_overridden() -> None:
    exc = UpstreamRejected("upgrade refused", status=426, headers={"Upgrade": "websocket"})
    assert exc.status == 426
    assert exc.code == "upstream_rejected_upgrade"
    assert exc.headers == {"Upgrade": "websocket"}
    assert UpstreamRejected.status == 502


def test_invalid_request_with_param_and_code() -> None:
    exc = InvalidRequest("bad stream", code="invalid_type", param="stream")
    assert exc.status == 400
    assert exc.body() == {
        "error": {
            "message": "bad stream",
            "type": "invalid_request_error",
            "param": "stream",
            "code": "invalid_type",
        }
    }


def test_upstream_response_error_keeps_the_upstream_object() -> None:
    upstream = {
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "message": "Previous response with id 'resp_1' not found.",
        "param": "previous_response_id",
    }
    exc = UpstreamResponseError(upstream, status=400)
    assert exc.status == 400
    assert exc.message == "Previous response with id 'resp_1' not found."
    assert str(exc) == exc.message
    assert exc.error_type == "invalid_request_error"
    assert exc.code == "previous_response_not_found"
    assert exc.param == "previous_response_id"
    assert exc.upstream_error is upstream
    assert exc.body() == {"error": upstream}


def test_upstream_response_error_defaults() -> None:
    exc = UpstreamResponseError({}, status=None)
    assert exc.status == 502
    assert exc.message == "The upstream reported an error."
    assert exc.error_type == "upstream_error"
    assert exc.code is None
    assert exc.param is None
    assert exc.error_object() == {
        "message": "The upstream reported an error.",
        "type": "upstream_error",
        "param": None,
        "code": None,
    }


def test_upstream_response_error_stringifies_code_and_param() -> None:
    exc = UpstreamResponseError({"message": "m", "code": 1234, "param": 7}, status=429)
    assert exc.status == 429
    assert exc.code == "1234"
    assert exc.param == "7"
    # The body keeps the upstream's own values unchanged.
    assert exc.error_object()["code"] == 1234
    assert exc.error_object()["param"] == 7


def test_upstream_response_error_merges_extra_fields() -> None:
    upstream: dict[str, Any] = {
        "message": "slow down",
        "code": "usage_limit_reached",
        "plan": "pro",
    }
    exc = UpstreamResponseError(upstream, status=429)
    assert exc.error_object() == {
        "message": "slow down",
        "type": "upstream_error",
        "param": None,
        "code": "usage_limit_reached",
        "plan": "pro",
    }
    # error_object builds a new dict; the upstream object is not modified.
    exc.error_object()["message"] = "changed"
    assert upstream == {"message": "slow down", "code": "usage_limit_reached", "plan": "pro"}


def test_upstream_response_error_empty_message_falls_back() -> None:
    exc = UpstreamResponseError({"message": "", "type": ""}, status=None)
    assert exc.message == "The upstream reported an error."
    assert exc.error_type == "upstream_error"


def test_errors_can_be_raised_and_caught_as_bridge_error() -> None:
    with pytest.raises(BridgeError) as caught:
        raise UpstreamTimeout("no answer")
    assert caught.value.status == 504
    assert caught.value.code == "upstream_timeout"
