"""Unit tests for ``responses_bridge.state.pool``: ``Pool`` on its own, with a hand-driven
clock, a list standing in for ``routes``' retained sockets and the smallest socket the pool
accepts. The registry-level behaviour (leases, warm sockets through ``Registry``) is in
``test_sessions``; here are the pool's own edge cases and error paths."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from responses_bridge.protocol.errors import CapacityExceeded
from responses_bridge.state.limits import Limits
from responses_bridge.state.pool import Pool, Session

UP = "wss://api.openai.com/v1/responses"


class MiniSocket:
    """Only what ``ClosableSocket`` asks for: ``closed`` and ``close()``."""

    def __init__(self) -> None:
        self.closed = False
        self.close_calls = 0

    async def close(self) -> None:
        self.close_calls += 1
        self.closed = True


class Bench:
    """A pool whose retained sockets are a plain list, kept in step as ``routes`` would."""

    def __init__(self, **limits: Any) -> None:
        self.now = 100.0
        self.retained: list[Session] = []
        self.forgotten: list[Session] = []
        self.sockets: list[MiniSocket] = []
        self.pool = Pool(
            Limits(**limits), lambda: self.now, retained=self.list_retained, on_forget=self.forget
        )

    def list_retained(self) -> list[Session]:
        return list(self.retained)

    def forget(self, session: Session) -> None:
        self.forgotten.append(session)
        if session in self.retained:
            self.retained.remove(session)

    async def connect(self) -> MiniSocket:
        socket = MiniSocket()
        self.sockets.append(socket)
        return socket

    async def open(self, owner: str = "alice") -> Session:
        return await self.pool.open(owner, UP, self.connect)

    async def retain(self, owner: str = "alice") -> Session:
        """A socket that answered a turn and is now idle, held by ``routes``."""
        session = await self.open(owner)
        session.busy = False
        self.retained.append(session)
        return session

    async def warm_up(self, owner: str = "alice") -> None:
        self.pool.keep_warm(owner, UP, self.connect)
        task = self.pool._warming.get((owner, UP))
        if task is not None:
            await asyncio.wait_for(task, 2)


async def settle() -> None:
    """Let background closes run."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- Session ----------------------------------------------------------------------------------


def test_sessions_are_distinct_by_identity() -> None:
    socket = MiniSocket()
    one = Session(socket, "alice", UP, opened_at=1.0, last_used=1.0)
    two = Session(socket, "alice", UP, opened_at=1.0, last_used=1.0)
    assert one != two
    assert len({one, two}) == 2
    assert one.busy and one.turns == 0 and one.response_id is None and one.chain_key is None


# -- usable -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opened_ago", "used_ago", "expected"),
    [
        (0, 0, True),
        (99.999, 9.999, True),
        (100, 0, False),  # exactly max_socket_age: too old
        (50, 10, False),  # exactly session_ttl since its last use
    ],
)
def test_usable_bounds_are_exclusive(opened_ago: float, used_ago: float, expected: bool) -> None:
    bench = Bench(max_socket_age=100, session_ttl=10)
    session = Session(
        MiniSocket(), "alice", UP, opened_at=bench.now - opened_ago, last_used=bench.now - used_ago
    )
    assert bench.pool.usable(session) is expected


def test_a_closed_socket_is_never_usable() -> None:
    bench = Bench()
    socket = MiniSocket()
    session = Session(socket, "alice", UP, opened_at=bench.now, last_used=bench.now)
    assert bench.pool.usable(session)
    socket.closed = True
    assert not bench.pool.usable(session)


# -- open and capacity ------------------------------------------------------------------------


async def test_open_connects_and_counts_the_session() -> None:
    bench = Bench()
    session = await bench.open()
    assert session.socket is bench.sockets[0]
    assert (session.owner, session.upstream, session.opened_at) == ("alice", UP, 100.0)
    assert session.busy
    assert bench.pool.sessions == {session}


async def test_full_with_nothing_idle_is_refused_without_connecting() -> None:
    bench = Bench(max_sessions=2)
    await bench.open("alice")
    await bench.open("bob")
    with pytest.raises(CapacityExceeded, match="All 2 upstream sessions"):
        await bench.open("carol")
    assert len(bench.sockets) == 2
    assert bench.forgotten == []


async def test_full_closes_the_least_recently_used_retained_socket() -> None:
    bench = Bench(max_sessions=2)
    older = await bench.retain("alice")
    bench.now += 1
    newer = await bench.retain("bob")
    older.last_used, newer.last_used = 105.0, 103.0  # the newer one was used less recently
    third = await bench.open("carol")
    assert bench.forgotten == [newer]
    assert bench.pool.sessions == {older, third}
    await settle()
    assert newer.socket.closed and not older.socket.closed


async def test_a_lowered_max_sessions_closes_as_many_idle_sockets_as_it_takes() -> None:
    bench = Bench(max_sessions=4)
    idle = [await bench.retain(owner) for owner in ("alice", "bob", "carol")]
    bench.pool.limits.max_sessions = 1  # a reconfigure
    session = await bench.open("dave")
    assert bench.pool.sessions == {session}
    assert set(bench.forgotten) == set(idle)
    await settle()
    assert all(s.socket.closed for s in idle)


async def test_a_warm_socket_of_another_pool_goes_before_an_older_retained_one() -> None:
    bench = Bench(max_sessions=2, warm_sockets=1)
    retained = await bench.retain("alice")
    bench.now += 50
    await bench.warm_up("carol")  # newer than the retained socket, but only warm
    (warm,) = bench.pool.warm_sessions()
    await bench.open("bob")
    assert bench.forgotten == [warm]
    assert retained in bench.pool.sessions
    assert bench.pool.warm_sessions() == []


async def test_a_failed_connect_adds_nothing() -> None:
    bench = Bench(max_sessions=1)

    async def refused() -> MiniSocket:
        raise ConnectionRefusedError("no")

    with pytest.raises(ConnectionRefusedError):
        await bench.pool.open("alice", UP, refused)
    assert bench.pool.sessions == set()
    assert bench.pool._connecting == 0
    assert (await bench.open()).socket is bench.sockets[0]


# -- warm sockets -----------------------------------------------------------------------------


async def test_keep_warm_opens_idle_sockets_up_to_warm_sockets() -> None:
    bench = Bench(warm_sockets=2)
    await bench.warm_up()
    warm = bench.pool.warm_sessions()
    assert len(warm) == 2 and len(bench.sockets) == 2
    assert not any(s.busy for s in warm)
    taken = await bench.open()
    assert taken is warm[0]  # first opened, first handed out
    assert taken.busy and len(bench.sockets) == 2


async def test_a_taken_warm_socket_is_marked_used_now() -> None:
    bench = Bench(warm_sockets=1, session_ttl=10)
    await bench.warm_up()
    bench.now += 9
    taken = await bench.open()
    assert taken.last_used == bench.now
    assert taken.opened_at == bench.now - 9
    assert bench.pool.usable(taken)


async def test_keep_warm_with_none_wanted_does_nothing() -> None:
    bench = Bench(warm_sockets=0)
    bench.pool.keep_warm("alice", UP, bench.connect)
    assert bench.pool._warming == {}
    await settle()
    assert bench.sockets == []


async def test_one_warm_up_at_a_time_per_owner_and_upstream() -> None:
    bench = Bench(warm_sockets=1)
    gate = asyncio.Event()
    calls = 0

    async def slow() -> MiniSocket:
        nonlocal calls
        calls += 1
        await gate.wait()
        return await bench.connect()

    bench.pool.keep_warm("alice", UP, slow)
    bench.pool.keep_warm("alice", UP, slow)  # already warming: ignored
    bench.pool.keep_warm("bob", UP, slow)  # another owner: its own warm-up
    await settle()
    assert calls == 2
    gate.set()
    await asyncio.wait_for(asyncio.gather(*bench.pool._warming.values()), 2)
    assert bench.pool._warming == {}
    assert sorted(s.owner for s in bench.pool.warm_sessions()) == ["alice", "bob"]


async def test_a_failed_warm_up_is_silent_and_can_be_retried() -> None:
    bench = Bench(warm_sockets=1)

    async def refused() -> MiniSocket:
        raise OSError("refused")

    bench.pool.keep_warm("alice", UP, refused)
    task = bench.pool._warming[("alice", UP)]
    await asyncio.wait_for(task, 2)
    assert task.exception() is None
    assert bench.pool._warming == {} and bench.pool.sessions == set()
    await bench.warm_up()
    assert len(bench.pool.warm_sessions()) == 1


async def test_a_request_waiting_on_a_failing_warm_up_connects_itself() -> None:
    bench = Bench(warm_sockets=1)
    gate = asyncio.Event()

    async def failing_later() -> MiniSocket:
        await gate.wait()
        raise OSError("refused")

    bench.pool.keep_warm("alice", UP, failing_later)
    await settle()
    waiting = asyncio.create_task(bench.open())
    await settle()
    assert not waiting.done()  # it waits for the warm-up rather than connecting
    assert bench.pool._warm_waiters == {("alice", UP): 1}
    gate.set()
    session = await asyncio.wait_for(waiting, 2)
    assert session.socket is bench.sockets[0]
    assert bench.pool._warm_waiters == {}


async def test_a_warm_up_only_grows_into_free_capacity() -> None:
    bench = Bench(warm_sockets=3, max_sessions=4)
    retained = [await bench.retain("bob"), await bench.retain("carol")]
    await bench.warm_up("alice")
    assert len(bench.pool.warm_sessions()) == 2  # the two free places, no eviction
    assert bench.forgotten == []
    assert all(s in bench.pool.sessions for s in retained)


async def test_a_replacement_never_evicts_its_own_pool() -> None:
    bench = Bench(warm_sockets=2, max_sessions=4)
    await bench.open("bob")
    await bench.open("carol")
    await bench.warm_up("alice")  # full now: two busy sockets and alice's two warm ones
    taken = await bench.open("alice")  # owed one replacement...
    assert taken.busy and len(bench.sockets) == 4
    await bench.warm_up("alice")  # ...but the only idle socket is alice's own warm one
    assert len(bench.pool.warm_sessions()) == 1
    assert bench.forgotten == [] and len(bench.sockets) == 4


async def test_warm_pool_entries_go_once_empty() -> None:
    """One entry per (owner, upstream) ever seen would grow without bound."""
    bench = Bench(warm_sockets=1)
    await bench.warm_up("alice")
    await bench.open("alice")  # takes the only warm socket
    assert bench.pool._warm == {}
    await bench.warm_up("alice")  # the replacement pays what was owed
    assert bench.pool._owed == {}
    assert len(bench.pool.warm_sessions()) == 1

    async def refused() -> MiniSocket:
        raise OSError("refused")

    bench.pool.keep_warm("bob", UP, refused)
    await asyncio.wait_for(bench.pool._warming[("bob", UP)], 2)
    assert ("bob", UP) not in bench.pool._warm and ("bob", UP) not in bench.pool._owed


# -- each owner's share -----------------------------------------------------------------------


async def test_one_owner_is_held_to_its_share_and_leaves_room_for_others() -> None:
    bench = Bench(max_sessions=16)  # a share of 14: two sockets kept for other owners
    for _ in range(14):
        await bench.open("alice")
    with pytest.raises(CapacityExceeded, match="This client's 14 upstream sessions") as caught:
        await bench.open("alice")
    assert caught.value.status == 503 and caught.value.headers == {"retry-after": "1"}
    assert len(bench.sockets) == 14
    await bench.open("bob")
    await bench.open("bob")
    assert len(bench.pool.sessions) == 16


async def test_past_its_share_an_owner_s_own_idle_socket_makes_way() -> None:
    bench = Bench(max_sessions=8, max_sessions_per_owner=2)
    bobs = await bench.retain("bob")
    bench.now += 1
    alices = await bench.retain("alice")  # used more recently than bob's
    await bench.open("alice")
    fresh = await bench.open("alice")
    assert bench.forgotten == [alices]  # never the other owner's, older as it is
    assert bobs in bench.pool.sessions and fresh in bench.pool.sessions
    assert bench.pool.held_by("alice") == 2


async def test_sockets_being_connected_count_toward_the_share() -> None:
    bench = Bench(max_sessions=8, max_sessions_per_owner=1)
    gate = asyncio.Event()

    async def slow() -> MiniSocket:
        await gate.wait()
        return await bench.connect()

    pending = asyncio.create_task(bench.pool.open("alice", UP, slow))
    await settle()
    assert bench.pool.held_by("alice") == 1 and bench.pool.sessions == set()
    with pytest.raises(CapacityExceeded):
        await bench.open("alice")
    gate.set()
    await asyncio.wait_for(pending, 2)
    assert bench.pool.held_by("alice") == 1 and bench.pool._connecting_for == {}


async def test_a_warm_up_stops_at_the_owner_s_share() -> None:
    bench = Bench(max_sessions=8, max_sessions_per_owner=2, warm_sockets=3)
    await bench.open("alice")
    await bench.warm_up("alice")
    assert len(bench.pool.warm_sessions()) == 1
    assert bench.pool.held_by("alice") == 2


# -- forget, close_soon, close_all ------------------------------------------------------------


async def test_forget_drops_a_warm_socket_and_tells_routes() -> None:
    bench = Bench(warm_sockets=1)
    await bench.warm_up()
    (warm,) = bench.pool.warm_sessions()
    bench.pool.forget(warm)
    assert bench.pool.warm_sessions() == [] and bench.pool.sessions == set()
    assert bench.forgotten == [warm]
    assert not warm.socket.closed  # forgetting does not close


async def test_forget_of_an_unknown_session_is_harmless() -> None:
    bench = Bench()
    stranger = Session(MiniSocket(), "alice", UP, opened_at=0.0, last_used=0.0)
    bench.pool.forget(stranger)
    assert bench.forgotten == [stranger]
    assert bench.pool.sessions == set()


async def test_close_soon_forgets_at_once_and_closes_in_the_background() -> None:
    bench = Bench()
    session = await bench.open()
    bench.pool.close_soon(session)
    assert session not in bench.pool.sessions
    assert not session.socket.closed  # not yet: it closes on a later loop turn
    await settle()
    assert session.socket.close_calls == 1
    assert bench.pool._closing == set()


async def test_close_all_cancels_a_warm_up_in_flight() -> None:
    bench = Bench(warm_sockets=1)
    started = asyncio.Event()

    async def hanging() -> MiniSocket:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    busy = await bench.open()
    bench.pool.keep_warm("bob", UP, hanging)
    await asyncio.wait_for(started.wait(), 2)
    await asyncio.wait_for(bench.pool.close_all(), 2)
    assert busy.socket.closed
    assert bench.pool.sessions == set() and bench.pool.warm_sessions() == []
    assert bench.pool._warming == {} and bench.pool._connecting == 0


async def test_close_all_waits_for_closes_already_scheduled() -> None:
    bench = Bench()
    slow_closed = asyncio.Event()

    class SlowSocket(MiniSocket):
        async def close(self) -> None:
            for _ in range(10):
                await asyncio.sleep(0)
            await super().close()
            slow_closed.set()

    async def slow_connect() -> MiniSocket:
        return SlowSocket()

    session = await bench.pool.open("alice", UP, slow_connect)
    bench.pool.close_soon(session)
    await bench.pool.close_all()
    assert slow_closed.is_set()
    assert session.socket.close_calls == 1


# -- lanes: conversations sharing one connection ------------------------------------------------


class MiniShared:
    """Only what ``SharedConnection`` asks for: handles that count as running once taken."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.closed = False
        self.running: list[MiniSocket] = []
        self.held: list[MiniSocket] = []

    @property
    def in_flight(self) -> int:
        return len(self.running)

    @property
    def handles(self) -> int:
        return len([h for h in self.held if not h.closed])

    def share(self, cap: int) -> MiniSocket | None:
        if self.closed or len(self.running) >= cap:
            return None
        handle = MiniSocket()
        self.held.append(handle)
        self.running.append(handle)  # a fresh turn runs at once
        return handle

    async def close(self) -> None:
        self.closed = True


class LaneBench(Bench):
    def __init__(self, handshake: float = 0.0, **limits: Any) -> None:
        super().__init__(**limits)
        self.shared: list[MiniShared] = []
        self.handshake = handshake

    async def connect_shared(self) -> MiniShared:
        await asyncio.sleep(self.handshake)
        connection = MiniShared(f"s{len(self.shared)}")
        self.shared.append(connection)
        return connection

    async def lane(self, owner: str = "alice") -> Session:
        return await self.pool.open_lane(owner, UP, self.connect_shared)


async def test_lanes_of_one_owner_share_a_connection_up_to_the_cap() -> None:
    bench = LaneBench(lanes_per_socket=3)
    sessions = [await bench.lane() for _ in range(4)]
    assert len(bench.shared) == 2
    assert [s.carrier.connection for s in sessions if s.carrier] == [bench.shared[0]] * 3 + [
        bench.shared[1]
    ]
    assert all(s.opened_at == 100.0 for s in sessions) and len(bench.pool.sessions) == 4
    other = await bench.lane("bob")
    assert other.carrier is not None and other.carrier.connection is bench.shared[2]


async def test_a_burst_waits_for_the_connection_being_opened() -> None:
    bench = LaneBench(handshake=0.05, lanes_per_socket=4)
    sessions = await asyncio.gather(*(bench.lane() for _ in range(6)))
    # Four wait for the first connection; the fifth and sixth open a second one.
    assert len(bench.shared) == 2 and len({id(s.carrier) for s in sessions}) == 2


async def test_a_failed_shared_connect_fails_every_waiter() -> None:
    bench = LaneBench(handshake=0.02)

    async def refused() -> MiniShared:
        await asyncio.sleep(0.02)
        raise CapacityExceeded("refused upstream")

    results = await asyncio.gather(
        *(bench.pool.open_lane("alice", UP, refused) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, CapacityExceeded) for r in results)
    assert not bench.pool._carrier_connects and bench.pool.held_by("alice") == 0


async def test_lanes_count_against_capacity_and_the_owner_share() -> None:
    bench = LaneBench(max_sessions=8, max_sessions_per_owner=2)
    await bench.lane()
    await bench.lane()
    with pytest.raises(CapacityExceeded, match="This client's 2 upstream sessions"):
        await bench.lane()
    assert len(bench.shared) == 1


async def test_a_fork_takes_a_lane_of_the_same_connection() -> None:
    bench = LaneBench(lanes_per_socket=2)
    first = await bench.lane()
    forked = bench.pool.fork(first)
    assert forked is not None and forked.carrier is first.carrier
    assert bench.pool.fork(first) is None  # the cap: no third lane
    own = await bench.open()
    assert bench.pool.fork(own) is None  # a socket of its own has no lanes


async def test_an_old_or_closed_connection_takes_no_new_lane() -> None:
    bench = LaneBench(max_socket_age=60)
    first = await bench.lane()
    bench.now += 61
    second = await bench.lane()
    assert second.carrier is not first.carrier and len(bench.shared) == 2
    bench.shared[1].closed = True
    third = await bench.lane()
    assert third.carrier is not None and third.carrier.connection is bench.shared[2]
    assert [c.connection for c in bench.pool.carriers()] == [bench.shared[2]]


async def test_sweep_closes_connections_no_conversation_holds() -> None:
    bench = LaneBench()
    session = await bench.lane()
    assert bench.pool.sweep_carriers() == 0
    await session.socket.close()
    assert bench.pool.sweep_carriers() == 1
    await settle()
    assert bench.shared[0].closed and not bench.pool.carriers()
