"""Which upstreams refuse lanes: remembered per upstream URL, so after one refusal every later
request to that upstream gets one conversation per socket at once, without trying again."""

from __future__ import annotations

from collections import OrderedDict

MAX_REMEMBERED = 1024  # upstream URLs come from clients: the memory is bounded


class LaneSupport:
    """The upstream URLs that refused a laned request, most recently seen last."""

    def __init__(self, max_entries: int = MAX_REMEMBERED) -> None:
        self._refused: OrderedDict[str, None] = OrderedDict()
        self._max = max_entries

    def allows(self, upstream: str) -> bool:
        """False once ``upstream`` has refused lanes."""
        if upstream in self._refused:
            self._refused.move_to_end(upstream)
            return False
        return True

    def refused(self, upstream: str) -> None:
        """``upstream`` refused a laned request."""
        self._refused[upstream] = None
        self._refused.move_to_end(upstream)
        while len(self._refused) > self._max:
            self._refused.popitem(last=False)

    def __len__(self) -> int:
        return len(self._refused)
