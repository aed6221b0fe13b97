"""Unit tests for ``responses_bridge.state.limits``: the one ``Limits`` value every part of the
session state reads (``test_sessions`` covers ``chain_capacity``'s two basic cases)."""

from __future__ import annotations

import dataclasses

from responses_bridge.state.limits import Limits
from responses_bridge.state.pool import Pool
from responses_bridge.state.transcripts import Transcripts

MiB = 1024 * 1024


def test_defaults() -> None:
    limits = Limits()
    assert limits.max_sessions == 64
    assert limits.session_ttl == 600.0
    # Under the upstream's 60-minute end of a socket, so one is never used as it ends.
    assert limits.max_socket_age == 3300.0 < 3600
    assert limits.transcript_max_bytes == 16 * MiB
    assert limits.transcripts_total_bytes == 256 * MiB
    assert limits.transcript_max_bytes <= limits.transcripts_total_bytes
    assert limits.keep_transcripts is True
    assert limits.warm_sockets == 1
    assert limits.max_chains is None
    assert limits.chain_capacity == 8 * 64
    assert limits.max_sessions_per_owner is None


def test_an_explicit_zero_max_chains_is_not_the_default() -> None:
    # ``max_chains`` is tested against None, not for truth: 0 keeps no chain at all.
    assert Limits(max_sessions=4, max_chains=0).chain_capacity == 0


def test_owner_share_defaults_to_all_but_an_eighth() -> None:
    assert Limits(max_sessions=64).owner_share == 56
    assert Limits(max_sessions=17).owner_share == 15  # an eighth rounded down is kept back
    assert Limits(max_sessions=8).owner_share == 7
    assert Limits(max_sessions=7).owner_share == 7  # below 8 sockets nothing is kept back
    assert Limits(max_sessions=1).owner_share == 1


def test_an_explicit_owner_share_is_capped_by_max_sessions() -> None:
    assert Limits(max_sessions=10, max_sessions_per_owner=2).owner_share == 2
    assert Limits(max_sessions=10, max_sessions_per_owner=10).owner_share == 10
    assert Limits(max_sessions=10, max_sessions_per_owner=50).owner_share == 10
    limits = Limits(max_sessions=10, max_sessions_per_owner=8)
    limits.max_sessions = 4  # a reconfigure lowers the cap
    assert limits.owner_share == 4


def test_chain_capacity_follows_a_reconfigure() -> None:
    limits = Limits(max_sessions=2)
    assert limits.chain_capacity == 16
    limits.max_sessions = 5
    assert limits.chain_capacity == 40
    limits.max_chains = 3
    assert limits.chain_capacity == 3
    limits.max_chains = None
    assert limits.chain_capacity == 40


def test_one_value_is_shared_by_the_parts_that_read_it() -> None:
    """A reconfigure changes the one ``Limits``: the pool and the transcripts see it at once."""
    limits = Limits()
    pool = Pool(limits, lambda: 0.0, retained=list, on_forget=lambda _session: None)
    transcripts = Transcripts(limits)
    limits.max_sessions = 7
    limits.keep_transcripts = False
    assert pool.limits.max_sessions == 7
    assert transcripts.record("resp_1", "owner", "wss://u", None, [{"type": "x"}]) is None


def test_instances_are_independent_and_comparable() -> None:
    first, second = Limits(), Limits()
    first.max_sessions = 1
    assert second.max_sessions == 64
    assert Limits(warm_sockets=0) == Limits(warm_sockets=0)
    assert Limits(warm_sockets=0) != Limits()
    assert dataclasses.replace(first, max_sessions=64) == second
