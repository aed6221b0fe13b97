"""``io.lanes``: one upstream socket shared by lanes, against the fake upstream's lanes: routing
by ``stream_id``, names reused only after their response ended, forks ordered, refusals told
apart, and a lost socket failing every lane."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from responses_bridge.io.lanes import Lane, SharedSocket
from responses_bridge.io.upstream import open_socket
from responses_bridge.protocol.errors import LanesRefused, UpstreamClosed, UpstreamTimeout
from tests.fake_upstream import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


async def shared(fake: FakeUpstream) -> SharedSocket:
    return SharedSocket(await open_socket(fake.url(), [], connect_timeout=5))


def create(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "response.create", "model": "m", "input": text, "store": False, **extra}


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Let the loop run until ``condition`` holds (at most ``timeout`` seconds)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def answer(lane: Lane) -> list[dict[str, Any]]:
    events = []
    while True:
        event, raw = await lane.receive(10)
        assert "stream_id" not in event and "stream_id" not in raw
        events.append(event)
        if event["type"] in ("response.completed", "response.failed", "error"):
            return events


async def test_two_lanes_run_at_once_and_get_their_own_events(fake: FakeUpstream) -> None:
    carrier = await shared(fake)
    one, two = carrier.share(16), carrier.share(16)
    assert one is not None and two is not None
    await one.send_event(create("one fake:slow=20"))
    await two.send_event(create("two fake:slow=20"))
    assert {one.name, two.name} == {"rb-0", "rb-1"} and carrier.in_flight == 2
    first, second = await asyncio.gather(answer(one), answer(two))
    assert first[-1]["response"]["output"][0]["content"][0]["text"].startswith("echo: one")
    assert second[-1]["response"]["output"][0]["content"][0]["text"].startswith("echo: two")
    assert fake.sockets[0].max_in_flight == 2 and fake.connections == 1
    assert carrier.in_flight == 0 and carrier.echoed
    # Socket-wide state: a new lane continues the other lane's response.
    three = carrier.share(16)
    assert three is not None
    await three.send_event(create("three", previous_response_id=first[-1]["response"]["id"]))
    events = await answer(three)
    assert "context: 2 user messages" in events[-1]["response"]["output"][0]["content"][0]["text"]
    assert not carrier._forks  # none waits: the continuation has begun
    for lane in (one, two, three):
        await lane.close()
    await until(lambda: carrier.closed)  # no conversation holds it any more


async def test_a_name_is_not_reused_while_its_response_runs(fake: FakeUpstream) -> None:
    carrier = await shared(fake)
    abandoned = carrier.share(16)
    assert abandoned is not None
    await abandoned.send_event(create("long fake:slow=50"))
    with pytest.raises(UpstreamTimeout):
        await abandoned.receive(0.01)
    keeper = carrier.share(16)
    assert keeper is not None
    await abandoned.close()  # the client left; its response still runs upstream
    await keeper.send_event(create("next"))
    assert keeper.name != abandoned.name
    events = await answer(keeper)
    assert "echo: next" in events[-1]["response"]["output"][0]["content"][0]["text"]
    await until(lambda: carrier.in_flight == 0)  # the abandoned response ends upstream
    assert abandoned.name not in carrier._busy
    await keeper.close()


async def test_the_lane_cap_and_name_pool(fake: FakeUpstream) -> None:
    carrier = await shared(fake)
    lanes = [carrier.share(2) for _ in range(3)]
    assert all(lane is not None for lane in lanes)  # handles are free; running ones count
    first, second, third = lanes
    assert first is not None and second is not None and third is not None
    await first.send_event(create("a fake:slow=30"))
    await second.send_event(create("b fake:slow=30"))
    assert carrier.share(2) is None  # two responses run: the cap is reached
    await asyncio.gather(answer(first), answer(second))
    assert carrier.share(2) is not None
    await carrier.close()


async def test_a_fork_waits_until_the_other_continuation_has_begun(fake: FakeUpstream) -> None:
    carrier = await shared(fake)
    root_lane = carrier.share(16)
    assert root_lane is not None
    await root_lane.send_event(create("root"))
    root = (await answer(root_lane))[-1]["response"]["id"]
    left, right = carrier.share(16), carrier.share(16)
    assert left is not None and right is not None
    await left.send_event(create("left fake:slow=30", previous_response_id=root))
    sending = asyncio.create_task(right.send_event(create("right", previous_response_id=root)))
    await asyncio.sleep(0.01)
    assert not sending.done()  # held until the left continuation is in progress
    await sending
    results = await asyncio.gather(answer(left), answer(right))
    assert all(events[-1]["type"] == "response.completed" for events in results)
    assert not carrier._forks  # nothing is kept once both have begun
    await carrier.close()


async def test_a_socket_out_of_names_refuses_the_lane_and_takes_no_more(
    fake: FakeUpstream,
) -> None:
    carrier = await shared(fake)
    lane = carrier.share(16)
    assert lane is not None
    fake.next_errors = [(400, "websocket_stream_limit_reached")]
    await lane.send_event(create("one more"))
    with pytest.raises(LanesRefused) as caught:
        await lane.receive(5)
    assert not caught.value.upstream_wide  # this socket only: another one is fine
    assert carrier.retired and not carrier.refused and carrier.share(16) is None
    await carrier.close()


async def test_an_upstream_that_refuses_lanes(fake: FakeUpstream) -> None:
    fake.lanes = "reject"
    carrier = await shared(fake)
    lane = carrier.share(16)
    assert lane is not None
    await lane.send_event(create("hi"))
    with pytest.raises(LanesRefused) as caught:
        await lane.receive(5)
    assert caught.value.upstream_wide and carrier.refused and carrier.share(16) is None
    await carrier.close()


async def test_an_ordinary_error_is_not_a_refusal(fake: FakeUpstream) -> None:
    carrier = await shared(fake)
    lane = carrier.share(16)
    assert lane is not None
    await lane.send_event(create("x", previous_response_id="resp_unknown"))
    event, _raw = await lane.receive(5)
    assert event["type"] == "error" and event["error"]["code"] == "previous_response_not_found"
    assert not carrier.refused
    await carrier.close()


async def test_a_lost_socket_fails_every_lane(fake: FakeUpstream) -> None:
    carrier = await shared(fake)
    lanes = [carrier.share(16) for _ in range(2)]
    for lane in lanes:
        assert lane is not None
        await lane.send_event(create("slow fake:slow=200"))
    await fake.close_socket(0, 1006)
    for lane in lanes:
        assert lane is not None
        with pytest.raises(UpstreamClosed):
            while True:
                await lane.receive(5)
        assert lane.closed
    assert carrier.share(16) is None
