"""Who a socket belongs to: an owner key derived from a request's credentials.

The key is a keyed hash (HMAC with a per-process secret), so the bridge can tell owners apart
and keep them apart without ever keeping a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from responses_bridge.protocol.headers import IDENTITY_HEADERS


class Owners:
    """Turns request headers into owner keys; one per registry, keyed afresh per process."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def owner_of(self, headers: Iterable[tuple[str, str]]) -> str:
        """A keyed hash of the request's credential headers (the first of each name)."""
        wanted = dict.fromkeys(IDENTITY_HEADERS, "")
        for name, value in headers:
            lower = name.lower()
            if lower in wanted and not wanted[lower]:
                wanted[lower] = value
        material = "\0".join(wanted[k] for k in sorted(wanted)).encode()
        return hmac.new(self._key, material, hashlib.sha256).hexdigest()[:24]
