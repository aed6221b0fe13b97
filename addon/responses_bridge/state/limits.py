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
    max_sessions_per_owner: int | None = None  # default: all but an eighth of max_sessions
    lanes_per_socket: int = 16  # responses one shared socket runs at once (the upstream's limit)

    @property
    def owner_share(self) -> int:
        """Most sockets one owner may hold at once. By default an eighth of the capacity (none
        below 8 sockets) is left to other owners: a single user still gets nearly all of it."""
        if self.max_sessions_per_owner is not None:
            return min(self.max_sessions_per_owner, self.max_sessions)
        return max(1, self.max_sessions - self.max_sessions // 8)

    @property
    def chain_capacity(self) -> int:
        return self.max_chains if self.max_chains is not None else 8 * self.max_sessions
