"""Retained upstream sockets and chain transcripts: the bridge's only session state.

With ``store: false`` the upstream keeps a response's state only on the socket that produced it.
The ``Registry`` keeps such sockets after a response completes, keyed by that response id and
owned by one credential (a keyed hash, never the credential) and one upstream URL. It also keeps,
per response, the transcript the upstream saw (a linked chain of segments, so a chain of N turns
costs O(N)), which lets a chain whose socket is gone continue on a fresh socket ("rehydration").

Capacity counts every open socket (retained and in flight, plus those being connected); a full
registry closes its least recently used idle socket, or refuses with ``CapacityExceeded``.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from responses_bridge.chaining import DigestMemo
from responses_bridge.errors import BridgeError


class ClosableSocket(Protocol):
    """What the registry needs of an upstream socket."""

    @property
    def closed(self) -> bool: ...

    async def close(self) -> None: ...


class CapacityExceeded(BridgeError):
    """Every upstream socket is busy and ``responses_bridge_max_sessions`` is reached (503)."""

    status = 503
    error_type = "server_error"
    code = "bridge_capacity_exceeded"


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


@dataclass(eq=False)
class ChainNode:
    """One completed response and the part of the transcript it added."""

    response_id: str
    owner: str
    upstream: str
    parent: ChainNode | None
    segment: list[dict[str, Any]] | None  # None: the transcript was not kept (too large)
    total_bytes: int
    segment_bytes: int = 0  # what its own segment counts in ``Registry.transcript_bytes``
    held: bool = False  # counted there (see ``Registry._hold``)
    children: int = 0  # held nodes whose parent this is

    @property
    def kept(self) -> bool:
        """Whether the whole transcript is kept (``record`` keeps a segment only when its
        parent's is kept, so this node's segment says it for the chain)."""
        return self.segment is not None

    def transcript(self) -> list[dict[str, Any]] | None:
        """Every item the upstream has seen for this chain, oldest first; None if not kept."""
        segments: list[list[dict[str, Any]]] = []
        node: ChainNode | None = self
        while node is not None:
            if node.segment is None:
                return None
            segments.append(node.segment)
            node = node.parent
        return [item for segment in reversed(segments) for item in segment]


class Route(enum.Enum):
    """How a request naming ``previous_response_id`` is served."""

    REUSE = "reused"  # on the idle socket that holds the id
    REHYDRATE = "rehydrated"  # the socket is gone: full transcript on a fresh socket
    FORK = "forked"  # the socket is busy: full transcript on a fresh socket
    PASS = "new"  # unknown here, but the upstream may resolve it (store: true)
    NOT_FOUND = "not_found"  # unknown and unresolvable: 400
    BUSY = "busy"  # the socket is busy and rehydration is off: 409


@dataclass
class Decision:
    """The outcome of :meth:`Registry.route`."""

    route: Route
    session: Session | None = None
    node: ChainNode | None = None


@dataclass
class Limits:
    """The registry's bounds, from the addon's options."""

    max_sessions: int = 64
    session_ttl: float = 600.0
    max_socket_age: float = 55 * 60.0
    transcript_max_bytes: int = 16 * 1024 * 1024
    transcripts_total_bytes: int = 256 * 1024 * 1024  # every kept transcript together
    keep_transcripts: bool = True
    warm_sockets: int = 1  # pre-opened sockets kept per owner and upstream for fresh requests
    max_chains: int | None = None  # default: 8 * max_sessions

    @property
    def chain_capacity(self) -> int:
        return self.max_chains if self.max_chains is not None else 8 * self.max_sessions


def items_size(items: Iterable[dict[str, Any]]) -> int:
    """Approximate bytes of a list of items (their compact JSON)."""
    return sum(len(json.dumps(item, separators=(",", ":"))) for item in items)


@dataclass
class Registry:
    """See the module docstring. All methods run on one event loop; none blocks."""

    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _sessions: set[Session] = field(default_factory=set)
    _idle: dict[str, Session] = field(default_factory=dict)  # response id -> idle session
    _in_flight_from: dict[str, Session] = field(default_factory=dict)
    _chains: OrderedDict[str, ChainNode] = field(default_factory=OrderedDict)
    _heads: dict[tuple[str, str, tuple[str, int, str]], Session] = field(default_factory=dict)
    _connecting: int = 0
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    _warm: dict[tuple[str, str], list[Session]] = field(default_factory=dict)
    _warming: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    # Fresh requests waiting for a warm-up in flight, per (owner, upstream).
    _warm_waiters: dict[tuple[str, str], int] = field(default_factory=dict)
    # Warm sockets handed out and not yet replaced, per pool: a replacement may evict the least
    # recently used idle socket when the registry is full (a fresh request would evict it anyway).
    _owed: dict[tuple[str, str], int] = field(default_factory=dict)
    # Responses being generated (announced by response.created, turn not yet ended): a
    # continuation that arrives meanwhile waits for the turn instead of finding nothing.
    _producing: dict[str, tuple[Session, asyncio.Event]] = field(default_factory=dict)
    # Bytes of transcript segments held: by a node in ``_chains`` or as an ancestor of one.
    transcript_bytes: int = 0
    # Input digests of recent full-history requests, so the next one digests only what is new.
    digest_memo: DigestMemo = field(default_factory=DigestMemo)

    # -- identity ----------------------------------------------------------------------------

    def owner_of(self, headers: Iterable[tuple[str, str]]) -> str:
        """A keyed hash of the request's credential (Authorization + ChatGPT-Account-ID)."""
        wanted = {"authorization": "", "chatgpt-account-id": "", "api-key": ""}
        for name, value in headers:
            lower = name.lower()
            if lower in wanted and not wanted[lower]:
                wanted[lower] = value
        material = "\0".join(wanted[k] for k in sorted(wanted)).encode()
        return hmac.new(self._key, material, hashlib.sha256).hexdigest()[:24]

    # -- routing -----------------------------------------------------------------------------

    def route(
        self, owner: str, upstream: str, previous_id: str, *, upstream_resolves: bool
    ) -> Decision:
        """Decide how to serve a continuation of ``previous_id``; a REUSE leases the socket."""
        session = self._idle.get(previous_id)
        if session is not None and (session.owner, session.upstream) == (owner, upstream):
            if self._usable(session):
                self._take(session, previous_id)
                return Decision(Route.REUSE, session=session)
            self._schedule_close(session)
        node = self._chains.get(previous_id)
        if node is not None and (node.owner, node.upstream) != (owner, upstream):
            node = None
        if node is not None:
            self._chains.move_to_end(previous_id)
        busy = self._in_flight_from.get(previous_id)
        busy_for_owner = busy is not None and (busy.owner, busy.upstream) == (owner, upstream)
        transcript_kept = node is not None and self.limits.keep_transcripts and node.kept
        if transcript_kept:
            return Decision(Route.FORK if busy_for_owner else Route.REHYDRATE, node=node)
        if busy_for_owner and not upstream_resolves:
            return Decision(Route.BUSY)
        if upstream_resolves:
            return Decision(Route.PASS)
        return Decision(Route.NOT_FOUND)

    def producing(self, session: Session, response_id: str) -> None:
        """The turn in flight on ``session`` is generating ``response_id``."""
        self._end_production(session)
        session.producing = response_id
        self._producing[response_id] = (session, asyncio.Event())

    async def settled(self, response_id: str, owner: str, upstream: str, *, timeout: float) -> bool:
        """Wait until the turn generating ``response_id`` (if one of this owner's is) has ended
        and its socket is retained or closed; False if it is still going after ``timeout``."""
        entry = self._producing.get(response_id)
        if entry is None or (entry[0].owner, entry[0].upstream) != (owner, upstream):
            return True
        try:
            await asyncio.wait_for(entry[1].wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _end_production(self, session: Session) -> None:
        if session.producing is not None:
            entry = self._producing.get(session.producing)
            if entry is not None and entry[0] is session:
                del self._producing[session.producing]
                entry[1].set()
            session.producing = None

    def route_auto(
        self, owner: str, upstream: str, keys: list[tuple[str, int, str]]
    ) -> tuple[Session, int] | None:
        """Lease the idle session whose chain a full-history request continues, trying ``keys``
        (longest prefix first); returns it with the length of the prefix it already holds."""
        for key in keys:
            session = self._heads.get((owner, upstream, key))
            if session is None or session.response_id is None:
                continue
            if not self._usable(session):
                self._schedule_close(session)
                continue
            self._take(session, session.response_id)
            return session, key[1]
        return None

    def _take(self, session: Session, response_id: str) -> None:
        """Lease an idle session for a turn that continues ``response_id``."""
        del self._idle[response_id]
        self._unindex(session)
        session.busy = True
        session.continuing = response_id
        session.last_used = self.clock()
        self._in_flight_from[response_id] = session

    def _unindex(self, session: Session) -> None:
        if session.chain_key is not None:
            entry = (session.owner, session.upstream, session.chain_key)
            if self._heads.get(entry) is session:
                del self._heads[entry]
            session.chain_key = None

    def chain(self, response_id: str, owner: str, upstream: str) -> ChainNode | None:
        """The transcript node of a response, if this owner may see it."""
        node = self._chains.get(response_id)
        if node is None or (node.owner, node.upstream) != (owner, upstream):
            return None
        return node

    def _usable(self, session: Session) -> bool:
        now = self.clock()
        return (
            not session.socket.closed
            and now - session.opened_at < self.limits.max_socket_age
            and now - session.last_used < self.limits.session_ttl
        )

    # -- sockets -----------------------------------------------------------------------------

    async def open(
        self, owner: str, upstream: str, connect: Callable[[], Awaitable[ClosableSocket]]
    ) -> Session:
        """A socket for a fresh turn: a warm one if there is one, else reserve capacity (closing
        warm, then least recently used idle sockets if full) and connect."""
        key = (owner, upstream)
        warm = self._take_warm(owner, upstream)
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
            warm = self._take_warm(owner, upstream)
        if warm is not None:
            return warm
        while len(self._sessions) + self._connecting >= self.limits.max_sessions:
            idle = self._least_recent_idle()
            if idle is None:
                raise CapacityExceeded(
                    f"All {self.limits.max_sessions} upstream sockets are busy "
                    "(responses_bridge_max_sessions); retry shortly.",
                    headers={"retry-after": "1"},
                )
            self._schedule_close(idle)
        return await self._connect(owner, upstream, connect)

    async def _connect(
        self, owner: str, upstream: str, connect: Callable[[], Awaitable[ClosableSocket]]
    ) -> Session:
        self._connecting += 1
        try:
            socket = await connect()
        finally:
            self._connecting -= 1
        now = self.clock()
        session = Session(socket, owner, upstream, opened_at=now, last_used=now)
        self._sessions.add(session)
        return session

    # -- warm sockets ------------------------------------------------------------------------

    def keep_warm(
        self, owner: str, upstream: str, connect: Callable[[], Awaitable[ClosableSocket]]
    ) -> None:
        """Top up this owner's pool of pre-opened sockets to ``warm_sockets`` in the background.
        A warm socket that was handed out is replaced even when the registry is full, by closing
        the least recently used idle socket; growing the pool uses only free capacity."""
        key = (owner, upstream)
        if self.limits.warm_sockets <= 0 or key in self._warming:
            return
        task = asyncio.get_running_loop().create_task(
            self._fill_warm(key, connect), name="responses-bridge warm socket"
        )
        self._warming[key] = task
        task.add_done_callback(lambda _t: self._warming.pop(key, None))

    async def _fill_warm(
        self, key: tuple[str, str], connect: Callable[[], Awaitable[ClosableSocket]]
    ) -> None:
        pool = self._warm.setdefault(key, [])
        while len(pool) < self.limits.warm_sockets:
            if len(self._sessions) + self._connecting >= self.limits.max_sessions:
                victim = self._least_recent_idle(exclude=key) if self._owed.get(key) else None
                if victim is None:
                    return
                self._schedule_close(victim)
            self._owed[key] = max(0, self._owed.get(key, 0) - 1)
            try:
                session = await self._connect(key[0], key[1], connect)
            except Exception:  # a failed warm-up only costs the next request its handshake
                return
            session.busy = False
            pool.append(session)

    def _least_recent_idle(self, exclude: tuple[str, str] | None = None) -> Session | None:
        """The idle socket to close for room: another pool's warm socket first, then the least
        recently used retained one."""
        warm = [s for k, pool in self._warm.items() if k != exclude for s in pool]
        return min(warm, key=lambda s: s.last_used, default=None) or min(
            self._idle.values(), key=lambda s: s.last_used, default=None
        )

    def _take_warm(self, owner: str, upstream: str) -> Session | None:
        pool = self._warm.get((owner, upstream), [])
        while pool:
            session = pool.pop(0)
            if self._usable(session):
                key = (owner, upstream)
                self._owed[key] = min(self.limits.warm_sockets, self._owed.get(key, 0) + 1)
                session.busy = True
                session.last_used = self.clock()
                return session
            self._schedule_close(session)
        return None

    @asynccontextmanager
    async def lease(self, session: Session) -> AsyncIterator[Lease]:
        """Hold ``session`` for one turn: on exit it is retained if the turn said so, else
        closed. Every path (success, error, cancellation) releases exactly once."""
        lease = Lease(session)
        try:
            yield lease
        finally:
            self._in_flight_from.pop(session.continuing or "", None)
            session.continuing = None
            retain_as = None if session.socket.closed else lease.retain_as
            if retain_as is not None:
                self._retain(session, retain_as, lease.chain_key)
            else:
                self._forget(session)
            # Waiters resume after this: the socket is already retained (or forgotten).
            self._end_production(session)
            if retain_as is None:
                await session.socket.close()

    def _retain(
        self,
        session: Session,
        response_id: str,
        chain_key: tuple[str, int, str] | None = None,
    ) -> None:
        previous = self._idle.get(response_id)
        if previous is not None and previous is not session:
            self._schedule_close(previous)  # ids are unique upstream; never keep two
        session.busy = False
        session.turns += 1
        session.response_id = response_id
        session.last_used = self.clock()
        self._idle[response_id] = session
        if chain_key is not None:
            session.chain_key = chain_key
            self._heads[(session.owner, session.upstream, chain_key)] = session

    def _forget(self, session: Session) -> None:
        self._sessions.discard(session)
        pool = self._warm.get((session.owner, session.upstream))
        if pool is not None and session in pool:
            pool.remove(session)
        self._unindex(session)
        if session.response_id is not None and self._idle.get(session.response_id) is session:
            del self._idle[session.response_id]

    def _schedule_close(self, session: Session) -> None:
        self._forget(session)
        task = asyncio.get_running_loop().create_task(
            session.socket.close(), name="responses-bridge close idle socket"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- transcripts -------------------------------------------------------------------------

    def record(
        self,
        response_id: str,
        owner: str,
        upstream: str,
        parent: ChainNode | None,
        items: list[dict[str, Any]],
        *,
        continues: bool = False,
    ) -> ChainNode | None:
        """Remember what a completed response added to its chain (if transcripts are kept).

        ``continues`` with no ``parent``: the response continues a chain whose start the bridge
        does not know, so its transcript is marked as not kept (never replayed incomplete).
        """
        if not self.limits.keep_transcripts:
            return None
        own_bytes = items_size(items)
        size = own_bytes + (parent.total_bytes if parent is not None else 0)
        kept = (
            parent.segment is not None if parent is not None else not continues
        ) and size <= self.limits.transcript_max_bytes
        node = ChainNode(
            response_id,
            owner,
            upstream,
            parent if kept else None,
            items if kept else None,
            size,
            segment_bytes=own_bytes if kept else 0,
        )
        replaced = self._chains.pop(response_id, None)
        self._chains[response_id] = node
        self._hold(node)
        if replaced is not None:
            self._release(replaced)
        while self._chains and (
            len(self._chains) > self.limits.chain_capacity
            or self.transcript_bytes > self.limits.transcripts_total_bytes
        ):
            _id, evicted = self._chains.popitem(last=False)
            self._release(evicted)
        return node

    # A node is held (its segment counted in ``transcript_bytes``) while it is in ``_chains`` or
    # an ancestor of a held node: evicting a chain's older turns frees nothing while its later
    # turns still link to them.

    def _hold(self, node: ChainNode) -> None:
        current: ChainNode | None = node
        while current is not None and not current.held:
            current.held = True
            self.transcript_bytes += current.segment_bytes
            if current.parent is not None:
                current.parent.children += 1
            current = current.parent

    def _release(self, node: ChainNode) -> None:
        current: ChainNode | None = node
        while (
            current is not None
            and current.held
            and current.children == 0
            and self._chains.get(current.response_id) is not current
        ):
            current.held = False
            self.transcript_bytes -= current.segment_bytes
            if current.parent is not None:
                current.parent.children -= 1
            current = current.parent

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self) -> int:
        """Close idle sockets past their TTL or age; returns how many."""
        warm = [session for pool in self._warm.values() for session in pool]
        expired = [s for s in [*self._idle.values(), *warm] if not self._usable(s)]
        for session in expired:
            self._schedule_close(session)
        return len(expired)

    def close_idle(self, response_id: str | None = None) -> int:
        """Close the idle session retained as ``response_id``, or every idle one (None)."""
        chosen = [
            session
            for rid, session in self._idle.items()
            if response_id is None or rid == response_id
        ]
        if response_id is None:
            chosen += [session for pool in self._warm.values() for session in pool]
        for session in chosen:
            self._schedule_close(session)
        return len(chosen)

    async def close_all(self) -> None:
        """Close every socket (shutdown)."""
        for task in list(self._warming.values()):
            task.cancel()
        await asyncio.gather(*self._warming.values(), return_exceptions=True)
        sessions = list(self._sessions)
        self._sessions.clear()
        self._warm.clear()
        self._idle.clear()
        self._heads.clear()
        await asyncio.gather(*(s.socket.close() for s in sessions), *self._closing)

    def snapshot(self) -> list[dict[str, Any]]:
        """One row per open socket, for the sessions command and tests."""
        now = self.clock()
        rows = []
        for session in sorted(self._sessions, key=lambda s: s.opened_at):
            node = self._chains.get(session.response_id or "")
            rows.append(
                {
                    "response_id": session.response_id,
                    "owner": session.owner[:12],
                    "upstream": session.upstream,
                    "age": round(now - session.opened_at, 3),
                    "idle": round(now - session.last_used, 3),
                    "turns": session.turns,
                    "busy": session.busy,
                    "transcript_bytes": node.total_bytes if node is not None else 0,
                }
            )
        return rows

    @property
    def open_sockets(self) -> int:
        return len(self._sessions)


@dataclass
class Lease:
    """A turn's hold on a session; set ``retain_as`` to keep the socket after the turn."""

    session: Session
    retain_as: str | None = None
    chain_key: tuple[str, int, str] | None = None  # index the retained socket for auto-chaining
