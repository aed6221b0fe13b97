"""Keeping mitmproxy's long-lived objects out of the cyclic garbage collector's full collections.

Once started, the process holds about 85,000 objects (modules, mitmproxy's and the addons'
state), and a full collection walks all of them with mitmproxy's one thread stopped: 57 ms each
under sequential full-history turns, 4 ms once they are frozen (docs/performance.md). Frozen
objects are never collected, so the freeze waits a few seconds after start (a reloaded
instance's closing tasks end first, so the old instance is collected, not frozen) and is done
again periodically, each time collecting everything first: an object frozen that has since
become garbage (another script's old module after a reload, a closed session) waits at most a
period.
"""

from __future__ import annotations

import asyncio
import gc
import logging

logger = logging.getLogger("responses_bridge")

FREEZE_DELAY = 5.0
REFREEZE_PERIOD = 600.0


def freeze_long_lived_objects() -> int:
    """Collect everything (frozen objects included), then move every object alive now to the
    permanent generation, which the cyclic garbage collector never scans; returns how many."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def freeze_forever() -> None:
    """Freeze after ``FREEZE_DELAY`` seconds, then every ``REFREEZE_PERIOD`` (a task)."""
    await asyncio.sleep(FREEZE_DELAY)
    frozen = freeze_long_lived_objects()
    logger.info(
        "responses-bridge: %d objects from start-up moved out of the garbage collector's full "
        "collections (gc.freeze), which no longer walk them with mitmproxy's thread stopped; "
        "collected and frozen again every %g s.",
        frozen,
        REFREEZE_PERIOD,
    )
    while True:
        await asyncio.sleep(REFREEZE_PERIOD)
        freeze_long_lived_objects()


def let_go() -> None:
    """Unfreeze (an unloaded bridge leaves nothing frozen)."""
    gc.unfreeze()
