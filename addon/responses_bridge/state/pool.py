"""The upstream sockets that are open: capacity, warm sockets opened ahead, and closing.

Capacity counts every open socket (retained and in flight, plus those being connected); when it
is reached, a fresh request closes the least recently used idle socket (another pool's warm one
first), or is refused with ``CapacityExceeded``. Each owner may hold at most its share of
the capacity (``Limits.owner_share``), so one client, however many streams it starts or
stalls, leaves room for the others; past it, the owner's own idle sockets make way, or it is
refused. Which response an idle socket holds is
``routes``' business: the pool asks it for the idle sockets and tells it when one goes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from responses_bridge.protocol.errors import CapacityExceeded
from responses_bridge.state.limits import Limits


class ClosableSocket(Protocol):
    """What the session state needs of an upstream socket."""

    @property
    def closed(self) -> bool: ...

    async def close(self) -> None: ...


Connect = Callable[[], Awaitable[ClosableSocket]]


class SharedConnection(Protocol):
    """An upstream connection that carries many conversations at once (lanes)."""

    label: str

    @property
    def closed(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def handles(self) -> int: ...

    def share(self, cap: int) -> ClosableSocket | None: ...

    async def close(self) -> None: ...


ConnectShared = Callable[[], Awaitable[SharedConnection]]


@dataclass(eq=False)
class Carrier:
    """A shared connection of one owner and upstream, and when it was opened."""

    connection: SharedConnection
    owner: str
    upstream: str
    opened_at: float


@dataclass(eq=False)
class _CarrierConnect:
    """A shared connection being opened, and how many requests wait for a lane on it."""

    task: asyncio.Task[Carrier]
    waiters: int = 0


@dataclass(eq=False)
class Session:
    """One open upstream socket and who may use it."""

    socket: ClosableSocket
    owner: str
    upstream: str
    opened_at: float
    last_used: float
    turns: int = 0
    response_id: str | None = None  # the response this idle socket can continue
    continuing: str | None = None  # the previous_response_id of the turn in flight
    busy: bool = True
    chain_key: tuple[str, int, str] | None = None  # automatic chaining index entry (idle only)
    producing: str | None = None  # the id of the response the turn in flight is generating
    carrier: Carrier | None = None  # the shared connection this conversation has a lane on

    @property
    def socket_label(self) -> str:
        """The upstream connection's name in diagnostics."""
        label = getattr(self.socket, "label", None)
        return label if isinstance(label, str) else ""


class Pool:
    """Every open socket; see the module docstring. All methods run on one event loop."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float],
        *,
        retained: Callable[[], Iterable[Session]],
        on_forget: Callable[[Session], None],
    ) -> None:
        self.limits = limits
        self.clock = clock
        self._retained = retained  # idle sockets that hold a response, oldest retained first
        self._on_forget = on_forget
        self.sessions: set[Session] = set()
        self._connecting = 0
        self._connecting_for: Counter[str] = Counter()  # by owner
        self._closing: set[asyncio.Task[None]] = set()
        self._warm: dict[tuple[str, str], list[Session]] = {}
        self._warming: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Fresh requests waiting for a warm-up in flight, per (owner, upstream).
        self._warm_waiters: dict[tuple[str, str], int] = {}
        # Warm sockets handed out and not yet replaced, per pool: a replacement may evict the
        # least recently used idle socket when full (a fresh request would evict it anyway).
        self._owed: dict[tuple[str, str], int] = {}
        # Shared connections (lanes) per (owner, upstream), and those being opened.
        self._carriers: dict[tuple[str, str], list[Carrier]] = {}
        self._carrier_connects: dict[tuple[str, str], _CarrierConnect] = {}

    def usable(self, session: Session) -> bool:
        """Open, younger than ``max_socket_age`` and used within ``session_ttl``."""
        now = self.clock()
        return (
            not session.socket.closed
            and now - session.opened_at < self.limits.max_socket_age
            and now - session.last_used < self.limits.session_ttl
        )

    async def open(self, owner: str, upstream: str, connect: Connect) -> Session:
        """A socket for a fresh turn: a warm one if there is one, else reserve capacity
        (closing warm, then least recently used idle sockets if full) and connect."""
        key = (owner, upstream)
        warm = self._take_warm(key)
        warming = self._warming.get(key)
        waiters = self._warm_waiters.get(key, 0)
        if warm is None and warming is not None and waiters < self.limits.warm_sockets:
            # A warm-up is already connecting: it started earlier, so it is ready sooner than a
            # connection started now. As many requests wait for it as it opens sockets; the
            # rest of a burst connects at once.
            self._warm_waiters[key] = waiters + 1
            try:
                await asyncio.wait([warming], timeout=5)
            finally:
                left = self._warm_waiters.pop(key) - 1
                if left:
                    self._warm_waiters[key] = left
            warm = self._take_warm(key)
        if warm is not None:
            return warm
        self._make_room(owner)
        return await self._connect(owner, upstream, connect)

    def _make_room(self, owner: str) -> None:
        """Room for one more session of ``owner``: close idle ones if needed, else refuse."""
        share = self.limits.owner_share
        while self._over_share(owner):
            own = self._least_recent_idle(owner=owner)
            if own is None:
                raise CapacityExceeded(
                    f"This client's {share} upstream sessions are all busy "
                    "(responses_bridge_max_sessions_per_owner); retry shortly.",
                    headers={"retry-after": "1"},
                )
            self.close_soon(own)
        while len(self.sessions) + self._connecting >= self.limits.max_sessions:
            idle = self._least_recent_idle()
            if idle is None:
                raise CapacityExceeded(
                    f"All {self.limits.max_sessions} upstream sessions are busy "
                    "(responses_bridge_max_sessions); retry shortly.",
                    headers={"retry-after": "1"},
                )
            self.close_soon(idle)

    # -- lanes: conversations sharing one connection --------------------------------------------

    async def open_lane(self, owner: str, upstream: str, connect: ConnectShared) -> Session:
        """A session for a fresh turn on a lane of this owner's shared connection: one that is
        open and has room, else one being opened (as many wait for it as it has lanes), else a
        new one."""
        key = (owner, upstream)
        cap = self.limits.lanes_per_socket
        for _round in range(4):
            self._make_room(owner)
            for carrier in self._open_carriers(key):
                session = self._lane_on(carrier)
                if session is not None:
                    return session
            pending = self._carrier_connects.get(key)
            if pending is None or pending.waiters >= cap:
                pending = self._start_carrier(key, connect)
            pending.waiters += 1
            try:
                carrier = await asyncio.shield(pending.task)
            finally:
                pending.waiters -= 1
            self._make_room(owner)
            session = self._lane_on(carrier)
            if session is not None:
                return session
        raise CapacityExceeded(
            "Every lane of this client's upstream sockets is busy; retry shortly.",
            headers={"retry-after": "1"},
        )

    def fork(self, session: Session) -> Session | None:
        """A new session on a lane of the connection ``session`` is on (its responses can be
        continued there), or None if it has no room or there is no capacity."""
        carrier = session.carrier
        if carrier is None or not self._carrier_usable(carrier):
            return None
        try:
            self._make_room(session.owner)
        except CapacityExceeded:
            return None
        return self._lane_on(carrier)

    def _lane_on(self, carrier: Carrier) -> Session | None:
        if not self._carrier_usable(carrier):
            return None
        handle = carrier.connection.share(self.limits.lanes_per_socket)
        if handle is None:
            return None
        now = self.clock()
        session = Session(
            handle,
            carrier.owner,
            carrier.upstream,
            opened_at=carrier.opened_at,
            last_used=now,
            carrier=carrier,
        )
        self.sessions.add(session)
        return session

    def _carrier_usable(self, carrier: Carrier) -> bool:
        """Open, young enough, and still the pool's (a swept one is being closed)."""
        return (
            not carrier.connection.closed
            and self.clock() - carrier.opened_at < self.limits.max_socket_age
            and carrier in self._carriers.get((carrier.owner, carrier.upstream), ())
        )

    def _open_carriers(self, key: tuple[str, str]) -> list[Carrier]:
        """The owner's usable shared connections, dropping those that are not."""
        carriers = self._carriers.get(key)
        if carriers is None:
            return []
        kept = [c for c in carriers if self._carrier_usable(c)]
        if kept:
            self._carriers[key] = kept
        else:
            del self._carriers[key]
        return kept

    def _start_carrier(self, key: tuple[str, str], connect: ConnectShared) -> _CarrierConnect:
        task = asyncio.get_running_loop().create_task(
            self._connect_carrier(key, connect), name="responses-bridge shared socket"
        )
        pending = _CarrierConnect(task)
        self._carrier_connects[key] = pending

        def finished(done: asyncio.Task[Carrier]) -> None:
            if self._carrier_connects.get(key) is pending:
                del self._carrier_connects[key]
            if not done.cancelled():
                done.exception()  # retrieved: every waiter has it raised already

        task.add_done_callback(finished)
        return pending

    async def _connect_carrier(self, key: tuple[str, str], connect: ConnectShared) -> Carrier:
        owner, upstream = key
        with self._connecting_one(owner):
            connection = await connect()
        carrier = Carrier(connection, owner, upstream, opened_at=self.clock())
        self._carriers.setdefault(key, []).append(carrier)
        return carrier

    def carriers(self) -> list[Carrier]:
        """Every shared connection the pool knows of (open or not yet dropped)."""
        return [c for carriers in self._carriers.values() for c in carriers]

    def sweep_carriers(self) -> int:
        """Close shared connections no conversation holds (one opened for requests that all
        left before it was ready); returns how many."""
        unheld = [c for c in self.carriers() if c.connection.handles == 0]
        for carrier in unheld:
            self._carriers[(carrier.owner, carrier.upstream)].remove(carrier)
            self._close_in_background(carrier.connection.close())
        for key in [k for k, carriers in self._carriers.items() if not carriers]:
            del self._carriers[key]
        return len(unheld)

    def _over_share(self, owner: str) -> bool:
        share = self.limits.owner_share
        return share < self.limits.max_sessions and self.held_by(owner) >= share

    def held_by(self, owner: str) -> int:
        """The sockets ``owner`` holds: open (idle, warm or in flight) or being connected."""
        return self._connecting_for[owner] + sum(s.owner == owner for s in self.sessions)

    @contextmanager
    def _connecting_one(self, owner: str) -> Iterator[None]:
        """Count a connection being opened for ``owner`` (capacity counts it) while it is."""
        self._connecting += 1
        self._connecting_for[owner] += 1
        try:
            yield
        finally:
            self._connecting -= 1
            self._connecting_for[owner] -= 1
            if not self._connecting_for[owner]:
                del self._connecting_for[owner]

    async def _connect(self, owner: str, upstream: str, connect: Connect) -> Session:
        with self._connecting_one(owner):
            socket = await connect()
        now = self.clock()
        session = Session(socket, owner, upstream, opened_at=now, last_used=now)
        self.sessions.add(session)
        return session

    # -- warm sockets ------------------------------------------------------------------------

    def keep_warm(self, owner: str, upstream: str, connect: Connect) -> None:
        """Top up this owner's pool of pre-opened sockets to ``warm_sockets`` in the background.
        A warm socket that was handed out is replaced even when the pool is full, by closing
        the least recently used idle socket; growing the pool uses only free capacity."""
        key = (owner, upstream)
        if self.limits.warm_sockets <= 0 or key in self._warming:
            return
        task = asyncio.get_running_loop().create_task(
            self._fill_warm(key, connect), name="responses-bridge warm socket"
        )
        self._warming[key] = task
        task.add_done_callback(lambda _t: self._warming.pop(key, None))

    async def _fill_warm(self, key: tuple[str, str], connect: Connect) -> None:
        # Looked up afresh each time: a request may take the last warm socket meanwhile, and
        # the emptied pool's entry goes.
        while len(self._warm.get(key, ())) < self.limits.warm_sockets:
            if self._over_share(key[0]):
                break
            if len(self.sessions) + self._connecting >= self.limits.max_sessions:
                victim = self._least_recent_idle(exclude=key) if self._owed.get(key) else None
                if victim is None:
                    break
                self.close_soon(victim)
            self._owed[key] = max(0, self._owed.get(key, 0) - 1)
            try:
                session = await self._connect(key[0], key[1], connect)
            except Exception:  # a failed warm-up only costs the next request its handshake
                break
            session.busy = False
            self._warm.setdefault(key, []).append(session)
        self._drop_if_empty(key)

    def _drop_if_empty(self, key: tuple[str, str]) -> None:
        """Forget a pool with no warm socket and nothing owed: one entry per (owner, upstream)
        ever seen would grow without bound."""
        if not self._warm.get(key):
            self._warm.pop(key, None)
        if not self._owed.get(key):
            self._owed.pop(key, None)

    def warm_sessions(self) -> list[Session]:
        return [session for pool in self._warm.values() for session in pool]

    def _least_recent_idle(
        self, exclude: tuple[str, str] | None = None, owner: str | None = None
    ) -> Session | None:
        """The idle socket to close for room: another pool's warm socket first, then the least
        recently used retained one; only ``owner``'s, if given."""
        warm = [
            s
            for k, pool in self._warm.items()
            if k != exclude and (owner is None or k[0] == owner)
            for s in pool
        ]
        retained = [s for s in self._retained() if owner is None or s.owner == owner]
        return min(warm, key=lambda s: s.last_used, default=None) or min(
            retained, key=lambda s: s.last_used, default=None
        )

    def _take_warm(self, key: tuple[str, str]) -> Session | None:
        pool = self._warm.get(key, [])
        while pool:
            session = pool.pop(0)
            if self.usable(session):
                self._owed[key] = min(self.limits.warm_sockets, self._owed.get(key, 0) + 1)
                session.busy = True
                session.last_used = self.clock()
                if not pool:
                    self._warm.pop(key, None)
                return session
            self.close_soon(session)
        self._warm.pop(key, None)
        return None

    # -- closing -----------------------------------------------------------------------------

    def forget(self, session: Session) -> None:
        """``session`` is no longer available (it is being closed)."""
        self.sessions.discard(session)
        key = (session.owner, session.upstream)
        pool = self._warm.get(key)
        if pool is not None and session in pool:
            pool.remove(session)
            if not pool:
                del self._warm[key]
        self._on_forget(session)

    def close_soon(self, session: Session) -> None:
        """Forget ``session`` now and close its socket in the background."""
        self.forget(session)
        self._close_in_background(session.socket.close())

    def _close_in_background(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(
            closing, name="responses-bridge close idle socket"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close_all(self) -> None:
        """Close every socket (shutdown)."""
        for task in list(self._warming.values()):
            task.cancel()
        await asyncio.gather(*self._warming.values(), return_exceptions=True)
        for pending in list(self._carrier_connects.values()):
            pending.task.cancel()
        sessions = list(self.sessions)
        carriers = self.carriers()
        self.sessions.clear()
        self._warm.clear()
        self._carriers.clear()
        await asyncio.gather(
            *(s.socket.close() for s in sessions),
            *(c.connection.close() for c in carriers),
            *self._closing,
            return_exceptions=True,
        )
