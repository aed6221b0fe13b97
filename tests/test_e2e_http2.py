"""End to end: an HTTP/2 client's concurrent streams on one connection all stream at once.

mitmproxy lets one client connection have at most five connections to the same server address
at a time, and sends each HTTP/2 stream bound for an HTTP/1.1 server (the loopback server) on
a connection of its own; the bridge spreads such streams over more loopback ports (issue 23).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

from tests.conftest import StartBridge
from tests.fake_upstream import FakeUpstream
from tests.h2client import StreamResult, post_streams
from tests.harness import Mitmdump, read_flows

STREAMS = 10
SLOW = "fake:deltas=10 fake:slow=100"  # 18 events 100 ms apart: each stream lasts 1.8 s


def run_streams(bridge: Mitmdump, count: int, rounds: int) -> list[list[StreamResult]]:
    """``rounds`` times ``count`` streamed requests at once, on one HTTP/2 connection through
    the proxy."""
    ca = ssl.create_default_context(cafile=str(bridge.confdir / "mitmproxy-ca-cert.pem"))
    batches = [
        [
            json.dumps({"model": "m", "input": f"{r} {i} {SLOW}", "stream": True}).encode()
            for i in range(count)
        ]
        for r in range(rounds)
    ]
    return asyncio.run(
        post_streams(
            ("127.0.0.1", bridge.port),
            "api.example.test:443",
            "/v1/responses",
            batches,
            [("content-type", "application/json"), ("authorization", "Bearer sk-h2")],
            ca,
        )
    )


def test_ten_http2_streams_on_one_connection_all_stream_at_once(
    fake: FakeUpstream, start_bridge: StartBridge, tmp_path: Path
) -> None:
    saved = tmp_path / "flows.mitm"
    bridge = start_bridge(
        None,
        f"responses_bridge_upstream={fake.url()}",
        f"save_stream_file={saved}",
        mode="regular",
    )
    # Twice on one connection: the second ten once the first have ended.
    for results in run_streams(bridge, STREAMS, rounds=2):
        assert all(r.status == 200 and not r.reset for r in results), results
        for result in results:
            assert result.body.count(b"event: response.output_text.delta") == 10
            assert b"event: response.completed" in result.body
        # At once: every stream had its first delta before any of them ended (five at a
        # time, the sixth would have started only once one of the first five had ended).
        firsts = [r.first_marker for r in results]
        ends = [r.ended for r in results]
        assert None not in firsts and None not in ends
        assert max(firsts) < min(ends), (firsts, ends)  # type: ignore[type-var]
        # Event by event, not buffered: each stream came in many DATA frames.
        assert all(r.chunks >= 5 for r in results), [r.chunks for r in results]
    bridge.stop()
    flows = [f for f in read_flows(saved) if f.request.path == "/v1/responses"]
    assert len(flows) == 2 * STREAMS
    assert {f.request.http_version for f in flows} == {"HTTP/2.0"}
    # One client connection carried them all, and every flow shows its own destination.
    assert len({f.client_conn.id for f in flows}) == 1
    assert {(f.request.host, f.request.port) for f in flows} == {("api.example.test", 443)}
    assert all(f.metadata["responses_bridge"]["status"] == 200 for f in flows)
