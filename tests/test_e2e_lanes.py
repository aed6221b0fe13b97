"""End to end: lanes. One owner's conversations share one upstream socket, each response on its
own ``stream_id``; forks run on a new lane without resending the transcript; an upstream that
refuses lanes is remembered and gets one conversation per socket; losing a shared socket loses
no chain's context; sockets never mix owners. Through real mitmdump and the fake's lanes."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream, context_count
from tests.harness import read_flows, wait_until
from tests.test_e2e_sessions import turn


def client_for(base_url: str, key: str = "sk-lanes-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)


def run_all(*jobs: Any) -> list[Any]:
    """Run the callables in threads at once; their results in order (exceptions re-raised)."""
    results: list[Any] = [None] * len(jobs)

    def run(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def laned_creates(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r for r in fake.requests if "stream_id" in r]


def test_concurrent_conversations_of_one_key_share_one_socket(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge.base_url)
    results = run_all(
        *[lambda i=i: turn(client, f"conversation {i} fake:slow=30", stream=i % 2 == 0)
          for i in range(8)]
    )  # fmt: skip
    assert fake.connections == 1
    assert [context_count(r.output_text) for r, _ in results] == [1] * 8
    assert {r.output_text.split(" |")[0] for r, _ in results} == {
        f"echo: conversation {i} fake:slow=30" for i in range(8)
    }
    assert fake.sockets[0].max_in_flight >= 2  # they ran at once, interleaved on one socket
    assert len(laned_creates(fake)) == 8


def test_two_streams_interleave_on_one_socket_event_by_event(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    url = f"{bridge.base_url}/responses"
    arrivals: list[tuple[str, str]] = []
    lock = threading.Lock()

    def stream(name: str) -> str:
        body = {"model": "m", "input": f"{name} fake:slow=60 fake:deltas=6", "stream": True}
        headers = {"authorization": "Bearer sk-lanes-a"}
        text = []
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    with lock:
                        arrivals.append((name, event["type"]))
                    text.append(line)
        return "\n".join(text)

    left, right = run_all(lambda: stream("left"), lambda: stream("right"))
    assert fake.connections == 1
    # The client never sees the lane: no stream_id in what it got.
    assert "stream_id" not in left and "stream_id" not in right
    deltas = [name for name, kind in arrivals if kind == "response.output_text.delta"]
    assert deltas.count("left") == deltas.count("right") == 6
    switches = sum(1 for a, b in itertools.pairwise(deltas) if a != b)
    assert switches >= 3, deltas  # both streamed at the same time, not one after the other


def test_the_clients_own_stream_id_is_not_forwarded(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    body = {"model": "m", "input": "hi", "stream_id": "client-chosen"}
    answer = httpx.post(
        f"{bridge.base_url}/responses",
        json=body,
        headers={"authorization": "Bearer sk-lanes-a"},
        timeout=30,
    )
    assert answer.status_code == 200 and "stream_id" not in answer.text
    assert [r["stream_id"] for r in fake.requests] != ["client-chosen"]
    assert fake.requests[0]["stream_id"].startswith("rb-")


def test_concurrent_chains_share_one_socket(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge.base_url)

    def chain(index: int) -> list[str]:
        previous, labels, counts = None, [], []
        for step in range(3):
            response, label = turn(client, f"chain {index} step {step}", previous, stream=True)
            labels.append(label)
            counts.append(context_count(response.output_text))
            previous = response.id
        assert counts == [1, 2, 3]
        return labels

    labels = run_all(*[lambda i=i: chain(i) for i in range(10)])
    assert fake.connections == 1
    assert all(chain_labels == ["new", "reused", "reused"] for chain_labels in labels)
    # Every follow-up went as a delta: the upstream had each chain on the shared socket.
    follow_ups = [r for r in fake.requests if r.get("previous_response_id")]
    assert len(follow_ups) == 20 and all(isinstance(r["input"], str) for r in follow_ups)


def test_a_fork_runs_on_a_new_lane_without_rehydration(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge.base_url)
    root, _ = turn(client, "root")
    results = run_all(
        *[lambda n=n: turn(client, f"{n} fake:slow=100", root.id) for n in ("a", "b", "c")]
    )
    assert sorted(label for _, label in results) == ["forked", "forked", "reused"]
    assert all(context_count(r.output_text) == 2 for r, _ in results)
    assert fake.connections == 1
    forks = fake.requests[1:]
    # No transcript resent: each went with the parent's id and only its own input.
    assert all(r["previous_response_id"] == root.id for r in forks)
    assert sorted(r["input"] for r in forks) == [f"{n} fake:slow=100" for n in ("a", "b", "c")]
    # Each branch continues on its own afterwards.
    for response, _ in results:
        after, label = turn(client, "after", response.id)
        assert label == "reused" and context_count(after.output_text) == 3


def test_past_the_lane_cap_a_second_socket(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_lanes_per_socket=2")
    client = client_for(bridge.base_url)
    run_all(*[lambda i=i: turn(client, f"capped {i} fake:slow=80") for i in range(4)])
    assert fake.connections == 2
    assert max(record.max_in_flight for record in fake.sockets) <= 2


def test_the_shared_socket_closes_when_no_conversation_holds_it(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, "responses_bridge_stateful=false")
    client = client_for(bridge.base_url)
    run_all(*[lambda i=i: turn(client, f"stateless {i} fake:slow=20") for i in range(3)])
    assert fake.connections == 1
    wait_until(lambda: fake.open_sockets == 0, what="the idle shared socket to close")


@pytest.mark.parametrize("mode", ["reject", "ignore"])
def test_an_upstream_without_lanes_is_remembered(
    fake: FakeUpstream, start_bridge: StartBridge, mode: str
) -> None:
    fake.lanes = mode
    bridge = start_bridge(fake)
    client = client_for(bridge.base_url)
    first, label = turn(client, "first", stream=True)
    assert label == "new" and context_count(first.output_text) == 1
    sent_with_lane = len(laned_creates(fake))
    assert sent_with_lane == 1  # one try; after it the upstream is known to take no lanes
    # From then on, exactly as without lanes: one conversation per socket, no stream_id.
    results = run_all(*[lambda i=i: turn(client, f"later {i} fake:slow=60") for i in range(3)])
    assert all(context_count(r.output_text) == 1 for r, _ in results)
    assert len(laned_creates(fake)) == sent_with_lane
    assert fake.connections == (5 if mode == "reject" else 4)
    follow, label = turn(client, "follow", first.id)
    assert label == "reused" and context_count(follow.output_text) == 2


def test_a_refused_lane_is_never_shown_to_a_json_client(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    fake.lanes = "reject"
    bridge = start_bridge(fake)
    client = client_for(bridge.base_url)
    response, _ = turn(client, "json please")
    assert context_count(response.output_text) == 1
    assert [("stream_id" in r) for r in fake.requests] == [True, False]


def test_lanes_switched_off(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_lanes=false")
    client = client_for(bridge.base_url)
    run_all(*[lambda i=i: turn(client, f"own socket {i} fake:slow=50") for i in range(3)])
    assert fake.connections == 3 and not laned_creates(fake)


def test_losing_the_shared_socket_loses_no_chain(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge.base_url)
    chains = [turn(client, f"kept {i}")[0] for i in range(5)]
    url = f"{bridge.base_url}/responses"
    started = threading.Barrier(3)
    outcomes: list[str] = []

    def streaming(name: str) -> None:
        body = {"model": "m", "input": f"{name} fake:slow=200", "stream": True, "store": False}
        headers = {"authorization": "Bearer sk-lanes-a"}
        with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
            lines = response.iter_lines()
            for line in lines:
                if "response.created" in line:
                    break
            started.wait(10)
            outcomes.append("\n".join(lines))

    threads = [threading.Thread(target=streaming, args=(n,)) for n in ("s1", "s2")]
    for thread in threads:
        thread.start()
    started.wait(10)
    assert fake.connections == 1 and fake.open_sockets == 1
    fake.run(fake.close_socket, 0, 1006)
    for thread in threads:
        thread.join(30)
    # The two in flight end with an SSE error (their 200 was already sent).
    assert len(outcomes) == 2 and all("event: error" in text for text in outcomes)
    # Every chain continues with its full context, rehydrated once, then reused.
    for index, response in enumerate(chains):
        again, label = turn(client, f"again {index}", response.id)
        assert label == "rehydrated" and context_count(again.output_text) == 2
        third, label = turn(client, f"third {index}", again.id)
        assert label == "reused" and context_count(third.output_text) == 3
    assert fake.connections == 2  # all five moved to one new shared socket


def test_the_connection_limit_moves_the_chain_without_an_error(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    client = client_for(bridge.base_url)
    first, _ = turn(client, "one")
    other, _ = turn(client, "two")
    fake.next_errors = [(400, "websocket_connection_limit_reached")]
    limited, label = turn(client, "after the limit", first.id)
    assert label == "rehydrated" and context_count(limited.output_text) == 2
    assert fake.connections == 2  # the old socket takes no new lane
    fake.run(fake.close_socket, 0, 1000)  # and the upstream ends it
    moved, label = turn(client, "three", other.id)
    assert label == "rehydrated" and context_count(moved.output_text) == 2
    assert fake.connections == 2  # onto the new shared socket


def test_sockets_never_mix_owners(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake)
    alice = client_for(bridge.base_url, "sk-alice")
    bob = client_for(bridge.base_url, "sk-bob")
    results = run_all(
        lambda: turn(alice, "alice fake:slow=50"), lambda: turn(bob, "bob fake:slow=50")
    )
    assert fake.connections == 2
    keys = sorted(record.headers["authorization"] for record in fake.sockets)
    assert keys == ["Bearer sk-alice", "Bearer sk-bob"]
    alices = results[0][0]
    with pytest.raises(openai.BadRequestError) as caught:
        turn(bob, "steal", alices.id)
    assert caught.value.code == "previous_response_not_found"


def test_fresh_requests_do_not_wait_for_a_handshake(start_bridge: StartBridge) -> None:
    from tests.fake_upstream import FakeUpstreamThread

    with FakeUpstreamThread(handshake_delay=0.3) as runner:
        fake = runner.fake
        bridge = start_bridge(fake)
        client = client_for(bridge.base_url)
        turn(client, "warm-up")
        run_all(*[lambda i=i: turn(client, f"burst {i}", stream=True) for i in range(4)])
        # The burst ran on the open socket: no handshake for any of them.
        assert fake.connections == 1 and len(fake.handshake_headers) == 1


def test_diagnostics_show_the_socket_and_lane(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    saved = tmp_path / "flows.mitm"
    bridge = start_bridge(fake, f"save_stream_file={saved}")
    client = client_for(bridge.base_url)
    first, _ = turn(client, "look")
    turn(client, "again", first.id)
    bridge.stop()
    flows = read_flows(saved)
    shown = [flow.metadata["responses_bridge"] for flow in flows]
    assert [s["lane"] for s in shown] == ["rb-0", "rb-0"]
    assert shown[0]["socket_id"] == shown[1]["socket_id"] and shown[0]["socket_id"]
    assert shown[1]["attempts"][0]["lane"] == "rb-0"


async def test_commands_show_sockets_lanes_and_chains() -> None:
    import bridge as bridge_script
    from mitmproxy.options import Options
    from mitmproxy.tools.dump import DumpMaster

    fake = FakeUpstream()
    await fake.start()
    opts = Options(
        mode=[f"reverse:http://127.0.0.1:{fake.port}"], listen_host="127.0.0.1", listen_port=0
    )
    master = DumpMaster(opts, with_termlog=False, with_dumper=False)
    master.addons.add(bridge_script.ResponsesBridge())
    master.options.update(responses_bridge_warm_sockets=0)
    running = asyncio.create_task(master.run())
    try:
        for _ in range(200):
            addrs = master.addons.get("proxyserver").listen_addrs()
            if addrs:
                break
            await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{addrs[0][1]}/v1/responses"
        auth = {"authorization": "Bearer sk-lanes-commands"}
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "m", "input": "slow fake:slow=150", "store": False}
            busy = asyncio.create_task(client.post(url, json=body, headers=auth))
            async with asyncio.timeout(10):
                while True:  # until the request runs on its lane
                    stats = json.loads(master.commands.execute("responses_bridge.stats"))
                    if stats["lanes_in_use"]:
                        break
                    await asyncio.sleep(0.01)
            assert stats["lanes_in_use"] == 1 and stats["open_sockets"] == 1
            rows = [json.loads(r) for r in master.commands.execute(
                "responses_bridge.sessions").splitlines()]  # fmt: skip
            assert len(rows) == 1 and rows[0]["lane"] == "rb-0" and rows[0]["socket"]
            await busy
            for index in range(2):
                await client.post(url, json={**body, "input": f"kept {index}"}, headers=auth)
        stats = json.loads(master.commands.execute("responses_bridge.stats"))
        assert stats["open_sockets"] == 1 and stats["lanes_in_use"] == 0
        assert stats["sessions"] == 3 and list(stats["chains_per_socket"].values()) == [3]
    finally:
        master.shutdown()
        await asyncio.wait_for(running, 10)
        await fake.stop()
