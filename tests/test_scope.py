"""Unit tests for ``responses_bridge.state.scope``: the owner key of an upgrade. What tells
owners apart through the registry is in ``test_sessions``; here, ``Owners`` itself: its key,
the encoding that keeps distinct upgrades apart, and the route."""

from __future__ import annotations

import re

import pytest

from responses_bridge.state.scope import Owners

KEY = b"k" * 32
AUTH = [("Authorization", "Bearer sk-test")]


def test_the_same_key_gives_the_same_owner_across_instances() -> None:
    assert Owners(KEY).owner_of(AUTH) == Owners(KEY).owner_of(AUTH)
    assert Owners(KEY).owner_of(AUTH) != Owners(b"j" * 32).owner_of(AUTH)


def test_a_fresh_key_per_instance_by_default() -> None:
    assert Owners().owner_of(AUTH) != Owners().owner_of(AUTH)


def test_owner_is_24_hex_digits_even_for_no_headers() -> None:
    owners = Owners(KEY)
    for headers in ([], AUTH, [("x-big", "v" * 100_000)]):
        assert re.fullmatch(r"[0-9a-f]{24}", owners.owner_of(headers))
    assert owners.owner_of([]) != owners.owner_of(AUTH)


def test_the_route_defaults_to_empty() -> None:
    owners = Owners(KEY)
    assert owners.owner_of(AUTH) == owners.owner_of(AUTH, route="")
    assert owners.owner_of(AUTH) != owners.owner_of(AUTH, route=" ")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # The boundary between a name and its value, or between two headers, is not lost.
        ([("x-ab", "c")], [("x-a", "bc")]),
        ([("x-a", "1"), ("x-b", "2")], [("x-a", "1x-b2")]),
        ([("x-a", "")], []),
        ([("x-a", "3:abc")], [("x-a", ""), ("abc", "")]),
    ],
)
def test_no_split_of_the_same_text_hashes_alike(
    one: list[tuple[str, str]], other: list[tuple[str, str]]
) -> None:
    owners = Owners(KEY)
    assert owners.owner_of(one) != owners.owner_of(other)


def test_a_header_is_never_confused_with_the_route() -> None:
    owners = Owners(KEY)
    assert owners.owner_of([("x-a", "b")]) != owners.owner_of([], route="x-a")
    assert owners.owner_of([("x-a", "b")], route="") != owners.owner_of([("x-a", "")], route="b")
    assert owners.owner_of([("route", "1")]) != owners.owner_of([], route="1")
    # Not even a route spelled as the length-prefixed encoding of a header.
    assert owners.owner_of([("x-a", "b")]) != owners.owner_of([], route="3:x-a1:b")


def test_header_order_does_not_matter_but_the_order_of_a_repeated_header_does() -> None:
    owners = Owners(KEY)
    assert owners.owner_of([("x-a", "1"), ("x-b", "2")]) == owners.owner_of(
        [("x-b", "2"), ("x-a", "1")]
    )
    assert owners.owner_of([("x-a", "1"), ("x-a", "2")]) != owners.owner_of(
        [("x-a", "2"), ("x-a", "1")]
    )
    assert owners.owner_of([("x-a", "1"), ("x-a", "1")]) != owners.owner_of([("x-a", "1")])


def test_headers_the_upgrade_never_carries_are_left_out() -> None:
    owners = Owners(KEY)
    noise = [
        ("Host", "api.openai.com"),
        ("Content-Length", "12"),
        ("Content-Type", "application/json"),
        ("Proxy-Authorization", "Basic abc"),
        ("x-responses-bridge-secret", "s"),
        (":authority", "api.openai.com"),
        ("traceparent", "00-abc-def-01"),
    ]
    assert owners.owner_of([*noise, *AUTH]) == owners.owner_of(AUTH)


def test_any_string_a_header_can_hold_is_accepted() -> None:
    """mitmproxy decodes undecodable header bytes as lone surrogates: they hash, apart."""
    owners = Owners(KEY)
    first = owners.owner_of([("x-a", "\udcff")], route="\udcfe")
    assert first != owners.owner_of([("x-a", "\udcfe")], route="\udcfe")
    assert owners.owner_of([("x-a", "é")]) != owners.owner_of([("x-a", "e")])
