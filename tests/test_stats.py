"""Unit tests for ``responses_bridge.mitm.stats``: the flow comment and the counters."""

from __future__ import annotations

from responses_bridge.mitm.stats import Stats, flow_comment


def test_flow_comment() -> None:
    assert flow_comment("reused", 57, 180.4, 2.44) == (
        "ws reused · 57 events · first event 180 ms · 2.4 s"
    )
    assert flow_comment("new", 0, None, 0.01) == "ws new · 0 events · 0.0 s"


def test_stats_counts() -> None:
    stats = Stats()
    stats.count(stream=True, socket_state="reused", error_code=None)
    stats.count(stream=False, socket_state="new", error_code="upstream_closed")
    stats.count(stream=None, socket_state="new", error_code="invalid_json")
    data = stats.as_dict()
    assert (data["requests"], data["streamed"], data["json"]) == (3, 1, 1)
    assert (data["new"], data["reused"]) == (2, 1)
    assert data["errors"] == {"invalid_json": 1, "upstream_closed": 1}
