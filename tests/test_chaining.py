"""The automatic-chaining matcher: equal in meaning matches, any change of content does not."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from responses_bridge.state import chaining
from responses_bridge.state.chaining import (
    DigestMemo,
    candidate_keys,
    canonical_item,
    chain_key,
    fields_fingerprint,
    item_digests,
    prefix_digests,
    same_json,
)

USER = {"role": "user", "content": "What is the weather in Oslo?"}
ASSISTANT = {
    "type": "message",
    "id": "msg_1",
    "role": "assistant",
    "status": "completed",
    "content": [{"type": "output_text", "text": "Cold.", "annotations": [], "logprobs": None}],
}
CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city":"Oslo"}',
    "status": "completed",
}
RESULT = {"type": "function_call_output", "call_id": "call_1", "output": "-3 C"}
REASONING = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "enc_abc"}


def matches(history: list[Any], outputs: list[Any], request_input: list[Any]) -> int | None:
    """The prefix length a request continues, using the same keys the registry indexes."""
    fingerprint = fields_fingerprint({"model": "m"})
    key = chain_key(fingerprint, item_digests(history) + item_digests(outputs))
    for candidate in candidate_keys(fingerprint, item_digests(request_input)):
        if candidate == key:
            return candidate[1]
    return None


def test_equal_history_matches() -> None:
    follow = [USER, ASSISTANT, {"role": "user", "content": "And tomorrow?"}]
    assert matches([USER], [ASSISTANT], follow) == 2


def test_default_fields_dropped_or_added_still_match() -> None:
    echoed = {
        "role": "assistant",
        "content": [{"text": "Cold.", "type": "output_text"}],  # no id, status, annotations
    }
    assert matches([USER], [ASSISTANT], [USER, echoed, {"role": "user", "content": "ok"}]) == 2
    typed_user = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": USER["content"]}],
    }
    assert matches([USER], [ASSISTANT], [typed_user, ASSISTANT, USER]) == 2
    with_nulls = {**CALL, "namespace": None}
    assert matches([USER], [CALL], [USER, with_nulls, RESULT]) == 2


def test_reordered_keys_match() -> None:
    reordered = dict(reversed(list(ASSISTANT.items())))
    assert matches([USER], [ASSISTANT], [USER, reordered, USER]) == 2


def test_edited_history_does_not_match() -> None:
    edited = {"role": "user", "content": "What is the weather in Bergen?"}
    assert matches([USER], [ASSISTANT], [edited, ASSISTANT, USER]) is None
    other_answer = {**ASSISTANT, "content": [{"type": "output_text", "text": "Warm."}]}
    assert matches([USER], [ASSISTANT], [USER, other_answer, USER]) is None


def test_changed_fields_do_not_match() -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    base = fields_fingerprint({"model": "m", "tools": tools, "instructions": "be brief"})
    changed_tool = [{**tools[0], "parameters": {"type": "object", "required": ["city"]}}]
    assert base != fields_fingerprint(
        {"model": "m", "tools": changed_tool, "instructions": "be brief"}
    )
    assert base != fields_fingerprint({"model": "m", "tools": tools, "instructions": "be long"})
    assert base != fields_fingerprint({"model": "m2", "tools": tools, "instructions": "be brief"})
    # Transport-only fields and key order do not count.
    assert base == fields_fingerprint(
        {"instructions": "be brief", "stream": True, "tools": tools, "model": "m", "input": "x"}
    )


def test_function_call_round_trip_matches() -> None:
    assert matches([USER], [CALL], [USER, CALL, RESULT]) == 2
    wrong_call = {**CALL, "arguments": '{"city":"Bergen"}'}
    assert matches([USER], [CALL], [USER, wrong_call, RESULT]) is None


def test_reasoning_items_need_the_same_encrypted_content() -> None:
    follow = [USER, REASONING, ASSISTANT, {"role": "user", "content": "more"}]
    assert matches([USER], [REASONING, ASSISTANT], follow) == 3
    tampered = [USER, {**REASONING, "encrypted_content": "enc_other"}, ASSISTANT, USER]
    assert matches([USER], [REASONING, ASSISTANT], tampered) is None


def test_longest_candidate_first_and_at_least_one_new_item() -> None:
    fingerprint = fields_fingerprint({"model": "m"})
    request = [USER, ASSISTANT, USER, ASSISTANT, USER]
    keys = candidate_keys(fingerprint, item_digests(request))
    assert [k[1] for k in keys] == [4, 3, 2, 1]
    # Two chains of the same conversation: the longer one is tried first.
    short = chain_key(fingerprint, item_digests([USER, ASSISTANT]))
    long = chain_key(fingerprint, item_digests([USER, ASSISTANT, USER, ASSISTANT]))
    assert keys.index(long) < keys.index(short)
    # A request that is exactly a chain's prefix has nothing new: no candidate of its length.
    assert all(k[1] < 2 for k in candidate_keys(fingerprint, item_digests([USER, ASSISTANT])))


def test_canonical_form() -> None:
    assert canonical_item({"role": "user", "content": "hi", "id": None}) == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "hi"}],
    }
    assert canonical_item({"role": "assistant", "content": "yo"})["content"][0]["type"] == (
        "output_text"
    )
    assert canonical_item("not an item") == "not an item"


def test_digests_tell_json_types_apart_but_not_key_order() -> None:
    def digest(value: object) -> str:
        return item_digests([{"type": "function_call_output", "call_id": "c", "output": value}])[0]

    values: list[object] = [1, 1.0, True, "1", [1], {"a": 1}, "é", "\ud83d"]
    assert len({digest(v) for v in values}) == len(values)
    assert digest({"a": 1, "b": [2, {"c": 3, "d": 4}]}) == digest(
        {"b": [2, {"d": 4, "c": 3}], "a": 1}
    )
    assert fields_fingerprint({"model": "m", "tools": [{"x": 1, "y": 2}]}) == fields_fingerprint(
        {"tools": [{"y": 2, "x": 1}], "model": "m"}
    )


def test_chain_key_is_the_last_prefix_digest() -> None:
    for digests in ([], item_digests([USER]), item_digests([USER, ASSISTANT, CALL, RESULT])):
        assert chain_key("f", digests) == ("f", len(digests), prefix_digests(digests)[-1])


# -- the digest memo: reuses the digests of a prefix an earlier request repeats exactly ----------


def test_same_json_is_type_exact() -> None:
    assert same_json({"a": [1, "x", None]}, {"a": [1, "x", None]})
    assert same_json({"a": 1, "b": 2}, {"b": 2, "a": 1})  # key order is not JSON content
    assert not same_json([1, 2], [2, 1])
    for left, right in ((1, True), (1, 1.0), (0, False), (0.0, False), ("1", 1), (None, [])):
        assert left == right or left != right  # whatever Python says...
        assert not same_json({"v": left}, {"v": right})  # ...JSON tells them apart
        assert not same_json([left], [right])
    assert not same_json({"a": 1}, {"a": 1, "b": None})
    assert not same_json({"a": 1}, {"b": 1})


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on how many items the memo digests from scratch."""
    counts: list[int] = []
    plain = chaining.item_digests

    def spy(items: Any) -> list[str]:
        items = list(items)
        counts.append(len(items))
        return plain(items)

    monkeypatch.setattr(chaining, "item_digests", spy)
    return counts


def test_memo_digests_only_what_a_full_history_request_adds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = _counting(monkeypatch)
    memo = DigestMemo()
    history: list[Any] = []
    for turn in range(6):
        message = {"role": "user", "content": f"turn {turn}"}
        request = json.loads(json.dumps([*history, message]))  # new objects, as parsed
        assert memo.item_digests(("o", "u", "f"), request, 100) == chaining.item_digests(request)
        history += [message, {**ASSISTANT, "id": f"msg_{turn}"}]
    # the first request digests its one item; each later one its echoed answer and new message
    assert counts[0::2] == [1, 2, 2, 2, 2, 2]


def test_memo_scopes_are_separate(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _counting(monkeypatch)
    memo = DigestMemo()
    memo.item_digests(("o", "u", "f"), [USER, ASSISTANT], 10)
    for scope in (("other", "u", "f"), ("o", "other", "f"), ("o", "u", "other")):
        memo.item_digests(scope, [USER, ASSISTANT, RESULT], 10)
    assert counts == [2, 3, 3, 3]


def _mutated(item: Any, rng: random.Random) -> Any:
    """An item changed in a way that may or may not keep its JSON the same."""
    item = json.loads(json.dumps(item))
    choice = rng.randrange(6)
    if choice == 0:
        item["n"] = rng.choice([1, True, 1.0, 0, False, 0.0, "1", None])
    elif choice == 1:
        item = dict(reversed(list(item.items())))  # same JSON, other key order
    elif choice == 2 and item.get("content"):
        item["content"] = [*item["content"], {"type": "input_text", "text": "more"}]
    elif choice == 3:
        item["flags"] = [rng.choice([1, True, 1.0]), {"deep": rng.choice([0, False, 0.0])}]
    return item  # 4, 5: unchanged


@pytest.mark.parametrize("seed", range(20))
def test_memo_always_equals_digesting_everything(seed: int) -> None:
    """Whatever the requests of a scope look like (repeated, forked, edited, numbers swapped for
    booleans or floats), the memo's digests are exactly those of digesting every item."""
    rng = random.Random(seed)
    memo = DigestMemo(per_scope=rng.choice([1, 2, 4]))
    base = [USER, ASSISTANT, CALL, RESULT, REASONING, {"role": "user", "content": "x", "n": 1}]
    earlier: list[list[Any]] = [[]]
    for _request in range(40):
        start = list(rng.choice(earlier))
        if start and rng.random() < 0.4:
            index = rng.randrange(len(start))
            start[index] = _mutated(start[index], rng)
        if start and rng.random() < 0.2:
            start = start[: rng.randrange(len(start))]  # a fork from an earlier point
        request = start + [_mutated(rng.choice(base), rng) for _ in range(rng.randint(1, 3))]
        request = json.loads(json.dumps(request))
        scope = ("o", "u", rng.choice(["f", "g"]))
        assert memo.item_digests(scope, request, 50) == chaining.item_digests(request)
        earlier.append(request)


def test_memo_is_bounded() -> None:
    memo = DigestMemo(max_bytes=1000, per_scope=2)
    for index in range(3):
        memo.item_digests(("o", "u", "f"), [USER], 100 + index)
    assert memo.bytes == 101 + 102  # two requests a scope
    for index in range(20):
        memo.item_digests(("o", "u", f"scope {index}"), [USER], 100)
    assert memo.bytes <= 1000
    before = memo.bytes
    memo.item_digests(("o", "u", "big"), [USER], 251)  # over a quarter: not remembered
    assert memo.bytes == before
