"""A fake OpenAI Responses API server speaking WebSocket mode, for tests and the no-key demo.

It follows /work/shared/PROTOCOL.md section 2: one ``response.create`` JSON text frame per
turn, the server answers with the same events the HTTP SSE stream carries (each with a
per-response ``sequence_number``), previous-response state lives in memory on the socket
(plus a server-wide store for ``store: true``), and errors arrive as ``{"type": "error"}``
frames.

The answer is deterministic and proves what context the "model" saw::

    echo: <last user text> | context: <N> user messages | <t1> / <t2> / ... / <tN>

(with ``tool result: <output>`` after the echo when the input carries function call
outputs).  Words ``fake:NAME`` / ``fake:NAME=VALUE`` in the last user message of a
request's input (plus ``default_directives``, where the ``fake:`` prefix is optional)
change the behaviour:

==============================  ==========================================================
``slow=MS``                     sleep MS milliseconds before every event
``deltas=N``                    stream the text (or tool arguments) in N deltas (default 4)
``tool``                        answer with a function call (first function tool's name)
``reasoning``                   a reasoning item first, then the answer
``thin`` / ``thin_empty``       ``response.completed`` without ``output`` / with ``[]``
``empty``                       no output items at all
``error=STATUS[:CODE]``         an error frame with ``status`` instead of an answer
``error_status_code=S[:CODE]``  the same with ``status_code`` (ChatGPT backend style)
``error_headers``               the error frame carries ``headers`` (``ERROR_FRAME_HEADERS``)
``failed`` / ``incomplete``     end with ``response.failed`` / ``response.incomplete``
``failed=bare``                 ``response.failed`` whose response has no ``error``
``close=CODE``                  close the socket (1006: drop TCP without a close frame)
``garbage=KIND``                inject a bad frame: nonjson, typeless, binary, oversized;
                                ``flood``: 1001 well-formed events of an unknown type
``silent``                      stop sending (socket stays open, later turns ignored)
``vendor``                      ChatGPT backend extras (``codex.rate_limits`` first)
``limit``                       ``websocket_connection_limit_reached``, then close
``usage_limit``                 ``usage_limit_reached`` error with ``status_code`` 429
``phase=P``                     where error/failed/close/garbage/silent strike:
                                before_created, after_created (created + 1 delta),
                                mid (created + 2 deltas), after_completed
``brief``                       a short answer: ``echo: <first 60 characters> | context:
                                <N> user messages`` (keeps long chains from growing as N²)
==============================  ==========================================================

Opt-in extras, off by default (the benchmark, ``scripts/bench.py``, turns them on):

- ``http_responses=True``: ``POST …/responses`` over plain HTTP/1.1 (keep-alive) answers like a
  websocket turn: ``stream: true`` → ``text/event-stream`` frames ``event: <type>\ndata:
  <json>\n\n`` written as the events are produced (no ``[DONE]``), otherwise the final Response
  JSON; an error before ``response.created`` is an HTTP status with an ``{"error": …}`` body.
  Stateless: ``previous_response_id`` resolves only through the ``store: true`` store. The
  first request on a new HTTP connection waits ``handshake_delay`` counted from the TCP
  accept (the connection set-up a websocket upgrade pays too). Other paths and methods still
  get ``426``.
- ``input_cost_ms_per_kb``: before ``response.created``, sleep that many milliseconds per KB
  of input items the upstream has not seen on that socket (the request's ``input``: only the
  new items of a continuation; every item of a full request or an HTTP request), to within a
  few microseconds (an asyncio timer alone wakes up to ~1.4 ms late).

Plain HTTP that is not a ``POST …/responses`` gets ``426`` (no websocket mode here), except
``GET /set-cookie?NAME=VALUE``, a page that sets that cookie (for mitmproxy's stickycookie), and
``GET /fake-stats``: ``{"connections": N, "open_sockets": M}`` (websockets accepted, open now).

Lanes (PROTOCOL.md): a ``response.create`` with a ``stream_id`` runs on that lane; creates of
one lane run in order, lanes run concurrently (at most 16 responses at once per socket, more
wait), every event of a laned response echoes its ``stream_id``, and the responses a socket
holds are socket-wide, so any lane continues any of them. Names are 1-256 characters of
``[A-Za-z0-9_.-]`` (else ``invalid_stream_id``), at most 32 per socket (else
``websocket_stream_limit_reached``). ``FakeUpstream.lanes = "reject"`` answers a laned create
with an ``unknown_parameter`` error before ``response.created`` (as the ChatGPT backend has);
``"ignore"`` runs it on the default lane without any echo.

Run standalone: ``python tests/fake_upstream.py [--port 8765] [--directives "..."]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import email.utils
import http
import json
import logging
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = [
    "DEFAULT_MODEL",
    "TERMINAL_EVENTS",
    "FakeUpstream",
    "FakeUpstreamThread",
    "SocketRecord",
    "answer_text",
    "parse_directives",
]

Json = dict[str, Any]
T = TypeVar("T")

log = logging.getLogger("fake_upstream")

DEFAULT_MODEL = "gpt-fake"
DEFAULT_DELTAS = 4
MAX_FRAME = 64 * 1024 * 1024
OVERSIZED_BYTES = 2 * 1024 * 1024
FLOOD_EVENTS = 1001  # one more than the bridge holds before response.created
TERMINAL_EVENTS = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)
PHASES = ("before_created", "after_created", "mid", "after_completed")
# Lanes (PROTOCOL.md): names of 1-256 such characters, 32 names per socket, 16 responses at once.
LANE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
MAX_LANE_NAMES = 32
MAX_LANES_IN_FLIGHT = 16
LANE_MODES = ("on", "reject", "ignore")


def text_event_types(deltas: int = DEFAULT_DELTAS) -> list[str]:
    """The event types of a plain text answer streamed in ``deltas`` deltas, in order."""
    return [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


_DIRECTIVE_RE = re.compile(r"(?<![\w:])fake:([A-Za-z_]+)(?:=(\S+))?")
_TRAILING_PUNCT = ".,;!?)]}\"'"
# The part of an exact sleep that is spun rather than left to an asyncio timer (see
# ``FakeUpstream._sleep_exactly``): more than the timers' overshoot.
_EXACT_SLEEP_SPIN = 0.002


# --------------------------------------------------------------------------- helpers


def new_id(prefix: str) -> str:
    """A fresh id in the style of the real API (``resp_…``, ``msg_…``, ``fc_…``, ``rs_…``)."""
    return f"{prefix}_{secrets.token_hex(24)}"


def parse_directives(text: str, defaults: str = "") -> dict[str, str]:
    """Directives from ``defaults`` (``fake:`` optional) then ``text``; later names win."""
    found: dict[str, str] = {}
    for token in re.split(r"[\s,]+", defaults.strip()):
        token = token.removeprefix("fake:")
        if token:
            name, _, value = token.partition("=")
            found[name.lower()] = value
    for match in _DIRECTIVE_RE.finditer(text):
        found[match.group(1).lower()] = (match.group(2) or "").rstrip(_TRAILING_PUNCT)
    return found


def _text_of(content: Any) -> str:
    """Plain text of message content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part if isinstance(part, str) else part.get("text", "")
            for part in content
            if isinstance(part, str)
            or (isinstance(part, dict) and isinstance(part.get("text"), str))
        ]
        return " ".join(texts)
    return ""


def _is_user_message(item: Json) -> bool:
    return item.get("role") == "user" and item.get("type", "message") == "message"


def _user_message(text: str) -> Json:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def normalize_input(value: Any) -> list[Json]:
    """The request's ``input`` as a list of items; a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_user_message(value)]
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return copy.deepcopy(value)
    raise ValueError("Invalid type for 'input': expected a string or an array of input items.")


def answer_text(context: list[Json], new_items: list[Json]) -> str:
    """The deterministic echo answer for a context whose newest items are ``new_items``."""
    users = [_text_of(item.get("content")) for item in context if _is_user_message(item)]
    parts = [f"echo: {users[-1] if users else ''}"]
    outputs = [item for item in new_items if item.get("type") == "function_call_output"]
    if outputs:
        parts.append("tool result: " + " / ".join(_text_of(o.get("output")) for o in outputs))
    parts.append(f"context: {len(users)} user messages")
    parts.append(" / ".join(users))
    return " | ".join(parts)


def brief_answer_text(context: list[Json]) -> str:
    """The ``brief`` answer: the echo cut to 60 characters and the context count only."""
    users = [_text_of(item.get("content")) for item in context if _is_user_message(item)]
    return f"echo: {(users[-1] if users else '')[:60]} | context: {len(users)} user messages"


def context_count(answer: str) -> int:
    """How many user messages the fake saw, read back from one of its answers."""
    return int(answer.split("| context: ")[1].split(" user messages")[0])


def split_text(text: str, count: int) -> list[str]:
    """``text`` in ``count`` non-empty, near-equal pieces (repeating it when too short)."""
    count = max(1, count)
    base = text or "..."
    while len(text) < count:
        text = f"{text} {base}" if text else base
    size, extra = divmod(len(text), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _tokens(value: Any) -> int:
    """A deterministic token estimate (about four characters per token)."""
    if not value:
        return 0
    return max(1, len(json.dumps(value, ensure_ascii=False)) // 4)


def _first_function_tool(tools: Any) -> tuple[str, Any]:
    """Name and parameters schema of the first function tool, else ``get_weather``."""
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type", "function") == "function" and isinstance(tool.get("name"), str):
            return tool["name"], tool.get("parameters")
        nested = tool.get("function")
        if isinstance(nested, dict) and isinstance(nested.get("name"), str):
            return nested["name"], nested.get("parameters")
    return "get_weather", None


def _fake_arguments(schema: Any) -> str:
    """JSON arguments that fit a (simple) parameters schema."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or not props:
        return json.dumps({"location": "Paris"})
    args: Json = {}
    for key, prop in props.items():
        prop = prop if isinstance(prop, dict) else {}
        kind = prop.get("type", "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if isinstance(prop.get("enum"), list) and prop["enum"]:
            args[key] = prop["enum"][0]
        else:
            defaults: Json = {"integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
            args[key] = defaults.get(
                kind, "Paris" if key in ("location", "city") else f"fake {key}"
            )
    return json.dumps(args)


def _lower_headers(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    426: ("invalid_request_error", "upgrade_required"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def _error_kind(status: int) -> tuple[str, str]:
    """Default (error type, code) for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    if status >= 500:
        return "server_error", "server_error"
    return "invalid_request_error", "invalid_request"


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> Json:
    """An OpenAI-style ``{"error": {...}}`` body."""
    err_type, default_code = _error_kind(status)
    return {
        "error": {
            "message": message,
            "type": err_type,
            "param": param,
            "code": code or default_code,
        }
    }


# What an error frame's ``headers`` hold with ``fake:error_headers``: the retry hint and the
# rate-limit state the HTTP endpoint sends with a 429, and one header no client should get.
ERROR_FRAME_HEADERS = {
    "retry-after": "7",
    "x-ratelimit-remaining-requests": "0",
    "x-ratelimit-reset-requests": "7s",
    "set-cookie": "upstream=secret",
}


def error_frame(
    code: str,
    message: str,
    *,
    status: int = 400,
    err_type: str = "invalid_request_error",
    param: str | None = None,
    status_key: str = "status",
) -> Json:
    """A socket ``error`` event (``status_key`` is ``status`` or ``status_code``)."""
    return {
        "type": "error",
        status_key: status,
        "error": {"type": err_type, "code": code, "message": message, "param": param},
    }


def _json_response(status: int, payload: Json, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    """An HTTP response with a JSON body, for rejected handshakes and plain HTTP requests."""
    body = json.dumps(payload).encode()
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *extra,
        ]
    )
    return Response(status, phrase, headers, body)


def _sendable_close_code(code: int) -> bool:
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# --------------------------------------------------------------------------- records


@dataclass
class SocketRecord:
    """What one accepted websocket connection did."""

    index: int
    path: str
    headers: dict[str, str]
    frames: list[Any] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None
    response_ids: list[str] = field(default_factory=list)
    lanes: set[str] = field(default_factory=set)  # every stream_id this socket has seen
    max_in_flight: int = 0  # most responses it ran at once, across lanes


@dataclass
class _Session:
    """Per-socket server state."""

    record: SocketRecord
    conn: ServerConnection
    responses: dict[str, list[Json]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    active_id: str | None = None
    hung: bool = False
    closer: asyncio.Task[Any] | None = None
    sent_close_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    lane_queues: dict[str, asyncio.Queue[Json]] = field(default_factory=dict)
    lane_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    in_flight: int = 0
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_LANES_IN_FLIGHT))


@dataclass
class _Inject:
    """Something that happens before event number ``pos`` of a turn."""

    pos: int
    kind: str  # garbage | error | failed | close | silent
    payload: Any = None
    close_code: int | None = None


class _Connection(ServerConnection):
    """A server connection that answers plain (non-upgrade) HTTP requests with 426 itself."""

    fake: FakeUpstream

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = "sniff"  # sniff -> websocket | http | http_api (opt-in, keep-alive)
        self._buf = bytearray()
        self.fake._conns.add(self)
        self._accepted_at = time.monotonic()
        self._http_task: asyncio.Task[None] | None = None
        self._http_served = 0
        self._continue_sent = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._conns.discard(self)
        if self._http_task is not None:
            self._http_task.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.mode == "websocket":
            super().data_received(data)
            return
        if self.mode == "http":
            return
        self._buf += data
        if self.mode == "http_api":
            self._next_http_request()
            return
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 65536:  # let websockets reject it
                self._become_websocket()
            return
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "websocket" in headers.get("upgrade", "").lower():
            self._become_websocket()
            return
        if self.fake.http_responses and _is_responses_post(lines[0]):
            self.mode = "http_api"
            self._next_http_request()
            return
        received = len(self._buf) - end - 4
        if "100-continue" not in headers.get("expect", "").lower():
            if "chunked" in headers.get("transfer-encoding", "").lower():
                if not self._buf.endswith(b"0\r\n\r\n"):
                    return
            elif received < int(headers.get("content-length", "0") or 0):
                return
        self.mode = "http"
        self._buf = bytearray()
        method, _, rest = lines[0].partition(" ")
        path = rest.rpartition(" ")[0]
        self.fake.http_requests.append({"method": method, "path": path, "headers": headers})
        if method == "GET" and path == "/fake-stats":
            # Counters for a benchmark that runs the fake in its own process.
            stats = {"connections": self.fake.connections, "open_sockets": self.fake.open_sockets}
            self.transport.write(_json_response(200, stats).serialize())
            self.transport.close()
            return
        if method == "GET" and path.startswith("/set-cookie?"):
            # A plain page that sets a cookie (tests of mitmproxy's stickycookie).
            cookie = path.partition("?")[2]
            self.transport.write(
                f"HTTP/1.1 200 OK\r\nSet-Cookie: {cookie}; Path=/\r\n"
                "Content-Length: 0\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            self.transport.close()
            return
        body = error_body(
            426,
            "This endpoint only speaks the Responses API WebSocket mode; "
            "open a websocket (GET with Upgrade: websocket).",
            code="upgrade_required",
        )
        response = _json_response(426, body, (("Upgrade", "websocket"),))
        self.transport.write(response.serialize())
        self.transport.close()

    def _become_websocket(self) -> None:
        self.mode = "websocket"
        buffered, self._buf = bytes(self._buf), bytearray()
        super().data_received(buffered)

    # -- the opt-in plain-HTTP endpoint (``FakeUpstream.http_responses``)

    def _next_http_request(self) -> None:
        """Start serving the next complete request in the buffer, one at a time."""
        if self._http_task is not None or self.transport.is_closing():
            return
        try:
            parsed = _parse_http_request(self._buf)
        except ValueError as exc:
            self._write_http(400, error_body(400, f"Malformed HTTP request: {exc}."), close=True)
            return
        if isinstance(parsed, bool):  # incomplete; True: the client waits for 100 Continue
            if parsed and not self._continue_sent:
                self._continue_sent = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        consumed, method, path, headers, body = parsed
        del self._buf[:consumed]
        self._continue_sent = False
        self._http_task = asyncio.get_running_loop().create_task(
            self._serve_http(method, path, headers, body), name="fake upstream HTTP request"
        )

    async def _serve_http(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> None:
        keep_alive = False
        try:
            record: Json = {"method": method, "path": path, "headers": headers}
            self.fake.http_requests.append(record)
            if not _is_responses_post(f"{method} {path} HTTP/1.1"):
                payload = error_body(
                    426,
                    "This endpoint only speaks the Responses API WebSocket mode; "
                    "open a websocket (GET with Upgrade: websocket).",
                    code="upgrade_required",
                )
                self._write_http(426, payload, (("Upgrade", "websocket"),), close=True)
                return
            if self._http_served == 0:  # a new connection pays the set-up cost once
                await self.fake._sleep(
                    self._accepted_at + self.fake.handshake_delay - time.monotonic()
                )
            self._http_served += 1
            try:
                request = json.loads(body)
            except ValueError:
                request = None
            record["body"] = request
            if not isinstance(request, dict):
                message = "The request body must be a JSON object."
                self._write_http(400, error_body(400, message, code="invalid_json"))
                keep_alive = True
                return
            keep_alive = await self._http_turn(request)
            keep_alive = keep_alive and "close" not in headers.get("connection", "").lower()
        except (ConnectionError, ConnectionClosed):
            pass
        except Exception:
            log.exception("fake upstream HTTP request failed")
            self.transport.abort()
        finally:
            self._http_task = None
            if self.transport.is_closing():
                pass
            elif keep_alive:
                self._next_http_request()
            else:
                self.transport.close()

    async def _http_turn(self, body: Json) -> bool:
        """Answer one HTTP request as a websocket turn would; True keeps the connection."""
        stream = body.get("stream") is True
        request = {k: v for k, v in body.items() if k not in ("stream", "background")}
        record = SocketRecord(index=-1, path="http", headers={})
        session = _Session(record=record, conn=self)
        turn = _HttpTurn(self.fake, session, request, self, stream)
        await turn.run()
        if turn.finished:
            return not self.transport.is_closing()
        if session.hung:  # silent: never answer; the client gives up and closes
            await asyncio.Event().wait()
        if not self.transport.is_closing():
            self.transport.close()
        return False

    def _write_http(
        self,
        status: int,
        payload: Json,
        extra: tuple[tuple[str, str], ...] = (),
        *,
        close: bool = False,
    ) -> None:
        response = _json_response(status, payload, extra)
        if not close:
            del response.headers["Connection"]
        self.transport.write(response.serialize())
        if close:
            self.transport.close()


def _is_responses_post(request_line: str) -> bool:
    """``POST <path ending in /responses> HTTP/1.1`` (query ignored)."""
    method, _, rest = request_line.partition(" ")
    path = rest.rpartition(" ")[0].partition("?")[0]
    return method == "POST" and path.rstrip("/").endswith("/responses")


def _parse_http_request(
    buf: bytearray,
) -> bool | tuple[int, str, str, dict[str, str], bytes]:
    """One complete request at the start of ``buf``: (bytes used, method, path, headers, body).

    Incomplete: False, or True when the head asks for ``100 Continue``. Malformed: ValueError.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 65536:
            raise ValueError("request head too large")
        return False
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    path = rest.rpartition(" ")[0]
    if not method or not path:
        raise ValueError("bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expects = "100-continue" in headers.get("expect", "").lower()
    start = end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        pos = start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return expects
            size = int(bytes(buf[pos:line_end]).split(b";")[0].strip() or b"x", 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end < 0 and buf[line_end : line_end + 4] != b"\r\n\r\n":
                    return expects
                used = line_end + 4 if trailer_end < 0 else trailer_end + 4
                return used, method, path, headers, bytes(body)
            if len(buf) < line_end + 2 + size + 2:
                return expects
            body += buf[line_end + 2 : line_end + 2 + size]
            pos = line_end + 2 + size + 2
    length = int(headers.get("content-length", "0") or 0)
    if len(buf) < start + length:
        return expects
    return start + length, method, path, headers, bytes(buf[start : start + length])


# --------------------------------------------------------------------------- the server


class FakeUpstream:
    """The fake Responses WebSocket-mode server. Async; runs on the caller's event loop."""

    def __init__(
        self,
        *,
        handshake_status: int | None = None,
        handshake_delay: float = 0.0,
        default_directives: str = "",
        event_delay: float = 0.0,
        port: int = 0,
        http_responses: bool = False,
        input_cost_ms_per_kb: float = 0.0,
    ) -> None:
        self.handshake_status = handshake_status
        self.handshake_redirect: str | None = None  # a Location to answer upgrades with (302)
        # Headers added to every handshake's answer (accepted or refused); ``{n}`` in a value
        # becomes the handshake's number (1, 2, ...), as a request id differs per connection.
        self.handshake_response_headers: list[tuple[str, str]] = []
        self._handshakes = 0
        self.handshake_delay = handshake_delay
        self.default_directives = default_directives
        self.event_delay = event_delay
        self.port = port
        # Opt-in: answer POST …/responses over plain HTTP too (see the module docstring).
        self.http_responses = http_responses
        # Opt-in: milliseconds of "prefill" per KB of input not yet seen on the socket.
        self.input_cost_ms_per_kb = input_cost_ms_per_kb
        self.connections = 0
        self.open_sockets = 0
        self.sockets: list[SocketRecord] = []
        self.requests: list[Json] = []
        self.contexts: dict[str, list[Json]] = {}
        self.handshake_headers: list[dict[str, str]] = []
        self.http_requests: list[Json] = []
        self.stored: dict[str, list[Json]] = {}
        self._sessions: list[_Session] = []
        self._conns: set[_Connection] = set()
        self._server: Server | None = None
        self._stopping: asyncio.Event | None = None
        self.runner: FakeUpstreamThread | None = None  # set when run by a FakeUpstreamThread
        # (status, code) errors answered, in order, to the next response.create frames
        self.next_errors: list[tuple[int, str]] = []
        # Lanes: "on" as PROTOCOL.md describes; "reject" answers a create with a stream_id with
        # an error before response.created (as the ChatGPT backend has); "ignore" runs it on
        # the default lane without echoing stream_id.
        self.lanes = "on"

    def run(self, coro_fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """From another thread: run a coroutine of this fake on its own loop (thread mode)."""
        assert self.runner is not None, "only for a fake started by FakeUpstreamThread"
        return self.runner.call(coro_fn, *args)

    # -- lifecycle

    async def start(self) -> None:
        """Start listening on 127.0.0.1 (port 0 picks a free one)."""
        if self._server is not None:
            return
        self._stopping = asyncio.Event()
        connection_class = type("FakeUpstreamConnection", (_Connection,), {"fake": self})
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            self.port,
            process_request=self._process_request,
            process_response=self._process_response,
            compression=None,
            open_timeout=None,
            close_timeout=3,
            max_size=MAX_FRAME,
            create_connection=connection_class,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every socket and stop serving."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._stopping is not None:
            self._stopping.set()
        for conn in list(self._conns):
            if conn.mode != "websocket":
                conn.transport.abort()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 5)
        except TimeoutError:
            for conn in list(self._conns):
                conn.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def url(self, path: str = "/v1/responses") -> str:
        """The websocket URL for ``path``."""
        return f"ws://127.0.0.1:{self.port}{path}"

    # -- control

    async def close_socket(self, index: int = -1, code: int = 1001, reason: str = "") -> None:
        """Close socket number ``index`` (1006 drops TCP without a close frame)."""
        session = self._sessions[index]
        await self._close_session(session, code, reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session.done.wait(), 10)

    async def close_socket_of(self, response_id: str, code: int = 1001, reason: str = "") -> None:
        """Close the socket on which ``response_id`` was created."""
        for session in self._sessions:
            if response_id in session.record.response_ids:
                await self.close_socket(session.record.index, code, reason)
                return
        raise KeyError(f"no socket created response {response_id!r}")

    async def _close_session(self, session: _Session, code: int, reason: str = "") -> None:
        if session.record.closed or session.closer is not None:
            return
        session.closer = asyncio.current_task()
        session.sent_close_code = code
        conn = session.conn
        if code == 1005:
            await conn.close(None, "")  # type: ignore[arg-type]  # an empty close frame
        elif _sendable_close_code(code):
            await conn.close(code, reason)
        else:
            conn.transport.abort()
            await conn.wait_closed()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the server stops."""
        if seconds <= 0:
            return
        if self._stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _sleep_exactly(self, seconds: float) -> None:
        """``_sleep``, without asyncio's overshoot: a timer wakes the loop up to ~1.4 ms late
        here (epoll's millisecond timeouts), which would add a fixed cost to every simulated
        input cost, largest in proportion for the smallest inputs. The last
        ``_EXACT_SLEEP_SPIN`` seconds are spun (yielding to the loop), costing that much CPU."""
        deadline = time.monotonic() + seconds
        await self._sleep(seconds - _EXACT_SLEEP_SPIN)
        while time.monotonic() < deadline and not (self._stopping and self._stopping.is_set()):
            await asyncio.sleep(0)

    # -- handshake

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.handshake_headers.append(_lower_headers(request.headers))
        self._handshakes += 1
        conn.fake_handshake_number = self._handshakes  # type: ignore[attr-defined]
        await self._sleep(self.handshake_delay)
        if self.handshake_redirect is not None:
            return _json_response(
                302, {"detail": "moved"}, (("Location", self.handshake_redirect),)
            )
        status = self.handshake_status
        if status is None:
            return None
        message = f"The fake upstream refused the websocket upgrade with HTTP {status}."
        return _json_response(status, error_body(status, message), self._extra_headers(conn))

    def _extra_headers(self, conn: ServerConnection) -> tuple[tuple[str, str], ...]:
        n = str(getattr(conn, "fake_handshake_number", 0))
        return tuple((k, v.replace("{n}", n)) for k, v in self.handshake_response_headers)

    def _process_response(
        self, conn: ServerConnection, request: Request, response: Response
    ) -> Response:
        if response.status_code == 101:
            for name, value in self._extra_headers(conn):
                response.headers[name] = value
        return response

    # -- connection

    async def _handle(self, conn: ServerConnection) -> None:
        request = conn.request
        record = SocketRecord(
            index=len(self.sockets),
            path=request.path if request else "",
            headers=_lower_headers(request.headers) if request else {},
        )
        session = _Session(record=record, conn=conn)
        self.sockets.append(record)
        self._sessions.append(session)
        self.connections += 1
        self.open_sockets += 1
        try:
            async for message in conn:
                await self._on_frame(session, message)
        except ConnectionClosed:
            pass
        finally:
            for lane_task in session.lane_tasks:
                if lane_task is not session.closer:
                    lane_task.cancel()
            task = session.task
            if task is not None:
                if task is not session.closer:
                    task.cancel()
                await asyncio.wait([task], timeout=10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 10)
            record.closed = True
            record.close_code = session.sent_close_code or conn.close_code
            self.open_sockets -= 1
            session.done.set()

    async def _on_frame(self, session: _Session, message: str | bytes) -> None:
        text = message
        if isinstance(message, bytes):
            try:
                text = message.decode()
            except UnicodeDecodeError:
                text = ""
        try:
            data = json.loads(text)
        except ValueError:
            session.record.frames.append(message)
            if not session.hung:
                await self._send(
                    session, error_frame("invalid_json", "Invalid JSON in client event.")
                )
            return
        session.record.frames.append(data)
        if session.hung:
            return
        if not isinstance(data, dict):
            await self._send(
                session, error_frame("invalid_json", "Client events must be JSON objects.")
            )
            return
        if data.get("type") != "response.create":
            msg = f"Unknown event type {data.get('type')!r}; expected 'response.create'."
            await self._send(session, error_frame("unknown_event_type", msg, param="type"))
            return
        self.requests.append(data)
        if "stream_id" in data and self.lanes != "ignore":
            await self._on_laned(session, data)
            return
        if session.task is not None and not session.task.done():
            msg = (
                f"Conversation already has an active response in progress: {session.active_id}. "
                "Wait until the response is finished before creating a new one."
            )
            await self._send(session, error_frame("conversation_already_has_active_response", msg))
            return
        session.task = asyncio.create_task(self._run_turn(session, data))

    async def _on_laned(self, session: _Session, data: Json) -> None:
        """A create on a lane: FIFO per lane, lanes concurrent, at most 16 running at once."""
        name = data["stream_id"]
        if self.lanes == "reject":
            msg = "Unknown parameter: 'stream_id'."
            await self._send(session, error_frame("unknown_parameter", msg, param="stream_id"))
            return
        echo = name if isinstance(name, str) else None
        if not isinstance(name, str) or not LANE_NAME.fullmatch(name):
            msg = "Invalid stream_id: 1 to 256 characters of letters, digits, '_', '.' or '-'."
            frame = error_frame("invalid_stream_id", msg, param="stream_id")
            await self._send(session, {**frame, "stream_id": echo} if echo else frame)
            return
        lanes = session.record.lanes
        if name not in lanes and len(lanes) >= MAX_LANE_NAMES:
            msg = f"At most {MAX_LANE_NAMES} distinct stream_id values per connection."
            frame = error_frame("websocket_stream_limit_reached", msg, param="stream_id")
            await self._send(session, {**frame, "stream_id": name})
            return
        lanes.add(name)
        queue = session.lane_queues.get(name)
        if queue is None:
            queue = session.lane_queues[name] = asyncio.Queue()
            session.lane_tasks.append(asyncio.create_task(self._serve_lane(session, name, queue)))
        queue.put_nowait(data)

    async def _serve_lane(self, session: _Session, name: str, queue: asyncio.Queue[Json]) -> None:
        while True:
            request = await queue.get()
            async with session.slots:
                session.in_flight += 1
                record = session.record
                record.max_in_flight = max(record.max_in_flight, session.in_flight)
                try:
                    await self._run_turn(session, request, stream_id=name)
                finally:
                    session.in_flight -= 1

    async def _send(self, session: _Session, event: Json | str | bytes) -> None:
        payload = event if isinstance(event, (str, bytes)) else json.dumps(event)
        await session.conn.send(payload)

    async def _run_turn(
        self, session: _Session, request: Json, *, stream_id: str | None = None
    ) -> None:
        try:
            await _Turn(self, session, request, stream_id=stream_id).run()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("fake upstream turn failed")
            with contextlib.suppress(ConnectionClosed):
                frame = error_frame(
                    "server_error",
                    "The fake upstream crashed.",
                    status=500,
                    err_type="server_error",
                )
                if stream_id is not None:
                    frame["stream_id"] = stream_id
                await self._send(session, frame)


class _Turn:
    """One ``response.create``: validation, the planned events, and streaming them."""

    def __init__(
        self, fake: FakeUpstream, session: _Session, request: Json, *, stream_id: str | None = None
    ) -> None:
        self.fake = fake
        self.session = session
        self.stream_id = stream_id  # echoed on every event of a laned response
        self.request = {k: v for k, v in request.items() if k != "stream_id"}
        self.seq = 0
        self.response_id = new_id("resp")
        self.created_at = int(time.time())
        self.previous_id = request.get("previous_response_id")
        self.directives: dict[str, str] = {}
        self.context: list[Json] = []
        self.new_items: list[Json] = []
        self.cached_tokens = 0
        self.output: list[Json] = []

    # -- sending

    async def send(self, event: Json, *, numbered: bool = True) -> None:
        if numbered:
            event = {**event, "sequence_number": self.seq}
            self.seq += 1
        if self.stream_id is not None:
            event = {**event, "stream_id": self.stream_id}
        await self.fake._send(self.session, event)

    async def fail(self, frame: Json) -> None:
        """Send an error frame and evict the previous response (a failed continuation)."""
        await self.send(frame)
        self.evict()

    def evict(self) -> None:
        if isinstance(self.previous_id, str):
            self.session.responses.pop(self.previous_id, None)

    # -- main

    async def run(self) -> None:
        if not await self.validate():
            return
        if self.fake.input_cost_ms_per_kb > 0:
            # Only the request's own input is new to this socket: a continuation's chain is not.
            kilobytes = len(json.dumps(self.new_items)) / 1024
            await self.fake._sleep_exactly(self.fake.input_cost_ms_per_kb * kilobytes / 1000)
        directives = self.directives
        plan, injects = self.plan()
        delay_ms = directives.get("slow")
        for index in range(len(plan) + 1):
            ended = False
            for inject in (i for i in injects if i.pos == index):
                ended = not await self.inject(inject) or ended
            if ended:
                return
            if index == len(plan):
                break
            if delay_ms is not None:
                await self.fake._sleep(_number(delay_ms, 0) / 1000)
            else:
                await self.fake._sleep(self.fake.event_delay)
            event = plan[index]
            if event["type"] == "response.created":
                self.fake.contexts[self.response_id] = copy.deepcopy(self.context)
                self.session.record.response_ids.append(self.response_id)
                self.session.active_id = self.response_id
            await self.send(
                event, numbered=not event["type"].startswith(("codex.", "responsesapi."))
            )
            if event["type"] in ("response.completed", "response.incomplete"):
                self.remember(self.output)

    async def validate(self) -> bool:
        """Resolve the chain and the input; send the error frame and return False if bad."""
        if self.fake.next_errors:
            status, code = self.fake.next_errors.pop(0)
            await self.fail(error_frame(code, f"Injected error {code}.", status=status))
            return False
        chain: list[Json] = []
        prev = self.previous_id
        if prev is not None:
            if isinstance(prev, str) and prev in self.session.responses:
                chain = self.session.responses[prev]
                self.cached_tokens = _tokens(chain)
            elif isinstance(prev, str) and prev in self.fake.stored:
                chain = self.fake.stored[prev]
                self.cached_tokens = _tokens(chain)
            else:
                await self.fail(
                    error_frame(
                        "previous_response_not_found",
                        f"Previous response with id '{prev}' not found.",
                        param="previous_response_id",
                    )
                )
                return False
        try:
            self.new_items = normalize_input(self.request.get("input"))
        except ValueError as exc:
            await self.fail(error_frame("invalid_type", str(exc), param="input"))
            return False
        known = {item["id"] for item in chain if isinstance(item.get("id"), str)}
        for item in self.new_items:
            if item.get("id") in known:
                await self.fail(
                    error_frame(
                        "duplicate_item",
                        f"Duplicate item found with id '{item['id']}'. "
                        "Remove duplicate items from your input and try again.",
                        param="input",
                    )
                )
                return False
        self.context = copy.deepcopy(chain) + self.new_items
        users = [item for item in self.new_items if _is_user_message(item)]
        last_text = _text_of(users[-1].get("content")) if users else ""
        self.directives = parse_directives(last_text, self.fake.default_directives)
        if self.new_items and self.new_items[-1].get("type") == "function_call_output":
            self.directives.pop("tool", None)  # the tool already ran: answer with text
        return True

    def remember(self, output: list[Json]) -> None:
        """Keep the finished response's full context on the socket (and the store)."""
        full = copy.deepcopy(self.context) + copy.deepcopy(output)
        self.session.responses[self.response_id] = full
        if self.request.get("store") is True:
            self.fake.stored[self.response_id] = full

    # -- planning

    def response_object(self, status: str, output: list[Json] | None, usage: Json | None) -> Json:
        req = self.request
        obj: Json = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": req.get("max_tool_calls"),
            "model": req.get("model") or DEFAULT_MODEL,
            "output": output,
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": self.previous_id,
            "prompt_cache_key": req.get("prompt_cache_key"),
            "reasoning": req.get("reasoning") or {"effort": None, "summary": None},
            "safety_identifier": req.get("safety_identifier"),
            "service_tier": req.get("service_tier") or "default",
            "store": req.get("store") is True,
            "temperature": req.get("temperature", 1.0),
            "text": req.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": req.get("tool_choice", "auto"),
            "tools": req.get("tools") or [],
            "top_logprobs": req.get("top_logprobs", 0),
            "top_p": req.get("top_p", 1.0),
            "truncation": req.get("truncation", "disabled"),
            "usage": usage,
            "user": req.get("user"),
            "metadata": req.get("metadata") or {},
        }
        if output is None:
            del obj["output"]
        return obj

    def usage(self, output: list[Json], reasoning: bool) -> Json:
        input_tokens = _tokens(self.context) + _tokens(self.request.get("instructions"))
        output_tokens = _tokens(output)
        reasoning_tokens = 16 if reasoning else 0
        return {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": min(self.cached_tokens, input_tokens)},
            "output_tokens": output_tokens + reasoning_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens + reasoning_tokens,
        }

    def plan(self) -> tuple[list[Json], list[_Inject]]:
        """All events of the answer, and what to inject where."""
        d = self.directives
        rid = self.response_id
        events: list[Json] = []
        delta_ends: list[int] = []
        if "vendor" in d:
            events.append(_rate_limits_event())
        events.append(
            {"type": "response.created", "response": self.response_object("in_progress", [], None)}
        )
        created_end = len(events)
        if "vendor" in d:
            events.append(
                {
                    "type": "codex.response.metadata",
                    "response_id": rid,
                    "metadata": {
                        "model": self.request.get("model") or DEFAULT_MODEL,
                        "region": "fake-1",
                    },
                }
            )
            events.append(
                {
                    "type": "responsesapi.websocket_timing",
                    "response_id": rid,
                    "timing": {"queue_ms": 1, "first_event_ms": 2, "connection_age_seconds": 0},
                }
            )
        output: list[Json] = []
        generate = self.request.get("generate", True) is not False
        if generate:
            events.append(
                {
                    "type": "response.in_progress",
                    "response": self.response_object("in_progress", [], None),
                }
            )
        incomplete = "incomplete" in d
        if generate and "empty" not in d:
            count = int(_number(d.get("deltas"), DEFAULT_DELTAS)) or DEFAULT_DELTAS
            if "reasoning" in d:
                output.append(self._reasoning(events, len(output)))
            if "tool" in d:
                output.append(self._function_call(events, len(output), count, delta_ends))
            else:
                text = (
                    brief_answer_text(self.context)
                    if "brief" in d
                    else answer_text(self.context, self.new_items)
                )
                pieces = split_text(text, count)
                if d.get("garbage") == "oversized":
                    filler = ("0123456789abcdef" * (OVERSIZED_BYTES // 16 + 1))[:OVERSIZED_BYTES]
                    pieces.insert(min(2, len(pieces)), filler)
                output.append(self._message(events, len(output), pieces, delta_ends, incomplete))
        usage = self.usage(output, "reasoning" in d and generate)
        if incomplete and generate:
            final = self.response_object("incomplete", output, usage)
            final["incomplete_details"] = {"reason": "max_output_tokens"}
            terminal = {"type": "response.incomplete", "response": final}
        else:
            shown: list[Json] | None = output
            if "thin" in d:
                shown = None
            elif "thin_empty" in d:
                shown = []
            terminal = {
                "type": "response.completed",
                "response": self.response_object("completed", shown, usage),
            }
        events.append(terminal)
        positions = {
            "before_created": 0,
            "after_created": delta_ends[0] if delta_ends else created_end,
            "mid": delta_ends[min(1, len(delta_ends) - 1)] if delta_ends else created_end,
            "after_completed": len(events),
        }
        self.output = output  # remembered in full, whatever the terminal frame shows
        return events, self._injects(positions, len(events) - 1)

    def _message(
        self,
        events: list[Json],
        index: int,
        pieces: list[str],
        delta_ends: list[int],
        incomplete: bool,
    ) -> Json:
        item_id = new_id("msg")
        text = "".join(pieces)
        empty_part: Json = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        added: Json = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        events.append({"type": "response.content_part.added", **where, "part": empty_part})
        for piece in pieces:
            events.append(
                {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            )
            delta_ends.append(len(events))
        events.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
        part = {**empty_part, "text": text}
        events.append({"type": "response.content_part.done", **where, "part": part})
        item: Json = {
            "id": item_id,
            "type": "message",
            "status": "incomplete" if incomplete else "completed",
            "role": "assistant",
            "content": [part],
        }
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        return item

    def _function_call(
        self, events: list[Json], index: int, count: int, delta_ends: list[int]
    ) -> Json:
        name, schema = _first_function_tool(self.request.get("tools"))
        arguments = _fake_arguments(schema)
        item_id = new_id("fc")
        base: Json = {
            "id": item_id,
            "type": "function_call",
            "call_id": f"call_{secrets.token_hex(12)}",
            "name": name,
        }
        added = {**base, "arguments": "", "status": "in_progress"}
        events.append({"type": "response.output_item.added", "output_index": index, "item": added})
        for piece in split_text(arguments, min(count, len(arguments))):
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": item_id,
                    "output_index": index,
                    "delta": piece,
                }
            )
            delta_ends.append(len(events))
        events.append(
            {
                "type": "response.function_call_arguments.done",
                "item_id": item_id,
                "output_index": index,
                "name": name,
                "arguments": arguments,
            }
        )
        item = {**base, "arguments": arguments, "status": "completed"}
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        return item

    def _reasoning(self, events: list[Json], index: int) -> Json:
        include = self.request.get("include") or []
        encrypted = (
            f"enc_{secrets.token_hex(32)}" if "reasoning.encrypted_content" in include else None
        )
        item: Json = {
            "id": new_id("rs"),
            "type": "reasoning",
            "summary": [],
            "encrypted_content": encrypted,
        }
        events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
        return item

    def _injects(self, positions: dict[str, int], terminal_pos: int) -> list[_Inject]:
        d = self.directives
        phase = d.get("phase", "")
        at = positions.get(phase, 0)
        injects: list[_Inject] = []
        garbage = d.get("garbage")
        if garbage and garbage != "oversized":
            injects.append(_Inject(at, "garbage", garbage))
        if "limit" in d:
            frame = error_frame(
                "websocket_connection_limit_reached",
                "Responses websocket connection limit reached (60 minutes). "
                "Create a new websocket connection to continue.",
            )
            injects.append(_Inject(0, "error", frame, close_code=1000))
        elif "usage_limit" in d:
            frame = error_frame(
                "usage_limit_reached",
                "The usage limit has been reached.",
                status=429,
                err_type="usage_limit_reached",
                status_key="status_code",
            )
            frame["error"].update({"plan_type": "plus", "resets_in_seconds": 3600})
            injects.append(_Inject(0, "error", frame))
        elif "error" in d or "error_status_code" in d:
            key = "error" if "error" in d else "error_status_code"
            status_text, _, code = d[key].partition(":")
            status = int(_number(status_text, 500))
            err_type, default_code = _error_kind(status)
            frame = error_frame(
                code or default_code,
                f"Fake upstream error {status}.",
                status=status,
                err_type=err_type,
                status_key="status" if key == "error" else "status_code",
            )
            if "error_headers" in d:
                frame["headers"] = dict(ERROR_FRAME_HEADERS)
            injects.append(_Inject(at, "error", frame))
        elif "failed" in d:
            pos = (
                positions["after_created"]
                if phase in ("", "before_created")
                else min(at, terminal_pos)
            )
            injects.append(_Inject(pos, "failed", d["failed"]))
        if "close" in d:
            injects.append(_Inject(at, "close", close_code=int(_number(d["close"], 1000))))
        if "silent" in d:
            injects.append(_Inject(at, "silent"))
        return injects

    async def inject(self, inject: _Inject) -> bool:
        """Perform one injection; False ends the turn."""
        if inject.kind == "garbage":
            if inject.payload == "binary":
                await self.fake._send(self.session, b"\x00\x01fake binary frame\xff")
            elif inject.payload == "typeless":
                await self.fake._send(
                    self.session, {"response_id": self.response_id, "note": "no type here"}
                )
            elif inject.payload == "flood":
                for number in range(FLOOD_EVENTS):
                    await self.send({"type": "response.fake_noise", "number": number})
            else:
                await self.fake._send(self.session, "this is not JSON {")
            return True
        if inject.kind == "error":
            await self.fail(inject.payload)
            if inject.close_code is not None:
                await self.fake._close_session(self.session, inject.close_code, "connection limit")
            return False
        if inject.kind == "failed":
            failed = self.response_object("failed", [], None)
            failed["error"] = (
                None
                if inject.payload == "bare"
                else {
                    "code": "server_error",
                    "message": "The fake model failed to generate a response.",
                }
            )
            await self.send({"type": "response.failed", "response": failed})
            self.evict()
            return False
        if inject.kind == "close":
            await self.fake._close_session(self.session, inject.close_code or 1000, "fake close")
            return False
        self.session.hung = True  # silent
        return False


class _HttpTurn(_Turn):
    """A turn answered over plain HTTP: SSE frames as the events come, or the final JSON."""

    def __init__(
        self,
        fake: FakeUpstream,
        session: _Session,
        request: Json,
        conn: _Connection,
        stream: bool,
    ) -> None:
        super().__init__(fake, session, request)
        self.conn = conn
        self.stream = stream
        self.started = False  # the 200 head is written (stream only)
        self.finished = False  # the whole answer is written

    async def send(self, event: Json, *, numbered: bool = True) -> None:
        if numbered:
            event = {**event, "sequence_number": self.seq}
            self.seq += 1
        if self.finished:
            return
        kind = event.get("type")
        if kind == "error" and not self.started:
            status = event.get("status") or event.get("status_code") or 500
            self.conn._write_http(int(status), {"error": event.get("error")})
            self.finished = True
            return
        if not self.stream:
            if kind in TERMINAL_EVENTS and isinstance(event.get("response"), dict):
                self.conn._write_http(200, event["response"])
                self.finished = True
            return
        if not self.started:
            self.started = True
            self.conn.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            )
        await self._chunk(f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode())
        if kind in TERMINAL_EVENTS:
            self.conn.transport.write(b"0\r\n\r\n")
            self.finished = True

    async def _chunk(self, data: bytes) -> None:
        if self.conn.transport.is_closing():
            raise ConnectionResetError("the HTTP client left")
        self.conn.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        await self.conn.drain()

    async def inject(self, inject: _Inject) -> bool:
        if inject.kind == "garbage":
            if self.stream and self.started:
                binary = inject.payload == "binary"
                text = b"\x00\x01fake binary frame\xff" if binary else b"this is not JSON {"
                await self._chunk(b"data: " + text + b"\n\n")
            return True
        if inject.kind == "error":
            await self.fail(inject.payload)
            if inject.close_code is not None and not self.finished:
                self.conn.transport.close()
            return False
        if inject.kind == "close":
            if inject.close_code == 1006 or not self.started:
                self.conn.transport.abort()
            else:
                self.conn.transport.close()  # ends the body without its last chunk
            return False
        return await super().inject(inject)  # failed, silent


def _number(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default


def _rate_limits_event() -> Json:
    now = int(time.time())
    return {
        "type": "codex.rate_limits",
        "plan_type": "plus",
        "rate_limits": {
            "allowed": True,
            "limit_reached": False,
            "primary": {
                "used_percent": 12.5,
                "window_minutes": 300,
                "resets_in_seconds": 9000,
                "reset_at": now + 9000,
            },
            "secondary": {
                "used_percent": 3.0,
                "window_minutes": 10080,
                "resets_in_seconds": 400000,
                "reset_at": now + 400000,
            },
        },
        "credits": {"has_credits": False, "unlimited": False, "balance": None},
    }


# --------------------------------------------------------------------------- thread wrapper


class FakeUpstreamThread:
    """Runs a FakeUpstream on its own event loop in a daemon thread (for sync tests)."""

    def __init__(self, **kwargs: Any) -> None:
        self.fake = FakeUpstream(**kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.fake.port

    def url(self, path: str = "/v1/responses") -> str:
        """The websocket URL for ``path``."""
        return self.fake.url(path)

    def start(self) -> FakeUpstream:
        """Start the loop thread and the server; return the FakeUpstream."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
            self._thread.start()
            self.fake.runner = self
            self.call(self.fake.start)
        return self.fake

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def call(
        self, coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float = 30
    ) -> T:
        """Run ``coro_fn(*args)`` on the server's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("FakeUpstreamThread is not started")
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the server and the loop thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self.call(self.fake.stop)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeUpstreamThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- CLI


async def _serve(port: int, directives: str, **options: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with FakeUpstream(port=port, default_directives=directives, **options) as fake:
        print(f"fake upstream listening on {fake.url()}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Fake OpenAI Responses WebSocket-mode server.")
    parser.add_argument(
        "--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument(
        "--directives", default="", help='default directives, e.g. "slow=50 vendor"'
    )
    parser.add_argument(
        "--http-responses",
        action="store_true",
        help="also answer POST …/responses over plain HTTP (SSE or JSON)",
    )
    parser.add_argument(
        "--handshake-delay",
        type=float,
        default=0.0,
        help="seconds before answering a websocket upgrade (or a new HTTP connection)",
    )
    parser.add_argument(
        "--input-cost-ms-per-kb",
        type=float,
        default=0.0,
        help="milliseconds slept before response.created per KB of input new to the socket",
    )
    args = parser.parse_args(argv)
    options = {
        "http_responses": args.http_responses,
        "handshake_delay": args.handshake_delay,
        "input_cost_ms_per_kb": args.input_cost_ms_per_kb,
    }
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.directives, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
