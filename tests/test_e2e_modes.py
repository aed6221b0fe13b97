"""End to end: reverse and regular proxy mode, HTTP and HTTPS (mitmproxy's CA), HTTP/1.1 and /2."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import Mitmdump

BODY = {"model": "m", "input": "via the proxy", "stream": True}


def sse_types(text: str) -> list[str]:
    return [line[len("event: ") :] for line in text.splitlines() if line.startswith("event: ")]


def proxy_client(bridge: Mitmdump) -> httpx.Client:
    ca = ssl.create_default_context(cafile=str(bridge.confdir / "mitmproxy-ca-cert.pem"))
    return httpx.Client(
        proxy=f"http://127.0.0.1:{bridge.port}", verify=ca, timeout=30, trust_env=False
    )


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_regular_mode(fake: FakeUpstream, start_bridge: StartBridge, scheme: str) -> None:
    bridge = start_bridge(None, f"responses_bridge_upstream={fake.url()}", mode="regular")
    with proxy_client(bridge) as client:
        url = f"{scheme}://api.example.test/v1/responses"
        streamed = client.post(url, json=BODY, headers={"authorization": "Bearer sk-x"})
        whole = client.post(url, json={**BODY, "stream": False})
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"].startswith("text/event-stream")
    types = sse_types(streamed.text)
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert whole.status_code == 200 and whole.json()["status"] == "completed"
    assert fake.connections == 2
    assert fake.handshake_headers[0]["authorization"] == "Bearer sk-x"


def test_openai_sdk_through_regular_https_proxy(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    import openai

    bridge = start_bridge(None, f"responses_bridge_upstream={fake.url()}", mode="regular")
    ca = ssl.create_default_context(cafile=str(bridge.confdir / "mitmproxy-ca-cert.pem"))
    http_client = openai.DefaultHttpxClient(proxy=f"http://127.0.0.1:{bridge.port}", verify=ca)
    client = openai.OpenAI(
        base_url="https://api.openai.com/v1", api_key="sk-x", http_client=http_client, max_retries=0
    )
    with client.responses.stream(model="m", input="through the CA") as stream:
        final = stream.get_final_response()
    assert final.output_text.startswith("echo: through the CA")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_http2_client(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(None, f"responses_bridge_upstream={fake.url()}", mode="regular")
    result = subprocess.run(
        [
            "curl",
            "-sN",
            "--http2",
            "-x",
            f"http://127.0.0.1:{bridge.port}",
            "--cacert",
            str(bridge.confdir / "mitmproxy-ca-cert.pem"),
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps(BODY),
            "-w",
            "\nHTTP_VERSION=%{http_version} STATUS=%{http_code}",
            "https://api.example.test/v1/responses",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "HTTP_VERSION=2 STATUS=200" in result.stdout
    types = sse_types(result.stdout)
    assert types[0] == "response.created" and types[-1] == "response.completed"


def test_default_upstream_is_the_flow_destination(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    bridge = start_bridge(None, mode="regular")
    with proxy_client(bridge) as client:
        got = client.post(
            f"http://127.0.0.1:{fake.port}/backend-api/codex/responses",
            json={**BODY, "store": True, "max_output_tokens": 5, "truncation": "auto"},
        )
    assert got.status_code == 200
    assert fake.sockets[0].path == "/backend-api/codex/responses"
    sent = fake.requests[0]
    # ChatGPT backend rules apply to that path by default.
    assert sent["store"] is False and "max_output_tokens" not in sent and "truncation" not in sent


def test_headers_forwarded_on_upgrade(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake)
    headers = {
        "authorization": "Bearer sk-fwd",
        "chatgpt-account-id": "acct-1",
        "openai-beta": "responses=experimental",
        "session_id": "s-1",
        "originator": "codex_cli_rs",
        "accept-encoding": "gzip",
    }
    got = httpx.post(f"{bridge.base_url}/responses", json=BODY, headers=headers, timeout=30)
    assert got.status_code == 200
    seen = fake.handshake_headers[0]
    for name in ("authorization", "chatgpt-account-id", "openai-beta", "session_id", "originator"):
        assert seen[name] == headers[name]
    assert "content-length" not in seen and "content-type" not in seen
    assert seen.get("accept-encoding") != "gzip"
    assert not [k for k in seen if k.startswith("x-responses-bridge")]


def test_hosts_option_narrows_bridging(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge_hosts=*.openai.com")
    got = httpx.post(f"{bridge.base_url}/responses", json=BODY, timeout=30)
    assert got.status_code == 426  # passed through to the fake's plain-HTTP side
    assert fake.connections == 0


def test_bridge_switched_off(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "responses_bridge=false")
    assert httpx.post(f"{bridge.base_url}/responses", json=BODY, timeout=30).status_code == 426


def test_invalid_options_fail_clearly(fake: FakeUpstream, tmp_path: Path) -> None:
    for option, fragment in [
        ("responses_bridge_upstream=http://x", "ws:// or wss://"),
        ("responses_bridge_connect_timeout=soon", "number of seconds"),
        ("responses_bridge_chatgpt_compat=maybe", "auto, on or off"),
        ("responses_bridge_http_only_period=-1", "non-negative number of seconds"),
    ]:
        with pytest.raises(RuntimeError) as caught:
            Mitmdump(["--set", option], tmp_path)
        assert fragment in str(caught.value), str(caught.value)


def test_saved_flows_show_the_original_url(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    from mitmproxy import io

    saved = tmp_path / "flows.mitm"
    bridge = start_bridge(fake, f"save_stream_file={saved}")
    auth = {"authorization": "Bearer sk-secret-credential"}
    streamed = httpx.post(f"{bridge.base_url}/responses", json=BODY, headers=auth, timeout=30)
    whole = httpx.post(
        f"{bridge.base_url}/responses", json={**BODY, "stream": False}, headers=auth, timeout=30
    )
    bridge.stop()
    with saved.open("rb") as file:
        flows = list(io.FlowReader(file).stream())
    assert len(flows) == 2
    for flow in flows:
        assert flow.request.pretty_url == f"http://127.0.0.1:{fake.port}/v1/responses"
        assert flow.request.host_header == f"127.0.0.1:{fake.port}"
        assert not [k for k in flow.request.headers if k.lower().startswith("x-responses-bridge")]
    assert flows[0].response.content == streamed.content
    assert flows[1].response.content and json.loads(flows[1].response.content) == whole.json()
    saved_bytes = saved.read_bytes()
    assert b"x-responses-bridge-secret" not in saved_bytes
    assert b"x-responses-bridge-flow" not in saved_bytes
    assert flows[0].response.headers["x-responses-bridge"] == "new"
    assert "sk-secret-credential" not in bridge.output


def test_no_credentials_in_debug_log(fake: FakeUpstream, start_bridge: StartBridge) -> None:
    bridge = start_bridge(fake, "termlog_verbosity=debug", "flow_detail=0")
    httpx.post(
        f"{bridge.base_url}/responses",
        json=BODY,
        timeout=30,
        headers={"authorization": "Bearer sk-never-logged", "chatgpt-account-id": "acct-never"},
    )
    bridge.wait_for_log(r"responses-bridge: POST /v1/responses -> 200")
    assert "sk-never-logged" not in bridge.output and "acct-never" not in bridge.output
