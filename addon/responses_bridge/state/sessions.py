"""The bridge's session state as one object: ``Registry`` routes each request to a socket.

With ``store: false`` the upstream keeps a response's state only on the socket that produced
it. The registry keeps such sockets after a response completes (``pool``), indexed by that
response id (``routes``) and owned by one credential and one upstream URL (``scope``), and keeps
what each chain's upstream saw (``transcripts``), so a chain whose socket is gone continues on
a fresh socket. Every request asks the registry; each part answers for its own job.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from responses_bridge.state.chaining import DigestMemo
from responses_bridge.state.lanes import LaneSupport
from responses_bridge.state.limits import Limits
from responses_bridge.state.pool import Connect, ConnectShared, Pool, Session
from responses_bridge.state.routes import ChainKey, Routes
from responses_bridge.state.scope import Owners
from responses_bridge.state.transcripts import ChainNode, Transcripts


class Route(enum.Enum):
    """How a request naming ``previous_response_id`` is served."""

    REUSE = "reused"  # on the idle socket that holds the id
    REHYDRATE = "rehydrated"  # the socket is gone: full transcript on a fresh socket
    FORK = "forked"  # the socket is busy: a new lane of it, else the transcript on a fresh one
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
class Lease:
    """A turn's hold on a session; set ``retain_as`` to keep the socket after the turn."""

    session: Session
    retain_as: str | None = None
    chain_key: ChainKey | None = None  # index the retained socket for auto-chaining


class Registry:
    """See the module docstring. All methods run on one event loop; none blocks."""

    def __init__(
        self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self.clock = clock
        self.owners = Owners()
        self.routes = Routes()
        self.pool = Pool(
            self.limits, clock, retained=self.routes.idle_sessions, on_forget=self.routes.forget
        )
        self.transcripts = Transcripts(self.limits)
        # Input digests of recent full-history requests, so the next one digests only what is new.
        self.digest_memo = DigestMemo()
        self.lanes = LaneSupport()

    def owner_of(self, headers: Iterable[tuple[str, str]], *, route: str = "") -> str:
        """The owner key of a request with these headers, reaching the upstream by ``route``
        (see ``scope``)."""
        return self.owners.owner_of(headers, route=route)

    # -- routing -----------------------------------------------------------------------------

    def route(
        self, owner: str, upstream: str, previous_id: str, *, upstream_resolves: bool
    ) -> Decision:
        """Decide how to serve a continuation of ``previous_id``; a REUSE leases the socket."""
        session = self.routes.idle(previous_id)
        if session is not None and (session.owner, session.upstream) == (owner, upstream):
            if self.pool.usable(session):
                self._take(session, previous_id)
                return Decision(Route.REUSE, session=session)
            self.pool.close_soon(session)
        node = self.transcripts.node(previous_id, owner, upstream, use=True)
        busy = self.routes.in_flight(previous_id)
        busy_for_owner = busy is not None and (busy.owner, busy.upstream) == (owner, upstream)
        if busy is not None and busy_for_owner:
            # The response's state is socket-wide: a new lane of that socket continues it.
            forked = self.pool.fork(busy)
            if forked is not None:
                forked.continuing = previous_id
                return Decision(Route.FORK, session=forked, node=node)
        transcript_kept = node is not None and self.limits.keep_transcripts and node.kept
        if transcript_kept:
            return Decision(Route.FORK if busy_for_owner else Route.REHYDRATE, node=node)
        if busy_for_owner and not upstream_resolves:
            return Decision(Route.BUSY)
        if upstream_resolves:
            return Decision(Route.PASS)
        return Decision(Route.NOT_FOUND)

    def route_auto(
        self, owner: str, upstream: str, keys: list[ChainKey]
    ) -> tuple[Session, int] | None:
        """Lease the idle session whose chain a full-history request continues, trying ``keys``
        (longest prefix first); returns it with the length of the prefix it already holds."""
        for key in keys:
            session = self.routes.head(owner, upstream, key)
            if session is None or session.response_id is None:
                continue
            if not self.pool.usable(session):
                self.pool.close_soon(session)
                continue
            self._take(session, session.response_id)
            return session, key[1]
        return None

    def _take(self, session: Session, response_id: str) -> None:
        self.routes.take(session, response_id)
        session.busy = True
        session.last_used = self.clock()

    def chain(self, response_id: str, owner: str, upstream: str) -> ChainNode | None:
        """The transcript node of a response, if this owner may see it."""
        return self.transcripts.node(response_id, owner, upstream)

    def producing(self, session: Session, response_id: str) -> None:
        """The turn in flight on ``session`` is generating ``response_id``."""
        self.routes.producing(session, response_id)

    async def settled(self, response_id: str, owner: str, upstream: str, *, timeout: float) -> bool:
        """Wait until the turn generating ``response_id`` has ended (see ``Routes.settled``)."""
        return await self.routes.settled(response_id, owner, upstream, timeout=timeout)

    # -- sockets -----------------------------------------------------------------------------

    async def open(
        self,
        owner: str,
        upstream: str,
        connect: Connect,
        *,
        shared: ConnectShared | None = None,
    ) -> Session:
        """A session for a fresh turn: a lane of a shared socket when ``shared`` is given (see
        ``Pool.open_lane``), else a socket of its own (see ``Pool.open``)."""
        if shared is not None:
            return await self.pool.open_lane(owner, upstream, shared)
        return await self.pool.open(owner, upstream, connect)

    def keep_warm(self, owner: str, upstream: str, connect: Connect) -> None:
        """Top up this owner's warm sockets in the background (see ``Pool.keep_warm``)."""
        self.pool.keep_warm(owner, upstream, connect)

    @asynccontextmanager
    async def lease(self, session: Session) -> AsyncIterator[Lease]:
        """Hold ``session`` for one turn: on exit it is retained if the turn said so, else
        closed. Every path (success, error, cancellation) releases exactly once."""
        lease = Lease(session)
        try:
            yield lease
        finally:
            self.routes.landed(session)
            retain_as = None if session.socket.closed else lease.retain_as
            if retain_as is not None:
                self._retain(session, retain_as, lease.chain_key)
            else:
                self.pool.forget(session)
            # Waiters resume after this: the socket is already retained (or forgotten).
            self.routes.produced(session)
            if retain_as is None:
                await session.socket.close()

    def _retain(self, session: Session, response_id: str, chain_key: ChainKey | None) -> None:
        previous = self.routes.idle(response_id)
        if previous is not None and previous is not session:
            self.pool.close_soon(previous)  # ids are unique upstream; never keep two
        session.busy = False
        session.turns += 1
        session.last_used = self.clock()
        self.routes.retain(session, response_id, chain_key)

    # -- transcripts -------------------------------------------------------------------------

    @property
    def transcript_bytes(self) -> int:
        return self.transcripts.bytes

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self) -> int:
        """Close idle sockets past their TTL or age; returns how many."""
        idle = [*self.routes.idle_sessions(), *self.pool.warm_sessions()]
        expired = [s for s in idle if not self.pool.usable(s)]
        for session in expired:
            self.pool.close_soon(session)
        return len(expired) + self.pool.sweep_carriers()

    def close_idle(self, response_id: str | None = None) -> int:
        """Close the idle session retained as ``response_id``, or every idle one (None)."""
        chosen = [
            session
            for rid, session in self.routes.idle_items()
            if response_id is None or rid == response_id
        ]
        if response_id is None:
            chosen += self.pool.warm_sessions()
        for session in chosen:
            self.pool.close_soon(session)
        return len(chosen)

    async def close_all(self) -> None:
        """Close every socket (shutdown)."""
        self.routes.clear()
        await self.pool.close_all()

    def snapshot(self) -> list[dict[str, Any]]:
        """One row per open socket, for the sessions command and tests."""
        now = self.clock()
        rows = []
        for session in sorted(self.pool.sessions, key=lambda s: s.opened_at):
            node = self.transcripts.peek(session.response_id or "")
            rows.append(
                {
                    "response_id": session.response_id,
                    "owner": session.owner[:12],
                    "upstream": session.upstream,
                    "socket": session.socket_label,
                    "lane": getattr(session.socket, "name", None) if session.busy else None,
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
        """Upstream connections open: one per session without a lane, one per shared one."""
        own = sum(session.carrier is None for session in self.pool.sessions)
        return own + sum(not c.connection.closed for c in self.pool.carriers())

    def socket_stats(self) -> dict[str, Any]:
        """Connections, lanes running on them, and retained chains per connection."""
        chains: dict[str, int] = {}
        for session in self.routes.idle_sessions():
            chains[session.socket_label] = chains.get(session.socket_label, 0) + 1
        return {
            "open_sockets": self.open_sockets,
            "sessions": len(self.pool.sessions),
            "shared_sockets": sum(not c.connection.closed for c in self.pool.carriers()),
            "lanes_in_use": sum(c.connection.in_flight for c in self.pool.carriers()),
            "chains_per_socket": dict(sorted(chains.items())),
            "upstreams_without_lanes": len(self.lanes),
        }
