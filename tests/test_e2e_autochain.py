"""End to end: clients that resend the whole history are chained on their behalf."""

from __future__ import annotations

from typing import Any

import openai

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream, context_count
from tests.harness import Mitmdump

TOOLS: list[Any] = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]


def client_for(bridge: Mitmdump) -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.base_url, api_key="sk-a", max_retries=0, timeout=30)


def full_history_turn(
    client: openai.OpenAI, history: list[Any], text: str, *, stream: bool = False, **extra: Any
) -> tuple[Any, str]:
    history.append({"role": "user", "content": text})
    kwargs: dict[str, Any] = {"model": "m", "input": list(history), "store": False, **extra}
    if stream:
        raw = client.responses.with_raw_response.create(stream=True, **kwargs)
        # Read the stream to its end: an abandoned generator closed later by the garbage
        # collector can deadlock httpx's connection pool.
        events = list(raw.parse())
        response = next(e.response for e in events if e.type == "response.completed")
        # created, in_progress and completed all show what the client sent: no previous id
        shown = [e.response.previous_response_id for e in events if hasattr(e, "response")]
        assert len(shown) == 3 and shown == [None] * 3
    else:
        raw = client.responses.with_raw_response.create(**kwargs)
        response = raw.parse()
    history.extend(item.model_dump(exclude_none=True) for item in response.output)
    return response, raw.headers.get("x-responses-bridge", "")


def test_ten_full_history_turns_go_upstream_as_deltas(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake))
    history: list[Any] = []
    for index in range(10):
        response, label = full_history_turn(
            client, history, f"turn {index}", stream=index % 2 == 1, instructions="be brief"
        )
        assert label == ("new" if index == 0 else "chained")
        assert context_count(response.output_text) == index + 1
        assert response.previous_response_id is None  # what the client sent
    assert fake.connections == 1
    for request in fake.requests[1:]:
        assert request["previous_response_id"]
        assert len(request["input"]) == 1 and request["input"][0]["role"] == "user"


def test_function_calls_chain(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    client = client_for(start_bridge(fake))
    history: list[Any] = []
    first, _ = full_history_turn(client, history, "weather? fake:tool", tools=TOOLS)
    call = first.output[0]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    raw = client.responses.with_raw_response.create(
        model="m", input=history, tools=TOOLS, store=False
    )
    assert raw.headers["x-responses-bridge"] == "chained"
    assert "tool result: sunny" in raw.parse().output_text
    assert [item["type"] for item in fake.requests[-1]["input"]] == ["function_call_output"]
    assert fake.connections == 1


def test_edited_history_or_changed_tools_are_sent_in_full(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake))
    history: list[Any] = []
    full_history_turn(client, history, "hello", tools=TOOLS)
    edited = [{"role": "user", "content": "HELLO"}, *history[1:]]
    _, label = full_history_turn(client, edited, "next", tools=TOOLS)
    assert label == "new"
    assert len(fake.requests[-1]["input"]) == 3 and "previous_response_id" not in fake.requests[-1]
    _, label = full_history_turn(client, list(history), "next", tools=[])
    assert label == "new"


def test_failed_chained_attempt_is_resent_in_full(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake))
    history: list[Any] = []
    full_history_turn(client, history, "one")
    fake.next_errors.append((400, "previous_response_not_found"))
    response, label = full_history_turn(client, history, "two", stream=True)
    assert label == "new"
    assert context_count(response.output_text) == 2
    assert response.previous_response_id is None
    assert (
        fake.requests[-2]["previous_response_id"]
        and "previous_response_id" not in fake.requests[-1]
    )
    # The chain goes on from the fresh socket.
    _, label = full_history_turn(client, history, "three")
    assert label == "chained"


def test_auto_chain_off(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_auto_chain=false"))
    history: list[Any] = []
    full_history_turn(client, history, "one")
    _, label = full_history_turn(client, history, "two")
    assert label == "new"
    assert "previous_response_id" not in fake.requests[-1]
    assert len(fake.requests[-1]["input"]) == 3


def test_another_key_is_not_chained(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake)
    history: list[Any] = []
    full_history_turn(client_for(bridge), history, "one")
    other = openai.OpenAI(base_url=bridge.base_url, api_key="sk-b", max_retries=0)
    _, label = full_history_turn(other, history, "two")
    assert label == "new"
