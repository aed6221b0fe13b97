"""Unit tests for ``responses_bridge.state.sessions``: routing, leases, capacity and
transcripts, through the registry that joins the state's parts.

Plain values only: a fake socket and an injected clock, no network and no real time.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import pytest

from responses_bridge.protocol.errors import BridgeError, CapacityExceeded
from responses_bridge.state.limits import Limits
from responses_bridge.state.pool import Session
from responses_bridge.state.sessions import Decision, Registry, Route
from responses_bridge.state.transcripts import ChainNode, items_size

ALICE = [("Authorization", "Bearer sk-alice-SECRETKEY")]
BOB = [("Authorization", "Bearer sk-bob-OTHERKEY")]
UP = "wss://api.openai.com/v1/responses"
OTHER_UP = "wss://chatgpt.com/backend-api/codex/responses"


class FakeSocket:
    """Just enough of an upstream socket: ``opened_at``, ``closed`` and ``close()``."""

    def __init__(self, opened_at: float = 0.0, close_yields: int = 0) -> None:
        self.opened_at = opened_at
        self.close_calls = 0
        self.close_yields = close_yields  # loop turns close() takes
        self._closed = False
        self._closed_event = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def drop(self) -> None:
        """The upstream closed the socket."""
        self._closed = True

    async def close(self) -> None:
        for _ in range(self.close_yields):
            await asyncio.sleep(0)
        self.close_calls += 1
        self._closed = True
        self._closed_event.set()

    async def wait_closed(self) -> None:
        await asyncio.wait_for(self._closed_event.wait(), 2)


class World:
    """A registry with a hand-driven clock, an owner and a counting ``connect``."""

    def __init__(self, **limits: Any) -> None:
        self.now = [1000.0]
        self.registry = Registry(limits=Limits(**limits), clock=lambda: self.now[0])
        self.owner = self.registry.owner_of(ALICE)
        self.sockets: list[FakeSocket] = []

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds

    async def connect(self) -> FakeSocket:
        socket = FakeSocket(self.now[0])
        self.sockets.append(socket)
        return socket

    async def open(self, owner: str | None = None, upstream: str = UP) -> Session:
        return await self.registry.open(owner or self.owner, upstream, self.connect)

    async def retained(
        self, response_id: str, owner: str | None = None, upstream: str = UP
    ) -> Session:
        """A fresh socket that answered one turn and is kept idle as ``response_id``."""
        session = await self.open(owner, upstream)
        async with self.registry.lease(session) as lease:
            lease.retain_as = response_id
        return session

    def route(
        self,
        previous_id: str,
        owner: str | None = None,
        upstream: str = UP,
        *,
        resolves: bool = False,
    ) -> Decision:
        return self.registry.route(
            owner or self.owner, upstream, previous_id, upstream_resolves=resolves
        )

    def record(
        self,
        response_id: str,
        items: list[dict[str, Any]],
        parent: ChainNode | None = None,
        *,
        continues: bool = False,
        owner: str | None = None,
        upstream: str = UP,
    ) -> ChainNode | None:
        return self.registry.transcripts.record(
            response_id, owner or self.owner, upstream, parent, items, continues=continues
        )


def sock(session: Session) -> FakeSocket:
    assert isinstance(session.socket, FakeSocket)
    return session.socket


def msg(text: str, role: str = "user") -> dict[str, Any]:
    kind = "input_text" if role == "user" else "output_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


@pytest.fixture
def world() -> World:
    return World()


# -- owner_of ---------------------------------------------------------------------------------


def test_same_upgrade_same_owner() -> None:
    registry = Registry()
    # Headers the upgrade does not carry, and the per-request ones, do not tell owners apart.
    first = registry.owner_of(
        [*ALICE, ("Content-Type", "application/json"), ("X-Request-ID", "r1")]
    )
    second = registry.owner_of(
        [
            ("x-stainless-retry-count", "1"),
            *ALICE,
            ("Content-Length", "9"),
            ("traceparent", "t"),
            ("User-Agent", "OpenAI/Python 2.54.0"),
            ("X-Stainless-Async", "false"),
        ]
    )
    assert first == second
    assert re.fullmatch(r"[0-9a-f]{24}", first)


@pytest.mark.parametrize(
    "extra",
    [
        ("OpenAI-Project", "proj_b"),
        ("OpenAI-Organization", "org_b"),
        ("session_id", "sess-b"),
        ("x-api-key", "other-client"),
        ("x-goog-api-key", "k"),
        ("Cookie", "s=1"),
        ("X-Gateway-Tenant", "t2"),
    ],
)
def test_any_other_upgrade_header_tells_owners_apart(extra: tuple[str, str]) -> None:
    """A socket serves only requests that would have sent exactly its upgrade's headers."""
    registry = Registry()
    base = [*ALICE, ("OpenAI-Project", "proj_a")] if extra[0] != "OpenAI-Project" else ALICE
    assert registry.owner_of(base) != registry.owner_of([*base, extra])
    changed = [(name, value + "-x") for name, value in [*base, extra]]
    assert registry.owner_of([*base, extra]) != registry.owner_of(changed)


def test_the_route_to_the_upstream_tells_owners_apart() -> None:
    registry = Registry()
    assert registry.owner_of(ALICE, route="http://u:p@proxy:3128 ") != registry.owner_of(ALICE)
    assert registry.owner_of(ALICE, route=" ('10.0.0.1', 443)") != registry.owner_of(
        ALICE, route=" ('10.0.0.2', 443)"
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (ALICE, BOB),
        (ALICE, []),
        (ALICE, [*ALICE, ("ChatGPT-Account-ID", "acct-1")]),
        ([*ALICE, ("ChatGPT-Account-ID", "acct-1")], [*ALICE, ("ChatGPT-Account-ID", "acct-2")]),
        ([("api-key", "k1")], [("api-key", "k2")]),
        # The parts of the credential do not run together.
        ([("Authorization", "ab")], [("Authorization", "a"), ("ChatGPT-Account-ID", "b")]),
        ([("x-a", "b:c")], [("x-a", "b"), ("c", "")]),
    ],
)
def test_different_credential_different_owner(
    one: list[tuple[str, str]], other: list[tuple[str, str]]
) -> None:
    registry = Registry()
    assert registry.owner_of(one) != registry.owner_of(other)


def test_owner_ignores_header_name_case() -> None:
    registry = Registry()
    canonical = registry.owner_of(
        [("Authorization", "Bearer sk-x"), ("ChatGPT-Account-ID", "acct-9")]
    )
    assert (
        registry.owner_of([("AUTHORIZATION", "Bearer sk-x"), ("chatgpt-account-id", "acct-9")])
        == canonical
    )
    assert (
        registry.owner_of([("authorization", "Bearer sk-x"), ("CHATGPT-ACCOUNT-ID", "acct-9")])
        == canonical
    )
    # The value is compared as it is: only the header name is case-insensitive.
    assert (
        registry.owner_of([("Authorization", "Bearer SK-X"), ("ChatGPT-Account-ID", "acct-9")])
        != canonical
    )


def test_owner_never_contains_the_credential() -> None:
    registry = Registry()
    headers = [("Authorization", "Bearer sk-proj-SECRETKEY"), ("ChatGPT-Account-ID", "acct-XYZ")]
    owner = registry.owner_of(headers)
    for fragment in ("Bearer", "sk-proj", "SECRETKEY", "acct-XYZ", "XYZ"):
        assert fragment not in owner
    assert re.fullmatch(r"[0-9a-f]{24}", owner)


def test_owner_is_keyed_per_registry() -> None:
    assert Registry().owner_of(ALICE) != Registry().owner_of(ALICE)


# -- route ------------------------------------------------------------------------------------


async def test_reuse_leases_the_idle_socket(world: World) -> None:
    session = await world.retained("resp_1")
    assert not session.busy
    world.advance(5)
    decision = world.route("resp_1")
    assert decision.route is Route.REUSE
    assert decision.session is session
    assert decision.node is None
    assert session.busy
    assert session.continuing == "resp_1"
    assert session.last_used == world.now[0]
    assert sock(session).close_calls == 0
    assert world.registry.snapshot()[0]["busy"] is True
    # It left the idle set: nobody else gets the same socket.
    assert world.route("resp_1").route is not Route.REUSE


async def test_concurrent_continuation_forks_when_the_transcript_is_kept(world: World) -> None:
    node = world.record("resp_1", [msg("hi"), msg("hello", "assistant")])
    session = await world.retained("resp_1")
    assert world.route("resp_1").route is Route.REUSE
    for resolves in (False, True):
        second = world.route("resp_1", resolves=resolves)
        assert second.route is Route.FORK
        assert second.node is node
        assert second.session is None
    assert sock(session).close_calls == 0  # the busy socket is left alone


async def test_concurrent_continuation_without_transcript(world: World) -> None:
    await world.retained("resp_1")
    assert world.route("resp_1").route is Route.REUSE
    assert world.route("resp_1").route is Route.BUSY
    assert world.route("resp_1", resolves=True).route is Route.PASS


async def test_release_ends_the_busy_state(world: World) -> None:
    await world.retained("resp_1")
    decision = world.route("resp_1")
    assert decision.session is not None
    async with world.registry.lease(decision.session) as lease:
        assert world.route("resp_1").route is Route.BUSY
        lease.retain_as = "resp_2"
    assert world.route("resp_1").route is Route.NOT_FOUND
    again = world.route("resp_2")
    assert again.route is Route.REUSE
    assert again.session is decision.session


async def test_unknown_id(world: World) -> None:
    assert world.route("resp_nope", resolves=True) == Decision(Route.PASS)
    assert world.route("resp_nope", resolves=False) == Decision(Route.NOT_FOUND)


@pytest.mark.parametrize("stranger", ["owner", "upstream"])
async def test_another_owner_or_upstream_is_treated_as_unknown(world: World, stranger: str) -> None:
    world.record("resp_1", [msg("hi")])
    session = await world.retained("resp_1")
    kwargs: dict[str, Any] = (
        {"owner": world.registry.owner_of(BOB)} if stranger == "owner" else {"upstream": OTHER_UP}
    )
    assert world.route("resp_1", **kwargs) == Decision(Route.NOT_FOUND)
    assert world.route("resp_1", resolves=True, **kwargs) == Decision(Route.PASS)
    assert (
        world.registry.chain("resp_1", **({"owner": world.owner, "upstream": UP} | kwargs)) is None
    )
    assert sock(session).close_calls == 0
    # Busy for its owner is not busy for a stranger either.
    assert world.route("resp_1").route is Route.REUSE
    assert world.route("resp_1", **kwargs) == Decision(Route.NOT_FOUND)


@pytest.mark.parametrize("why", ["ttl", "max_socket_age", "closed"])
async def test_a_stale_socket_is_closed_and_the_chain_rehydrated(why: str) -> None:
    world = World(session_ttl=100, max_socket_age=1000)
    node = world.record("resp_1", [msg("hi")])
    session = await world.open()
    async with world.registry.lease(session) as lease:
        if why == "max_socket_age":
            world.advance(950)  # a long first turn: the socket is old but recently used
        lease.retain_as = "resp_1"
    if why == "ttl":
        world.advance(100)
    elif why == "max_socket_age":
        world.advance(60)
    else:
        sock(session).drop()
    decision = world.route("resp_1")
    assert decision == Decision(Route.REHYDRATE, node=node)
    await sock(session).wait_closed()
    assert sock(session).close_calls == 1
    assert world.registry.open_sockets == 0
    assert world.route("resp_1") == Decision(Route.REHYDRATE, node=node)
    assert sock(session).close_calls == 1


@pytest.mark.parametrize("why", ["ttl", "max_socket_age"])
async def test_a_socket_just_within_its_limits_is_reused(why: str) -> None:
    world = World(session_ttl=100, max_socket_age=1000)
    session = await world.open()
    async with world.registry.lease(session) as lease:
        if why == "max_socket_age":
            world.advance(950)
        lease.retain_as = "resp_1"
    world.advance(99.9 if why == "ttl" else 49.9)
    assert world.route("resp_1") == Decision(Route.REUSE, session=session)


async def test_a_stale_socket_without_transcript() -> None:
    world = World(session_ttl=100)
    session = await world.retained("resp_1")
    world.advance(100)
    assert world.route("resp_1", resolves=True) == Decision(Route.PASS)
    await sock(session).wait_closed()
    assert world.route("resp_1") == Decision(Route.NOT_FOUND)


# -- lease ------------------------------------------------------------------------------------


async def test_lease_retains_on_retain_as(world: World) -> None:
    session = await world.open()
    async with world.registry.lease(session) as lease:
        assert lease.session is session
        lease.retain_as = "resp_1"
    assert sock(session).close_calls == 0
    assert not session.busy
    assert session.turns == 1
    assert session.response_id == "resp_1"
    assert world.registry.open_sockets == 1
    assert world.route("resp_1").session is session


async def test_lease_closes_without_retain_as(world: World) -> None:
    session = await world.open()
    async with world.registry.lease(session):
        pass
    assert sock(session).close_calls == 1
    assert world.registry.open_sockets == 0
    assert world.registry.snapshot() == []


async def test_lease_releases_once_on_an_exception(world: World) -> None:
    await world.retained("resp_1")
    session = world.route("resp_1").session
    assert session is not None
    with pytest.raises(RuntimeError, match="turn failed"):
        async with world.registry.lease(session):
            raise RuntimeError("turn failed")
    assert sock(session).close_calls == 1
    assert world.registry.open_sockets == 0
    assert world.route("resp_1") == Decision(Route.NOT_FOUND)  # no longer in flight


async def test_lease_releases_once_on_cancellation(world: World) -> None:
    await world.retained("resp_1")
    session = world.route("resp_1").session
    assert session is not None
    entered = asyncio.Event()

    async def turn() -> None:
        async with world.registry.lease(session) as lease:
            entered.set()
            await asyncio.Event().wait()
            lease.retain_as = "resp_2"  # never reached

    task = asyncio.create_task(turn())
    await entered.wait()
    assert world.route("resp_1").route is Route.BUSY
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sock(session).close_calls == 1
    assert world.registry.open_sockets == 0
    assert world.route("resp_1") == Decision(Route.NOT_FOUND)
    assert world.route("resp_2") == Decision(Route.NOT_FOUND)


async def test_lease_never_retains_a_socket_that_closed_meanwhile(world: World) -> None:
    session = await world.open()
    async with world.registry.lease(session) as lease:
        lease.retain_as = "resp_1"
        sock(session).drop()
    assert world.registry.open_sockets == 0
    assert world.route("resp_1") == Decision(Route.NOT_FOUND)
    assert sock(session).close_calls == 1


# -- a continuation of a response still being generated ---------------------------------------


async def test_nothing_being_generated_settles_at_once(world: World) -> None:
    assert await world.registry.settled("resp_unknown", world.owner, UP, timeout=0)


async def test_a_continuation_waits_for_the_turn_generating_its_response(world: World) -> None:
    session = await world.open()
    release = asyncio.Event()

    async def generating_turn() -> None:
        async with world.registry.lease(session) as lease:
            world.registry.producing(session, "resp_1")
            await release.wait()
            lease.retain_as = "resp_1"

    task = asyncio.create_task(generating_turn())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(world.registry.settled("resp_1", world.owner, UP, timeout=5))
    await asyncio.sleep(0)
    assert not waiter.done()
    assert world.route("resp_1") == Decision(Route.NOT_FOUND)  # what it would get without waiting
    release.set()
    assert await waiter
    await task
    assert world.route("resp_1").session is session  # retained before the waiter resumed
    assert session.producing is None


async def test_a_turn_that_ends_without_retaining_releases_the_waiters(world: World) -> None:
    session = await world.open()
    async with world.registry.lease(session):
        world.registry.producing(session, "resp_1")
        waiter = asyncio.create_task(world.registry.settled("resp_1", world.owner, UP, timeout=5))
        await asyncio.sleep(0)
        assert not waiter.done()
    assert await waiter
    assert world.route("resp_1") == Decision(Route.NOT_FOUND)
    assert sock(session).close_calls == 1


async def test_waiting_is_bounded(world: World) -> None:
    session = await world.open()
    async with world.registry.lease(session) as lease:
        world.registry.producing(session, "resp_1")
        assert not await world.registry.settled("resp_1", world.owner, UP, timeout=0.01)
        lease.retain_as = "resp_1"
    assert await world.registry.settled("resp_1", world.owner, UP, timeout=0)


@pytest.mark.parametrize("stranger", ["owner", "upstream"])
async def test_another_owner_never_waits_on_a_response_being_generated(
    world: World, stranger: str
) -> None:
    session = await world.open()
    owner = world.registry.owner_of(BOB) if stranger == "owner" else world.owner
    upstream = OTHER_UP if stranger == "upstream" else UP
    async with world.registry.lease(session):
        world.registry.producing(session, "resp_1")
        assert await world.registry.settled("resp_1", owner, upstream, timeout=5)


# -- open / capacity --------------------------------------------------------------------------


async def test_open_makes_a_busy_session(world: World) -> None:
    session = await world.open()
    assert session.socket is world.sockets[0]
    assert (session.owner, session.upstream) == (world.owner, UP)
    assert session.opened_at == session.last_used == world.now[0]
    assert session.busy
    assert session.turns == 0
    assert session.response_id is None
    assert world.registry.open_sockets == 1


async def test_capacity_counts_sockets_being_connected() -> None:
    world = World(max_sessions=2)
    await world.open()  # busy
    connecting, proceed = asyncio.Event(), asyncio.Event()

    async def slow_connect() -> FakeSocket:
        connecting.set()
        await proceed.wait()
        return await world.connect()

    pending = asyncio.create_task(world.registry.open(world.owner, UP, slow_connect))
    await connecting.wait()
    assert world.registry.open_sockets == 1
    with pytest.raises(CapacityExceeded):
        await world.open()
    proceed.set()
    await pending
    assert world.registry.open_sockets == 2
    assert len(world.sockets) == 2


async def test_a_full_registry_closes_the_least_recently_used_idle_socket() -> None:
    world = World(max_sessions=2)
    first = await world.retained("resp_1")
    world.advance(1)
    second = await world.retained("resp_2")
    world.advance(1)
    # Continue the older socket: now the other one is least recently used.
    reused = world.route("resp_1").session
    assert reused is first
    async with world.registry.lease(first) as lease:
        lease.retain_as = "resp_3"
    world.advance(1)
    third = await world.open()
    await sock(second).wait_closed()
    assert sock(first).close_calls == 0
    assert sock(third).close_calls == 0
    assert world.registry.open_sockets == 2
    assert world.route("resp_2") == Decision(Route.NOT_FOUND)
    assert world.route("resp_3") == Decision(Route.REUSE, session=first)


async def test_all_busy_is_capacity_exceeded() -> None:
    world = World(max_sessions=1)
    busy = await world.open()
    with pytest.raises(CapacityExceeded) as caught:
        await world.open()
    exc = caught.value
    assert isinstance(exc, BridgeError)
    assert exc.status == 503
    assert exc.headers == {"retry-after": "1"}
    assert exc.code == "bridge_capacity_exceeded"
    assert exc.body()["error"]["type"] == "server_error"
    assert "All 1 upstream sessions are busy" in exc.message
    assert len(world.sockets) == 1  # connect was never called
    assert sock(busy).close_calls == 0
    assert world.registry.open_sockets == 1


async def test_the_reservation_is_returned_when_connect_raises() -> None:
    world = World(max_sessions=1)

    async def failing_connect() -> FakeSocket:
        raise OSError("connection refused")

    for _ in range(3):
        with pytest.raises(OSError, match="refused"):
            await world.registry.open(world.owner, UP, failing_connect)
    assert world.registry.open_sockets == 0
    await world.open()
    assert world.registry.open_sockets == 1


async def test_the_reservation_is_returned_when_connect_is_cancelled() -> None:
    world = World(max_sessions=1)
    connecting = asyncio.Event()

    async def hanging_connect() -> FakeSocket:
        connecting.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    task = asyncio.create_task(world.registry.open(world.owner, UP, hanging_connect))
    await connecting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await world.open()
    assert world.registry.open_sockets == 1


async def test_concurrent_opens_never_exceed_max_sessions() -> None:
    world = World(max_sessions=3)
    idle = [await world.retained("resp_a"), await world.retained("resp_b")]
    in_connect = 0
    peak = 0

    async def connect() -> FakeSocket:
        nonlocal in_connect, peak
        in_connect += 1
        for _ in range(5):
            peak = max(peak, world.registry.open_sockets + in_connect)
            await asyncio.sleep(0)  # a bare yield: let the other opens run
        in_connect -= 1
        return await world.connect()

    results = await asyncio.gather(
        *(world.registry.open(world.owner, UP, connect) for _ in range(10)),
        return_exceptions=True,
    )
    opened = [r for r in results if isinstance(r, Session)]
    refused = [r for r in results if isinstance(r, CapacityExceeded)]
    assert len(opened) == 3
    assert len(refused) == 7
    assert peak <= 3
    assert world.registry.open_sockets == 3
    for session in idle:
        await sock(session).wait_closed()
    assert sum(not s.closed for s in world.sockets) == 3


# -- record / transcripts ---------------------------------------------------------------------


async def test_record_links_turns(world: World) -> None:
    turn1, turn2, turn3 = [msg("q1")], [msg("a1", "assistant"), msg("q2")], [msg("a2", "x")]
    first = world.record("resp_1", turn1)
    assert first is not None
    second = world.record("resp_2", turn2, first, continues=True)
    assert second is not None
    third = world.record("resp_3", turn3, second, continues=True)
    assert third is not None
    assert third.parent is second and second.parent is first and first.parent is None
    assert first.transcript() == turn1
    assert third.transcript() == turn1 + turn2 + turn3
    assert third.total_bytes == items_size(turn1 + turn2 + turn3)
    assert world.registry.chain("resp_3", world.owner, UP) is third
    assert world.registry.chain("resp_3", world.registry.owner_of(BOB), UP) is None
    assert world.registry.chain("resp_3", world.owner, OTHER_UP) is None
    assert world.registry.chain("resp_nope", world.owner, UP) is None
    # Rehydration offers the node, whose transcript is the whole chain.
    assert world.route("resp_3") == Decision(Route.REHYDRATE, node=third)


async def test_a_continuation_without_known_parent_is_not_kept(world: World) -> None:
    orphan = world.record("resp_2", [msg("q2")], None, continues=True)
    assert orphan is not None
    assert orphan.transcript() is None
    child = world.record("resp_3", [msg("q3")], orphan, continues=True)
    assert child is not None
    assert child.transcript() is None
    assert world.route("resp_3") == Decision(Route.NOT_FOUND)
    # Busy and not kept: BUSY, never a FORK that would replay half a chain.
    await world.retained("resp_3")
    assert world.route("resp_3").route is Route.REUSE
    assert world.route("resp_3") == Decision(Route.BUSY)


@pytest.mark.parametrize("slack", [0, -1])
async def test_transcript_max_bytes(slack: int) -> None:
    turn1, turn2, turn3 = [msg("q1" * 10)], [msg("a" * 50, "assistant")], [msg("q")]
    limit = items_size(turn1) + items_size(turn2) + slack
    world = World(transcript_max_bytes=limit)
    first = world.record("resp_1", turn1)
    second = world.record("resp_2", turn2, first, continues=True)
    assert first is not None and second is not None
    assert second.total_bytes == items_size(turn1 + turn2)
    if slack == 0:
        assert second.transcript() == turn1 + turn2
        return
    assert first.transcript() == turn1
    assert second.transcript() is None
    third = world.record("resp_3", turn3, second, continues=True)
    assert third is not None
    assert third.transcript() is None  # descendants of a dropped transcript are not kept
    assert third.total_bytes == items_size(turn1 + turn2 + turn3)
    assert world.route("resp_3") == Decision(Route.NOT_FOUND)
    assert world.route("resp_1") == Decision(Route.REHYDRATE, node=first)


async def test_keep_transcripts_off_records_nothing() -> None:
    world = World(keep_transcripts=False)
    assert world.record("resp_1", [msg("q1")]) is None
    assert world.registry.chain("resp_1", world.owner, UP) is None
    await world.retained("resp_1")
    assert world.route("resp_1").route is Route.REUSE
    assert world.route("resp_1") == Decision(Route.BUSY)


async def test_keep_transcripts_off_ignores_what_was_kept() -> None:
    world = World()
    world.record("resp_1", [msg("q1")])
    world.registry.limits.keep_transcripts = False  # a reconfigure
    assert world.route("resp_1") == Decision(Route.NOT_FOUND)


def test_chain_capacity_defaults_to_eight_per_session() -> None:
    assert Limits(max_sessions=3).chain_capacity == 24
    assert Limits(max_sessions=3, max_chains=5).chain_capacity == 5


async def test_chains_are_least_recently_used() -> None:
    world = World(max_chains=2)
    first = world.record("resp_1", [msg("q1")])
    world.record("resp_2", [msg("q2")])
    assert world.route("resp_1") == Decision(Route.REHYDRATE, node=first)  # a use
    world.record("resp_3", [msg("q3")], first, continues=True)
    assert world.registry.chain("resp_2", world.owner, UP) is None
    assert world.registry.chain("resp_1", world.owner, UP) is first
    fourth = world.record("resp_4", [msg("q4")])
    assert world.registry.chain("resp_1", world.owner, UP) is None
    third = world.registry.chain("resp_3", world.owner, UP)
    assert third is not None and fourth is not None
    # An evicted parent still serves its descendants' transcripts.
    assert third.transcript() == [msg("q1"), msg("q3")]


def held_bytes(registry: Registry) -> int:
    """The bytes of every segment reachable from a recorded node, each counted once."""
    seen: dict[int, int] = {}
    for node in registry.transcripts._chains.values():
        current: ChainNode | None = node
        while current is not None and id(current) not in seen:
            seen[id(current)] = current.segment_bytes
            current = current.parent
    return sum(seen.values())


async def test_transcript_bytes_count_each_segment_once(world: World) -> None:
    turns = [[msg("q1")], [msg("a1", "assistant"), msg("q2")], [msg("a2", "assistant")]]
    node = None
    for number, items in enumerate(turns, 1):
        node = world.record(f"resp_{number}", items, node, continues=node is not None)
    world.record("resp_b", [msg("other chain")])
    expected = sum(items_size(items) for items in turns) + items_size([msg("other chain")])
    assert world.registry.transcript_bytes == expected == held_bytes(world.registry)


async def test_older_turns_count_while_a_later_turn_links_to_them() -> None:
    world = World(max_chains=1)
    first = world.record("resp_1", [msg("q1")])
    second = world.record("resp_2", [msg("q2")], first, continues=True)
    assert second is not None
    assert world.registry.chain("resp_1", world.owner, UP) is None  # evicted by count...
    size_1, size_2 = items_size([msg("q1")]), items_size([msg("q2")])
    assert world.registry.transcript_bytes == size_1 + size_2  # ...but still held by resp_2
    world.record("resp_3", [msg("q3")])
    assert world.registry.transcript_bytes == items_size([msg("q3")])


async def test_a_parent_dropped_before_its_child_is_recorded_is_counted_again() -> None:
    world = World(max_chains=1)
    first = world.record("resp_1", [msg("q1")])  # a turn continuing it starts here...
    world.record("resp_x", [msg("qx")])  # ...meanwhile resp_1 is evicted and released
    assert world.registry.transcript_bytes == items_size([msg("qx")])
    second = world.record("resp_2", [msg("q2")], first, continues=True)  # ...and it ends
    assert second is not None and second.transcript() == [msg("q1"), msg("q2")]
    assert world.registry.transcript_bytes == items_size([msg("q1"), msg("q2")])
    world.record("resp_y", [msg("qy")])
    assert world.registry.transcript_bytes == items_size([msg("qy")])


async def test_the_total_budget_drops_the_least_recently_used_chains() -> None:
    one_chain = items_size([msg("q" * 100)]) + items_size([msg("a" * 100, "assistant")])
    world = World(transcripts_total_bytes=2 * one_chain)
    heads = []
    for name in ("a", "b"):
        root = world.record(f"resp_{name}1", [msg("q" * 100)])
        heads.append(
            world.record(f"resp_{name}2", [msg("a" * 100, "assistant")], root, continues=True)
        )
    assert world.registry.transcript_bytes == 2 * one_chain
    assert world.route("resp_a2").route is Route.REHYDRATE  # chain a is used: b is older now
    root = world.record("resp_c1", [msg("q" * 100)])
    world.record("resp_c2", [msg("a" * 100, "assistant")], root, continues=True)
    assert world.registry.transcript_bytes <= 2 * one_chain
    assert world.route("resp_b2") == Decision(Route.NOT_FOUND)
    assert world.route("resp_a2") == Decision(Route.REHYDRATE, node=heads[0])
    assert heads[0] is not None
    assert heads[0].transcript() == [msg("q" * 100), msg("a" * 100, "assistant")]
    assert world.registry.transcript_bytes == held_bytes(world.registry)


@pytest.mark.parametrize("seed", range(20))
async def test_transcript_bytes_stay_exact_and_bounded(seed: int) -> None:
    """Random chains, forks, replaced ids and parents evicted mid-turn: the counter always
    equals what is really held, and stays within the budget."""
    rng = random.Random(seed)
    budget = 2000
    world = World(max_chains=rng.randint(1, 8), transcripts_total_bytes=budget)
    known: list[ChainNode] = []
    for step in range(200):
        parent = rng.choice(known) if known and rng.random() < 0.7 else None
        response_id = f"resp_{rng.randint(0, 40) if rng.random() < 0.2 else step + 100}"
        items = [msg("x" * rng.randint(1, 300))]
        node = world.record(response_id, items, parent, continues=parent is not None)
        assert node is not None
        known.append(node)
        assert world.registry.transcript_bytes == held_bytes(world.registry)
        assert world.registry.transcript_bytes <= budget


# -- sweep, close_all, snapshot ---------------------------------------------------------------


async def test_sweep_closes_expired_idle_sockets_only() -> None:
    world = World(session_ttl=100, max_socket_age=1000)
    expired = await world.retained("resp_old")
    busy = await world.open()  # leased and never released, however old it gets
    world.advance(50)
    fresh = await world.retained("resp_new")
    assert world.registry.sweep() == 0
    world.advance(60)
    assert world.registry.sweep() == 1
    await sock(expired).wait_closed()
    assert sock(fresh).close_calls == 0
    assert sock(busy).close_calls == 0
    assert world.registry.open_sockets == 2
    assert world.route("resp_new") == Decision(Route.REUSE, session=fresh)
    assert world.route("resp_old") == Decision(Route.NOT_FOUND)
    assert world.registry.sweep() == 0


async def test_sweep_closes_sockets_past_max_age() -> None:
    world = World(session_ttl=100, max_socket_age=1000)
    session = await world.open()
    async with world.registry.lease(session) as lease:
        world.advance(999)
        lease.retain_as = "resp_1"
    assert world.registry.sweep() == 0
    world.advance(1)
    assert world.registry.sweep() == 1
    await sock(session).wait_closed()
    assert world.registry.open_sockets == 0


async def test_close_all() -> None:
    world = World(session_ttl=100)
    stale = await world.open()
    stale.socket = FakeSocket(close_yields=5)  # closes slowly
    async with world.registry.lease(stale) as lease:
        lease.retain_as = "resp_stale"
    world.advance(100)
    idle = await world.retained("resp_idle")
    busy = await world.open()
    async with world.registry.lease(busy) as lease:
        assert world.registry.sweep() == 1  # schedules the stale socket's close
        await world.registry.close_all()
        assert sock(stale).close_calls == 1  # close_all waited for it
        assert sock(idle).close_calls == 1
        assert sock(busy).close_calls == 1
        assert world.registry.open_sockets == 0
        assert world.registry.snapshot() == []
        lease.retain_as = "resp_busy"  # too late: the socket is closed
    assert world.route("resp_idle") == Decision(Route.NOT_FOUND)
    assert world.route("resp_busy") == Decision(Route.NOT_FOUND)
    assert world.registry.open_sockets == 0


async def test_snapshot_rows(world: World) -> None:
    turn = [msg("q1"), msg("a1", "assistant")]
    world.record("resp_1", turn)
    idle = await world.retained("resp_1")
    world.advance(10)
    await world.open()
    world.advance(5)
    assert world.registry.snapshot() == [
        {
            "response_id": "resp_1",
            "owner": world.owner[:12],
            "upstream": UP,
            "socket": "",
            "lane": None,
            "age": 15.0,
            "idle": 15.0,
            "turns": 1,
            "busy": False,
            "transcript_bytes": items_size(turn),
        },
        {
            "response_id": None,
            "owner": world.owner[:12],
            "upstream": UP,
            "socket": "",
            "lane": None,
            "age": 5.0,
            "idle": 5.0,
            "turns": 0,
            "busy": True,
            "transcript_bytes": 0,
        },
    ]
    assert world.route("resp_1").session is idle
    world.advance(2)
    async with world.registry.lease(idle) as lease:
        lease.retain_as = "resp_2"
    row = world.registry.snapshot()[0]
    assert (row["response_id"], row["turns"], row["age"], row["idle"]) == ("resp_2", 2, 17.0, 0.0)
    assert row["transcript_bytes"] == 0  # resp_2 was never recorded


# -- warm sockets ------------------------------------------------------------------------------


async def warm_up(world: World, owner: str | None = None) -> None:
    world.registry.keep_warm(owner or world.owner, UP, world.connect)
    for _ in range(50):
        await asyncio.sleep(0)
        if not world.registry.pool._warming:
            return
    raise AssertionError("warm-up did not finish")


async def test_keep_warm_fills_the_pool_and_open_takes_from_it() -> None:
    world = World(warm_sockets=2, max_sessions=8)
    await warm_up(world)
    assert len(world.sockets) == 2 and world.registry.open_sockets == 2
    session = await world.open()
    assert session.socket is world.sockets[0] and len(world.sockets) == 2  # no new connect
    await warm_up(world)
    assert len(world.sockets) == 3  # topped up again
    other = world.registry.owner_of(BOB)
    fresh = await world.open(owner=other)
    assert fresh.socket is world.sockets[3]  # another owner never gets this owner's socket


async def test_a_burst_during_a_warm_up_waits_for_it_only_as_far_as_it_opens_sockets() -> None:
    world = World(warm_sockets=1, max_sessions=8)
    handshake = asyncio.Event()
    calls = []

    async def slow_first_connect() -> FakeSocket:
        calls.append(1)
        if len(calls) == 1:
            await handshake.wait()  # the warm-up's handshake is still under way
        return await world.connect()

    world.registry.keep_warm(world.owner, UP, slow_first_connect)
    await asyncio.sleep(0)
    first = asyncio.create_task(world.registry.open(world.owner, UP, slow_first_connect))
    others = [
        asyncio.create_task(world.registry.open(world.owner, UP, slow_first_connect))
        for _ in range(3)
    ]
    # The rest of the burst connects at once, without waiting for the warm-up...
    done, _ = await asyncio.wait(others, timeout=5)
    assert done == set(others) and not first.done()
    assert len(world.sockets) == 3
    # ...and the one request that waited gets the warm socket once it is open.
    handshake.set()
    warm = await asyncio.wait_for(first, 5)
    assert warm.socket is world.sockets[3] and len(world.sockets) == 4
    assert world.registry.pool._warm_waiters == {}


async def test_warm_sockets_use_only_free_capacity_and_go_first() -> None:
    world = World(warm_sockets=5, max_sessions=2)
    await world.retained("resp_a")
    await warm_up(world)
    assert world.registry.open_sockets == 2  # one warm socket fitted, no eviction
    other = world.registry.owner_of(BOB)
    await world.open(owner=other)  # full: the warm socket is closed before the idle chain
    await world.sockets[1].wait_closed()
    assert not world.sockets[0].closed
    assert world.route("resp_a").route is Route.REUSE


async def test_a_taken_warm_socket_is_replaced_at_capacity_by_evicting_the_lru_idle() -> None:
    world = World(warm_sockets=1, max_sessions=3)
    await world.retained("resp_old")
    world.advance(1)
    await world.retained("resp_new")
    await warm_up(world)  # 3 of 3: two idle chains and the warm socket
    assert world.registry.open_sockets == 3
    taken = await world.open()
    assert taken.socket is world.sockets[2]
    await warm_up(world)  # full, but the taken socket is owed: the LRU chain makes room
    await world.sockets[0].wait_closed()
    assert len(world.sockets) == 4 and world.registry.open_sockets == 3
    assert world.route("resp_old").route is not Route.REUSE
    assert world.route("resp_new").route is Route.REUSE
    await warm_up(world)  # nothing owed any more: the pool does not grow by evicting
    assert len(world.sockets) == 4 and not world.sockets[1].closed


async def test_a_pool_never_grows_by_evicting() -> None:
    world = World(warm_sockets=3, max_sessions=2)
    await world.retained("resp_a")
    await warm_up(world)
    taken = await world.open()  # owed one
    assert taken.socket is world.sockets[1]
    world.advance(1)
    async with world.registry.lease(taken) as lease:
        lease.retain_as = "resp_b"
    await warm_up(world)  # replaces the taken one (evicting resp_a), then stops: full
    assert world.registry.open_sockets == 2
    assert world.route("resp_b").route is Route.REUSE


async def test_expired_warm_sockets_are_swept_and_not_used() -> None:
    world = World(warm_sockets=1, session_ttl=10)
    await warm_up(world)
    world.advance(11)
    assert world.registry.sweep() == 1
    await world.sockets[0].wait_closed()
    await warm_up(world)
    world.advance(11)
    session = await world.open()  # the stale warm socket is skipped and closed
    assert session.socket is world.sockets[2]
    await world.sockets[1].wait_closed()


async def test_warm_disabled_and_close_all() -> None:
    world = World(warm_sockets=0)
    await warm_up(world)
    assert world.sockets == []
    world.registry.limits.warm_sockets = 1
    await warm_up(world)
    await world.registry.close_all()
    assert world.sockets[0].closed and world.registry.open_sockets == 0
