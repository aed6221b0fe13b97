"""Pure request-side translation: which flows are bridged, the upstream URL, and the frame sent.

No I/O here: bytes and header lists in, validated values out. Errors are ``InvalidRequest``.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from responses_bridge.protocol.errors import BodyTooLarge, InvalidRequest

RESPONSES_PATH_SUFFIXES = ("/v1/responses", "/backend-api/codex/responses")
CHATGPT_PATH_SUFFIX = "/backend-api/codex/responses"


def is_responses_path(path: str) -> bool:
    """True for a request path (query ignored) that ends in a Responses API create endpoint."""
    bare = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return bare.endswith(RESPONSES_PATH_SUFFIXES)


def parse_host_patterns(value: str) -> tuple[str, ...]:
    """Split ``responses_bridge_hosts``: comma-separated, case-insensitive glob patterns."""
    return tuple(p.strip().lower() for p in value.split(",") if p.strip())


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """True when no patterns are given or the host matches one (``*.openai.com`` style globs)."""
    if not patterns:
        return True
    host = host.lower().rstrip(".")
    return any(fnmatch.fnmatchcase(host, p) for p in patterns)


def upstream_url_for(scheme: str, host: str, port: int, path: str) -> str:
    """The websocket URL for an HTTP destination: https→wss, http→ws, same host, port and path."""
    ws_scheme = "wss" if scheme == "https" else "ws"
    default_port = 443 if ws_scheme == "wss" else 80
    host_part = f"[{host}]" if ":" in host and not host.startswith("[") else host
    netloc = host_part if port == default_port else f"{host_part}:{port}"
    return f"{ws_scheme}://{netloc}{path}"


def is_ip_address(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (brackets allowed), False for a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _host_of(host_header: str | None) -> str | None:
    """The host part of a ``Host`` header value (port and IPv6 brackets removed)."""
    if not host_header:
        return None
    value = host_header.strip()
    if value.startswith("["):
        return value[1:].partition("]")[0] or None
    return value.rpartition(":")[0] if value.count(":") == 1 else value or None


@dataclass(frozen=True)
class Destination:
    """Where a bridged request's websocket goes: the URL (its host is the name used for TLS
    SNI, certificate verification and the upgrade's ``Host`` header) and, when the client
    dialled an address rather than a name, that address, connected to as it is."""

    url: str
    name: str
    address: tuple[str, int] | None = None


def destination(
    scheme: str,
    host: str,
    port: int,
    path: str,
    *,
    sni: str | None,
    host_header: str | None,
    dialled: tuple[str, int] | None,
) -> Destination:
    """The websocket destination of a request to ``scheme://host:port/path``.

    In transparent and local capture modes mitmproxy knows only the address the client
    connected to (``dialled``; None in the other modes, where the client names its
    destination), while the client asked for a name: its TLS SNI, else its ``Host`` header.
    As mitmproxy's own upstream connection does, the name is what TLS verifies and the address
    is what is dialled (no second DNS lookup that could go elsewhere). When an addon moved the
    flow elsewhere (``host``/``port`` are no longer ``dialled``), the new host is used as it is.
    """
    name = host
    if dialled is not None and dialled == (host, port) and is_ip_address(host):
        asked = sni if scheme == "https" and sni else _host_of(host_header)
        if asked and not is_ip_address(asked):
            name = asked.rstrip(".").lower()
    url = upstream_url_for(scheme, name, port, path)
    return Destination(url, name, (host, port) if name != host else None)


def validate_upstream_override(value: str) -> str:
    """Check ``responses_bridge_upstream``: empty, or a ``ws://``/``wss://`` URL with a host."""
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"must be a ws:// or wss:// URL with a host, not {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"has an invalid port: {value!r}") from exc
    return value


def is_chatgpt_upstream(url: str) -> bool:
    """True when the upstream URL is the ChatGPT (Codex subscription) backend."""
    return urlsplit(url).path.rstrip("/").endswith(CHATGPT_PATH_SUFFIX)


def chatgpt_compat_enabled(mode: str, upstream_url: str) -> bool:
    """Resolve ``responses_bridge_chatgpt_compat`` (auto/on/off) for one upstream."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return is_chatgpt_upstream(upstream_url)


# Bounds on a body's shape, checked before any other work on it: deeper nesting would end in
# a RecursionError in the code that reads it, and every item costs work (digests, transcripts)
# on mitmproxy's one thread before the upstream has said whether the request is authorised.
MAX_DEPTH = 100
MAX_INPUT_ITEMS = 100_000


@dataclass(frozen=True)
class ClientRequest:
    """A validated ``POST /v1/responses`` body and the fields the bridge reads from it."""

    body: dict[str, Any]
    stream: bool
    previous_response_id: str | None
    store: bool | None
    # JSON values (objects, arrays, scalars) in the body: what it costs in memory.
    values: int = field(default=0, compare=False)


_CONTAINERS = frozenset({dict, list})


def _count_values(body: dict[str, Any]) -> int:
    """How many JSON values ``body`` holds; ``InvalidRequest`` past ``MAX_DEPTH``. Level by
    level: it costs less than parsing the body did, even for millions of tiny objects."""
    values = 1
    level: list[Any] = [body]
    depth = 1
    while level:
        if depth > MAX_DEPTH:
            raise InvalidRequest(
                f"The request body nests deeper than {MAX_DEPTH} levels.", code="invalid_json"
            )
        below: list[Any] = []
        for value in level:
            children = value.values() if type(value) is dict else value
            values += len(children)
            below += [child for child in children if type(child) in _CONTAINERS and child]
        level = below
        depth += 1
    return values


def _type_error(field: str, expected: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{field}': expected {expected}.",
        code="invalid_type",
        param=field,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_client_request(raw: bytes, *, max_bytes: int | None = None) -> ClientRequest:
    """Parse and validate a request body. Unknown fields pass through untouched."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise BodyTooLarge(
            f"The request body is {len(raw)} bytes; this bridge accepts at most {max_bytes}."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid UTF-8 (byte {exc.start}).", code="invalid_json"
        ) from exc
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    # ValueError also covers int literals over sys.get_int_max_str_digits() and NaN/Infinity.
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest(
            "The request body must be a JSON object, not "
            f"{type(body).__name__.replace('dict', 'object')}.",
            code="invalid_json",
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _type_error("stream", "a boolean")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise _type_error("previous_response_id", "a non-empty string")
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise _type_error("store", "a boolean")
    if "input" in body and not isinstance(body["input"], (str, list)) and body["input"] is not None:
        raise _type_error("input", "a string or an array of input items")
    if isinstance(body.get("input"), list) and len(body["input"]) > MAX_INPUT_ITEMS:
        raise InvalidRequest(
            f"'input' has {len(body['input'])} items; this bridge accepts at most "
            f"{MAX_INPUT_ITEMS}.",
            code="array_above_max_length",
            param="input",
        )
    values = _count_values(body)
    background = body.get("background")
    if background is not None and not isinstance(background, bool):
        raise _type_error("background", "a boolean")
    return ClientRequest(
        body=body, stream=bool(stream), previous_response_id=previous, store=store, values=values
    )


def build_create_frame(body: dict[str, Any], *, chatgpt_compat: bool) -> dict[str, Any]:
    """The flat ``response.create`` client event for a request body.

    The body minus ``stream`` and ``background``; for the ChatGPT backend ``store`` is forced to
    false and ``truncation``/``max_output_tokens`` (which it rejects) are dropped.
    """
    frame: dict[str, Any] = {"type": "response.create"}
    # stream_id picks a websocket lane: the bridge chooses lanes, never the HTTP client.
    dropped = {"stream", "background", "type", "stream_id"}
    if chatgpt_compat:
        dropped |= {"truncation", "max_output_tokens"}
    frame.update((k, v) for k, v in body.items() if k not in dropped)
    if chatgpt_compat:
        frame["store"] = False
    return frame


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [item for item in value if isinstance(item, dict)]


def replayable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transcript items fit to send again as input: reasoning items without
    ``encrypted_content`` cannot be replayed with ``store: false`` and are left out."""
    return [
        item
        for item in items
        if not (item.get("type") == "reasoning" and not item.get("encrypted_content"))
    ]


def rehydrated_frame(
    frame: dict[str, Any], transcript: list[dict[str, Any]], new_items: list[dict[str, Any]]
) -> dict[str, Any]:
    """A continuation resent in full: the chain's transcript plus the new input, and no
    ``previous_response_id`` (a fresh socket does not know it)."""
    full = {k: v for k, v in frame.items() if k != "previous_response_id"}
    full["input"] = replayable(transcript) + new_items
    return full
