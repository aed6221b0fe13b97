"""Who a socket belongs to: an owner key derived from everything its upgrade carried.

A socket serves a request only if that request would have opened it with the same upgrade: the
same forwarded headers (credentials, project, organization, session ids, cookies and any header
the bridge does not know: see ``protocol.headers.identity_headers`` for the few per-request
ones left out) and the same way out (upstream proxy with its credentials, dialled address).
The key is a keyed hash (HMAC with a per-process secret), so the bridge can tell owners apart
and keep them apart without keeping a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from responses_bridge.protocol.headers import identity_headers


class Owners:
    """Turns a request's upgrade into an owner key; one per registry, keyed afresh per process."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def owner_of(self, upgrade_headers: Iterable[tuple[str, str]], *, route: str = "") -> str:
        """A keyed hash of the headers a request sends on the upgrade (see the module
        docstring) and of ``route``, how the socket reaches the upstream."""
        digest = hmac.new(self._key, digestmod=hashlib.sha256)
        for name, value in identity_headers(upgrade_headers):
            # Length-prefixed: no choice of names and values can make two sets hash alike.
            for part in (name, value):
                data = part.encode("utf-8", errors="surrogatepass")
                digest.update(b"%d:" % len(data) + data)
        data = route.encode("utf-8", errors="surrogatepass")
        digest.update(b"route %d:" % len(data) + data)
        return digest.hexdigest()[:24]
