"""Which socket holds which response: idle sockets by the response id they can continue,
sockets in flight by the response they continue, the automatic-chaining index of full-history
heads, and the responses being generated right now (so a continuation can wait for one).

With ``store: false`` the upstream keeps a response's state only on the socket that produced
it, so this index is what lets a follow-up reach that state.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from responses_bridge.state.pool import Session

ChainKey = tuple[str, int, str]


class Routes:
    """See the module docstring. Sessions are indexed here only while the pool has them."""

    def __init__(self) -> None:
        self._idle: dict[str, Session] = {}  # response id -> idle session
        self._in_flight_from: dict[str, Session] = {}
        self._heads: dict[tuple[str, str, ChainKey], Session] = {}
        # How many heads each (owner, upstream, fields fingerprint) has: a request with none
        # can continue nothing, so its input is not digested before the upstream accepts it.
        self._fingerprints: Counter[tuple[str, str, str]] = Counter()
        # Responses being generated (announced by response.created, turn not yet ended): a
        # continuation that arrives meanwhile waits for the turn instead of finding nothing.
        self._producing: dict[str, tuple[Session, asyncio.Event]] = {}

    # -- idle sockets ------------------------------------------------------------------------

    def idle(self, response_id: str) -> Session | None:
        """The idle session retained as ``response_id``."""
        return self._idle.get(response_id)

    def idle_sessions(self) -> list[Session]:
        """Every idle retained session, oldest retained first."""
        return list(self._idle.values())

    def idle_items(self) -> list[tuple[str, Session]]:
        return list(self._idle.items())

    def retain(self, session: Session, response_id: str, chain_key: ChainKey | None) -> None:
        """Index ``session`` as the idle socket that can continue ``response_id``."""
        session.response_id = response_id
        self._idle[response_id] = session
        if chain_key is not None:
            self._unindex_head(session)
            displaced = self._heads.get((session.owner, session.upstream, chain_key))
            if displaced is not None:
                self._unindex_head(displaced)
            session.chain_key = chain_key
            self._heads[(session.owner, session.upstream, chain_key)] = session
            self._fingerprints[(session.owner, session.upstream, chain_key[0])] += 1

    def take(self, session: Session, response_id: str) -> None:
        """``session`` leaves the idle index for a turn that continues ``response_id``."""
        del self._idle[response_id]
        self._unindex_head(session)
        session.continuing = response_id
        self._in_flight_from[response_id] = session

    def head(self, owner: str, upstream: str, key: ChainKey) -> Session | None:
        """The idle session whose chain a full-history request with this prefix continues."""
        return self._heads.get((owner, upstream, key))

    def has_heads(self, owner: str, upstream: str, fingerprint: str) -> bool:
        """Whether any idle session of this owner continues a chain with this fingerprint."""
        return self._fingerprints[(owner, upstream, fingerprint)] > 0

    def forget(self, session: Session) -> None:
        """Drop every index entry of ``session``."""
        self._unindex_head(session)
        if session.response_id is not None and self._idle.get(session.response_id) is session:
            del self._idle[session.response_id]

    def _unindex_head(self, session: Session) -> None:
        if session.chain_key is not None:
            entry = (session.owner, session.upstream, session.chain_key)
            if self._heads.get(entry) is session:
                del self._heads[entry]
                scope = (session.owner, session.upstream, session.chain_key[0])
                self._fingerprints[scope] -= 1
                if self._fingerprints[scope] <= 0:
                    del self._fingerprints[scope]
            session.chain_key = None

    def clear(self) -> None:
        self._idle.clear()
        self._heads.clear()
        self._fingerprints.clear()

    # -- in flight ---------------------------------------------------------------------------

    def in_flight(self, response_id: str) -> Session | None:
        """The session of a turn in flight that continues ``response_id``."""
        return self._in_flight_from.get(response_id)

    def landed(self, session: Session) -> None:
        """The turn in flight on ``session`` has ended."""
        # A fork continues the same response on another lane: only the first is indexed.
        if self._in_flight_from.get(session.continuing or "") is session:
            del self._in_flight_from[session.continuing or ""]
        session.continuing = None

    def producing(self, session: Session, response_id: str) -> None:
        """The turn in flight on ``session`` is generating ``response_id``."""
        self.produced(session)
        session.producing = response_id
        self._producing[response_id] = (session, asyncio.Event())

    def produced(self, session: Session) -> None:
        """The response ``session`` was generating is done: waiters go on."""
        if session.producing is not None:
            entry = self._producing.get(session.producing)
            if entry is not None and entry[0] is session:
                del self._producing[session.producing]
                entry[1].set()
            session.producing = None

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
