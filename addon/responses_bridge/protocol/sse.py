"""Pure Server-Sent-Events framing for Responses streams: encode events, decode a byte stream.

A frame is ``event: <type>\\ndata: <one-line JSON>\\n\\n``; no ``[DONE]`` (OpenAI sends none for
Responses). The decoder accepts anything the SSE spec allows (CRLF, comments, multi-line data).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from responses_bridge.protocol.errors import BridgeError

KEEPALIVE = b": keep-alive\n\n"


def dumps(event: dict[str, Any]) -> str:
    """Compact one-line JSON, non-ASCII kept as is."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def encode_event(event: dict[str, Any], raw: str | None = None) -> bytes:
    """One SSE frame. ``raw`` is the event's JSON text as received; it is reused unchanged when it
    is a single line, which saves serializing every relayed delta again."""
    data = raw if raw is not None and "\n" not in raw and "\r" not in raw else dumps(event)
    kind = str(event["type"])
    if "\n" in kind or "\r" in kind:  # never let an upstream inject SSE fields
        kind = kind.replace("\r", " ").replace("\n", " ")
    try:
        return f"event: {kind}\ndata: {data}\n\n".encode()
    except UnicodeEncodeError:
        # A lone surrogate (json.loads accepts "\ud83d"): send it escaped, as JSON allows.
        data = json.dumps(event, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode(errors="replace")


def with_previous_response_id(raw: str, current: Any, shown: str | None) -> str | None:
    """An event's JSON text with its response's ``previous_response_id`` changed from
    ``current`` to ``shown`` by editing the text, which is much cheaper than serializing the
    whole response again; None unless the text holds that field once, written as
    ``json.dumps`` writes ``current`` (compact, or with spaces around the colon)."""
    # A key inside a string value is escaped (\"previous_response_id\"), so it is not counted.
    if raw.count('"previous_response_id"') != 1:
        return None
    field = _PREVIOUS_FIELD.search(raw)
    value = json.dumps(current)
    if field is None or not raw.startswith(value, field.end()):
        return None
    end = field.end() + len(value)
    if not _VALUE_END.match(raw, end):  # e.g. 1 is not the whole of 12
        return None
    return f"{raw[: field.end()]}{json.dumps(shown)}{raw[end:]}"


_PREVIOUS_FIELD = re.compile(r'"previous_response_id"[ \t]*:[ \t]*')
_VALUE_END = re.compile(r"[ \t]*[,}]")


def error_event(error: BridgeError, sequence_number: int | None = None) -> dict[str, Any]:
    """The SSE ``error`` event for a failure after the stream started.

    Carries the error both nested (``error``: openai-python raises on a truthy ``error`` key) and
    flat (``code``/``message``/``param``, the documented ``ResponseErrorEvent`` shape).
    """
    inner = error.error_object()
    event: dict[str, Any] = {
        "type": "error",
        "code": inner.get("code"),
        "message": inner.get("message"),
        "param": inner.get("param"),
        "error": inner,
    }
    if error.headers:
        # What the HTTP answer would have carried as headers (retry-after, rate limits).
        event["headers"] = dict(error.headers)
    if sequence_number is not None:
        event["sequence_number"] = sequence_number
    return event


@dataclass(frozen=True)
class SSEMessage:
    """One decoded SSE message: its ``event`` field (``message`` when absent) and its data."""

    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Incremental decoder: ``feed(bytes)`` yields the complete messages seen so far.

    Linear in the bytes fed: lines are read at a moving position and the consumed part is
    dropped once per feed, never copied again line by line."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0  # where the next line starts
        self._scanned = 0  # no line terminator before this (within an unfinished line)
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> Iterator[SSEMessage]:
        buffer = self._buffer
        if self._position:
            del buffer[: self._position]  # O(1) amortized at the front of a bytearray
            self._scanned -= self._position
            self._position = 0
        buffer += chunk
        while True:
            cut = _line_end(buffer, self._position, max(self._scanned, self._position))
            if cut is None:
                # Nothing up to the last byte but a possibly split CRLF: not scanned again.
                self._scanned = max(self._position, len(buffer) - 1)
                return
            end, after = cut
            line = buffer[self._position : end].decode("utf-8", errors="replace")
            self._position = self._scanned = after
            message = self._line(line)
            if message is not None:
                yield message

    def close(self) -> Iterator[SSEMessage]:
        """Flush a final message that lacked its blank line."""
        rest = bytes(self._buffer[self._position :])
        self._buffer, self._position, self._scanned = bytearray(), 0, 0
        if rest:
            # What is left has no LF; a final CR is its line end, not part of the line.
            message = self._line(rest.removesuffix(b"\r").decode("utf-8", errors="replace"))
            if message is not None:
                yield message
        message = self._line("")
        if message is not None:
            yield message

    def _line(self, line: str) -> SSEMessage | None:
        if line == "":
            if not self._data:  # the spec drops a message without data, event name and all
                self._event = None
                return None
            message = SSEMessage(self._event or "message", "\n".join(self._data))
            self._event, self._data = None, []
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def _line_end(buffer: bytearray, start: int, scan_from: int) -> tuple[int, int] | None:
    """Position of the first line terminator (LF, CRLF or a lone CR) at or after ``start``
    (none lies between ``start`` and ``scan_from``) and the index after it."""
    lf = buffer.find(b"\n", scan_from)
    cr = buffer.find(b"\r", scan_from, lf if lf != -1 else len(buffer))
    if cr == -1:
        return None if lf == -1 else (lf, lf + 1)
    if cr + 1 == len(buffer):
        return None  # may be the CR of a CRLF split across chunks
    return cr, cr + 2 if buffer[cr + 1] == 0x0A else cr + 1


def decode_all(data: bytes) -> list[SSEMessage]:
    """Decode a whole SSE body."""
    decoder = SSEDecoder()
    messages = list(decoder.feed(data))
    messages.extend(decoder.close())
    return messages
