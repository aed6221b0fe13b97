"""Unit tests for ``responses_bridge.state.transcripts``: chain nodes, their transcripts, and the
bounds on what is kept. Rehydration through the registry, the byte counter under random chains
and the basic LRU are in ``test_sessions``; here ``Transcripts`` and ``ChainNode`` on their own."""

from __future__ import annotations

from typing import Any

import pytest

from responses_bridge.state.limits import Limits
from responses_bridge.state.transcripts import ChainNode, Transcripts, items_size

UP = "wss://api.openai.com/v1/responses"


def msg(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def record(
    transcripts: Transcripts,
    response_id: str,
    items: list[dict[str, Any]],
    parent: ChainNode | None = None,
    *,
    continues: bool = False,
    owner: str = "alice",
) -> ChainNode:
    node = transcripts.record(response_id, owner, UP, parent, items, continues=continues)
    assert node is not None
    return node


# -- items_size -------------------------------------------------------------------------------


def test_items_size_is_the_compact_json_length() -> None:
    items = [{"a": 1, "b": [1, 2]}, {"c": None}]
    assert items_size(items) == len('{"a":1,"b":[1,2]}') + len('{"c":null}')
    assert items_size([]) == 0
    # Non-ASCII text counts as it is escaped (json.dumps' default).
    assert items_size([{"t": "é"}]) == len('{"t":"\\u00e9"}')


# -- ChainNode --------------------------------------------------------------------------------


def test_a_transcript_is_every_segment_oldest_first() -> None:
    root = ChainNode("resp_1", "alice", UP, None, [msg("1")], 0)
    middle = ChainNode("resp_2", "alice", UP, root, [msg("2"), msg("3")], 0)
    leaf = ChainNode("resp_3", "alice", UP, middle, [], 0)
    assert leaf.transcript() == [msg("1"), msg("2"), msg("3")]
    assert root.transcript() == [msg("1")]
    assert leaf.kept and root.kept


def test_a_gap_anywhere_in_the_chain_means_no_transcript() -> None:
    root = ChainNode("resp_1", "alice", UP, None, None, 0)
    child = ChainNode("resp_2", "alice", UP, root, [msg("2")], 0)
    assert not root.kept and root.transcript() is None
    assert child.transcript() is None  # its own segment alone would replay half a chain


# -- node and peek ----------------------------------------------------------------------------


def test_node_is_only_for_its_owner_and_upstream_peek_for_anyone() -> None:
    transcripts = Transcripts(Limits())
    node = record(transcripts, "resp_1", [msg("q")])
    assert transcripts.node("resp_1", "alice", UP) is node
    assert transcripts.node("resp_1", "bob", UP) is None
    assert transcripts.node("resp_1", "alice", "wss://other/v1/responses") is None
    assert transcripts.peek("resp_1") is node
    assert transcripts.peek("resp_nope") is None
    assert len(transcripts) == 1


@pytest.mark.parametrize("use", [True, False])
def test_only_a_use_makes_a_chain_recently_used(use: bool) -> None:
    transcripts = Transcripts(Limits(max_chains=2))
    record(transcripts, "resp_a", [msg("a")])
    record(transcripts, "resp_b", [msg("b")])
    transcripts.node("resp_a", "alice", UP, use=use)
    transcripts.peek("resp_a")  # never a use
    transcripts.node("resp_a", "bob", UP, use=True)  # a stranger's look is no use either
    record(transcripts, "resp_c", [msg("c")])
    survivor, evicted = ("resp_a", "resp_b") if use else ("resp_b", "resp_a")
    assert transcripts.peek(survivor) is not None
    assert transcripts.peek(evicted) is None


# -- record -----------------------------------------------------------------------------------


def test_a_known_parent_decides_whether_it_is_kept_not_continues() -> None:
    transcripts = Transcripts(Limits())
    kept = record(transcripts, "resp_1", [msg("1")])
    lost = record(transcripts, "resp_x", [msg("x")], continues=True)
    assert not lost.kept
    assert record(transcripts, "resp_2", [msg("2")], kept, continues=False).kept
    assert record(transcripts, "resp_3", [msg("3")], kept, continues=True).kept
    assert not record(transcripts, "resp_4", [msg("4")], lost, continues=False).kept


def test_a_root_larger_than_transcript_max_bytes_is_counted_but_not_kept() -> None:
    items = [msg("x" * 200)]
    transcripts = Transcripts(Limits(transcript_max_bytes=items_size(items) - 1))
    node = record(transcripts, "resp_1", items)
    assert not node.kept and node.parent is None and node.segment_bytes == 0
    assert node.total_bytes == items_size(items)  # its children are judged by the whole chain
    assert transcripts.bytes == 0
    assert len(transcripts) == 1  # known, so a continuation is not replayed incomplete
    assert transcripts.peek("resp_1") is node


def test_an_unkept_node_holds_no_bytes_and_frees_its_parent() -> None:
    first_items = [msg("q1")]
    limit = items_size(first_items) + 10
    transcripts = Transcripts(Limits(transcript_max_bytes=limit, max_chains=1))
    first = record(transcripts, "resp_1", first_items)
    second = record(transcripts, "resp_2", [msg("x" * 50)], first, continues=True)
    assert not second.kept and second.parent is None  # not linked: the parent can go
    assert transcripts.peek("resp_1") is None  # evicted by count
    assert transcripts.bytes == 0


def test_recording_an_id_again_replaces_its_node() -> None:
    transcripts = Transcripts(Limits())
    old = record(transcripts, "resp_1", [msg("old" * 20)])
    new = record(transcripts, "resp_1", [msg("new")])
    assert transcripts.peek("resp_1") is new
    assert len(transcripts) == 1
    assert transcripts.bytes == items_size([msg("new")])
    assert not old.held


def test_a_replaced_node_stays_counted_while_a_child_links_to_it() -> None:
    transcripts = Transcripts(Limits())
    old = record(transcripts, "resp_1", [msg("1")])
    record(transcripts, "resp_2", [msg("2")], old, continues=True)
    record(transcripts, "resp_1", [msg("again")])
    assert old.held
    assert transcripts.bytes == items_size([msg("1"), msg("2"), msg("again")])


def test_a_lowered_chain_capacity_evicts_down_to_it_on_the_next_record() -> None:
    limits = Limits(max_chains=10)
    transcripts = Transcripts(limits)
    for number in range(6):
        record(transcripts, f"resp_{number}", [msg(str(number))])
    limits.max_chains = 2  # a reconfigure
    record(transcripts, "resp_new", [msg("new")])
    assert len(transcripts) == 2
    assert transcripts.peek("resp_5") is not None and transcripts.peek("resp_new") is not None
    assert transcripts.bytes == items_size([msg("5"), msg("new")])


def test_turning_transcripts_off_records_nothing_and_keeps_what_is_there() -> None:
    limits = Limits()
    transcripts = Transcripts(limits)
    node = record(transcripts, "resp_1", [msg("1")])
    limits.keep_transcripts = False
    assert transcripts.record("resp_2", "alice", UP, node, [msg("2")]) is None
    assert len(transcripts) == 1 and transcripts.peek("resp_2") is None
    assert transcripts.bytes == items_size([msg("1")])


def test_a_transcript_larger_than_the_whole_budget_does_not_wipe_the_others() -> None:
    small = [msg("s" * 50)]
    transcripts = Transcripts(
        Limits(transcript_max_bytes=10_000, transcripts_total_bytes=3 * items_size(small))
    )
    record(transcripts, "resp_a", small)
    record(transcripts, "resp_b", small)
    big = record(transcripts, "resp_big", [msg("b" * 2000)])
    assert transcripts.peek("resp_a") is not None
    assert transcripts.peek("resp_b") is not None
    assert transcripts.bytes <= 3 * items_size(small)
    assert not big.kept
