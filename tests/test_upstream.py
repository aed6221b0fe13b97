"""``upstream``: a kept socket that the upstream closed while it sat idle fails the next send
with ``UpstreamClosed`` (which the relay retries on a fresh socket), never with a library error."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from responses_bridge.errors import UpstreamClosed
from responses_bridge.upstream import open_socket


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
    assert socket.end_state() == {"closed": True, "code": 1001, "reason": "going away"}
