"""ClientSink: a turn may start before the loopback request it answers arrives (the addon starts
it from the end of mitmproxy's request hooks); its writes wait for the writer, never forever."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from responses_bridge.io.loopback import ResponseWriter
from responses_bridge.turn.exchange import ClientSink, Exchange, Settings


@asynccontextmanager
async def loopback_writer() -> AsyncIterator[tuple[ResponseWriter, asyncio.StreamReader]]:
    """A ResponseWriter on one end of a real socket pair, and a reader on the other."""
    ours, theirs = socket.socketpair()
    _r, writer = await asyncio.open_connection(sock=ours)
    reader, peer = await asyncio.open_connection(sock=theirs)
    try:
        yield ResponseWriter(writer), reader
    finally:
        writer.close()
        peer.close()


def exchange(**settings: float) -> Exchange:
    return Exchange("flow-1", "ws://127.0.0.1:1/v1/responses", Settings(**settings))  # type: ignore[arg-type]


async def test_writes_wait_for_attach_and_go_out_in_order() -> None:
    ex = exchange()
    sink = ex.sink = ClientSink(ex, attach_timeout=5)
    chunks: list[bytes] = []
    sink.stream_chunks_to(chunks.append)
    assert not sink.attached and not sink.started and sink.status is None

    async def turn() -> None:
        await sink.start_stream([("x-test", "1")])
        await sink.write(b"event: a\ndata: {}\n\n")
        await sink.end_stream(b"event: z\ndata: {}\n\n")

    task = asyncio.create_task(turn())
    # Waiting for the writer, it says so, so the request hook lets mitmproxy go on.
    await asyncio.wait_for(ex.dispatched.wait(), 5)
    assert not task.done()
    async with loopback_writer() as (writer, reader):
        sink.attach(writer)
        await asyncio.wait_for(task, 5)
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"x-test: 1" in head
    assert b"event: a" in body and body.index(b"event: a") < body.index(b"event: z")
    assert chunks == [b"event: a\ndata: {}\n\n", b"event: z\ndata: {}\n\n"]
    assert sink.started and sink.finished and sink.status == 200
    assert ex.bytes_relayed() == sum(map(len, chunks))


async def test_attached_sink_writes_at_once() -> None:
    async with loopback_writer() as (writer, reader):
        sink = ClientSink(exchange(), writer, attach_timeout=5)
        assert sink.attached
        await sink.send_json(400, {"error": {"message": "bad"}}, [])
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert sink.status == 400 and sink.finished


async def test_leaving_before_attach_releases_waiters_and_aborts_the_late_writer() -> None:
    ex = exchange(drain_timeout=7.0)
    sink = ClientSink(ex, attach_timeout=60)
    task = asyncio.create_task(sink.send_json(200, {"ok": True}, []))
    await asyncio.wait_for(ex.dispatched.wait(), 5)  # the write waits for a writer
    sink.leave()
    await asyncio.wait_for(task, 1)  # returns at once: nothing to write to
    assert sink.gone and not sink.attached
    assert 6.0 < sink.drain_remaining() <= 7.0
    async with loopback_writer() as (writer, reader):
        sink.attach(writer)  # the loopback request arrived after all: dropped
        assert writer.finished
        assert await reader.read() == b""


async def test_a_writer_that_never_comes_counts_as_a_client_that_left() -> None:
    ex = exchange()
    sink = ex.sink = ClientSink(ex, attach_timeout=0.05)
    await asyncio.wait_for(sink.start_stream([]), 2)
    assert sink.gone
    assert sink.started  # committed: the relay must not try to answer with JSON afterwards
    await sink.write(b"dropped")
    assert ex.bytes_relayed() == 0


async def test_a_streamed_head_goes_out_with_the_first_chunk() -> None:
    # One write for both: mitmproxy then reads the head and the first events together.
    async with loopback_writer() as (writer, reader):
        await writer.start_stream(200, [("content-type", "text/event-stream")])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.05)
        await writer.write(b"event: a\n\n")
        data = await asyncio.wait_for(reader.readuntil(b"event: a\n\n\r\n"), 1)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in data


async def test_an_exchange_and_its_sink_are_freed_without_the_garbage_collector() -> None:
    # Each refers to the other's parts, not to the other: no cycle keeps a finished turn (its
    # task, its events, its SSE body) alive until the cyclic collector runs.
    gc.disable()
    try:
        async with loopback_writer() as (writer, _reader):
            ex = exchange()
            ex.sink = ClientSink(ex, writer, attach_timeout=5)
            ex.sink.stream_chunks_to(ex.sse_body.extend)
            await ex.sink.write(b"data")
            ex.sink.leave()
            freed = weakref.ref(ex)
            del ex
            assert freed() is None
    finally:
        gc.enable()


def test_after_first_output_runs_once() -> None:
    ex = exchange()
    calls: list[int] = []
    ex.after_first_output = lambda: calls.append(1)
    ex.first_output_sent()
    ex.first_output_sent()
    assert calls == [1] and ex.after_first_output is None


# -- the first delta goes out ahead of the rest of its burst -------------------------------------


async def test_until_forwarded_returns_at_once_for_what_was_already_sent_on() -> None:
    ex = exchange()
    assert ex.forwarded(b"abc") == b"abc"  # the chunk passes unchanged
    await asyncio.wait_for(ex.until_forwarded(3, 60), 1)
    assert not ex.awaiting_forward
