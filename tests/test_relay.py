"""Unit tests for ``responses_bridge.turn.relay``: upstream events relayed to the client, with a
real websockets upstream and a loopback writer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from responses_bridge.io.upstream import open_socket
from responses_bridge.turn import relay
from responses_bridge.turn.exchange import ClientSink, Exchange
from responses_bridge.turn.planning import Plan
from tests.test_exchange import exchange, loopback_writer

BURST = [
    {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
    {"type": "response.in_progress", "response": {"id": "resp_1", "status": "in_progress"}},
    *({"type": "response.output_text.delta", "delta": f"d{i} "} for i in range(6)),
    {
        "type": "response.completed",
        "response": {"id": "resp_1", "status": "completed", "output": [], "usage": None},
    },
]


def sse_data(body: bytes) -> list[object]:
    return [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: ")]


@asynccontextmanager
async def burst_upstream(
    gaps: dict[int, float] | None = None, events: list[dict[str, Any]] = BURST
) -> AsyncIterator[str]:
    """A websocket upstream that sends ``events`` when a client connects: all at once, or with
    a pause of ``gaps[i]`` seconds before event ``i``."""

    async def handler(connection: ServerConnection) -> None:
        for index, event in enumerate(events):
            if gaps and index in gaps:
                await asyncio.sleep(gaps[index])
            await connection.send(json.dumps(event))  # without a pause: all written together
        await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/responses"


@asynccontextmanager
async def relaying(
    ex: Exchange,
    gaps: dict[int, float] | None = None,
    events: list[dict[str, Any]] = BURST,
    plan: Plan | None = None,
) -> AsyncIterator[tuple[asyncio.Task[object], asyncio.StreamReader, list[bytes]]]:
    """Relay ``events`` (with ``gaps``) as SSE into a loopback writer, in a task; ``ex.sse_body``
    gets the body, the list each chunk as it was written (as mitmproxy reads it)."""
    chunks: list[bytes] = []
    async with burst_upstream(gaps, events) as url, loopback_writer() as (writer, reader):
        socket_ = await open_socket(url, [], connect_timeout=5)
        sink = ex.sink = ClientSink(ex, writer, attach_timeout=5)
        sink.stream_chunks_to(lambda chunk: (ex.sse_body.extend(chunk), chunks.append(chunk)))
        plan = plan or Plan({"type": "response.create"}, "new", [])
        task: asyncio.Task[object] = asyncio.create_task(
            relay.relay_stream(socket_, sink, ex, plan)
        )
        try:
            yield task, reader, chunks
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await socket_.close()


async def test_the_first_delta_waits_until_mitmproxy_has_sent_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "FIRST_DELTA_WAIT", 30.0)  # only forwarding ends the wait here
    ex = exchange()
    async with relaying(ex) as (task, reader, _chunks):
        for _ in range(500):  # until the relay holds the burst back (bounded)
            if ex.awaiting_forward or task.done():
                break
            await asyncio.sleep(0.01)
        assert ex.awaiting_forward, "the relay did not wait for the first delta to go on"
        body = bytes(ex.sse_body)
        assert sse_data(body)[-1] == BURST[2]  # up to and including the first delta
        ex.forwarded(body[:10])  # not all of it yet: still waiting
        await asyncio.sleep(0.05)
        assert ex.awaiting_forward and bytes(ex.sse_body) == body
        ex.forwarded(body[10:])
        await asyncio.wait_for(task, 5)
        received = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), 5)
    assert received.count(b"event: response.output_text.delta") == 6
    assert sse_data(bytes(ex.sse_body)) == BURST


async def test_the_burst_goes_on_when_nothing_is_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # mitmproxy never calls the stream callable (another addon replaced it): a bounded wait.
    monkeypatch.setattr(relay, "FIRST_DELTA_WAIT", 0.05)
    ex = exchange()
    async with relaying(ex) as (task, _reader, _chunks):
        await asyncio.wait_for(task, 5)
    assert sse_data(bytes(ex.sse_body)) == BURST
    assert not ex.awaiting_forward and ex.forwarded_bytes == 0


async def test_events_before_the_first_delta_wait_for_it_to_go_out_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Frames a few ms apart (more than one TCP read each): one piece up to the first delta.
    monkeypatch.setattr(relay, "PRE_DELTA_LINGER", 0.5)
    chunks = await relay_chunks({1: 0.005, 2: 0.005, 3: 0.005})
    assert sse_data(chunks[0]) == BURST[:3]
    assert [e for chunk in chunks for e in sse_data(chunk)] == BURST


async def test_a_batch_waits_for_what_follows_only_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing behind response.created for a while (the model thinking): it goes out alone.
    monkeypatch.setattr(relay, "PRE_DELTA_LINGER", 0.02)
    chunks = await relay_chunks({1: 0.5})
    assert sse_data(chunks[0]) == BURST[:1]
    assert [e for chunk in chunks for e in sse_data(chunk)] == BURST


async def test_the_client_s_previous_response_id_goes_into_the_response_not_a_nested_field() -> (
    None
):
    # The upstream's response has no previous_response_id of its own, but an output item holds a
    # field of that name: editing the text would change that one, so the event is serialized.
    item = {"type": "message", "id": "msg_1", "metadata": {"previous_response_id": None}}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": "resp_2", "status": "in_progress"}},
        {"type": "response.output_text.delta", "delta": "hi"},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {
            "type": "response.completed",
            "response": {"id": "resp_2", "status": "completed", "output": [item]},
        },
    ]
    plan = Plan(
        {"type": "response.create"},
        "rehydrated",
        [],
        show_previous=True,
        shown_previous_id="resp_1",
    )
    ex = exchange()
    ex.forwarded_bytes = 1 << 30
    async with relaying(ex, events=events, plan=plan) as (task, _reader, _chunks):
        await asyncio.wait_for(task, 10)
    created, _delta, _done, completed = sse_data(bytes(ex.sse_body))
    for event in (created, completed):
        assert isinstance(event, dict)
        assert event["response"]["previous_response_id"] == "resp_1"
    assert isinstance(completed, dict)
    assert completed["response"]["output"] == [item]


async def relay_chunks(gaps: dict[int, float]) -> list[bytes]:
    """The chunks BURST (with ``gaps``) is relayed in, mitmproxy passing each on at once."""
    ex = exchange()
    ex.forwarded_bytes = 1 << 30
    async with relaying(ex, gaps) as (task, _reader, chunks):
        await asyncio.wait_for(task, 10)
    return chunks
