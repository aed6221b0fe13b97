"""Which headers go where: forwarded on the websocket upgrade, kept out of logs, and the
response headers the bridge makes from what the upstream says. Pure."""

from __future__ import annotations

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

# Who the upstream takes a request to be from: the headers an owner key is made of.
IDENTITY_HEADERS = ("authorization", "chatgpt-account-id", "api-key")

# Values the client may never see in logs.
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "chatgpt-account-id", "cookie", "openai-api-key", "api-key", "x-api-key"}
)


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


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers fit for a log: credential values replaced by ``<redacted>``."""
    return [
        (name, "<redacted>" if name.lower() in CREDENTIAL_HEADERS else value)
        for name, value in headers
    ]


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
