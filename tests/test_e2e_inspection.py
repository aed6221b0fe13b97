"""End to end: what a mitmweb user sees of a bridged request: the websocket conversation on the
flow, its comment, the diagnostic and rate-limit headers, keep-alives, and the commands."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream

BODY: dict[str, Any] = {"model": "m", "input": "look", "stream": True, "store": False}
AUTH = {"authorization": "Bearer sk-inspected-secret", "chatgpt-account-id": "acct-secret"}


def read_flows(path: Path) -> list[Any]:
    from mitmproxy import io

    with path.open("rb") as file:
        return list(io.FlowReader(file).stream())


def test_saved_flow_carries_the_websocket_conversation(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    saved = tmp_path / "flows.mitm"
    bridge = start_bridge(fake, f"save_stream_file={saved}")
    url = f"{bridge.base_url}/responses"
    first = httpx.post(url, json=BODY, headers=AUTH, timeout=30)
    response_id = next(
        json.loads(line[6:])["response"]["id"]
        for line in first.text.splitlines()
        if line.startswith("data: ") and '"response.created"' in line
    )
    second = httpx.post(
        url,
        json={**BODY, "stream": False, "previous_response_id": response_id},
        headers=AUTH,
        timeout=30,
    )
    assert second.headers["x-responses-bridge"] == "reused"
    assert float(second.headers["x-responses-bridge-socket-age"]) >= 0
    bridge.stop()
    flows = read_flows(saved)
    assert len(flows) == 2
    convo = flows[0].metadata["responses_bridge"]
    assert convo["socket"] == "new" and convo["upstream"] == fake.url()
    attempt = convo["attempts"][0]
    # What the client asked for; the lane it ran on is shown beside it, not in it.
    sent_upstream = dict(fake.requests[0])
    assert sent_upstream.pop("stream_id") == attempt["lane"] == "rb-0"
    assert attempt["sent"] == sent_upstream
    events = attempt["events"]
    assert events[0]["event"]["type"] == "response.created"
    assert events[-1]["event"]["type"] == "response.completed"
    assert all(isinstance(e["t_ms"], float) for e in events)
    assert [e["t_ms"] for e in events] == sorted(e["t_ms"] for e in events)
    assert attempt["socket_end"] == {"retained_as": response_id}
    assert flows[0].comment.startswith(f"ws new · {len(events)} events · first event ")
    assert convo["sent_to_client_bytes"] == len(first.content) == len(flows[0].response.content)
    follow = flows[1].metadata["responses_bridge"]
    assert follow["socket"] == "reused"
    assert follow["attempts"][0]["sent"]["previous_response_id"] == response_id
    assert flows[1].comment.startswith("ws reused · ")
    assert follow["sent_to_client_bytes"] is None  # a JSON answer: mitmproxy sent it whole
    raw = saved.read_bytes()
    assert b"sk-inspected-secret" not in raw.replace(b"Bearer sk-inspected-secret", b"")
    # Only the request's own Authorization header holds the key; the attachment never does.
    assert "sk-inspected-secret" not in json.dumps(convo) + json.dumps(follow)
    assert "acct-secret" not in json.dumps(convo) + json.dumps(follow)


def test_socket_end_is_recorded_when_the_upstream_closes(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    saved = tmp_path / "flows.mitm"
    bridge = start_bridge(fake, f"save_stream_file={saved}")
    got = httpx.post(
        f"{bridge.base_url}/responses",
        json={**BODY, "input": "x fake:close=1011 fake:phase=mid", "stream": False},
        timeout=30,
    )
    assert got.status_code == 502
    bridge.stop()
    end = read_flows(saved)[0].metadata["responses_bridge"]["attempts"][0]["socket_end"]
    assert end["closed"] is True and end["code"] == 1011


@pytest.mark.parametrize("stream", [False, True])
def test_rate_limits_become_codex_headers(
    fake: FakeUpstream, start_bridge: StartBridge, stream: bool
) -> None:
    bridge = start_bridge(fake)
    got = httpx.post(
        f"{bridge.base_url}/responses",
        json={**BODY, "input": "x fake:vendor", "stream": stream},
        timeout=30,
    )
    assert got.status_code == 200
    assert got.headers["x-codex-primary-used-percent"] == "12.5"
    assert got.headers["x-codex-primary-window-minutes"] == "300"
    assert got.headers["x-codex-secondary-reset-after-seconds"] == "400000"
    assert "codex." not in got.text  # vendor events themselves are not forwarded


def test_keepalive_comments_while_the_upstream_is_silent(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, "responses_bridge_keepalive=0.2")
    got = httpx.post(
        f"{bridge.base_url}/responses",
        json={**BODY, "input": "x fake:slow=700 fake:deltas=2"},
        timeout=30,
    )
    assert got.status_code == 200
    assert ": keep-alive" in got.text
    assert got.text.index("event: response.created") < got.text.index(": keep-alive")
    client = openai.OpenAI(base_url=bridge.base_url, api_key="k", max_retries=0)
    events = list(client.responses.create(model="m", input="y fake:slow=500", stream=True))
    assert events[-1].type == "response.completed"


def test_keepalive_off(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_keepalive=0")
    got = httpx.post(
        f"{bridge.base_url}/responses",
        json={**BODY, "input": "x fake:slow=400 fake:deltas=2"},
        timeout=30,
    )
    assert ": keep-alive" not in got.text


async def test_commands_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """sessions, close and stats through mitmproxy's own command machinery (a DumpMaster)."""
    import bridge as bridge_script

    from responses_bridge.mitm import gc_freeze

    monkeypatch.setattr(gc_freeze, "FREEZE_DELAY", 0.0)
    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    fake = FakeUpstream()
    await fake.start()
    opts = options.Options(
        mode=[f"reverse:http://127.0.0.1:{fake.port}"], listen_host="127.0.0.1", listen_port=0
    )
    master = DumpMaster(opts, with_termlog=False, with_dumper=False)
    addon = bridge_script.ResponsesBridge()
    master.addons.add(addon)
    master.options.update(responses_bridge_warm_sockets=0)
    running = asyncio.create_task(master.run())
    try:
        for _ in range(200):
            addrs = master.addons.get("proxyserver").listen_addrs()
            if addrs:
                break
            await asyncio.sleep(0.02)
        port = addrs[0][1]
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{port}/v1/responses"
            one = await client.post(url, json={**BODY, "stream": False}, headers=AUTH)
            await client.post(url, json={**BODY, "stream": True}, headers=AUTH)
            await client.post(url, json={**BODY, "input": "x fake:error=400:bad", "stream": False})
        rows = [
            json.loads(line)
            for line in master.commands.execute("responses_bridge.sessions").splitlines()
        ]
        assert len(rows) == 2
        assert {row["response_id"] for row in rows} >= {one.json()["id"]}
        assert all(row["turns"] == 1 and row["upstream"] == fake.url() for row in rows)
        assert all("sk-inspected" not in json.dumps(row) for row in rows)
        for _ in range(200):
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.02)
        assert gc.get_freeze_count() > 10_000  # start-up objects frozen once running
        stats = json.loads(master.commands.execute("responses_bridge.stats"))
        assert stats["requests"] == 3 and stats["streamed"] == 1 and stats["json"] == 2
        assert stats["errors"] == {"bad": 1}
        # Two retained chains on lanes of one shared socket.
        assert stats["open_sockets"] == 1 and stats["sessions"] == 2
        assert stats["bytes_relayed"] > 0
        assert stats["transcript_bytes"] == sum(row["transcript_bytes"] for row in rows) > 0
        closed = master.commands.execute(f"responses_bridge.close {one.json()['id']}")
        assert closed == "closed 1 session(s)"
        assert master.commands.execute("responses_bridge.close all") == "closed 1 session(s)"
        for _ in range(200):
            if fake.open_sockets == 0:
                break
            await asyncio.sleep(0.02)
        assert fake.open_sockets == 0
        assert master.commands.execute("responses_bridge.sessions") == ""
    finally:
        master.shutdown()
        await asyncio.wait_for(running, 10)
        await fake.stop()
    assert gc.get_freeze_count() == 0  # done() let them go: a reloaded script's old ones can go
