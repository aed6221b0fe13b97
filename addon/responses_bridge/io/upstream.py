"""The upstream websocket: the only module that imports ``websockets``.

``open_socket`` connects; ``UpstreamSocket`` sends client events and receives server events as
parsed JSON objects. Every foreign exception is translated here, once, into the bridge's
``UpstreamError`` tree, with what happened (status, close code and reason) in the message.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as _library_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidProxy,
    InvalidProxyStatus,
    InvalidStatus,
    InvalidURI,
    ProxyError,
)

from responses_bridge.protocol.errors import (
    UpstreamClosed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from responses_bridge.protocol.headers import passed_response_headers

# The library logs handshake headers (Authorization included) at debug level: keep it quiet.
_LIBRARY_LOGGER = logging.getLogger("responses_bridge.websockets")
_LIBRARY_LOGGER.setLevel(logging.WARNING)

MAX_FRAME_BYTES = 64 * 1024 * 1024  # the library's 1 MiB default is too small for big terminals
_socket_numbers = itertools.count(1)
_CLOSE_NAMES = {
    1000: "normal",
    1001: "going away",
    1006: "abnormal, no close frame",
    1009: "message too big",
    1011: "internal error",
}


def describe_close(exc: ConnectionClosed) -> str:
    """``close code 1011 (internal error), reason 'boom'`` style text for a closed socket."""
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "the connection was lost without a close frame (1006)"
    name = _CLOSE_NAMES.get(frame.code)
    text = f"close code {frame.code}" + (f" ({name})" if name else "")
    if frame.reason:
        text += f", reason {frame.reason!r}"
    return text


def _rejection_message(status: int, body: bytes, location: str | None = None) -> str:
    if 300 <= status < 400:
        target = f" to {location[:200]!r}" if location else ""
        return (
            f"The upstream answered the websocket upgrade with a redirect (HTTP {status}{target}); "
            "the bridge does not follow redirects, so the request's headers stay with the "
            "upstream it was sent to."
        )
    detail = ""
    try:
        parsed = json.loads(body.decode("utf-8", errors="replace")) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            detail = str(inner["message"])
        elif parsed.get("detail"):
            detail = str(parsed["detail"])
    elif body:
        detail = body[:200].decode("utf-8", errors="replace").strip()
    hint = " (the upstream has no websocket mode)" if status == 426 else ""
    message = f"The upstream rejected the websocket upgrade with HTTP {status}{hint}"
    return f"{message}: {detail}" if detail else f"{message}."


def proxy_url(scheme: str, host: str, port: int, auth: str | None) -> str:
    """The URL ``open_socket`` takes for an upstream proxy at ``host``:``port``.

    ``auth`` is ``user:password`` as in mitmproxy's ``upstream_auth``; both parts are
    percent-encoded, so a password with ``@ / # % :`` reaches the proxy unchanged.
    """
    userinfo = ""
    if auth:
        user, _, password = auth.partition(":")
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    return f"{scheme}://{userinfo}{_bracketed(host)}:{port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _proxy_address(proxy: str) -> str:
    """``proxy`` without its credentials, for messages and logs."""
    try:
        parts = urlsplit(proxy)
        return f"{parts.scheme}://{_bracketed(parts.hostname or '')}:{parts.port}"
    except ValueError:
        return "(an unparsable proxy URL)"


class _ConnectWithoutRedirects(_library_connect):
    """The library's ``connect`` without following redirects. A followed redirect would take
    the upgrade's headers (API keys, account ids: the library strips only a few cross-origin)
    to wherever the upstream points; a 3xx is an upstream error instead."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class UpstreamSocket:
    """One open upstream websocket."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self.label = f"ws-{next(_socket_numbers)}"  # names the socket in diagnostics
        # The library's queue of received frames (made once per connection), read without
        # consuming it; an empty stand-in if this websockets version has none.
        assembler = getattr(connection, "recv_messages", None)
        queue = getattr(getattr(assembler, "frames", None), "queue", None)
        self._frames: Sequence[object] = queue if isinstance(queue, Sequence) else ()
        response = getattr(connection, "response", None)
        self._handshake_headers = (
            passed_response_headers(response.headers.raw_items()) if response is not None else []
        )

    def take_handshake_headers(self) -> list[tuple[str, str]]:
        """The handshake response's headers a client gets (``protocol.headers``), once: they
        describe the request that opened the socket, so only the first answer on it has them."""
        headers, self._handshake_headers = self._handshake_headers, []
        return headers

    @property
    def closed(self) -> bool:
        """True once the socket is closing or closed."""
        return self._connection.close_code is not None or self._connection.state.name in (
            "CLOSING",
            "CLOSED",
        )

    def has_pending(self) -> bool:
        """True when a received frame is already waiting (so a write can wait for it and
        carry both). Reads the library's queue; without it, answers False (no batching)."""
        return bool(self._frames)

    def _whole_message_waiting(self) -> bool:
        """True when a complete (unfragmented) message is queued; False when unsure."""
        frames = self._frames
        return bool(frames) and getattr(frames[0], "fin", False) is True

    def end_state(self) -> dict[str, Any]:
        """How the socket ended (for inspection): close code and reason, when known."""
        return {
            "socket_id": self.label,
            "closed": self.closed,
            "code": self._connection.close_code,
            "reason": self._connection.close_reason or "",
        }

    async def send_event(self, event: dict[str, Any]) -> None:
        """Send one client event as a JSON text frame."""
        try:
            await self._connection.send(json.dumps(event, ensure_ascii=False))
        except ConnectionClosed as exc:
            raise UpstreamClosed(
                f"The upstream socket closed before the request was sent: {describe_close(exc)}."
            ) from exc

    async def receive(self, idle_timeout: float | None) -> tuple[dict[str, Any], str]:
        """The next server event and its raw JSON text.

        Raises ``UpstreamTimeout`` after ``idle_timeout`` seconds of silence, ``UpstreamClosed``
        when the socket closes, ``UpstreamProtocolError`` for a frame that is not a JSON object
        with a string ``type``.
        """
        try:
            if self._whole_message_waiting():
                # recv() returns at once: no timer (arming one per frame costs a fifth of the
                # relay's CPU on a fast stream).
                message = await self._connection.recv()
            else:
                async with asyncio.timeout(idle_timeout):
                    message = await self._connection.recv()
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"The upstream sent nothing for {idle_timeout:g} s (responses_bridge_idle_timeout)."
            ) from exc
        except ConnectionClosed as exc:
            raise UpstreamClosed(
                f"The upstream socket closed before the response finished: {describe_close(exc)}."
            ) from exc
        if isinstance(message, bytes):
            raise UpstreamProtocolError(
                f"The upstream sent a binary frame ({len(message)} bytes); events are JSON text."
            )
        try:
            event = json.loads(message)
        except ValueError as exc:
            raise UpstreamProtocolError(
                f"The upstream sent a frame that is not JSON: {message[:120]!r}"
            ) from exc
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise UpstreamProtocolError(
                f"The upstream sent an event without a string 'type': {message[:120]!r}"
            )
        return event, message

    async def close(self) -> None:
        """Close the socket (it cancels any response in progress upstream); never raises."""
        try:
            async with asyncio.timeout(2):
                await self._connection.close()
        except (TimeoutError, OSError, ConnectionClosed):
            self._connection.transport.abort()


async def open_socket(
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    proxy: str | None = None,
    address: tuple[str, int] | None = None,
) -> UpstreamSocket:
    """Open the upstream websocket, translating every failure into an ``UpstreamError``.

    ``proxy`` is an ``http://`` proxy URL for CONNECT, or None for a direct connection: the
    environment's proxy variables are never used (inside a proxy they would loop).
    ``address`` is dialled instead of resolving the URL's host, which stays the name that TLS
    verifies and the ``Host`` header carries (transparent and local capture modes).
    """
    secure = url.startswith("wss:")
    dial: dict[str, Any] = {}
    if address is not None and proxy is None:
        dial = {"host": address[0], "port": address[1]}
    try:
        connection = await _ConnectWithoutRedirects(
            url,
            additional_headers=list(headers),
            user_agent_header=None
            if any(k.lower() == "user-agent" for k, _ in headers)
            else "responses-bridge",
            open_timeout=connect_timeout,
            max_size=MAX_FRAME_BYTES,
            proxy=proxy,
            ssl=ssl_context if secure else None,
            compression="deflate",
            ping_interval=20,
            ping_timeout=60,
            close_timeout=2,
            logger=_LIBRARY_LOGGER,
            **dial,
        )
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"Connecting to the upstream {url} timed out after {connect_timeout:g} s "
            "(responses_bridge_connect_timeout)."
        ) from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise UpstreamRejected(
            _rejection_message(
                status, bytes(exc.response.body or b""), exc.response.headers.get("Location")
            ),
            status=status if 400 <= status <= 599 else 502,
            headers=dict(passed_response_headers(exc.response.headers.raw_items())),
        ) from exc
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamUnavailable(
            f"The upstream {url} presented a certificate that is not trusted: "
            f"{str(exc.verify_message).rstrip('.')}. Trust its CA with "
            "ssl_verify_upstream_trusted_ca, or set ssl_insecure."
        ) from exc
    except InvalidURI as exc:
        raise UpstreamUnavailable(f"Cannot connect to the upstream {url}: {exc}.") from exc
    except InvalidProxy as exc:
        # Not str(exc): it repeats the proxy URL, credentials included.
        raise UpstreamUnavailable(
            f"Cannot connect to the upstream {url}: the upstream proxy URL "
            f"{_proxy_address(exc.proxy)} is not valid ({exc.msg})."
        ) from exc
    except InvalidProxyStatus as exc:
        status = exc.response.status_code
        hint = " (check upstream_auth)" if status == 407 else ""
        raise UpstreamUnavailable(
            f"The upstream proxy {_proxy_address(proxy or '')} refused to connect to {url}: "
            f"HTTP {status} {exc.response.reason_phrase}{hint}."
        ) from exc
    except (ProxyError, InvalidHandshake) as exc:
        raise UpstreamUnavailable(
            f"The websocket handshake with the upstream {url} failed: {exc}."
        ) from exc
    except ValueError as exc:  # websockets lets urllib's "Port out of range" through
        raise UpstreamUnavailable(
            f"Cannot connect to the upstream {url}: the upstream proxy URL "
            f"{_proxy_address(proxy or '')} is not valid ({exc})."
        ) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UpstreamUnavailable(f"Cannot connect to the upstream {url}: {reason}.") from exc
    except ConnectionClosed as exc:
        raise UpstreamUnavailable(
            f"The upstream {url} closed during the handshake: {describe_close(exc)}."
        ) from exc
    return UpstreamSocket(connection)


__all__ = ["MAX_FRAME_BYTES", "UpstreamError", "UpstreamSocket", "open_socket", "proxy_url"]
