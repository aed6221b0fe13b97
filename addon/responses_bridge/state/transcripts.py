"""What the upstream saw of each chain, so a chain whose socket is gone can continue on a fresh
socket with its full context ("rehydration").

Per completed response, a node holds the items that turn added and links to its parent, so a
chain of N turns costs O(N), and forks share their common past. Bounded by the number of chains
and by the bytes of every kept transcript together, least recently used first.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from responses_bridge.state.limits import Limits


def items_size(items: Iterable[dict[str, Any]]) -> int:
    """Approximate bytes of a list of items (their compact JSON)."""
    return sum(len(json.dumps(item, separators=(",", ":"))) for item in items)


@dataclass(eq=False)
class ChainNode:
    """One completed response and the part of the transcript it added."""

    response_id: str
    owner: str
    upstream: str
    parent: ChainNode | None
    segment: list[dict[str, Any]] | None  # None: the transcript was not kept (too large)
    total_bytes: int
    segment_bytes: int = 0  # what its own segment counts in ``Transcripts.bytes``
    held: bool = False  # counted there (see ``Transcripts._hold``)
    children: int = 0  # held nodes whose parent this is

    @property
    def kept(self) -> bool:
        """Whether the whole transcript is kept (``record`` keeps a segment only when its
        parent's is kept, so this node's segment says it for the chain)."""
        return self.segment is not None

    def transcript(self) -> list[dict[str, Any]] | None:
        """Every item the upstream has seen for this chain, oldest first; None if not kept."""
        segments: list[list[dict[str, Any]]] = []
        node: ChainNode | None = self
        while node is not None:
            if node.segment is None:
                return None
            segments.append(node.segment)
            node = node.parent
        return [item for segment in reversed(segments) for item in segment]


class Transcripts:
    """The chain nodes of recent responses, by response id, least recently used first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._chains: OrderedDict[str, ChainNode] = OrderedDict()
        # Bytes of transcript segments held: by a node in ``_chains`` or as an ancestor of one.
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._chains)

    def node(
        self, response_id: str, owner: str, upstream: str, *, use: bool = False
    ) -> ChainNode | None:
        """The node of a response, if this owner may see it; ``use`` marks it as recently
        used (a continuation is routed by it)."""
        node = self._chains.get(response_id)
        if node is None or (node.owner, node.upstream) != (owner, upstream):
            return None
        if use:
            self._chains.move_to_end(response_id)
        return node

    def peek(self, response_id: str) -> ChainNode | None:
        """The node of a response, for reporting only: no owner check, no use."""
        return self._chains.get(response_id)

    def record(
        self,
        response_id: str,
        owner: str,
        upstream: str,
        parent: ChainNode | None,
        items: list[dict[str, Any]],
        *,
        continues: bool = False,
    ) -> ChainNode | None:
        """Remember what a completed response added to its chain (if transcripts are kept).

        ``continues`` with no ``parent``: the response continues a chain whose start the bridge
        does not know, so its transcript is marked as not kept (never replayed incomplete).
        """
        if not self.limits.keep_transcripts:
            return None
        own_bytes = items_size(items)
        size = own_bytes + (parent.total_bytes if parent is not None else 0)
        kept = (
            parent.segment is not None if parent is not None else not continues
        ) and size <= min(self.limits.transcript_max_bytes, self.limits.transcripts_total_bytes)
        node = ChainNode(
            response_id,
            owner,
            upstream,
            parent if kept else None,
            items if kept else None,
            size,
            segment_bytes=own_bytes if kept else 0,
        )
        replaced = self._chains.pop(response_id, None)
        self._chains[response_id] = node
        self._hold(node)
        if replaced is not None:
            self._release(replaced)
        while self._chains and (
            len(self._chains) > self.limits.chain_capacity
            or self.bytes > self.limits.transcripts_total_bytes
        ):
            _id, evicted = self._chains.popitem(last=False)
            self._release(evicted)
        return node

    # A node is held (its segment counted in ``bytes``) while it is in ``_chains`` or an
    # ancestor of a held node: evicting a chain's older turns frees nothing while its later
    # turns still link to them.

    def _hold(self, node: ChainNode) -> None:
        current: ChainNode | None = node
        while current is not None and not current.held:
            current.held = True
            self.bytes += current.segment_bytes
            if current.parent is not None:
                current.parent.children += 1
            current = current.parent

    def _release(self, node: ChainNode) -> None:
        current: ChainNode | None = node
        while (
            current is not None
            and current.held
            and current.children == 0
            and self._chains.get(current.response_id) is not current
        ):
            current.held = False
            self.bytes -= current.segment_bytes
            if current.parent is not None:
                current.parent.children -= 1
            current = current.parent
