"""Pure matching for automatic chaining: is a full-history request the continuation of a chain?

Most HTTP clients resend the whole conversation each turn. If a request's non-input fields equal
those of a retained chain's last request, and its input begins with that request's input plus the
output items it produced, only the rest needs to go upstream, with ``previous_response_id``.
Matching is by meaning: items are compared in a canonical form (``None``, empty and ``status`` /
``id`` fields dropped, keys sorted, string content spelled out as parts), so a client that echoes
output items back with defaults dropped or added, or keys reordered, still matches; any change of
content does not. Candidates are found by a digest of the whole prefix, never by a scan.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Fields that do not change what the model sees: not part of the request fingerprint. The
# metadata fields are per-request annotations (Codex puts a turn id and a timestamp in
# ``client_metadata``); the chained request still carries the new request's own values.
_NOT_FINGERPRINTED = frozenset(
    {"input", "stream", "previous_response_id", "background", "type", "client_metadata", "metadata"}
)
# Item fields that carry no meaning for the model's context.
_ITEM_NOISE = frozenset({"id", "status"})


def _canonical(value: Any, *, top_item: bool) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in sorted(value):  # JSON object keys are strings; sorted, the repr is canonical
            if top_item and key in _ITEM_NOISE:
                continue
            canonical = _canonical(value[key], top_item=False)
            if canonical is None or canonical == [] or canonical == {}:
                continue
            out[key] = canonical
        return out
    if isinstance(value, list):
        return [_canonical(inner, top_item=False) for inner in value]
    return value


def canonical_item(item: Any) -> Any:
    """An input/output item in a form equal for equal meaning."""
    if not isinstance(item, dict):
        return item
    item = dict(item)
    if "role" in item and "type" not in item:
        item["type"] = "message"
    content = item.get("content")
    if item.get("type") == "message" and isinstance(content, str):
        part = "output_text" if item.get("role") == "assistant" else "input_text"
        item["content"] = [{"type": part, "text": content}]
    return _canonical(item, top_item=True)


def _digest(value: Any) -> str:
    # repr of a canonical value (JSON types, keys sorted) is deterministic and tells types apart
    # as JSON does (1, 1.0, True, "1"); it is twice as fast as json.dumps on long texts, and
    # every turn of a full-history client digests its whole input.
    text = repr(value)
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


def item_digests(items: Iterable[Any]) -> list[str]:
    """One digest per item, of its canonical form."""
    return [_digest(canonical_item(item)) for item in items]


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included (Python's ``==`` has ``1 == 1.0 == True``)."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        if len(a) != len(b):
            return False
        for key, value in a.items():  # noqa: SIM110 (a loop is faster than all() here)
            if key not in b or not same_json(value, b[key]):
                return False
        return True
    if kind is list:
        return len(a) == len(b) and all(map(same_json, a, b))
    return bool(a == b)


def _has_numbers(value: Any) -> bool:
    """Whether a JSON value holds a number or a boolean, where ``==`` is not exact."""
    if isinstance(value, dict):
        return any(_has_numbers(inner) for inner in value.values())
    if isinstance(value, list):
        return any(_has_numbers(inner) for inner in value)
    return isinstance(value, (int, float))  # bool is an int


@dataclass
class Digested:
    """A request's input items with their digests (see ``DigestMemo``)."""

    items: Sequence[Any]
    digests: list[str]
    plain: list[bool]  # per item: no numbers or booleans inside, so ``==`` is exact for it
    size: int = 0  # the memory it holds, once remembered

    def shared_prefix(self, items: Sequence[Any]) -> int:
        """How many leading items of ``items`` are the same JSON as these."""
        for index, (old, new) in enumerate(zip(self.items, items, strict=False)):
            # == runs in C; only items with numbers need the type-exact walk as well.
            if not (old == new and (self.plain[index] or same_json(old, new))):
                return index
        return min(len(self.items), len(items))


# Python objects of parsed JSON take more memory than their text: about 70 bytes a value
# (an object, array, string or number) over the text itself (measured with tracemalloc on
# bodies of small items and of long texts).
BYTES_PER_VALUE = 72


def parsed_size(text_bytes: int, values: int) -> int:
    """The memory a parsed JSON body of ``text_bytes`` holding ``values`` values takes, roughly."""
    return text_bytes + BYTES_PER_VALUE * values


class DigestMemo:
    """The item digests of recent full-history requests, reused for the items a new request
    repeats exactly. Such a client resends its whole history every turn; comparing it with
    the previous request is many times cheaper than digesting it again, and for long
    histories that digest was the largest part of the turn's own cost.

    Keyed by a scope (owner, upstream, fields fingerprint); at most ``per_scope`` requests a
    scope and ``max_bytes`` of parsed requests (their memory, see ``parsed_size``) in all,
    least recently used dropped first. Only requests the upstream accepted are remembered."""

    def __init__(self, *, max_bytes: int = 32 * 1024 * 1024, per_scope: int = 4) -> None:
        self.max_bytes = max_bytes
        self.per_scope = per_scope
        self.bytes = 0
        self._scopes: OrderedDict[Hashable, list[Digested]] = OrderedDict()

    def digests(self, scope: Hashable, items: Sequence[Any]) -> Digested:
        """``item_digests(items)``, reusing what a remembered request of ``scope`` shares with
        them; nothing is remembered (see ``remember``)."""
        best: Digested | None = None
        shared = 0
        for entry in self._scopes.get(scope, []):
            if len(entry.items) > shared:
                length = entry.shared_prefix(items)
                if length > shared:
                    best, shared = entry, length
        rest = items[shared:]
        digests = item_digests(rest)
        plain = [not _has_numbers(item) for item in rest]
        if best is not None:
            digests = best.digests[:shared] + digests
            plain = best.plain[:shared] + plain
        return Digested(items, digests, plain)

    def remember(self, scope: Hashable, digested: Digested, size: int) -> None:
        """Keep ``digested`` for the next request of ``scope``; ``size`` is its memory."""
        if size > self.max_bytes // 4:
            return  # one huge request would push out everything else
        digested.size = size
        remembered = self._scopes.pop(scope, [])
        remembered.insert(0, digested)
        self.bytes += size
        for dropped in remembered[self.per_scope :]:
            self.bytes -= dropped.size
        self._scopes[scope] = remembered[: self.per_scope]
        while self.bytes > self.max_bytes:
            _scope, oldest = self._scopes.popitem(last=False)
            self.bytes -= sum(e.size for e in oldest)

    def item_digests(self, scope: Hashable, items: Sequence[Any], size: int) -> list[str]:
        """``digests`` and ``remember`` in one (a request already accepted)."""
        digested = self.digests(scope, items)
        self.remember(scope, digested, size)
        return digested.digests


def fields_fingerprint(body: dict[str, Any]) -> str:
    """A digest of every request field except the input (and transport-only fields)."""
    fields = {k: v for k, v in body.items() if k not in _NOT_FINGERPRINTED and v is not None}
    return _digest(_canonical(fields, top_item=False))


def prefix_digests(digests: list[str]) -> list[str]:
    """``result[k]`` identifies the first ``k`` items (``result[0]`` the empty prefix)."""
    running = hashlib.sha256()
    result = [running.hexdigest()[:32]]
    for digest in digests:
        running.update(digest.encode())
        result.append(running.copy().hexdigest()[:32])
    return result


def chain_key(fingerprint: str, digests: list[str]) -> tuple[str, int, str]:
    """The index key of a chain whose next request must start with these items."""
    # The last of prefix_digests(digests), without hashing every shorter prefix on the way.
    return fingerprint, len(digests), hashlib.sha256("".join(digests).encode()).hexdigest()[:32]


def candidate_keys(fingerprint: str, digests: list[str]) -> list[tuple[str, int, str]]:
    """Keys a request with these input items could continue, longest prefix first. The last
    item must stay new (a chained request sends at least one item)."""
    prefixes = prefix_digests(digests)
    return [(fingerprint, k, prefixes[k]) for k in range(len(digests) - 1, 0, -1)]
