"""The fake Responses WebSocket-mode upstream behaves as PROTOCOL.md section 2 says."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as sync_connect

from tests.fake_upstream import (
    TERMINAL_EVENTS,
    FakeUpstream,
    FakeUpstreamThread,
    answer_text,
    parse_directives,
    split_text,
    text_event_types,
)

Json = dict[str, Any]

TEXT_SEQUENCE = text_event_types()


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


async def open_ws(
    fake: FakeUpstream, path: str = "/v1/responses", **kwargs: Any
) -> ClientConnection:
    return await connect(fake.url(path), proxy=None, max_size=None, open_timeout=5, **kwargs)


async def send(ws: ClientConnection, **body: Any) -> None:
    await ws.send(json.dumps({"type": "response.create", "model": "gpt-test", **body}))


async def read_until_terminal(ws: ClientConnection, timeout: float = 5) -> list[Json]:
    events: list[Json] = []
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            events.append(event)
            if event["type"] in TERMINAL_EVENTS:
                return events


async def turn(ws: ClientConnection, **body: Any) -> list[Json]:
    await send(ws, **body)
    return await read_until_terminal(ws)


def text_of(events: list[Json]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def final(events: list[Json]) -> Json:
    response: Json = events[-1]["response"]
    return response


async def wait_until_closed(fake: FakeUpstream, index: int = -1) -> None:
    async with asyncio.timeout(5):
        while not fake.sockets[index].closed:
            await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- basics


@pytest.mark.asyncio
async def test_text_answer_event_sequence(fake: FakeUpstream) -> None:
    headers = {"Authorization": "Bearer sk-x", "OpenAI-Beta": "responses_websockets=2026-02-06"}
    async with await open_ws(fake, additional_headers=headers) as ws:
        events = await turn(ws, input="hello", instructions="be brief", metadata={"k": "v"})
    assert [e["type"] for e in events] == TEXT_SEQUENCE
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert all(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    text = text_of(events)
    assert text == "echo: hello | context: 1 user messages | hello"
    added = events[2]["item"]
    assert (
        added["type"] == "message" and added["content"] == [] and added["status"] == "in_progress"
    )
    assert added["id"].startswith("msg_")
    created, done = events[0]["response"], final(events)
    assert created["status"] == "in_progress" and created["output"] == []
    assert done["id"] == created["id"] and done["id"].startswith("resp_")
    assert done["object"] == "response" and done["status"] == "completed"
    assert done["model"] == "gpt-test" and done["instructions"] == "be brief"
    assert done["metadata"] == {"k": "v"} and done["store"] is False
    assert done["previous_response_id"] is None
    assert done["output"][0]["content"][0]["text"] == text
    usage = done["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert fake.requests == [fake.sockets[0].frames[0]]
    assert fake.requests[0]["input"] == "hello"
    assert fake.contexts[done["id"]] == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
    ]
    assert fake.handshake_headers[0]["authorization"] == "Bearer sk-x"
    assert fake.sockets[0].headers["openai-beta"] == "responses_websockets=2026-02-06"
    assert fake.sockets[0].path == "/v1/responses"
    assert fake.connections == 1
    await wait_until_closed(fake)
    assert fake.open_sockets == 0 and fake.sockets[0].close_code == 1000


@pytest.mark.asyncio
async def test_any_path_and_list_input_with_string_content(fake: FakeUpstream) -> None:
    async with await open_ws(fake, "/backend-api/codex/responses") as ws:
        events = await turn(
            ws,
            input=[
                {"role": "developer", "content": "rules"},
                {"role": "user", "content": "one"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "two"}],
                },
            ],
        )
    assert text_of(events) == "echo: two | context: 2 user messages | one / two"
    assert fake.sockets[0].path == "/backend-api/codex/responses"


@pytest.mark.asyncio
async def test_chaining_on_one_socket(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        first = final(await turn(ws, input="alpha"))
        events = await turn(ws, input="beta", previous_response_id=first["id"])
        second = final(events)
        third = final(await turn(ws, input="gamma", previous_response_id=second["id"]))
    assert text_of(events) == "echo: beta | context: 2 user messages | alpha / beta"
    assert second["previous_response_id"] == first["id"]
    assert second["usage"]["input_tokens_details"]["cached_tokens"] > 0
    seen = fake.contexts[second["id"]]
    assert [item.get("role") for item in seen] == ["user", "assistant", "user"]
    assert seen[1] == first["output"][0]
    assert len(fake.contexts[third["id"]]) == 5
    assert fake.sockets[0].response_ids == [first["id"], second["id"], third["id"]]


@pytest.mark.asyncio
async def test_previous_response_not_found_on_another_socket(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        first = final(await turn(ws, input="alpha"))
        async with await open_ws(fake) as other:
            events = await turn(other, input="beta", previous_response_id=first["id"])
    error = events[-1]
    assert len(events) == 1
    assert error["type"] == "error" and error["status"] == 400
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "previous_response_not_found",
        "message": f"Previous response with id '{first['id']}' not found.",
        "param": "previous_response_id",
    }


@pytest.mark.asyncio
async def test_closed_socket_loses_state_but_store_true_survives(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        kept = final(await turn(ws, input="stored", store=True))
        lost = final(await turn(ws, input="not stored"))
    assert kept["store"] is True
    async with await open_ws(fake) as ws:
        events = await turn(ws, input="again", previous_response_id=kept["id"])
        assert text_of(events) == "echo: again | context: 2 user messages | stored / again"
        events = await turn(ws, input="again", previous_response_id=lost["id"])
        assert events[-1]["error"]["code"] == "previous_response_not_found"


@pytest.mark.asyncio
async def test_duplicate_item_then_evicted(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        first = final(await turn(ws, input="alpha"))
        beta = {"role": "user", "content": "beta"}
        resend = [{"role": "user", "content": "alpha"}, *first["output"], beta]
        events = await turn(ws, input=resend, previous_response_id=first["id"])
        assert events[-1]["type"] == "error" and events[-1]["status"] == 400
        assert events[-1]["error"]["code"] == "duplicate_item"
        events = await turn(ws, input="beta", previous_response_id=first["id"])
        assert events[-1]["error"]["code"] == "previous_response_not_found"
        events = await turn(ws, input=resend)  # the full transcript without the id is fine
        assert text_of(events).startswith("echo: beta | context: 2 user messages")


@pytest.mark.asyncio
async def test_overlapping_create_is_rejected_and_first_continues(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        await send(ws, input="first fake:slow=20")
        await send(ws, input="second")
        events: list[Json] = []
        async with asyncio.timeout(5):
            while not events or events[-1]["type"] != "response.completed":
                events.append(json.loads(await ws.recv()))
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["status"] == 400
    assert errors[0]["error"]["code"] == "conversation_already_has_active_response"
    answer = [e for e in events if e["type"] != "error"]
    assert [e["type"] for e in answer] == TEXT_SEQUENCE
    assert text_of(answer).startswith("echo: first")
    assert len(fake.requests) == 2


@pytest.mark.asyncio
async def test_bad_client_frames(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        await ws.send("not json")
        invalid = json.loads(await ws.recv())
        await ws.send("[1, 2]")
        not_object = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "response.cancel"}))
        unknown = json.loads(await ws.recv())
        events = await turn(ws, input="still fine")
    assert invalid["type"] == "error" and invalid["error"]["code"] == "invalid_json"
    assert not_object["error"]["code"] == "invalid_json"
    assert unknown["error"]["code"] == "unknown_event_type" and unknown["status"] == 400
    assert events[-1]["type"] == "response.completed"
    assert fake.sockets[0].frames[:2] == ["not json", [1, 2]]
    assert len(fake.requests) == 1


@pytest.mark.asyncio
async def test_generate_false_warm_up_is_chainable(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        warm = await turn(
            ws, input="warm", generate=False, tools=[{"type": "function", "name": "f"}]
        )
        assert [e["type"] for e in warm] == ["response.created", "response.completed"]
        assert final(warm)["output"] == []
        events = await turn(ws, input="go", previous_response_id=final(warm)["id"])
    assert text_of(events) == "echo: go | context: 2 user messages | warm / go"


# --------------------------------------------------------------------------- directives


def test_parse_directives_and_helpers() -> None:
    found = parse_directives("x fake:close=1011, fake:phase=mid. fake:tool", "slow=5 fake:vendor")
    assert found == {"slow": "5", "vendor": "", "close": "1011", "phase": "mid", "tool": ""}
    assert parse_directives("notfake:tool") == {}
    assert split_text("abcdefghij", 3) == ["abcd", "efg", "hij"]
    pieces = split_text("ab", 7)
    assert len(pieces) == 7 and all(pieces)
    assert answer_text([], []) == "echo:  | context: 0 user messages | "


@pytest.mark.asyncio
async def test_deltas_slow_and_event_delay(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        many = await turn(ws, input="hi fake:deltas=300")
        deltas = [e["delta"] for e in many if e["type"] == "response.output_text.delta"]
        assert len(deltas) == 300 and all(deltas)
        assert "".join(deltas) == final(many)["output"][0]["content"][0]["text"]
        one = await turn(ws, input="hi fake:deltas=1")
        assert len([e for e in one if e["type"] == "response.output_text.delta"]) == 1
        started = time.monotonic()
        await turn(ws, input="hi fake:slow=15")
        assert time.monotonic() - started >= 12 * 0.015
        fake.event_delay = 0.01
        started = time.monotonic()
        await turn(ws, input="hi")
        assert time.monotonic() - started >= 12 * 0.01


@pytest.mark.asyncio
async def test_tool_call_and_tool_output(fake: FakeUpstream) -> None:
    tools = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        }
    ]
    async with await open_ws(fake) as ws:
        events = await turn(ws, input="weather? fake:tool", tools=tools)
        types = [e["type"] for e in events]
        assert "response.function_call_arguments.delta" in types
        assert "response.output_text.delta" not in types
        call = final(events)["output"][0]
        assert call["type"] == "function_call" and call["name"] == "lookup"
        assert call["id"].startswith("fc_") and call["call_id"].startswith("call_")
        assert call["status"] == "completed"
        assert json.loads(call["arguments"]) == {"city": "Paris", "days": 1}
        args = "".join(
            e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
        )
        done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert args == done["arguments"] == call["arguments"]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
        events = await turn(
            ws, input=[output], previous_response_id=final(events)["id"], tools=tools
        )
        assert "tool result: sunny" in text_of(events)
        # a full transcript that ends with the tool output answers text too
        transcript = [{"role": "user", "content": "weather? fake:tool"}, call, output]
        events = await turn(ws, input=transcript)
        assert text_of(events).startswith("echo: weather? fake:tool | tool result: sunny")
        default = final(await turn(ws, input="x fake:tool"))["output"][0]
        assert default["name"] == "get_weather"


@pytest.mark.asyncio
async def test_reasoning_with_and_without_encrypted_content(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        events = await turn(ws, input="x fake:reasoning", include=["reasoning.encrypted_content"])
        plain = final(await turn(ws, input="x fake:reasoning"))
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [
        (0, "reasoning"),
        (1, "message"),
    ]
    output = final(events)["output"]
    assert output[0]["id"].startswith("rs_") and output[0]["summary"] == []
    assert output[0]["encrypted_content"].startswith("enc_")
    assert final(events)["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    assert plain["output"][0]["encrypted_content"] is None


@pytest.mark.asyncio
async def test_thin_thin_empty_and_empty(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        thin = await turn(ws, input="x fake:thin")
        thin_empty = await turn(ws, input="x fake:thin_empty")
        empty = await turn(ws, input="x fake:empty")
        # the socket still knows the full output of a thin response
        follow = await turn(ws, input="y", previous_response_id=final(thin)["id"])
    assert "output" not in final(thin) and text_of(thin)
    assert final(thin_empty)["output"] == [] and text_of(thin_empty)
    assert [e["type"] for e in empty] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert final(empty)["output"] == []
    assert len(fake.contexts[final(follow)["id"]]) == 3


@pytest.mark.asyncio
async def test_error_directives(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        plain = await turn(ws, input="x fake:error=503")
        coded = await turn(ws, input="x fake:error=400:invalid_model")
        backend = await turn(ws, input="x fake:error_status_code=429:usage_limit_reached")
        late = await turn(ws, input="x fake:error=500:server_error fake:phase=after_created")
    assert len(plain) == 1 and plain[0]["status"] == 503
    assert plain[0]["error"]["type"] == "server_error"
    assert coded[0]["status"] == 400 and coded[0]["error"]["code"] == "invalid_model"
    assert backend[0]["status_code"] == 429 and "status" not in backend[0]
    assert backend[0]["error"]["code"] == "usage_limit_reached"
    assert [e["type"] for e in late][:2] == ["response.created", "response.in_progress"]
    assert [e["type"] for e in late].count("response.output_text.delta") == 1
    assert late[-1]["type"] == "error" and late[-1]["error"]["code"] == "server_error"
    assert [e["sequence_number"] for e in late] == list(range(len(late)))


@pytest.mark.asyncio
async def test_failed_and_incomplete(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        first = final(await turn(ws, input="a"))
        failed = await turn(ws, input="x fake:failed", previous_response_id=first["id"])
        gone = await turn(ws, input="y", previous_response_id=first["id"])
        incomplete = await turn(ws, input="x fake:incomplete")
    types = [e["type"] for e in failed]
    assert types[0] == "response.created" and types[-1] == "response.failed"
    assert types.count("response.output_text.delta") == 1
    assert final(failed)["status"] == "failed"
    assert final(failed)["error"]["code"] == "server_error"
    assert gone[-1]["error"]["code"] == "previous_response_not_found"  # evicted
    assert incomplete[-1]["type"] == "response.incomplete"
    assert final(incomplete)["status"] == "incomplete"
    assert final(incomplete)["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final(incomplete)["output"][0]["status"] == "incomplete"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("phase", "before_close"),
    [("before_created", 0), ("mid", 6), ("after_completed", len(TEXT_SEQUENCE))],
)
async def test_close_directive(fake: FakeUpstream, phase: str, before_close: int) -> None:
    async with await open_ws(fake) as ws:
        await send(ws, input=f"x fake:close=1011 fake:phase={phase}")
        received = []
        with pytest.raises(ConnectionClosed) as caught:
            while True:
                received.append(json.loads(await ws.recv()))
    assert len(received) == before_close
    if phase == "mid":
        assert received[-1]["type"] == "response.output_text.delta"
        assert received[-2]["type"] == "response.output_text.delta"
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1011
    await wait_until_closed(fake)
    assert fake.sockets[0].close_code == 1011


@pytest.mark.asyncio
async def test_close_1006_drops_tcp(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        await send(ws, input="x fake:close=1006 fake:phase=mid")
        with pytest.raises(ConnectionClosed) as caught:
            while True:
                await ws.recv()
    assert caught.value.rcvd is None  # no close frame
    await wait_until_closed(fake)
    assert fake.sockets[0].close_code == 1006


@pytest.mark.asyncio
async def test_garbage_frames(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        await send(ws, input="x fake:garbage=nonjson")
        assert await ws.recv() == "this is not JSON {"
        assert (await read_until_terminal(ws))[-1]["type"] == "response.completed"
        await send(ws, input="x fake:garbage=binary fake:phase=mid")
        frames: list[str | bytes] = []
        while not isinstance(frames[-1] if frames else None, bytes):
            frames.append(await ws.recv())
        assert [json.loads(f)["type"] for f in frames[:-1]][-1] == "response.output_text.delta"
        await read_until_terminal(ws)
        await send(ws, input="x fake:garbage=typeless fake:phase=after_completed")
        await read_until_terminal(ws)
        assert "type" not in json.loads(await ws.recv())
        events = await turn(ws, input="x fake:garbage=oversized")
    big = [e for e in events if len(e.get("delta", "")) >= 2 * 1024 * 1024]
    assert len(big) == 1 and events.index(big[0]) == 6
    assert final(events)["output"][0]["content"][0]["text"] == text_of(events)


@pytest.mark.asyncio
async def test_oversized_frame_breaks_a_default_client(fake: FakeUpstream) -> None:
    async with connect(fake.url(), proxy=None) as ws:  # default max_size: 1 MiB
        await send(ws, input="x fake:garbage=oversized")
        with pytest.raises(ConnectionClosed) as caught:
            while True:
                await ws.recv()
    assert caught.value.sent is not None and caught.value.sent.code == 1009


@pytest.mark.asyncio
async def test_silent(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        await send(ws, input="x fake:silent fake:phase=mid")
        got = [json.loads(await ws.recv()) for _ in range(6)]
        assert got[-1]["type"] == "response.output_text.delta"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
        await send(ws, input="hello?")  # a hung socket ignores later turns as well
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)
        await ws.ping()  # but the connection itself is alive
    async with await open_ws(fake) as ws:
        await send(ws, input="x fake:silent")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)


@pytest.mark.asyncio
async def test_vendor_events(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        events = await turn(ws, input="x fake:vendor")
    types = [e["type"] for e in events]
    assert types[:4] == [
        "codex.rate_limits",
        "response.created",
        "codex.response.metadata",
        "responsesapi.websocket_timing",
    ]
    primary = events[0]["rate_limits"]["primary"]
    assert {"used_percent", "window_minutes", "resets_in_seconds"} <= set(primary)
    assert "secondary" in events[0]["rate_limits"]
    vendor = ("codex.", "responsesapi.")
    numbered = [e["sequence_number"] for e in events if not e["type"].startswith(vendor)]
    assert numbered == list(range(len(numbered)))


@pytest.mark.asyncio
async def test_limit_and_usage_limit(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as ws:
        usage = await turn(ws, input="x fake:usage_limit")
        limit = await turn(ws, input="x fake:limit")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert usage[0]["status_code"] == 429
    assert usage[0]["error"]["code"] == "usage_limit_reached"
    assert limit[0]["status"] == 400
    assert limit[0]["error"]["code"] == "websocket_connection_limit_reached"
    await wait_until_closed(fake)


@pytest.mark.asyncio
async def test_default_directives(fake: FakeUpstream) -> None:
    fake.default_directives = "fake:tool deltas=2"
    async with await open_ws(fake) as ws:
        events = await turn(ws, input="plain")
    assert final(events)["output"][0]["type"] == "function_call"
    assert [e["type"] for e in events].count("response.function_call_arguments.delta") == 2


# --------------------------------------------------------------------------- handshake, HTTP


@pytest.mark.asyncio
async def test_handshake_status(fake: FakeUpstream) -> None:
    fake.handshake_status = 426
    with pytest.raises(InvalidStatus) as caught:
        await open_ws(fake, additional_headers={"Authorization": "Bearer sk-y"})
    response = caught.value.response
    assert response.status_code == 426
    assert json.loads(response.body)["error"]["message"]
    assert fake.connections == 0 and fake.handshake_headers[0]["authorization"] == "Bearer sk-y"
    fake.handshake_status = None
    async with await open_ws(fake):
        pass
    assert fake.connections == 1


@pytest.mark.asyncio
async def test_handshake_delay(fake: FakeUpstream) -> None:
    fake.handshake_delay = 5
    with pytest.raises(TimeoutError):
        await connect(fake.url(), proxy=None, open_timeout=0.2)
    assert fake.connections == 0


@pytest.mark.asyncio
async def test_plain_http_gets_426_json(fake: FakeUpstream) -> None:
    body = json.dumps({"model": "m", "input": "x"}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    writer.write(
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 ")
    assert json.loads(payload)["error"]["code"] == "upgrade_required"
    assert fake.http_requests[0]["method"] == "POST"
    assert fake.http_requests[0]["path"] == "/v1/responses"
    assert fake.connections == 0


# --------------------------------------------------------------------------- control


@pytest.mark.asyncio
async def test_close_socket_and_close_socket_of(fake: FakeUpstream) -> None:
    async with await open_ws(fake) as first, await open_ws(fake) as second:
        rid = final(await turn(second, input="x"))["id"]
        assert fake.open_sockets == 2
        await fake.close_socket_of(rid, code=1012, reason="restart")
        assert fake.sockets[1].closed and fake.sockets[1].close_code == 1012
        with pytest.raises(ConnectionClosed) as caught:
            await second.recv()
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1012
        await fake.close_socket(0, code=1006)
        assert fake.sockets[0].close_code == 1006
        with pytest.raises(ConnectionClosed):
            await first.recv()
    assert fake.open_sockets == 0
    with pytest.raises(KeyError):
        await fake.close_socket_of("resp_unknown")


@pytest.mark.asyncio
async def test_stop_closes_sockets() -> None:
    fake = FakeUpstream(handshake_delay=0)
    await fake.start()
    ws = await open_ws(fake)
    await send(ws, input="x fake:silent")
    started = time.monotonic()
    await fake.stop()
    assert time.monotonic() - started < 2
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert fake.sockets[0].closed and fake.sockets[0].close_code == 1001


def test_thread_runner() -> None:
    with FakeUpstreamThread(default_directives="deltas=2") as runner:
        fake = runner.fake
        assert runner.port == fake.port and runner.url() == fake.url()
        with sync_connect(fake.url(), proxy=None) as ws:
            ws.send(json.dumps({"type": "response.create", "model": "m", "input": "sync"}))
            events: list[Json] = []
            while not events or events[-1]["type"] not in TERMINAL_EVENTS:
                events.append(json.loads(ws.recv(timeout=5)))
            assert text_of(events).startswith("echo: sync")
            runner.call(fake.close_socket_of, final(events)["id"])
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
        assert fake.sockets[0].closed and fake.sockets[0].close_code == 1001
    assert runner.fake is fake


@pytest.mark.asyncio
async def test_input_cost_charges_only_the_items_new_to_the_socket(
    fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    charged: list[float] = []

    async def record(seconds: float) -> None:
        charged.append(seconds)

    monkeypatch.setattr(fake, "_sleep_exactly", record)
    fake.input_cost_ms_per_kb = 0.5
    long_text = "x" * 4000
    items = [{"role": "user", "content": long_text}]
    async with await open_ws(fake) as ws:
        first = final(await turn(ws, input=items))
        await turn(ws, input=[{"role": "user", "content": "y"}], previous_response_id=first["id"])
    full_kb = len(json.dumps(items)) / 1024
    assert charged[0] == pytest.approx(0.5 * full_kb / 1000)
    assert 0 < charged[1] < charged[0] / 50  # the chain's 4 KB is not charged again


@pytest.mark.asyncio
async def test_exact_sleep_lasts_its_time_and_stops_with_the_server() -> None:
    fake = FakeUpstream(handshake_delay=0)
    await fake.start()
    try:
        for seconds in (0.0, 0.0005, 0.003):
            started = time.monotonic()
            await fake._sleep_exactly(seconds)
            assert time.monotonic() - started >= seconds
        sleeper = asyncio.create_task(fake._sleep_exactly(30))
        await asyncio.sleep(0)  # the sleeper starts waiting
    finally:
        await fake.stop()
    async with asyncio.timeout(2):
        await sleeper  # woken by the stop, long before its 30 s
