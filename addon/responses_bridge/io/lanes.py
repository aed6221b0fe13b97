"""One upstream websocket shared by many conversations: ``SharedSocket`` reads every frame and
routes it by its ``stream_id`` to the ``Lane`` that sent the request; a ``Lane`` looks to the
relay like a socket of its own.

Each conversation (a ``Session`` in the pool) holds a lane handle; a name from the socket's small
pool is given to the handle for one response at a time, from its ``response.create`` until its
terminal event (a name whose response is abandoned stays taken until the upstream ends it, so
its late events never reach the next user of the name). The socket closes when its last handle
is released.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any

from responses_bridge.io.upstream import UpstreamSocket
from responses_bridge.protocol.errors import (
    BridgeError,
    LanesRefused,
    UpstreamClosed,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from responses_bridge.protocol.lanes import (
    STREAM_LIMIT_CODE,
    error_code,
    lane_names,
    refuses_lanes,
    without_stream_id,
)

logger = logging.getLogger(__name__)

_ENDS_RESPONSE = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)
# Past these a create naming the same previous response may go: the fork has begun upstream.
_FORK_BEGUN = frozenset({"response.in_progress"}) | _ENDS_RESPONSE
# Errors after which a socket takes no new lanes (its 60 minutes are up, or its names).
_ENDS_SOCKET = frozenset({"websocket_connection_limit_reached", STREAM_LIMIT_CODE})
FORK_WAIT = 10.0
# A websocket has no flow control per lane: past this much unread by one lane, the socket is
# not read until that lane catches up (every lane on it waits; a client that reads nothing is
# ended by the write timeout, then its lane is drained at full speed). Below it, one slow
# reader never holds up the others.
LANE_BACKLOG_BYTES = 4 * 1024 * 1024  # at most this long before a continuation goes regardless

Received = tuple[dict[str, Any], str]


class SharedSocket:
    """An upstream websocket carrying many lanes; see the module docstring."""

    def __init__(self, socket: UpstreamSocket) -> None:
        self.socket = socket
        self.label = socket.label
        self._free = lane_names()
        self._free.reverse()  # pop() hands out rb-0 first
        self._busy: dict[str, Lane | None] = {}  # names in flight -> the lane reading them
        self._handles: set[Lane] = set()
        self._forks: dict[str, asyncio.Event] = {}  # previous id -> a create not yet begun
        self._failure: BridgeError | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.echoed = False  # the upstream has echoed a stream_id: it knows lanes
        self.retired = False  # takes no new lanes (limit reached, or lanes refused)
        self.refused = False  # the upstream refused lanes or ignored them

    # -- what the pool asks --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._failure is not None or self.socket.closed

    @property
    def in_flight(self) -> int:
        """Responses running on this socket (names taken)."""
        return len(self._busy)

    @property
    def handles(self) -> int:
        return len(self._handles)

    def share(self, cap: int) -> Lane | None:
        """A new lane handle for one more conversation, or None when the socket is closed,
        retired, or already runs ``cap`` responses."""
        if self.closed or self.retired or len(self._busy) >= cap or not self._free:
            return None
        lane = Lane(self)
        self._handles.add(lane)
        return lane

    async def close(self) -> None:
        """Close the socket (every lane on it fails as a closed socket)."""
        if self._reader is not None:
            self._reader.cancel()
        await self.socket.close()
        self._fail(UpstreamClosed("The upstream socket was closed by the bridge."))

    # -- lanes ---------------------------------------------------------------------------------

    async def send_on(self, lane: Lane, frame: dict[str, Any]) -> None:
        """Send ``frame`` as the next response of ``lane``, under a free name."""
        if self._failure is not None:
            raise self._failure
        if not self._free:
            raise UpstreamClosed("Every lane name of the shared upstream socket is in use.")
        name = self._free.pop()
        self._busy[name] = lane
        lane._begin(name)
        previous = frame.get("previous_response_id")
        if isinstance(previous, str):
            # A fork and its source both continue one response: the next may go once the
            # first has begun upstream, or the upstream may evict what both continue.
            begun = self._forks.get(previous)
            if begun is not None:
                try:
                    async with asyncio.timeout(FORK_WAIT):
                        await begun.wait()
                except TimeoutError:
                    pass
            self._forks[previous] = lane._begun
            lane._continuing = previous
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._read(), name=f"responses-bridge lanes of {self.label}"
            )
        await self.socket.send_event({**frame, "stream_id": name})

    def release(self, lane: Lane) -> None:
        """``lane``'s conversation is over; the socket closes once no conversation is left."""
        self._handles.discard(lane)
        if lane.name is not None and self._busy.get(lane.name) is lane:
            self._busy[lane.name] = None  # its late events are dropped until its response ends
        self._begun(lane)
        if not self._handles and self._closing is None:
            self.retired = True  # closing: a request now must not take a lane of it
            self._closing = asyncio.get_running_loop().create_task(
                self.close(), name=f"responses-bridge close {self.label}"
            )

    # -- reading -------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                event, raw = await self.socket.receive(None)
                behind = self._route(event, raw)
                if behind is not None:
                    await behind.caught_up()
        except BridgeError as exc:
            self._fail(exc)
        except Exception as exc:  # never leave the lanes waiting on a dead reader
            logger.exception("responses-bridge: the lane reader of %s failed", self.label)
            self._fail(UpstreamProtocolError(f"Reading the upstream socket failed: {exc!r}."))

    def _route(self, event: dict[str, Any], raw: str) -> Lane | None:
        """Hand the event to its lane; that lane if it is now too far behind."""
        name = event.get("stream_id")
        kind = event.get("type")
        if isinstance(name, str) and name in self._busy:
            self.echoed = True
            del event["stream_id"]
            raw = without_stream_id(raw, name) or json.dumps(event, ensure_ascii=False)
            lane = self._busy[name]
            if kind in _ENDS_RESPONSE:
                self._end(name)
                if error_code(event) in _ENDS_SOCKET:
                    self.retired = True
            if lane is not None:
                if kind in _FORK_BEGUN:
                    self._begun(lane)
                lane._push((event, raw))
                if lane.backlog > LANE_BACKLOG_BYTES:
                    return lane
            return None
        if isinstance(name, str):
            logger.debug("responses-bridge: %s: an event of unknown lane %r", self.label, name)
            return None
        self._unlabelled(event, raw)
        return None

    def _unlabelled(self, event: dict[str, Any], raw: str) -> None:
        """An event without a lane: the upstream ignores or refuses lanes, or speaks about the
        whole socket (the connection limit)."""
        if error_code(event) in _ENDS_SOCKET:
            self.retired = True
        running = [
            (name, lane)
            for name, lane in self._busy.items()
            if lane is not None and lane.name == name
        ]
        kind = event.get("type")
        if kind == "error":
            if not self.echoed:
                self.refused = self.retired = True
            for name, lane in running:
                self._end(name)
                lane._push((dict(event), raw))
            return
        if not self.echoed:
            # An upstream that ignores stream_id: serve the one lane it answers, take no more.
            self.refused = self.retired = True
            if len(running) == 1:
                name, lane = running[0]
                if kind in _ENDS_RESPONSE:
                    self._end(name)
                lane._push((event, raw))
                return
        self._fail(
            UpstreamProtocolError(
                "The upstream sent an event without a stream_id on a socket shared by "
                f"{len(running)} responses ({str(kind)[:60]!r})."
            )
        )

    def _begun(self, lane: Lane) -> None:
        """``lane``'s response has begun upstream (or will not): a create continuing the same
        response may go now."""
        lane._begun.set()
        previous, lane._continuing = lane._continuing, None
        if previous is not None and self._forks.get(previous) is lane._begun:
            del self._forks[previous]

    def _end(self, name: str) -> None:
        """The response running under ``name`` has ended: the name is free again."""
        if name in self._busy:
            del self._busy[name]
            self._free.append(name)

    def _fail(self, failure: BridgeError) -> None:
        if self._failure is None:
            self._failure = failure
        for lane in [*self._busy.values(), *self._handles]:
            if lane is not None:
                lane._push(failure)
                self._begun(lane)
        if not self.socket.closed and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self.socket.close(), name=f"responses-bridge close {self.label}"
            )


class Lane:
    """One conversation's handle on a ``SharedSocket``: the socket interface the relay uses
    (send, receive, pending, close), for one response at a time."""

    def __init__(self, carrier: SharedSocket) -> None:
        self.carrier = carrier
        self.name: str | None = None
        self._inbox: deque[Received | BridgeError] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.backlog = 0  # bytes received for this lane and not yet read
        self._caught_up: asyncio.Event | None = None
        self._released = False
        self._began = False  # the current response has had an event other than an error
        self._begun = asyncio.Event()
        self._begun.set()
        self._continuing: str | None = None  # the previous response its create names

    @property
    def label(self) -> str:
        return self.carrier.label

    @property
    def closed(self) -> bool:
        return self._released or self.carrier.closed

    def has_pending(self) -> bool:
        return bool(self._inbox)

    def end_state(self) -> dict[str, Any]:
        return {**self.carrier.socket.end_state(), "lane": self.name}

    def take_handshake_headers(self) -> list[tuple[str, str]]:
        """The shared socket's handshake headers, for the first lane's answer only."""
        return self.carrier.socket.take_handshake_headers()

    def _begin(self, name: str) -> None:
        self.name = name
        self._inbox.clear()
        self.backlog = 0
        self._began = False
        self._begun = asyncio.Event()

    def _push(self, item: Received | BridgeError) -> None:
        self._inbox.append(item)
        if not isinstance(item, BridgeError):
            self.backlog += len(item[1])
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send_event(self, event: dict[str, Any]) -> None:
        if self._released:
            raise UpstreamClosed("The lane was released before the request was sent.")
        await self.carrier.send_on(self, event)

    async def receive(self, idle_timeout: float | None) -> Received:
        """The next event of this lane's response (see ``UpstreamSocket.receive``); raises
        ``LanesRefused`` when the upstream refuses the lane before the response began."""
        if not self._inbox:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                async with asyncio.timeout(idle_timeout):
                    await waiter
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"The upstream sent nothing for {idle_timeout:g} s "
                    "(responses_bridge_idle_timeout)."
                ) from exc
            finally:
                self._waiter = None
        item = self._inbox.popleft()
        if isinstance(item, BridgeError):
            self._inbox.appendleft(item)  # every later receive fails alike
            raise item
        event, raw = item
        self.backlog -= len(raw)
        if self._caught_up is not None and self.backlog <= LANE_BACKLOG_BYTES // 2:
            self._caught_up.set()
        if not self._began:
            if event.get("type") == "error":
                code = error_code(event)
                if code == STREAM_LIMIT_CODE:
                    raise LanesRefused(
                        "The upstream socket takes no more lanes.", upstream_wide=False
                    )
                if refuses_lanes(event, self.name or "", echoed_before=self.carrier.echoed):
                    self.carrier.refused = self.carrier.retired = True
                    error = event.get("error")
                    message = error.get("message", "") if isinstance(error, dict) else ""
                    raise LanesRefused(
                        f"The upstream refused a laned request: {str(message)[:200]}",
                        upstream_wide=True,
                    )
            else:
                self._began = True
        return item

    async def caught_up(self) -> None:
        """Wait until this lane has read its backlog down to half the limit (or is released)."""
        if self.backlog <= LANE_BACKLOG_BYTES // 2 or self._released:
            return
        self._caught_up = asyncio.Event()
        try:
            await self._caught_up.wait()
        finally:
            self._caught_up = None

    async def close(self) -> None:
        """Release this conversation's handle (the socket stays open for the others)."""
        if not self._released:
            self._released = True
            self._inbox.clear()
            self.backlog = 0
            if self._caught_up is not None:
                self._caught_up.set()
            self.carrier.release(self)
