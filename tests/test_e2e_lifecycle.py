"""End to end: what happens to upstream sockets when clients leave, the script reloads, or the
proxy stops."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import openai

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import ADDON, Mitmdump, wait_until


def abort_mid_stream(bridge: Mitmdump) -> None:
    with httpx.stream(
        "POST",
        f"{bridge.base_url}/responses",
        timeout=30,
        json={"model": "m", "input": "x fake:slow=200 fake:deltas=20", "stream": True},
    ) as streamed:
        assert streamed.status_code == 200
        first_data = next(line for line in streamed.iter_lines() if line.startswith("data: "))
    assert "response.created" in first_data  # the stream had started when the client left


def test_stateless_client_abort_stops_the_upstream_work(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(fake, "responses_bridge_stateful=false")
    abort_mid_stream(bridge)
    wait_until(lambda: fake.open_sockets == 0, timeout=3)
    assert fake.sockets[0].closed
    bridge.wait_for_log(r"client side: Client disconnected")


def test_drain_is_bounded(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_drain_timeout=0.5")
    abort_mid_stream(bridge)  # the answer would take 4 s more
    wait_until(lambda: fake.open_sockets == 0, timeout=3)
    assert fake.connections == 1


# Loaded beside the bridge: GET /count answers how many ResponsesBridge instances are alive,
# frozen ones included (unfrozen but not collected first, so a leaked one still counts).
COUNTING_SCRIPT = """
import gc
from mitmproxy import http

class Count:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path == "/count":
            gc.unfreeze()
            alive = sum(type(o).__name__ == "ResponsesBridge" for o in gc.get_objects())
            gc.freeze()
            flow.response = http.Response.make(200, str(alive).encode())

addons = [Count()]
"""


def test_hot_reload_leaks_no_sockets_and_no_instance(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    script = tmp_path / "bridge.py"
    shutil.copy(ADDON, script)
    counting = tmp_path / "count_bridges.py"
    counting.write_text(COUNTING_SCRIPT)
    bridge = Mitmdump(
        [
            "--mode",
            f"reverse:http://127.0.0.1:{fake.port}",
            "--set",
            "responses_bridge_warm_sockets=1",
            "-s",
            str(counting),
        ],
        tmp_path,
        script=script,
    )
    try:
        client = openai.OpenAI(base_url=bridge.base_url, api_key="k", max_retries=0)
        first = client.responses.create(model="m", input="one", store=False)
        wait_until(lambda: fake.open_sockets == 1)  # the shared socket the chain is on
        loaded = len([line for line in bridge.lines if "answering bridged requests" in line])
        frozen = bridge.output.count("objects from start-up moved out")
        future = time.time() + 5
        os.utime(script, (future, future))
        wait_until(
            lambda: len([ln for ln in bridge.lines if "answering bridged requests" in ln]) > loaded
        )
        wait_until(lambda: fake.open_sockets == 0)
        # The new instance serves; the old chain's socket is gone with the old instance.
        again = client.responses.create(model="m", input="two", store=False)
        assert again.status == "completed"
        assert first.id not in bridge.output
        # The new instance's first freeze comes after the old one has closed: it is collected,
        # not frozen for good with everything it holds.
        wait_until(lambda: bridge.output.count("objects from start-up moved out") > frozen, 20)
        line = [ln for ln in bridge.lines if "objects from start-up moved out" in ln][-1]
        assert int(line.split(" objects from start-up")[0].rsplit(" ", 1)[1]) > 10_000
        alive = httpx.get(f"http://127.0.0.1:{bridge.port}/count", timeout=10)
        assert alive.text == "1"
        assert "Traceback" not in bridge.output, bridge.output
    finally:
        bridge.stop()
    wait_until(lambda: fake.open_sockets == 0)
