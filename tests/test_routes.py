"""Unit tests for ``responses_bridge.state.routes``: which socket holds which response, the
automatic-chaining index of chain heads, and the responses being generated.

``Routes`` keeps no clock: expiry (TTL, socket age) and least-recently-used eviction are the
pool's (``test_pool``); here the index itself, with plain sessions. Registry-level routing is in
``test_sessions``."""

from __future__ import annotations

import asyncio

import pytest

from responses_bridge.state.pool import Session
from responses_bridge.state.routes import Routes
from tests.test_pool import MiniSocket

UP = "wss://api.openai.com/v1/responses"
OTHER_UP = "wss://chatgpt.com/backend-api/codex/responses"
KEY = ("fp1", 2, "prefix-a")
OTHER_KEY = ("fp1", 3, "prefix-b")


def session(owner: str = "alice", upstream: str = UP) -> Session:
    return Session(MiniSocket(), owner, upstream, opened_at=0.0, last_used=0.0, busy=False)


# -- idle sockets -----------------------------------------------------------------------------


def test_retain_indexes_idle_sessions_in_the_order_retained() -> None:
    routes = Routes()
    first, second = session(), session()
    routes.retain(second, "resp_2", None)
    routes.retain(first, "resp_1", None)
    assert routes.idle("resp_1") is first and first.response_id == "resp_1"
    assert routes.idle_sessions() == [second, first]
    assert routes.idle_items() == [("resp_2", second), ("resp_1", first)]
    assert routes.idle("resp_3") is None


def test_take_moves_a_session_from_idle_to_in_flight_and_landed_ends_it() -> None:
    routes = Routes()
    held = session()
    routes.retain(held, "resp_1", KEY)
    routes.take(held, "resp_1")
    assert routes.idle("resp_1") is None and routes.idle_sessions() == []
    assert routes.head("alice", UP, KEY) is None  # a busy socket is no chain head
    assert routes.in_flight("resp_1") is held and held.continuing == "resp_1"
    routes.landed(held)
    assert routes.in_flight("resp_1") is None and held.continuing is None
    routes.landed(held)  # again, or for a fresh socket that continued nothing: harmless
    assert routes.in_flight("resp_1") is None


def test_take_of_an_id_that_is_not_idle_raises() -> None:
    # The registry takes only what ``idle`` or ``head`` just returned; anything else is a bug.
    with pytest.raises(KeyError):
        Routes().take(session(), "resp_nope")


def test_forget_drops_only_this_session_s_entries() -> None:
    routes = Routes()
    old, new = session(), session()
    routes.retain(old, "resp_1", None)
    routes.retain(new, "resp_1", None)  # the same id, retained again on another socket
    routes.forget(old)
    assert routes.idle("resp_1") is new
    routes.forget(new)
    assert routes.idle("resp_1") is None
    routes.forget(new)  # twice: harmless
    assert routes.idle_sessions() == []


def test_clear_empties_the_idle_and_head_indexes() -> None:
    routes = Routes()
    held = session()
    routes.retain(held, "resp_1", KEY)
    routes.clear()
    assert routes.idle("resp_1") is None and routes.idle_sessions() == []
    assert routes.head("alice", UP, KEY) is None
    assert not routes.has_heads("alice", UP, "fp1")


# -- chain heads ------------------------------------------------------------------------------


def test_a_head_is_scoped_to_its_owner_and_upstream() -> None:
    routes = Routes()
    held = session()
    routes.retain(held, "resp_1", KEY)
    assert routes.head("alice", UP, KEY) is held and held.chain_key == KEY
    assert routes.head("bob", UP, KEY) is None
    assert routes.head("alice", OTHER_UP, KEY) is None
    assert routes.head("alice", UP, OTHER_KEY) is None
    assert routes.has_heads("alice", UP, "fp1")
    assert not routes.has_heads("bob", UP, "fp1")
    assert not routes.has_heads("alice", OTHER_UP, "fp1")
    assert not routes.has_heads("alice", UP, "fp2")


def test_a_new_head_for_the_same_key_displaces_the_old_one() -> None:
    routes = Routes()
    old, new = session(), session()
    routes.retain(old, "resp_1", KEY)
    routes.retain(new, "resp_2", KEY)
    assert routes.head("alice", UP, KEY) is new
    assert old.chain_key is None
    assert routes.idle("resp_1") is old  # still idle, only no longer a head
    routes.forget(old)  # forgetting the displaced one leaves the new head alone
    assert routes.head("alice", UP, KEY) is new
    assert routes.has_heads("alice", UP, "fp1")
    routes.forget(new)
    assert not routes.has_heads("alice", UP, "fp1")


def test_retaining_again_under_a_new_key_unindexes_the_old_key() -> None:
    routes = Routes()
    held = session()
    routes.retain(held, "resp_1", KEY)
    routes.take(held, "resp_1")
    routes.landed(held)
    routes.retain(held, "resp_2", OTHER_KEY)
    assert routes.head("alice", UP, KEY) is None
    assert routes.head("alice", UP, OTHER_KEY) is held
    routes.forget(held)
    assert not routes.has_heads("alice", UP, "fp1")


def test_re_retaining_a_head_under_its_own_key_counts_it_once() -> None:
    routes = Routes()
    held = session()
    routes.retain(held, "resp_1", KEY)
    routes.retain(held, "resp_1", KEY)
    routes.forget(held)
    assert not routes.has_heads("alice", UP, "fp1")


def test_has_heads_counts_every_head_of_a_fingerprint() -> None:
    routes = Routes()
    one, two = session(), session()
    routes.retain(one, "resp_1", KEY)
    routes.retain(two, "resp_2", OTHER_KEY)
    routes.forget(one)
    routes.forget(one)  # a second forget must not count the fingerprint down again
    assert routes.has_heads("alice", UP, "fp1")
    routes.take(two, "resp_2")
    assert not routes.has_heads("alice", UP, "fp1")


def test_a_retain_without_key_keeps_no_head() -> None:
    routes = Routes()
    held = session()
    routes.retain(held, "resp_1", None)
    assert held.chain_key is None
    assert not routes.has_heads("alice", UP, "fp1")


# -- responses being generated ----------------------------------------------------------------


async def test_settled_waits_for_produced() -> None:
    routes = Routes()
    turn = session()
    routes.producing(turn, "resp_1")
    assert turn.producing == "resp_1"
    waiter = asyncio.create_task(routes.settled("resp_1", "alice", UP, timeout=5))
    await asyncio.sleep(0)
    assert not waiter.done()
    routes.produced(turn)
    assert await asyncio.wait_for(waiter, 1)
    assert turn.producing is None
    assert await routes.settled("resp_1", "alice", UP, timeout=0)  # nothing left to wait for


async def test_settled_gives_up_after_its_timeout() -> None:
    routes = Routes()
    routes.producing(session(), "resp_1")
    assert not await routes.settled("resp_1", "alice", UP, timeout=0.01)


@pytest.mark.parametrize(("owner", "upstream"), [("bob", UP), ("alice", OTHER_UP)])
async def test_a_stranger_never_waits(owner: str, upstream: str) -> None:
    routes = Routes()
    routes.producing(session(), "resp_1")
    assert await routes.settled("resp_1", owner, upstream, timeout=5)


async def test_producing_another_response_releases_the_waiters_of_the_first() -> None:
    routes = Routes()
    turn = session()
    routes.producing(turn, "resp_1")
    waiter = asyncio.create_task(routes.settled("resp_1", "alice", UP, timeout=5))
    await asyncio.sleep(0)
    routes.producing(turn, "resp_2")  # e.g. a retry on the same socket announced a new id
    assert await asyncio.wait_for(waiter, 1)
    assert turn.producing == "resp_2"
    assert not await routes.settled("resp_2", "alice", UP, timeout=0.01)


def test_produced_without_producing_is_harmless() -> None:
    routes = Routes()
    turn = session()
    routes.produced(turn)
    assert turn.producing is None
