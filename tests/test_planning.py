"""Unit tests for ``responses_bridge.turn.planning``: what a request is worked out as, which
socket and frame each route gives, what a finished turn records, and the one retry.

Plain values: a registry with a fixed clock and sockets that only close; no upstream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from responses_bridge.protocol.errors import (
    BridgeError,
    ChainBusy,
    InvalidRequest,
    PreviousResponseNotFound,
    UpstreamClosed,
    UpstreamResponseError,
    UpstreamTimeout,
)
from responses_bridge.protocol.events import ResponseFolder
from responses_bridge.protocol.request import ClientRequest, parse_client_request
from responses_bridge.state.chaining import chain_key, fields_fingerprint, item_digests
from responses_bridge.state.limits import Limits
from responses_bridge.state.pool import Session
from responses_bridge.state.sessions import Registry
from responses_bridge.turn import planning
from responses_bridge.turn.exchange import ClientSink, Exchange, Settings
from responses_bridge.turn.planning import Plan, Turn
from tests.test_pool import MiniSocket

UP = "wss://api.openai.com/v1/responses"
OWNER = "alice"
Q1 = {"role": "user", "content": "What is the weather in Oslo?"}
A1 = {
    "type": "message",
    "id": "msg_1",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "Cold."}],
}
Q2 = {"role": "user", "content": "And tomorrow?"}


def request(**body: Any) -> ClientRequest:
    return parse_client_request(json.dumps(body).encode())


def make_exchange(**settings: Any) -> Exchange:
    return Exchange("flow-1", UP, Settings(**settings))


def make_turn(
    registry: Registry, compat: bool = False, settings: Settings | None = None, **body: Any
) -> Turn:
    client = request(**body)
    return planning.turn(
        client,
        compat,
        OWNER,
        settings or Settings(),
        upstream=UP,
        registry=registry,
        body_size=len(json.dumps(body)),
    )


def completed(
    response_id: Any, *items: dict[str, Any], kind: str = "response.completed"
) -> ResponseFolder:
    folder = ResponseFolder()
    for index, item in enumerate(items):
        folder.feed({"type": "response.output_item.done", "output_index": index, "item": item})
    folder.feed({"type": kind, "response": {"id": response_id, "status": "completed"}})
    return folder


async def connect() -> MiniSocket:
    return MiniSocket()


async def retained(
    registry: Registry, response_id: str, key: tuple[str, int, str] | None = None
) -> Session:
    """A socket that answered a turn and is kept idle as ``response_id``."""
    session = await registry.open(OWNER, UP, connect)
    async with registry.lease(session) as lease:
        lease.retain_as = response_id
        lease.chain_key = key
    return session


@pytest.fixture
def registry() -> Registry:
    return Registry(Limits(warm_sockets=0), clock=lambda: 1000.0)


# -- turn -------------------------------------------------------------------------------------


def test_turn_builds_the_frame_and_items(registry: Registry) -> None:
    turn = make_turn(registry, model="m", input="hi", stream=True, background=False)
    assert turn.frame == {"type": "response.create", "model": "m", "input": "hi"}
    assert turn.new_items == [{"type": "message", "role": "user", "content": "hi"}]
    assert turn.owner == OWNER and turn.previous_id is None
    assert turn.memory > len(json.dumps({"model": "m"}))  # the parsed body costs more than text


@pytest.mark.parametrize(
    ("compat", "store", "resolves"),
    [(False, None, True), (False, True, True), (False, False, False), (True, None, False)],
)
def test_only_a_stored_response_on_the_platform_api_may_resolve_upstream(
    registry: Registry, compat: bool, store: bool | None, resolves: bool
) -> None:
    body: dict[str, Any] = {"model": "m", "input": "hi"}
    if store is not None:
        body["store"] = store
    turn = make_turn(registry, compat, **body)
    assert turn.upstream_resolves is resolves
    if compat:
        assert turn.frame["store"] is False


def test_an_eligible_turn_gets_a_fingerprint_and_scope(registry: Registry) -> None:
    turn = make_turn(registry, model="m", input=[Q1])
    assert turn.fingerprint == fields_fingerprint(turn.frame)
    assert turn.scope == (OWNER, UP, turn.fingerprint)
    assert turn.digested is None  # no chain of this scope is held: nothing digested yet


@pytest.mark.parametrize(
    ("settings", "body"),
    [
        (Settings(auto_chain=False), {"input": [Q1]}),
        (Settings(stateful=False), {"input": [Q1]}),
        (Settings(), {"input": [Q1], "previous_response_id": "resp_0"}),
        (Settings(), {"input": [Q1, "not an item"]}),
        (Settings(), {}),  # no input at all
    ],
)
def test_ineligible_turns_are_not_chained(
    registry: Registry, settings: Settings, body: dict[str, Any]
) -> None:
    turn = make_turn(registry, settings=settings, model="m", **body)
    assert turn.fingerprint is None and turn.scope is None and turn.digested is None
    assert planning.accepted_chain_key(registry, turn, completed("resp_1", A1)) is None


async def test_a_held_chain_of_the_scope_makes_the_turn_digest_its_input(
    registry: Registry,
) -> None:
    first = make_turn(registry, model="m", input=[Q1])
    assert first.scope is not None
    key = planning.accepted_chain_key(registry, first, completed("resp_1", A1))
    await retained(registry, "resp_1", key)
    again = make_turn(registry, model="m", input=[Q1, A1, Q2])
    assert again.digested is not None
    assert again.digested.digests == item_digests([Q1, A1, Q2])
    other_model = make_turn(registry, model="other", input=[Q1, A1, Q2])
    assert other_model.digested is None


# -- remember and accepted_chain_key ----------------------------------------------------------


def test_remember_records_the_turn_and_names_the_response(registry: Registry) -> None:
    ex = make_exchange()
    turn = make_turn(registry, model="m", input=[Q1])
    plan = planning.first_plan(registry, ex, turn)
    assert planning.remember(registry, ex, turn, plan, completed("resp_1", A1)) == "resp_1"
    node = registry.chain("resp_1", OWNER, UP)
    assert node is not None and node.transcript() == [Q1, A1]


@pytest.mark.parametrize(
    ("folder", "settings"),
    [
        (ResponseFolder(), Settings()),  # no terminal event
        (completed("resp_1", A1, kind="response.failed"), Settings()),
        (completed("resp_1", A1), Settings(stateful=False)),
        (completed(None, A1), Settings()),  # no usable id
        (completed(42, A1), Settings()),
    ],
)
def test_remember_keeps_nothing_of_a_turn_that_cannot_be_continued(
    registry: Registry, folder: ResponseFolder, settings: Settings
) -> None:
    ex = make_exchange(stateful=settings.stateful)
    turn = make_turn(registry, model="m", input=[Q1])
    plan = Plan(turn.frame, "new", turn.new_items)
    assert planning.remember(registry, ex, turn, plan, folder) is None
    assert len(registry.transcripts) == 0


def test_an_incomplete_response_is_still_remembered(registry: Registry) -> None:
    ex = make_exchange()
    turn = make_turn(registry, model="m", input=[Q1])
    plan = Plan(turn.frame, "new", turn.new_items)
    folder = completed("resp_1", A1, kind="response.incomplete")
    assert planning.remember(registry, ex, turn, plan, folder) == "resp_1"


def test_remember_marks_a_continuation_of_an_unknown_chain_as_not_kept(
    registry: Registry,
) -> None:
    ex = make_exchange()
    turn = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_upstream")
    plan = planning.first_plan(registry, ex, turn)  # unknown here, stored upstream: passed on
    assert plan.label == "new" and plan.continues
    planning.remember(registry, ex, turn, plan, completed("resp_2", A1))
    node = registry.chain("resp_2", OWNER, UP)
    assert node is not None and not node.kept


def test_the_chain_key_covers_the_input_and_the_output(registry: Registry) -> None:
    turn = make_turn(registry, model="m", input=[Q1])
    assert turn.fingerprint is not None
    key = planning.accepted_chain_key(registry, turn, completed("resp_1", A1))
    assert key == chain_key(turn.fingerprint, item_digests([Q1, A1]))
    assert key is not None and key[1] == 2
    assert registry.digest_memo.bytes == turn.memory  # remembered for the next request


# -- first_plan -------------------------------------------------------------------------------


def test_a_fresh_request_goes_on_a_fresh_socket(registry: Registry) -> None:
    turn = make_turn(registry, model="m", input=[Q1])
    plan = planning.first_plan(registry, make_exchange(), turn)
    assert (plan.label, plan.session, plan.parent, plan.fallback) == ("new", None, None, None)
    assert plan.frame is turn.frame and plan.turn_items == [Q1]
    assert not plan.continues and not plan.show_previous


async def test_a_full_history_request_is_chained_onto_the_held_socket(
    registry: Registry,
) -> None:
    ex = make_exchange()
    first = make_turn(registry, model="m", input=[Q1])
    folder = completed("resp_1", A1)
    planning.remember(registry, ex, first, planning.first_plan(registry, ex, first), folder)
    held = await retained(registry, "resp_1", planning.accepted_chain_key(registry, first, folder))
    second = make_turn(registry, model="m", input=[Q1, A1, Q2], stream=True)
    plan = planning.first_plan(registry, ex, second)
    assert plan.label == "chained" and plan.session is held and held.busy
    assert plan.frame == {
        "type": "response.create",
        "model": "m",
        "input": [Q2],
        "previous_response_id": "resp_1",
    }
    assert plan.turn_items == [Q2]
    assert plan.parent is registry.chain("resp_1", OWNER, UP)
    assert plan.continues and plan.show_previous and plan.shown_previous_id is None
    # If it fails before any output, the request is sent as the client sent it.
    assert plan.fallback is not None
    assert plan.fallback.label == "new" and plan.fallback.frame is second.frame
    assert plan.fallback.session is None and not plan.fallback.continues
    # The socket is leased: an identical request now finds nothing to chain onto.
    third = make_turn(registry, model="m", input=[Q1, A1, Q2])
    assert planning.first_plan(registry, ex, third).label == "new"


async def test_an_edited_history_is_not_chained(registry: Registry) -> None:
    first = make_turn(registry, model="m", input=[Q1])
    await retained(
        registry, "resp_1", planning.accepted_chain_key(registry, first, completed("resp_1", A1))
    )
    edited = {**A1, "content": [{"type": "output_text", "text": "Warm."}]}
    second = make_turn(registry, model="m", input=[Q1, edited, Q2])
    assert second.digested is not None  # the scope holds a chain, so it was compared...
    assert planning.first_plan(registry, make_exchange(), second).label == "new"  # ...in vain


def test_without_stateful_a_continuation_goes_on_as_it_is(registry: Registry) -> None:
    turn = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_1")
    plan = planning.first_plan(registry, make_exchange(stateful=False), turn)
    assert plan.label == "new" and plan.session is None and plan.continues
    assert plan.frame["previous_response_id"] == "resp_1"


async def test_a_held_response_is_continued_on_its_socket(registry: Registry) -> None:
    parent = registry.transcripts.record("resp_1", OWNER, UP, None, [Q1, A1])
    held = await retained(registry, "resp_1")
    turn = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_1", store=False)
    plan = planning.first_plan(registry, make_exchange(), turn)
    assert plan.label == "reused" and plan.session is held
    assert plan.frame is turn.frame and plan.frame["previous_response_id"] == "resp_1"
    assert plan.parent is parent and plan.continues and not plan.show_previous


@pytest.mark.parametrize("busy", [False, True])
async def test_a_gone_or_busy_socket_is_rehydrated_from_the_transcript(
    registry: Registry, busy: bool
) -> None:
    registry.transcripts.record("resp_1", OWNER, UP, None, [Q1, A1])
    if busy:
        await retained(registry, "resp_1")
        lease = registry.route(OWNER, UP, "resp_1", upstream_resolves=False)
        assert lease.session is not None  # another turn holds the socket now
    turn = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_1", store=False)
    plan = planning.first_plan(registry, make_exchange(), turn)
    assert plan.label == ("forked" if busy else "rehydrated")
    assert plan.session is None
    assert plan.frame["input"] == [Q1, A1, Q2]
    assert "previous_response_id" not in plan.frame
    assert plan.turn_items == [Q2]
    assert plan.show_previous and plan.shown_previous_id == "resp_1"


async def test_a_busy_chain_without_rehydration_is_409(registry: Registry) -> None:
    registry.transcripts.record("resp_1", OWNER, UP, None, [Q1, A1])
    await retained(registry, "resp_1")
    registry.route(OWNER, UP, "resp_1", upstream_resolves=False)
    turn = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_1", store=False)
    with pytest.raises(ChainBusy) as caught:
        planning.first_plan(registry, make_exchange(rehydrate=False), turn)
    assert caught.value.status == 409 and caught.value.param == "previous_response_id"


async def test_a_busy_chain_without_transcript(registry: Registry) -> None:
    await retained(registry, "resp_1")
    registry.route(OWNER, UP, "resp_1", upstream_resolves=False)
    unstored = make_turn(
        registry, model="m", input=[Q2], previous_response_id="resp_1", store=False
    )
    with pytest.raises(ChainBusy):
        planning.first_plan(registry, make_exchange(), unstored)
    stored = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_1")
    plan = planning.first_plan(registry, make_exchange(), stored)
    assert plan.label == "new" and plan.frame["previous_response_id"] == "resp_1"


def test_an_unknown_unstored_response_is_not_found(registry: Registry) -> None:
    turn = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_x", store=False)
    with pytest.raises(PreviousResponseNotFound) as caught:
        planning.first_plan(registry, make_exchange(), turn)
    assert caught.value.status == 400 and "resp_x" in caught.value.message


def test_a_kept_transcript_without_rehydration_is_not_found(registry: Registry) -> None:
    registry.transcripts.record("resp_1", OWNER, UP, None, [Q1, A1])
    turn = make_turn(registry, model="m", input=[Q2], previous_response_id="resp_1", store=False)
    with pytest.raises(PreviousResponseNotFound):
        planning.first_plan(registry, make_exchange(rehydrate=False), turn)


# -- retry_plan -------------------------------------------------------------------------------


def attached(ex: Exchange) -> Exchange:
    ex.sink = ClientSink(ex, attach_timeout=1)
    return ex


NOT_FOUND = PreviousResponseNotFound("resp_1")
LIMIT = UpstreamResponseError({"code": "websocket_connection_limit_reached"}, status=None)


@pytest.mark.parametrize("exc", [NOT_FOUND, LIMIT])
def test_a_retryable_error_resends_a_full_request_on_a_fresh_socket(exc: BridgeError) -> None:
    plan = Plan({"type": "response.create", "input": [Q1]}, "new", [Q1])
    retry = planning.retry_plan(exc, plan, attached(make_exchange()))
    assert retry is not None and retry is not plan
    assert retry.frame is plan.frame and retry.session is None and retry.label == "new"


def test_the_fallback_is_what_a_failed_chained_plan_retries_as() -> None:
    fresh = Plan({"type": "response.create", "input": [Q1, A1, Q2]}, "new", [Q1, A1, Q2])
    chained = Plan(
        {"type": "response.create", "input": [Q2], "previous_response_id": "resp_1"},
        "chained",
        [Q2],
        fallback=fresh,
    )
    assert planning.retry_plan(NOT_FOUND, chained, attached(make_exchange())) is fresh


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamTimeout("slow"),
        InvalidRequest("bad"),
        UpstreamResponseError({"code": "rate_limit_exceeded"}, status=429),
    ],
)
def test_other_errors_are_not_retried(exc: BridgeError) -> None:
    plan = Plan({"type": "response.create", "input": [Q1]}, "new", [Q1])
    assert planning.retry_plan(exc, plan, attached(make_exchange())) is None


def test_nothing_is_retried_for_a_client_that_is_gone_or_never_came() -> None:
    plan = Plan({"type": "response.create", "input": [Q1]}, "new", [Q1])
    assert planning.retry_plan(NOT_FOUND, plan, make_exchange()) is None  # no sink
    ex = attached(make_exchange())
    assert ex.sink is not None
    ex.sink.leave()
    assert planning.retry_plan(NOT_FOUND, plan, ex) is None


def test_a_closed_reused_socket_is_retried_only_before_any_event() -> None:
    session = Session(MiniSocket(), OWNER, UP, opened_at=0.0, last_used=0.0)
    reused = Plan({"type": "response.create", "input": [Q1]}, "reused", [Q1], session=session)
    ex = attached(make_exchange())
    retry = planning.retry_plan(UpstreamClosed("closed"), reused, ex)
    assert retry is not None and retry.session is None
    ex.events = 1  # something was already relayed: resending could duplicate it
    assert planning.retry_plan(UpstreamClosed("closed"), reused, ex) is None
    ex.events = 0
    fresh = Plan({"type": "response.create", "input": [Q1]}, "new", [Q1])  # no socket was reused
    assert planning.retry_plan(UpstreamClosed("closed"), fresh, ex) is None


def test_a_delta_request_is_retried_only_by_rehydrating_it(registry: Registry) -> None:
    parent = registry.transcripts.record("resp_1", OWNER, UP, None, [Q1, A1])
    assert parent is not None
    delta = {"type": "response.create", "input": [Q2], "previous_response_id": "resp_1"}
    plan = Plan(delta, "reused", [Q2], parent=parent, continues=True)
    retry = planning.retry_plan(NOT_FOUND, plan, attached(make_exchange()))
    assert retry is not None and retry.label == "rehydrated"
    assert retry.frame == {"type": "response.create", "input": [Q1, A1, Q2]}
    assert retry.session is None and retry.parent is parent
    assert retry.show_previous and retry.shown_previous_id == "resp_1"
    # Never resent as a bare delta on a fresh socket, which has none of the chain.
    assert planning.retry_plan(NOT_FOUND, plan, attached(make_exchange(rehydrate=False))) is None
    orphan = Plan(delta, "reused", [Q2], parent=None, continues=True)
    assert planning.retry_plan(NOT_FOUND, orphan, attached(make_exchange())) is None
    unkept = registry.transcripts.record("resp_u", OWNER, UP, None, [Q1], continues=True)
    lost = Plan(delta, "reused", [Q2], parent=unkept, continues=True)
    assert planning.retry_plan(NOT_FOUND, lost, attached(make_exchange())) is None
