"""End to end: retained sessions. Chains continue on the socket that holds their state; when it is
gone they are rehydrated with their full context (the fake's answers count the user messages it
saw, which proves it); stale ids, other keys, busy chains and a full registry get clear errors."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream, context_count
from tests.harness import Mitmdump, wait_until

# Warm sockets serve upstreams without lanes (with lanes, the shared socket serves fresh requests).
LANELESS = "responses_bridge_lanes=false"


def client_for(bridge: Mitmdump, key: str = "sk-owner-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=bridge.base_url, api_key=key, max_retries=0, timeout=30)


def turn(
    client: openai.OpenAI,
    text: str,
    previous: str | None = None,
    *,
    stream: bool = False,
    **extra: Any,
) -> tuple[Any, str]:
    """One turn; returns the Response and the x-responses-bridge header."""
    kwargs: dict[str, Any] = {"model": "m", "input": text, "store": False, **extra}
    if previous is not None:
        kwargs["previous_response_id"] = previous
    if stream:
        raw = client.responses.with_raw_response.create(stream=True, **kwargs)
        final = None
        for event in raw.parse():
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
        assert final is not None
        return final, raw.headers.get("x-responses-bridge", "")
    raw = client.responses.with_raw_response.create(**kwargs)
    return raw.parse(), raw.headers.get("x-responses-bridge", "")


@pytest.mark.parametrize("pattern", ["json", "stream", "mixed"])
def test_ten_turn_chain_uses_one_socket(
    fake: FakeUpstream, start_bridge: StartBridge, pattern: str
) -> None:
    client = client_for(start_bridge(fake))
    previous = None
    for index in range(10):
        stream = pattern == "stream" or (pattern == "mixed" and index % 2 == 1)
        response, label = turn(client, f"turn {index}", previous, stream=stream)
        assert context_count(response.output_text) == index + 1
        assert label == ("new" if index == 0 else "reused")
        assert response.previous_response_id == previous
        previous = response.id
    assert fake.connections == 1
    # Each follow-up went upstream as a delta: only the new input plus the id.
    assert all(r.get("previous_response_id") for r in fake.requests[1:])
    assert all(r["input"] == f"turn {i + 1}" for i, r in enumerate(fake.requests[1:]))


def test_chain_with_function_calls(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    client = client_for(start_bridge(fake))
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    first, _ = turn(client, "weather? fake:tool", tools=tools)
    call = first.output[0]
    assert call.type == "function_call"
    second, label = turn(
        client,
        [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],  # type: ignore[arg-type]
        first.id,
        tools=tools,
    )
    assert label == "reused" and "tool result: sunny" in second.output_text
    third, _ = turn(client, "thanks", second.id, stream=True, tools=tools)
    assert context_count(third.output_text) == 2
    assert fake.connections == 1


@pytest.mark.parametrize("stream", [False, True])
def test_stale_id_is_400_before_any_byte(
    fake: FakeUpstream, start_bridge: StartBridge, stream: bool
) -> None:
    bridge = start_bridge(fake)
    got = httpx.post(
        f"{bridge.base_url}/responses",
        json={
            "model": "m",
            "input": "x",
            "store": False,
            "stream": stream,
            "previous_response_id": "resp_never_seen",
        },
        timeout=30,
    )
    assert got.status_code == 400
    assert got.headers["content-type"].startswith("application/json")
    error = got.json()["error"]
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"
    assert "resp_never_seen" in error["message"]
    assert fake.connections == 0


def test_store_true_unknown_id_goes_to_the_upstream(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge)
    stored = client.responses.create(model="m", input="kept", store=True)
    fake.run(fake.close_socket, 0)  # the bridge's socket is gone, but the upstream stored it
    follow = client.responses.create(
        model="m", input="next", store=True, previous_response_id=stored.id
    )
    assert context_count(follow.output_text) == 2


def test_another_key_cannot_continue_a_chain(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake)
    owner, stranger = client_for(bridge, "sk-owner-a"), client_for(bridge, "sk-owner-b")
    first, _ = turn(owner, "mine")
    with pytest.raises(openai.BadRequestError) as caught:
        turn(stranger, "steal", first.id)
    assert caught.value.code == "previous_response_not_found"
    assert fake.connections == 1 and len(fake.requests) == 1
    second, label = turn(owner, "still mine", first.id)
    assert label == "reused" and context_count(second.output_text) == 2


def test_rehydration_after_the_upstream_closes_the_socket(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake))
    first, _ = turn(client, "one")
    second, _ = turn(client, "two", first.id)
    fake.run(fake.close_socket_of, second.id, 1011, "gone")
    third, label = turn(client, "three", second.id, stream=True)
    assert label == "rehydrated"
    assert context_count(third.output_text) == 3
    assert third.previous_response_id == second.id
    resent = fake.requests[-1]
    assert "previous_response_id" not in resent
    assert len(resent["input"]) == 5  # one, answer, two, answer, three
    assert fake.connections == 2
    fourth, label = turn(client, "four", third.id)
    assert label == "reused" and context_count(fourth.output_text) == 4


def test_rehydration_after_eviction(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_max_sessions=1"))
    a1, _ = turn(client, "a1")
    b1, _ = turn(client, "b1")  # the registry is full: a1's idle socket is closed
    wait_until(lambda: fake.open_sockets == 1)
    a2, label = turn(client, "a2", a1.id)
    assert label == "rehydrated" and context_count(a2.output_text) == 2
    b2, label = turn(client, "b2", b1.id)
    assert label == "rehydrated" and context_count(b2.output_text) == 2


@pytest.mark.parametrize(
    "code", ["websocket_connection_limit_reached", "previous_response_not_found"]
)
def test_rehydration_after_upstream_error_before_output(
    fake: FakeUpstream, start_bridge: StartBridge, code: str
) -> None:
    client = client_for(start_bridge(fake))
    first, _ = turn(client, "one")
    fake.next_errors.append((400, code))
    second, label = turn(client, "two", first.id, stream=True)
    assert label == "rehydrated" and context_count(second.output_text) == 2
    third, label = turn(client, "three", second.id)
    assert label == "reused" and context_count(third.output_text) == 3


def test_connection_limit_on_a_fresh_request_is_resent(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake))
    fake.next_errors.append((400, "websocket_connection_limit_reached"))
    response, _ = turn(client, "hello")
    assert context_count(response.output_text) == 1
    assert fake.connections == 2


@pytest.mark.parametrize("lanes", [True, False])
def test_concurrent_follow_ups_fork(
    fake: FakeUpstream, start_bridge: StartBridge, lanes: bool
) -> None:
    client = client_for(start_bridge(fake, f"responses_bridge_lanes={str(lanes).lower()}"))
    first, _ = turn(client, "root")
    results: dict[str, tuple[Any, str]] = {}

    def follow(name: str) -> None:
        results[name] = turn(client, f"{name} fake:slow=100", first.id)

    threads = [threading.Thread(target=follow, args=(n,)) for n in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    labels = sorted(label for _, label in results.values())
    assert labels == ["forked", "reused"]
    assert all(context_count(response.output_text) == 2 for response, _ in results.values())
    # With lanes the fork is a new lane of the same socket, sent as a delta; without, its
    # transcript goes to a socket of its own.
    assert fake.connections == (1 if lanes else 2)
    resent = [r for r in fake.requests[1:] if not r.get("previous_response_id")]
    assert len(resent) == (0 if lanes else 1)


def test_busy_chain_without_rehydration_forks_on_a_lane(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_rehydrate=false"))
    first, _ = turn(client, "root")
    slow = threading.Thread(target=turn, args=(client, "slow fake:slow=200", first.id))
    slow.start()
    wait_until(lambda: len(fake.requests) == 2)
    meanwhile, label = turn(client, "meanwhile", first.id)
    assert label == "forked" and context_count(meanwhile.output_text) == 2
    slow.join(30)
    assert not slow.is_alive() and fake.connections == 1


def test_busy_chain_without_rehydration_is_409(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(
        start_bridge(fake, "responses_bridge_rehydrate=false", "responses_bridge_lanes=false")
    )
    first, _ = turn(client, "root")
    slow = threading.Thread(target=turn, args=(client, "slow fake:slow=200", first.id))
    slow.start()
    wait_until(lambda: len(fake.requests) == 2)
    with pytest.raises(openai.ConflictError) as caught:
        turn(client, "meanwhile", first.id)
    assert caught.value.status_code == 409
    assert caught.value.code == "previous_response_in_progress"
    slow.join(30)
    assert not slow.is_alive()


def test_gone_socket_without_rehydration_is_400(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_rehydrate=false"))
    first, _ = turn(client, "root")
    fake.run(fake.close_socket_of, first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        turn(client, "next", first.id)
    assert caught.value.code == "previous_response_not_found"


def test_transcript_over_the_limit_is_not_rehydrated(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_transcript_max_bytes=200"))
    first, _ = turn(client, "a long enough first message " * 5)
    fake.run(fake.close_socket_of, first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        turn(client, "next", first.id)
    assert caught.value.code == "previous_response_not_found"


def test_transcripts_total_bytes_drops_the_least_recently_used_chain(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    # Room for one of these chains' transcripts (each ~1.2 KB), not two.
    bridge = start_bridge(
        fake, "responses_bridge_max_sessions=1", "responses_bridge_transcripts_total_bytes=2000"
    )
    client = client_for(bridge)
    a1, _ = turn(client, "a1 " + "a" * 1000)
    b1, _ = turn(client, "b1 " + "b" * 1000)  # evicts a1's socket, and a1's transcript
    wait_until(lambda: fake.open_sockets == 1)
    with pytest.raises(openai.BadRequestError) as caught:
        turn(client, "a2", a1.id)
    assert caught.value.code == "previous_response_not_found"
    b2, label = turn(client, "b2", b1.id)  # b1's socket is still there
    assert label == "reused" and context_count(b2.output_text) == 2


def test_all_sockets_busy_is_503(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_max_sessions=1")
    client = client_for(bridge)
    slow = threading.Thread(target=turn, args=(client, "hold fake:slow=200"))
    slow.start()
    wait_until(lambda: len(fake.requests) == 1)
    got = httpx.post(f"{bridge.base_url}/responses", json={"model": "m", "input": "x"}, timeout=30)
    assert got.status_code == 503
    assert got.headers["retry-after"] == "1"
    assert got.json()["error"]["code"] == "bridge_capacity_exceeded"
    slow.join(30)
    assert turn(client, "after")[0].status == "completed"


def test_idle_ttl_closes_sockets_and_chain_rehydrates(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_session_ttl=0.5"))
    first, _ = turn(client, "one")
    wait_until(lambda: fake.open_sockets == 0)
    second, label = turn(client, "two", first.id)
    assert label == "rehydrated" and context_count(second.output_text) == 2


def test_old_sockets_are_not_reused(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_max_socket_age=0.5"))
    first, _ = turn(client, "one")
    time.sleep(0.6)
    second, label = turn(client, "two", first.id)
    assert label == "rehydrated" and context_count(second.output_text) == 2


def test_client_abort_then_follow_up_on_the_same_socket(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge)
    first, _ = turn(client, "one")
    with httpx.stream(
        "POST",
        f"{bridge.base_url}/responses",
        timeout=30,
        headers={"authorization": "Bearer sk-owner-a"},
        json={
            "model": "m",
            "input": "two fake:slow=100 fake:deltas=10",
            "store": False,
            "stream": True,
            "previous_response_id": first.id,
        },
    ) as streamed:
        lines = streamed.iter_lines()
        created = next(line for line in lines if line.startswith("data: "))
    aborted_id = json.loads(created[len("data: ") :])["response"]["id"]
    # Continued at once, while the bridge still drains the aborted answer (~1 s of it left):
    # the follow-up waits for it, then goes on the same socket, which holds it.
    assert aborted_id not in fake._sessions[0].responses
    third, label = turn(client, "three", aborted_id)
    assert label == "reused" and context_count(third.output_text) == 3
    assert fake.connections == 1
    assert fake._sessions[0].record.response_ids == [first.id, aborted_id, third.id]


def test_follow_up_of_a_response_still_streaming_waits_at_most_the_drain_timeout(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, "responses_bridge_drain_timeout=0.5")
    client = client_for(bridge)
    with client.responses.create(
        model="m", input="one fake:slow=150 fake:deltas=20", store=False, stream=True
    ) as stream:
        events = iter(stream)
        created = next(events)
        assert created.type == "response.created"
        with pytest.raises(openai.ConflictError) as caught:
            turn(client, "two", created.response.id)
        remaining = [event.type for event in events]
    assert caught.value.code == "previous_response_in_progress"
    assert "still being generated" in caught.value.message
    assert "0.5 s" in caught.value.message
    assert remaining[-1] == "response.completed"
    # Once it has completed, the same follow-up continues it on its socket.
    second, label = turn(client, "two", created.response.id)
    assert label == "reused" and context_count(second.output_text) == 2
    assert fake.connections == 1


def test_failed_response_does_not_keep_its_socket(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake))
    with pytest.raises(openai.APIStatusError):
        turn(client, "x fake:failed")
    wait_until(lambda: fake.open_sockets == 0)


def test_stateless_mode_opens_and_closes_a_socket_per_request(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_stateful=false"))
    turn(client, "one")
    turn(client, "two")
    wait_until(lambda: fake.open_sockets == 0)
    assert fake.connections == 2


def test_shutdown_closes_every_socket(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge)
    turn(client, "one")
    turn(client, "two")
    assert fake.open_sockets == 1  # both chains on lanes of one shared socket
    bridge.stop()
    wait_until(lambda: fake.open_sockets == 0)
    assert all(record.close_code == 1000 for record in fake.sockets)


def test_warm_socket_serves_the_next_fresh_request(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    client = client_for(start_bridge(fake, "responses_bridge_warm_sockets=1", LANELESS))
    first, _ = turn(client, "one")
    wait_until(lambda: fake.connections == 2)  # the chain's socket and one opened ahead
    second, label = turn(client, "fresh conversation")
    assert label == "new" and context_count(second.output_text) == 1
    wait_until(lambda: fake.connections == 3)  # the pool is topped up again
    assert len(fake.sockets[1].frames) == 1  # the warm socket carried the fresh request
    assert fake.sockets[0].frames[0]["input"] == first.output_text.split(" | ")[0][6:]


def test_warm_sockets_never_exceed_capacity(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    client = client_for(
        start_bridge(
            fake, "responses_bridge_warm_sockets=3", "responses_bridge_max_sessions=2", LANELESS
        )
    )
    turn(client, "one")
    wait_until(lambda: fake.connections == 2)
    time.sleep(0.3)
    assert fake.open_sockets == 2
    second, _ = turn(client, "two")  # capacity full: served by the warm socket
    assert context_count(second.output_text) == 1


def test_the_warm_pool_is_refilled_while_an_answer_still_streams(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    # A fresh request sent while another answer streams (a chat title, a parallel subagent)
    # finds a socket opened ahead: the pool refills once the first delta reached the client,
    # not only once the whole answer has.
    client = client_for(start_bridge(fake, "responses_bridge_warm_sockets=1", LANELESS))
    turn(client, "one")
    wait_until(lambda: fake.connections == 2)  # the chain's socket and one opened ahead
    with client.responses.create(
        model="m", input="long fake:silent fake:phase=after_created", store=False, stream=True
    ) as streaming:  # takes the warm socket; the upstream goes quiet after one delta
        kinds = (event.type for event in streaming)
        assert "response.output_text.delta" in kinds
        wait_until(lambda: fake.connections == 3, timeout=5, what="a warm socket mid-stream")
        fresh, label = turn(client, "fresh conversation")
        assert label == "new" and context_count(fresh.output_text) == 1
        assert len(fake.sockets[2].frames) == 1  # served by the socket opened mid-stream
        assert not fake.sockets[1].closed  # the streaming answer is still open upstream
