"""End to end: the real openai SDK → a real mitmdump with the addon → the fake upstream."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.harness import Mitmdump


def client_for(bridge: Mitmdump, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=bridge.base_url, api_key="sk-test-key", max_retries=0, timeout=30, **kwargs
    )


@pytest.fixture(scope="module")
def client(shared_bridge: Mitmdump) -> openai.OpenAI:
    return client_for(shared_bridge)


def test_json_answer(client: openai.OpenAI, shared_fake: FakeUpstream) -> None:
    before = len(shared_fake.requests)
    response = client.responses.create(model="gpt-test", input="hello there")
    assert response.status == "completed"
    assert response.output_text.startswith("echo: hello there")
    sent = shared_fake.requests[before]
    assert sent["type"] == "response.create"
    assert sent["input"] == "hello there" and sent["model"] == "gpt-test"
    assert "stream" not in sent


def test_stream_events_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-test", input="stream me", stream=True))
    types = [event.type for event in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.startswith("echo: stream me")
    final = events[-1].response
    assert final.output_text == text


def test_stream_helper_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model="gpt-test", input="helper") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas)
    assert final.output_text.startswith("echo: helper")


def test_async_client(shared_bridge: Mitmdump) -> None:
    async def run() -> tuple[str, str]:
        client = openai.AsyncOpenAI(
            base_url=shared_bridge.base_url, api_key="sk-test", max_retries=0, timeout=30
        )
        whole = await client.responses.create(model="m", input="async json")
        streamed = ""
        async for event in await client.responses.create(model="m", input="async sse", stream=True):
            if event.type == "response.output_text.delta":
                streamed += event.delta
        await client.close()
        return whole.output_text, streamed

    whole, streamed = asyncio.run(run())
    assert whole.startswith("echo: async json")
    assert streamed.startswith("echo: async sse")


def test_function_call_and_output(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    first = client.responses.create(model="m", input="weather? fake:tool", tools=tools)  # type: ignore[arg-type]
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    second = client.responses.create(
        model="m",
        tools=tools,  # type: ignore[arg-type]
        input=[
            {"role": "user", "content": "weather? fake:tool"},
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert "sunny" in second.output_text


@pytest.mark.parametrize("directive", ["thin", "thin_empty"])
@pytest.mark.parametrize("stream", [False, True])
def test_thin_completed_is_repaired(client: openai.OpenAI, directive: str, stream: bool) -> None:
    prompt = f"repair fake:{directive} fake:reasoning"
    include = ["reasoning.encrypted_content"]
    if stream:
        events = list(
            client.responses.create(model="m", input=prompt, include=include, stream=True)
        )  # type: ignore[list-item]
        final = events[-1].response
    else:
        final = client.responses.create(model="m", input=prompt, include=include)  # type: ignore[list-item]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].encrypted_content  # type: ignore[union-attr]
    assert final.output_text.startswith("echo: repair")
    assert final.usage is not None
    assert final.usage.input_tokens_details.cached_tokens is not None


def test_genuinely_empty_answer_stays_empty(client: openai.OpenAI) -> None:
    assert client.responses.create(model="m", input="nothing fake:empty").output == []


def test_vendor_events_are_not_forwarded(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="m", input="v fake:vendor", stream=True))
    assert events[0].type == "response.created"
    assert not [e for e in events if e.type.startswith(("codex.", "responsesapi."))]


def test_incomplete_is_a_normal_json_answer(client: openai.OpenAI) -> None:
    response = client.responses.create(model="m", input="cut fake:incomplete")
    assert response.status == "incomplete"


def test_slow_stream_arrives_spaced(client: openai.OpenAI) -> None:
    arrivals = []
    for event in client.responses.create(
        model="m", input="slow fake:slow=300 fake:deltas=4", stream=True
    ):
        if event.type == "response.output_text.delta":
            arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(gaps) == 3
    # Buffered delivery would bunch them together; live delivery keeps the upstream's spacing.
    assert all(gap > 0.2 for gap in gaps), gaps


def test_non_responses_flows_pass_through(
    shared_bridge: Mitmdump, shared_fake: FakeUpstream
) -> None:
    connections = shared_fake.connections
    got = httpx.get(f"{shared_bridge.base_url}/models", timeout=10)
    assert got.status_code == 426  # the fake's plain-HTTP answer, untouched by the addon
    got = httpx.post(f"{shared_bridge.base_url}/responses/abc/cancel", timeout=10)
    assert got.status_code == 426
    assert shared_fake.connections == connections
