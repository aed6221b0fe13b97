"""End to end with the real openai-node SDK (npm ``openai`` 6.x, what JavaScript agents and
editor extensions use): a stream read event by event, a follow-up through the SDK's stream
helper, a JSON answer, and the errors it raises, all through a real mitmdump with the bridge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream, text_event_types
from tests.harness import ROOT

NODE_MODULES = ROOT / ".venv" / "node" / "node_modules"
CLIENT = ROOT / "tests" / "node" / "responses_client.cjs"


def run_client(base_url: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "openai" / "package.json").exists():
        pytest.skip("node or openai-node is not installed (scripts/setup installs it with npm)")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTPS_PROXY", "HTTP_PROXY"):
        env.pop(var, None)
    done = subprocess.run(
        [node, str(CLIENT), base_url], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def test_openai_node_streams_follows_up_and_gets_clear_errors(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake)
    seen = run_client(bridge.base_url)
    assert seen["sdk_version"].startswith("6.")
    for answered in ("stream", "follow_up", "json"):
        assert "error" not in seen[answered], seen[answered]

    stream = seen["stream"]
    assert stream["types"] == text_event_types(5)
    assert stream["text"].startswith("echo: hello from node")
    assert stream["output"][0]["content"][0]["text"] == stream["text"]

    follow_up = seen["follow_up"]
    assert follow_up["previous"] == stream["id"]
    assert follow_up["output_text"].startswith("echo: and a follow-up")
    # The upstream answered with the whole context: the first turn and this one.
    assert "context: 2 user messages" in follow_up["output_text"]
    assert follow_up["output_text"].endswith("hello from node fake:deltas=5 / and a follow-up")

    assert seen["json"]["object"] == "response"
    assert seen["json"]["status"] == "completed"
    assert seen["json"]["output_text"].startswith("echo: a json answer please")

    unknown = seen["unknown_previous"]
    assert (unknown["error"], unknown["status"]) == ("BadRequestError", 400)
    assert unknown["code"] == "previous_response_not_found"
    assert "resp_unknown" in unknown["message"]

    limited = seen["upstream_error"]
    assert (limited["error"], limited["status"]) == ("RateLimitError", 429)
    assert limited["code"] == "rate_limit_exceeded"

    # The follow-up went upstream on the stream's socket, as a continuation.
    assert fake.requests[1]["previous_response_id"] == stream["id"]
    assert fake.sockets[0].response_ids[:2] == [stream["id"], follow_up["id"]]
