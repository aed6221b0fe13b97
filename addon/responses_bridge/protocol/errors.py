"""The bridge's exception tree; every failure a client can see is one of these.

Each error knows the HTTP status it becomes before a stream has started and renders itself as an
OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` body; after a stream has started it
renders as an SSE ``error`` event instead (see :func:`responses_bridge.protocol.sse.error_event`).
Foreign exceptions (websockets, OSError, TimeoutError) are translated once, in ``upstream``.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Base of every error the bridge reports to a client."""

    status: int = 502
    error_type: str = "bridge_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        if code is not None:
            self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def error_object(self) -> dict[str, Any]:
        """The inner ``error`` object: message, type, param, code."""
        return {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }

    def body(self) -> dict[str, Any]:
        """The OpenAI-style HTTP error body."""
        return {"error": self.error_object()}


class InvalidRequest(BridgeError):
    """The client's request cannot be bridged as it is (400)."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    """The request body is larger than ``responses_bridge_max_body_bytes`` (413)."""

    status = 413
    code = "request_too_large"


class UnsupportedContentEncoding(InvalidRequest):
    """A request body in a content coding the bridge cannot decode (415)."""

    status = 415
    code = "unsupported_content_encoding"


class UpstreamError(BridgeError):
    """The upstream could not be reached or misbehaved (502 unless said otherwise)."""

    status = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    """Connecting to the upstream failed (refused, DNS, TLS, proxy)."""

    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time: connect timeout or idle timeout (504)."""

    status = 504
    code = "upstream_timeout"


class UpstreamRejected(UpstreamError):
    """The upstream answered the websocket upgrade with an HTTP status; it is passed through."""

    code = "upstream_rejected_upgrade"


class UpstreamClosed(UpstreamError):
    """The upstream socket closed before the response's terminal event."""

    code = "upstream_closed"


class UpstreamProtocolError(UpstreamError):
    """The upstream sent a frame that is not a JSON object with a ``type`` (or a binary frame)."""

    code = "upstream_protocol_error"


class LanesRefused(UpstreamError):
    """The upstream refused a laned ``response.create`` (it takes no ``stream_id``) before the
    response began: never shown to a client, the request is sent again without a lane."""

    code = "lanes_refused"

    def __init__(self, message: str, *, upstream_wide: bool) -> None:
        super().__init__(message)
        self.upstream_wide = upstream_wide  # False: only this connection is out of lanes


class UpstreamResponseError(BridgeError):
    """The upstream reported an error: an ``error`` frame or ``response.failed``.

    ``upstream_error`` keeps the upstream's own error object so it reaches the client unchanged.
    """

    def __init__(
        self,
        upstream_error: dict[str, Any],
        *,
        status: int | None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        message = str(upstream_error.get("message") or "The upstream reported an error.")
        code = upstream_error.get("code")
        param = upstream_error.get("param")
        super().__init__(
            message,
            status=status if status is not None else 502,
            error_type=str(upstream_error.get("type") or "upstream_error"),
            code=str(code) if code is not None else None,
            param=str(param) if param is not None else None,
            headers=dict(headers or []),
        )
        self.upstream_error = upstream_error

    def error_object(self) -> dict[str, Any]:
        merged = super().error_object()
        merged.update(self.upstream_error)
        return merged


class PreviousResponseNotFound(InvalidRequest):
    """``previous_response_id`` names a response this bridge (and the upstream) cannot continue."""

    code = "previous_response_not_found"

    def __init__(self, response_id: str) -> None:
        super().__init__(
            f"Previous response with id '{response_id}' not found.", param="previous_response_id"
        )


class ChainBusy(InvalidRequest):
    """The chain's socket is answering another turn and rehydration is off (409)."""

    status = 409
    code = "previous_response_in_progress"

    def __init__(self, response_id: str) -> None:
        super().__init__(
            f"Response '{response_id}' is being continued by another request on its upstream "
            "socket, and responses_bridge_rehydrate is off so it cannot be forked; retry later.",
            param="previous_response_id",
        )


class ResponseInProgress(InvalidRequest):
    """The response a request continues was still being generated when the wait ran out (409)."""

    status = 409
    code = "previous_response_in_progress"

    def __init__(self, response_id: str, waited: float) -> None:
        super().__init__(
            f"Response '{response_id}' is still being generated: it did not finish within "
            f"{waited:g} s (responses_bridge_drain_timeout); retry once it has completed.",
            param="previous_response_id",
        )


class BackgroundNotBridged(InvalidRequest):
    """``background: true`` has no websocket equivalent, and this request could not be passed
    through over HTTP as it came: its body was streamed to the bridge (400)."""

    code = "background_not_supported"

    def __init__(self) -> None:
        super().__init__(
            "background: true is not supported over the websocket, and this request's body was "
            "streamed (stream_large_bodies), so the bridge could not pass it through over HTTP; "
            "raise stream_large_bodies above its size.",
            param="background",
        )


class CapacityExceeded(BridgeError):
    """Every upstream socket is busy and ``responses_bridge_max_sessions`` is reached (503)."""

    status = 503
    error_type = "server_error"
    code = "bridge_capacity_exceeded"
