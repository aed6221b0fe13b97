"""Which socket a request goes to and what is sent on it: fresh, reused, chained, rehydrated or
forked, and the one safe retry on a fresh socket. Decisions come from ``sessions``; this module
turns them into frames. A delta-only request is never resent on a fresh socket."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from responses_bridge.protocol.errors import (
    BridgeError,
    ChainBusy,
    LanesRefused,
    PreviousResponseNotFound,
    UpstreamClosed,
)
from responses_bridge.protocol.events import ResponseFolder
from responses_bridge.protocol.request import (
    ClientRequest,
    build_create_frame,
    input_items,
    rehydrated_frame,
)
from responses_bridge.state.chaining import (
    Digested,
    candidate_keys,
    chain_key,
    fields_fingerprint,
    item_digests,
    parsed_size,
)
from responses_bridge.state.pool import Session
from responses_bridge.state.sessions import Registry, Route
from responses_bridge.state.transcripts import ChainNode
from responses_bridge.turn.exchange import Exchange, Settings

_RETRYABLE_CODES = frozenset(
    {
        "previous_response_not_found",
        "websocket_connection_limit_reached",
        "websocket_stream_limit_reached",
    }
)


@dataclass
class Turn:
    """What one request asks for, worked out once."""

    frame: dict[str, Any]  # the response.create frame for the request as the client sent it
    new_items: list[dict[str, Any]]  # its input as items
    owner: str
    previous_id: str | None
    upstream_resolves: bool  # store: true on a non-ChatGPT upstream: unknown ids may resolve
    fingerprint: str | None = None  # automatic chaining, when the request is eligible
    scope: tuple[str, str, str] | None = None  # (owner, upstream, fingerprint)
    # The input's digests, worked out before the upstream is asked only when a chain of this
    # scope is held (otherwise the request can continue nothing).
    digested: Digested | None = None
    memory: int = 0  # what the parsed request takes in memory (the digest memo's cost)


@dataclass
class Plan:
    """One attempt: the frame to send, on which socket, and how it extends the chain."""

    frame: dict[str, Any]
    label: str
    turn_items: list[dict[str, Any]]  # the input items the upstream sees as new in this turn
    session: Session | None = None  # a leased, retained socket; None opens a fresh one
    parent: ChainNode | None = None
    continues: bool = False  # the frame continues a chain the bridge may not know in full
    show_previous: bool = False  # put the client's previous_response_id back into events
    shown_previous_id: str | None = None
    fallback: Plan | None = None  # what to send instead if this attempt fails before output


def turn(
    client: ClientRequest,
    compat: bool,
    owner: str,
    settings: Settings,
    *,
    upstream: str,
    registry: Registry,
    body_size: int,
) -> Turn:
    """Work out a request once (its input digests reuse what the registry's memo has of
    earlier ones)."""
    raw_input = client.body.get("input")
    turn = Turn(
        frame=build_create_frame(client.body, chatgpt_compat=compat),
        new_items=input_items(raw_input),
        owner=owner,
        previous_id=client.previous_response_id,
        upstream_resolves=not compat and client.store is not False,
        memory=parsed_size(body_size, client.values),
    )
    eligible_input = isinstance(raw_input, str) or (
        isinstance(raw_input, list) and all(isinstance(item, dict) for item in raw_input)
    )
    if settings.auto_chain and settings.stateful and turn.previous_id is None and eligible_input:
        turn.fingerprint = fields_fingerprint(turn.frame)
        turn.scope = (owner, upstream, turn.fingerprint)
        if registry.routes.has_heads(*turn.scope):
            turn.digested = registry.digest_memo.digests(turn.scope, turn.new_items)
    return turn


def remember(
    registry: Registry, exchange: Exchange, turn: Turn, plan: Plan, folder: ResponseFolder
) -> str | None:
    """Record a finished turn's transcript; the response id to retain its socket as, if any."""
    terminal = folder.terminal
    if terminal is None or terminal["type"] == "response.failed" or not exchange.settings.stateful:
        return None
    response_id = terminal["response"].get("id")
    if not isinstance(response_id, str):
        return None
    registry.transcripts.record(
        response_id,
        turn.owner,
        exchange.upstream_url,
        plan.parent,
        plan.turn_items + folder.done_items(),
        continues=plan.continues,
    )
    return response_id


def accepted_chain_key(
    registry: Registry, turn: Turn, folder: ResponseFolder
) -> tuple[str, int, str] | None:
    """The automatic-chaining key of a completed turn's socket, and the input's digests
    remembered for the next request; None when the turn is not eligible."""
    if turn.scope is None or turn.fingerprint is None:
        return None
    memo = registry.digest_memo
    digested = turn.digested or memo.digests(turn.scope, turn.new_items)
    memo.remember(turn.scope, digested, turn.memory)
    return chain_key(turn.fingerprint, digested.digests + item_digests(folder.done_items()))


def first_plan(registry: Registry, exchange: Exchange, turn: Turn) -> Plan:
    upstream = exchange.upstream_url
    previous_id = turn.previous_id
    fresh = Plan(turn.frame, "new", turn.new_items, continues=previous_id is not None)
    if previous_id is None:
        if turn.digested is None or turn.fingerprint is None:
            return fresh
        match = registry.route_auto(
            turn.owner, upstream, candidate_keys(turn.fingerprint, turn.digested.digests)
        )
        if match is None:
            return fresh
        session, held = match
        head = session.continuing
        assert head is not None
        delta = turn.new_items[held:]
        return Plan(
            {**turn.frame, "input": delta, "previous_response_id": head},
            "chained",
            delta,
            session=session,
            parent=registry.chain(head, turn.owner, upstream),
            continues=True,
            show_previous=True,  # the client sent none: its answer shows none
            fallback=fresh,
        )
    if not exchange.settings.stateful:
        return fresh
    decision = registry.route(
        turn.owner, upstream, previous_id, upstream_resolves=turn.upstream_resolves
    )
    if decision.route is Route.REUSE or (
        decision.route is Route.FORK and decision.session is not None
    ):
        # Reused, or forked on a new lane of the socket that holds the response: the upstream
        # has the chain, so the request goes as the client sent it.
        parent = registry.chain(previous_id, turn.owner, upstream)
        return Plan(
            turn.frame,
            decision.route.value,
            turn.new_items,
            session=decision.session,
            parent=parent,
            continues=True,
        )
    if decision.route in (Route.REHYDRATE, Route.FORK) and exchange.settings.rehydrate:
        assert decision.node is not None
        return _rehydrated(
            turn.frame, decision.node, turn.new_items, previous_id, decision.route.value
        )
    if decision.route is Route.BUSY or decision.route is Route.FORK:
        raise ChainBusy(previous_id)
    if decision.route is Route.PASS:
        return fresh
    raise PreviousResponseNotFound(previous_id)


def _rehydrated(
    frame: dict[str, Any],
    node: ChainNode,
    new_items: list[dict[str, Any]],
    previous_id: str,
    label: str,
) -> Plan:
    return Plan(
        rehydrated_frame(frame, node.transcript() or [], new_items),
        label,
        new_items,
        parent=node,
        continues=True,
        show_previous=True,
        shown_previous_id=previous_id,
    )


def retry_plan(exc: BridgeError, plan: Plan, exchange: Exchange) -> Plan | None:
    """A second attempt on a fresh socket, when that is safe and can succeed."""
    retryable = exc.code in _RETRYABLE_CODES or (
        isinstance(exc, (UpstreamClosed, LanesRefused))
        and plan.session is not None
        and exchange.events == 0
    )
    if not retryable or exchange.sink is None or exchange.sink.gone:
        return None
    if plan.fallback is not None:
        return plan.fallback
    previous_id = plan.frame.get("previous_response_id")
    if not isinstance(previous_id, str):
        # A full request (no previous_response_id) can be resent as it is, on a fresh socket.
        return replace(plan, session=None)
    if not exchange.settings.rehydrate or plan.parent is None or not plan.parent.kept:
        return None
    return _rehydrated(plan.frame, plan.parent, plan.turn_items, previous_id, "rehydrated")
