"""End to end: the bridge's upstream TLS follows mitmproxy's options, and in upstream-proxy mode
its websocket goes through that proxy while the internal hop never does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.harness import Mitmdump, read_flows
from tests.tlsutil import make_ca_and_cert, tls_terminator

BODY = {"model": "m", "input": "secure", "stream": True}


@pytest.fixture
def tls_material(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_ca_and_cert(tmp_path)


@pytest.fixture
def tls_fake(fake: FakeUpstream, tls_material: tuple[Path, Path, Path]) -> Iterator[dict[str, Any]]:
    _ca, cert, key = tls_material
    with tls_terminator(cert, key, fake.port) as info:
        yield info


def post(bridge: Mitmdump) -> httpx.Response:
    return httpx.post(
        f"{bridge.base_url}/responses",
        json=BODY,
        timeout=30,
        headers={"authorization": "Bearer sk-tls"},
    )


def test_untrusted_upstream_is_refused_and_nothing_is_sent(
    fake: FakeUpstream, start_bridge: StartBridge, tls_fake: dict[str, Any]
) -> None:
    bridge = start_bridge(
        fake, f"responses_bridge_upstream=wss://localhost:{tls_fake['port']}/v1/responses"
    )
    got = post(bridge)
    assert got.status_code == 502
    error = got.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert (
        "not trusted" in error["message"] and "ssl_verify_upstream_trusted_ca" in error["message"]
    )
    assert fake.connections == 0 and fake.requests == []


def test_trusted_ca_option(
    fake: FakeUpstream,
    start_bridge: StartBridge,
    tls_fake: dict[str, Any],
    tls_material: tuple[Path, Path, Path],
) -> None:
    ca, _cert, _key = tls_material
    bridge = start_bridge(
        fake,
        f"responses_bridge_upstream=wss://localhost:{tls_fake['port']}/v1/responses",
        f"ssl_verify_upstream_trusted_ca={ca}",
    )
    got = post(bridge)
    assert got.status_code == 200 and "event: response.completed" in got.text
    assert tls_fake["sni"] == ["localhost"]  # SNI is the upstream host
    assert fake.connections == 1


def test_trusted_confdir_option(
    fake: FakeUpstream,
    start_bridge: StartBridge,
    tls_fake: dict[str, Any],
    tls_material: tuple[Path, Path, Path],
    tmp_path: Path,
) -> None:
    import subprocess

    ca, _cert, _key = tls_material
    confdir = tmp_path / "trusted"
    confdir.mkdir()
    (confdir / "ca.pem").write_bytes(ca.read_bytes())
    rehash = subprocess.run(["openssl", "rehash", str(confdir)], capture_output=True)
    if rehash.returncode != 0:
        pytest.skip("openssl rehash is not available")
    bridge = start_bridge(
        fake,
        f"responses_bridge_upstream=wss://localhost:{tls_fake['port']}/v1/responses",
        f"ssl_verify_upstream_trusted_confdir={confdir}",
    )
    assert post(bridge).status_code == 200


def test_ssl_insecure_skips_verification(
    fake: FakeUpstream, start_bridge: StartBridge, tls_fake: dict[str, Any]
) -> None:
    bridge = start_bridge(
        fake,
        f"responses_bridge_upstream=wss://localhost:{tls_fake['port']}/v1/responses",
        "ssl_insecure=true",
    )
    assert post(bridge).status_code == 200


class RecordingProxy:
    """A small HTTP proxy (CONNECT tunnels and absolute-form requests) that records what it is
    asked, optionally requiring Proxy-Authorization."""

    def __init__(self, auth: str | None = None) -> None:
        self.auth = auth
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *header_lines = head.split("\r\n")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.partition(":") for h in header_lines if h)
            }
            self.requests.append((line, headers))
            if self.auth is not None:
                expected = "Basic " + base64.b64encode(self.auth.encode()).decode()
                if headers.get("proxy-authorization") != expected:
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
                    )
                    await writer.drain()
                    writer.close()
                    return
            method, target, _ = line.split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(Exception):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.parametrize(
    ("scheme", "auth"),
    [("http", "user:pass"), ("https", "user:pass"), ("https", "us er:p@ss/w#rd?%41:x")],
)
def test_upstream_mode_routes_the_websocket_through_the_proxy(
    fake: FakeUpstream, start_bridge: StartBridge, scheme: str, auth: str
) -> None:
    with RecordingProxy(auth=auth) as proxy:
        bridge = start_bridge(
            None,
            f"responses_bridge_upstream={fake.url()}",
            f"upstream_auth={auth}",
            mode=f"upstream:http://127.0.0.1:{proxy.port}",
        )
        ca = ssl.create_default_context(cafile=str(bridge.confdir / "mitmproxy-ca-cert.pem"))
        with httpx.Client(
            proxy=f"http://127.0.0.1:{bridge.port}", verify=ca, trust_env=False, timeout=30
        ) as client:
            got = client.post(
                f"{scheme}://api.example.test/v1/responses",
                json=BODY,
                headers={"authorization": "Bearer sk-never-in-plaintext"},
            )
        assert got.status_code == 200, got.text
        assert "event: response.completed" in got.text
        lines = [line for line, _headers in proxy.requests]
        # The bridge's websocket went through the proxy, with the proxy credentials...
        assert f"CONNECT 127.0.0.1:{fake.port} HTTP/1.1" in lines
        # ...and the internal hop to the embedded server never did.
        loopback = bridge.wait_for_log(r"answering bridged requests from").rsplit(":", 1)[1]
        assert not [line for line in lines if loopback.strip() in line]
        assert not [line for line in lines if "/v1/responses" in line and "CONNECT" not in line]
        assert all("sk-never-in-plaintext" not in str(h) for _l, h in proxy.requests)
        assert fake.connections == 1


def test_upstream_proxy_refusing_the_credentials_is_a_clear_502(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    with RecordingProxy(auth="user:pass") as proxy:
        bridge = start_bridge(
            None,
            f"responses_bridge_upstream={fake.url()}",
            "upstream_auth=user:wrong-s3cret",
            mode=f"upstream:http://127.0.0.1:{proxy.port}",
        )
        ca = ssl.create_default_context(cafile=str(bridge.confdir / "mitmproxy-ca-cert.pem"))
        with httpx.Client(
            proxy=f"http://127.0.0.1:{bridge.port}", verify=ca, trust_env=False, timeout=30
        ) as client:
            got = client.post("https://api.example.test/v1/responses", json=BODY)
    # Not 407: that would tell the client that its own proxy (mitmproxy) wants credentials.
    assert got.status_code == 502, got.text
    error = got.json()["error"]
    assert error["code"] == "upstream_unavailable"
    assert "HTTP 407" in error["message"] and "upstream_auth" in error["message"]
    assert "wrong-s3cret" not in got.text
    assert not any("wrong-s3cret" in line for line in bridge.lines)
    assert fake.connections == 0


def test_the_http_fallback_goes_through_the_upstream_proxy_too(
    fake: FakeUpstream, start_bridge: StartBridge
) -> None:
    fake.http_responses = True
    fake.handshake_status = 426  # no websocket mode: the request goes on over HTTP
    with RecordingProxy() as proxy:
        bridge = start_bridge(None, mode=f"upstream:http://127.0.0.1:{proxy.port}")
        with httpx.Client(proxy=f"http://127.0.0.1:{bridge.port}", trust_env=False) as client:
            got = client.post(f"http://127.0.0.1:{fake.port}/v1/responses", json=BODY, timeout=30)
        lines = [line for line, _headers in proxy.requests]
        # The websocket attempt (CONNECT), then the request itself, both via the proxy (which
        # answers plain requests with 502 itself) and never straight to the upstream.
        assert lines == [
            f"CONNECT 127.0.0.1:{fake.port} HTTP/1.1",
            f"POST http://127.0.0.1:{fake.port}/v1/responses HTTP/1.1",
        ]
        assert got.status_code == 502 and got.content == b""
        assert fake.http_requests == []
        assert not [k for _l, h in proxy.requests for k in h if k.startswith("x-responses-bridge")]


# Loaded beside the bridge: logs the header names of every request the loopback server reads.
LOOPBACK_SPY = """
import logging
from mitmproxy import ctx

class LoopbackSpy:
    def running(self) -> None:
        server = ctx.master.addons.get("responsesbridge")._flows.server
        inner = server._on_head

        def on_head(request):
            names = sorted({name.lower() for name, _value in request.headers})
            logging.getLogger("spy").warning("loopback-spy: " + ",".join(names))
            inner(request)

        server._on_head = on_head

addons = [LoopbackSpy()]
"""


def upstream_mode(
    proxy: RecordingProxy, confdir: Path, option: str, script: Path | None = None
) -> Mitmdump:
    """The bridge in upstream mode via ``proxy``, with ``upstream_auth=user:s3cret``."""
    args = [
        "--mode",
        f"upstream:http://127.0.0.1:{proxy.port}",
        "--set",
        "upstream_auth=user:s3cret",
    ]
    args += ["--set", option, *(["-s", str(script)] if script else [])]
    return Mitmdump(args, confdir)


def test_upstream_auth_never_ends_up_on_a_bridged_flow(
    fake: FakeUpstream, confdir: Path, tmp_path: Path
) -> None:
    # A plain-HTTP request in upstream mode: mitmproxy's UpstreamAuth gives it the proxy's
    # credentials (Proxy-Authorization), meant for the upstream proxy alone.
    spy = tmp_path / "spy.py"
    spy.write_text(LOOPBACK_SPY)
    saved = tmp_path / "flows.mitm"
    with RecordingProxy(auth="user:s3cret") as proxy:
        bridge = upstream_mode(proxy, confdir, f"save_stream_file={saved}", script=spy)
        try:
            with httpx.Client(proxy=f"http://127.0.0.1:{bridge.port}", trust_env=False) as client:
                got = client.post(
                    f"http://localhost:{fake.port}/v1/responses", json=BODY, timeout=30
                )
            assert got.status_code == 200, got.text
            assert "event: response.completed" in got.text
            spied = bridge.wait_for_log(r"loopback-spy: ")
        finally:
            bridge.stop()
    # The websocket's CONNECT carried the proxy's credentials (the proxy insists on them)...
    connects = [h for line, h in proxy.requests if line.startswith("CONNECT ")]
    assert connects and all(h.get("proxy-authorization") for h in connects)
    # ...which reached neither the loopback hop, nor the upstream, nor the saved flow.
    assert "x-responses-bridge-secret" in spied and "proxy-authorization" not in spied
    assert fake.handshake_headers and all(
        "proxy-authorization" not in h for h in fake.handshake_headers
    )
    flows = read_flows(saved)
    assert len(flows) == 1 and flows[0].response is not None
    assert "proxy-authorization" not in flows[0].request.headers
    assert flows[0].request.pretty_url == f"http://localhost:{fake.port}/v1/responses"


def test_the_http_fallback_never_sends_the_upstream_proxy_password_to_the_origin(
    fake: FakeUpstream, confdir: Path, tls_material: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = tls_material
    fake.http_responses = True
    fake.handshake_status = 426  # no websocket mode: the request goes on over HTTP
    with tls_terminator(cert, key, fake.port) as tls, RecordingProxy(auth="user:s3cret") as proxy:
        bridge = upstream_mode(proxy, confdir, f"ssl_verify_upstream_trusted_ca={ca}")
        try:
            mitm_ca = ssl.create_default_context(
                cafile=str(bridge.confdir / "mitmproxy-ca-cert.pem")
            )
            with httpx.Client(
                proxy=f"http://127.0.0.1:{bridge.port}", verify=mitm_ca, trust_env=False
            ) as client:
                got = client.post(
                    f"https://localhost:{tls['port']}/v1/responses", json=BODY, timeout=30
                )
        finally:
            bridge.stop()
    assert got.status_code == 200, got.text
    assert "event: response.completed" in got.text
    # Over HTTP, through the proxy's tunnel (CONNECT with its credentials), to the origin...
    assert [r["method"] for r in fake.http_requests] == ["POST"]
    connects = [h for line, h in proxy.requests if line.startswith("CONNECT ")]
    assert len(connects) == 2 and all(h.get("proxy-authorization") for h in connects)
    # ...which never sees the proxy's password.
    assert "proxy-authorization" not in fake.http_requests[0]["headers"]
    assert not [k for k in fake.http_requests[0]["headers"] if k.startswith("x-responses-bridge")]
