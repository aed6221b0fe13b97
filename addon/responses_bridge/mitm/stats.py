"""Counters for the ``responses_bridge.stats`` command and the shutdown log line, and the flow
comment mitmweb shows. Pure."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_ERROR_CODES = 64


def flow_comment(
    socket_state: str, events: int, first_event_ms: float | None, duration_s: float
) -> str:
    """``ws reused · 57 events · first event 180 ms · 2.4 s``."""
    parts = [f"ws {socket_state}", f"{events} events"]
    if first_event_ms is not None:
        parts.append(f"first event {first_event_ms:.0f} ms")
    parts.append(f"{duration_s:.1f} s")
    return " · ".join(parts)


@dataclass
class Stats:
    """Counters for the ``responses_bridge.stats`` command and the shutdown log line."""

    requests: int = 0
    streamed: int = 0
    json: int = 0
    new: int = 0
    reused: int = 0
    rehydrated: int = 0
    forked: int = 0
    chained: int = 0
    retried: int = 0
    bytes_relayed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def count(self, *, stream: bool | None, socket_state: str, error_code: str | None) -> None:
        self.requests += 1
        if stream is True:
            self.streamed += 1
        elif stream is False:
            self.json += 1
        if socket_state in ("new", "reused", "rehydrated", "forked", "chained"):
            setattr(self, socket_state, getattr(self, socket_state) + 1)
        if error_code:
            # Codes come from upstreams too: a bounded set, the rest counted together.
            error_code = error_code[:64]
            if error_code not in self.errors and len(self.errors) >= MAX_ERROR_CODES:
                error_code = "other"
            self.errors[error_code] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "streamed": self.streamed,
            "json": self.json,
            "new": self.new,
            "reused": self.reused,
            "rehydrated": self.rehydrated,
            "forked": self.forked,
            "chained": self.chained,
            "retried": self.retried,
            "bytes_relayed": self.bytes_relayed,
            "errors": dict(sorted(self.errors.items())),
        }
