"""The bounds of the session state, from the addon's options: one value all parts read, so a
reconfigure reaches them at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """How many sockets and chains are kept, for how long, and how much transcript."""

    max_sessions: int = 64
    session_ttl: float = 600.0
    max_socket_age: float = 55 * 60.0
    transcript_max_bytes: int = 16 * 1024 * 1024
    transcripts_total_bytes: int = 256 * 1024 * 1024  # every kept transcript together
    keep_transcripts: bool = True
    warm_sockets: int = 1  # pre-opened sockets kept per owner and upstream for fresh requests
    max_chains: int | None = None  # default: 8 * max_sessions

    @property
    def chain_capacity(self) -> int:
        return self.max_chains if self.max_chains is not None else 8 * self.max_sessions
