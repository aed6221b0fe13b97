"""``upstream``: every way of failing to open or use a socket becomes one of the bridge's
``UpstreamError``s with a message that says what happened (and never a proxy password), against
real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.proxy import parse_proxy

from responses_bridge.io.upstream import open_socket, proxy_url
from responses_bridge.protocol.errors import UpstreamClosed, UpstreamUnavailable

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[int]:
    """A plain TCP server on 127.0.0.1 running ``handler`` per connection; yields its port."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def read_head(reader: asyncio.StreamReader) -> list[str]:
    return (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")


async def test_send_on_a_socket_the_upstream_closed_is_upstream_closed() -> None:
    async def close_at_once(connection: ServerConnection) -> None:
        await connection.close(1001, "going away")

    async with serve(close_at_once, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        socket = await open_socket(f"ws://127.0.0.1:{port}/v1/responses", [], connect_timeout=5)
        await asyncio.wait_for(socket._connection.wait_closed(), 5)  # the close arrives
        assert socket.closed
        with pytest.raises(UpstreamClosed) as caught:
            await socket.send_event({"type": "response.create", "model": "m", "input": "x"})
    assert caught.value.code == "upstream_closed"
    assert "closed before the request was sent" in caught.value.message
    assert "1001" in caught.value.message
    end = socket.end_state()
    assert end == {"socket_id": socket.label, "closed": True, "code": 1001, "reason": "going away"}


async def test_upstream_closing_during_the_handshake_is_unavailable() -> None:
    async def read_then_close(reader: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        await read_head(reader)

    async with raw_server(read_then_close) as port:
        with pytest.raises(UpstreamUnavailable) as caught:
            await open_socket(f"ws://127.0.0.1:{port}/v1/responses", [], connect_timeout=5)
    assert caught.value.code == "upstream_unavailable"
    assert caught.value.status == 502
    assert f"127.0.0.1:{port}" in caught.value.message
    assert "handshake" in caught.value.message


@pytest.mark.parametrize(
    ("auth", "user", "password"),
    [
        (None, None, None),
        ("user:pass", "user", "pass"),
        ("us er:p@ss/w#rd?%41:x", "us er", "p@ss/w#rd?%41:x"),
        ("user:", "user", ""),
    ],
)
def test_proxy_url_keeps_any_password_intact(
    auth: str | None, user: str | None, password: str | None
) -> None:
    parsed = parse_proxy(proxy_url("http", "proxy.test", 3128, auth))
    assert (parsed.host, parsed.port) == ("proxy.test", 3128)
    assert parsed.user_info == (None if user is None else (user, password))


def test_proxy_url_brackets_an_ipv6_host() -> None:
    parsed = parse_proxy(proxy_url("http", "::1", 8080, None))
    assert (parsed.host, parsed.port) == ("::1", 8080)


async def test_a_refusing_ipv6_proxy_is_named_with_brackets() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    try:
        server = await asyncio.start_server(refuse, "::1", 0)
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(UpstreamUnavailable) as caught:
            await open_socket(
                "ws://upstream.test:9/v1/responses",
                [],
                connect_timeout=5,
                proxy=proxy_url("http", "::1", port, "user:s3cret"),
            )
    assert f"http://[::1]:{port} refused" in caught.value.message
    assert "HTTP 403 Forbidden" in caught.value.message
    assert "upstream_auth" not in caught.value.message  # only a 407 is about credentials
    assert "s3cret" not in caught.value.message


async def test_a_proxy_refusing_with_407_names_the_status_not_the_password() -> None:
    seen: list[list[str]] = []

    async def demand_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_head(reader))
        writer.write(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()

    async with raw_server(demand_auth) as port:
        proxy = proxy_url("http", "127.0.0.1", port, "user:s3cret")
        with pytest.raises(UpstreamUnavailable) as caught:
            await open_socket(
                "ws://upstream.test:9/v1/responses", [], connect_timeout=5, proxy=proxy
            )
    message = caught.value.message
    assert "HTTP 407" in message and "upstream_auth" in message
    assert f"127.0.0.1:{port}" in message and "upstream.test:9" in message
    assert "s3cret" not in message
    # The credentials did go to the proxy, in the CONNECT request.
    assert seen[0][0] == "CONNECT upstream.test:9 HTTP/1.1"
    expected = "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert f"Proxy-Authorization: {expected}" in seen[0]


@pytest.mark.parametrize(
    ("proxy", "shown"),
    [
        ("ftp://user:s3cret@proxy.test:21", "ftp://proxy.test:21"),
        ("ftp://user:s3cret@proxy.test:abc", "(an unparsable proxy URL)"),
        ("http://user:s3cret@proxy.test:99999", "(an unparsable proxy URL)"),
    ],
)
async def test_an_invalid_proxy_url_is_unavailable_without_its_credentials(
    proxy: str, shown: str
) -> None:
    with pytest.raises(UpstreamUnavailable) as caught:
        await open_socket("ws://upstream.test:9/v1/responses", [], connect_timeout=5, proxy=proxy)
    assert "not valid" in caught.value.message
    assert shown in caught.value.message
    assert "s3cret" not in caught.value.message
