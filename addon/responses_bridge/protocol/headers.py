"""Which headers go where: forwarded on the websocket upgrade, kept out of logs, passed from the
upstream to the client, and the response headers the bridge makes from what the upstream says.
Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Never forwarded on the upgrade: hop-by-hop headers, the body's framing, and headers the
# websocket handshake sets itself.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "content-encoding",
        "accept-encoding",
        "host",
        "expect",
        "http2-settings",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)

# Sent on the upgrade, but not part of whose socket it is: values that differ between requests
# of the same client (request ids, tracing, retry counters, content negotiation) and the ones
# that describe the client software rather than whose request it is (user agent, the SDKs'
# x-stainless-* telemetry); the upstream authorises and bills on neither. A socket opened by one
# request carries that request's values of these; for any other header, a request runs only on
# a socket whose upgrade carried exactly the values it would have sent itself (``state.scope``).
PER_REQUEST_HEADERS = frozenset(
    {
        "accept",  # content negotiation: a stream asks for text/event-stream
        "user-agent",
        "x-request-id",
        "x-client-request-id",
        "x-oai-request-id",
        "idempotency-key",
        "traceparent",
        "tracestate",
        "baggage",
        "sentry-trace",
        "x-stainless-retry-count",
        "x-stainless-timeout",
        "x-stainless-read-timeout",
        "x-codex-turn-metadata",
        "x-codex-turn-state",
        "x-codex-inference-call-id",
    }
)

# The only header values a log shows; every other value is ``<redacted>``, as any header can be
# a credential (``x-goog-api-key``, ``ocp-apim-subscription-key``, a gateway's own).
LOGGABLE_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "user-agent",
        "openai-beta",
        "originator",
        "version",
        *PER_REQUEST_HEADERS,
    }
)
_PER_REQUEST_PREFIXES = ("x-stainless-",)
_LOGGABLE_PREFIXES = _PER_REQUEST_PREFIXES


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The client's end-to-end headers to send on the upgrade, internal ``x-responses-bridge-*``
    headers and hop-by-hop ones removed. Order and repeated headers are kept."""
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in _NOT_FORWARDED or lower.startswith(("x-responses-bridge", ":")):
            continue
        kept.append((name, value))
    return kept


def is_loggable(name: str) -> bool:
    """Whether a log may show this header's value (an allowlist: see ``LOGGABLE_HEADERS``)."""
    lower = name.lower()
    return lower in LOGGABLE_HEADERS or lower.startswith(_LOGGABLE_PREFIXES)


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers fit for a log: every value not on the allowlist replaced by ``<redacted>``."""
    return [(name, value if is_loggable(name) else "<redacted>") for name, value in headers]


def identity_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """What makes two upgrades interchangeable: every header ``forwardable_headers`` keeps of
    ``headers`` but the per-request ones, names lowercased, in a canonical order (repeated
    headers keep theirs)."""
    kept = [
        (name.lower(), value)
        for name, value in forwardable_headers(headers)
        if name.lower() not in PER_REQUEST_HEADERS
        and not name.lower().startswith(_PER_REQUEST_PREFIXES)
    ]
    return sorted(kept, key=lambda pair: pair[0])


_WINDOW_FIELDS = {
    "used_percent": "used-percent",
    "window_minutes": "window-minutes",
    "resets_in_seconds": "reset-after-seconds",
    "reset_after_seconds": "reset-after-seconds",
    "reset_at": "reset-at",
}


_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_MAX_RATE_LIMIT_HEADERS = 32


def _token(key: Any) -> str | None:
    """A field name fit for a header name (the upstream chooses it), dashed; else None."""
    if isinstance(key, str) and _TOKEN.fullmatch(key):
        return key.replace("_", "-").lower()
    return None


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value)
        # Written into an HTTP/1.1 head: printable ASCII only, and short.
        if len(text) <= 200 and text.isascii() and text.isprintable():
            return text
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
            name = _WINDOW_FIELDS.get(key) if isinstance(key, str) else None
            name = name or _token(key)
            text = _scalar(value)
            if name is not None and text is not None:
                headers.append((f"x-codex-{window}-{name}", text))
    credits = event.get("credits")
    if isinstance(credits, dict):
        for key, value in credits.items():
            name, text = _token(key), _scalar(value)
            if name is not None and text is not None:
                headers.append((f"x-codex-credits-{name}", text))
    return headers[:_MAX_RATE_LIMIT_HEADERS]


# The upstream's response headers a client gets (from the websocket handshake's response, an
# error frame's ``headers``, or a refused upgrade), as the HTTP endpoint would have sent them:
# request ids and timings for support tickets, the versions and the organization/project billed,
# retry hints and rate-limit state that SDKs and Codex read. An allowlist: every other header
# (cookies, framing, the upgrade's own, whatever an upstream invents) describes the websocket
# rather than this response, or would be the client's first sight of a credential.
PASSED_RESPONSE_HEADERS = frozenset(
    {
        "x-request-id",
        "openai-processing-ms",
        "openai-version",
        "openai-organization",
        "openai-project",
        "openai-model",
        "retry-after",
        "retry-after-ms",
        "x-models-etag",
        "x-reasoning-included",
    }
)
PASSED_RESPONSE_PREFIXES = ("x-ratelimit-", "x-codex-")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_MAX_PASSED_HEADERS = 64
_MAX_PASSED_VALUE = 1024


def is_passed_response_header(name: str) -> bool:
    """Whether an upstream response header reaches the client (see ``PASSED_RESPONSE_HEADERS``)."""
    lower = name.lower()
    return lower in PASSED_RESPONSE_HEADERS or lower.startswith(PASSED_RESPONSE_PREFIXES)


def passed_response_headers(headers: Iterable[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """The upstream's headers a client gets: allowlisted names, lowercased, with values fit for
    an HTTP head (printable ASCII, at most 1 KiB; numbers and booleans as text); at most 64."""
    passed: list[tuple[str, str]] = []
    for name, value in headers:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            continue
        if not is_passed_response_header(name):
            continue
        text = _header_value(value)
        if text is not None:
            passed.append((name.lower(), text))
            if len(passed) == _MAX_PASSED_HEADERS:
                break
    return passed


def _header_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = str(value).strip()
        if len(text) <= _MAX_PASSED_VALUE and text.isascii() and text.isprintable():
            return text
    return None


def error_frame_headers(event: dict[str, Any]) -> list[tuple[str, str]]:
    """The passed headers an upstream ``error`` frame carries in ``headers`` (an object, or a
    list of name/value pairs; at the top level or inside ``error``)."""
    for holder in (event, event.get("error")):
        if not isinstance(holder, dict):
            continue
        raw = holder.get("headers")
        if isinstance(raw, dict):
            return passed_response_headers(raw.items())
        if isinstance(raw, list):
            pairs = [
                tuple(pair) for pair in raw if isinstance(pair, (list, tuple)) and len(pair) == 2
            ]
            return passed_response_headers(pairs)
    return []


def merged_headers(*layers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header lists combined, a later list's names replacing an earlier one's (a rate-limit
    event is newer than the handshake that opened the socket)."""
    merged: dict[str, list[tuple[str, str]]] = {}
    for layer in layers:
        fresh: dict[str, list[tuple[str, str]]] = {}
        for name, value in layer:
            fresh.setdefault(name.lower(), []).append((name, value))
        merged.update(fresh)
    return [pair for pairs in merged.values() for pair in pairs]
