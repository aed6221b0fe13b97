"""Unit tests for ``responses_bridge.mitm.gc_freeze``: what is frozen out of the cyclic garbage
collector, and when it is let go."""

from __future__ import annotations

import gc
import weakref

from responses_bridge.mitm import gc_freeze


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_long_lived_objects_are_frozen_after_a_collection() -> None:
    """What is alive leaves the cyclic collector's scans; garbage is collected first; what comes
    later is collected as before; and what was frozen and then became garbage goes at the next
    freeze."""
    kept = _Cycle()
    garbage = _Cycle()
    collected: list[bool] = []
    weakref.finalize(garbage, collected.append, True)
    del garbage
    try:
        frozen = gc_freeze.freeze_long_lived_objects()
        assert collected == [True]  # a cycle that was garbage is not frozen for good
        assert frozen == gc.get_freeze_count() > 0
        assert id(kept) not in {id(obj) for obj in gc.get_objects()}
        later = _Cycle()
        assert id(later) in {id(obj) for obj in gc.get_objects()}
        later_collected: list[bool] = []
        weakref.finalize(later, later_collected.append, True)
        del later
        gc.collect()
        assert later_collected == [True]
        kept_collected: list[bool] = []
        weakref.finalize(kept, kept_collected.append, True)
        del kept
        gc.collect()
        assert kept_collected == []  # frozen: a full collection does not see it
        gc_freeze.freeze_long_lived_objects()
        assert kept_collected == [True]  # the next freeze collects first
    finally:
        gc.unfreeze()
