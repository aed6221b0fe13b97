"""Request bodies sent in a content coding, decoded before they are parsed.

The Codex CLI zstd-compresses its requests to the ChatGPT backend (``Content-Encoding: zstd``);
other clients may gzip them. Decoding stops at the body limit, so a small compressed body cannot
expand without bound. (``br`` is not accepted: the brotli library mitmproxy 11 ships cannot bound
its output, and no Responses client sends it.) ``zstandard`` comes with mitmproxy.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import zstandard

from responses_bridge.protocol.errors import (
    BodyTooLarge,
    InvalidRequest,
    UnsupportedContentEncoding,
)

_OUT_CHUNK = 64 * 1024  # bytes of output per decoding step
_GZIP = 16 + zlib.MAX_WBITS  # zlib's wbits for a gzip wrapper


class _Corrupt(Exception):
    """The data is not valid in its coding."""


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``body`` with every coding in ``content_encoding`` undone (last applied first).

    Raises ``UnsupportedContentEncoding`` (415) for an unknown coding, ``BodyTooLarge`` (413)
    when the decoded body would exceed ``limit`` bytes, ``InvalidRequest`` (400) for data that is
    not valid in its coding.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise UnsupportedContentEncoding(
                f"The request body's Content-Encoding {coding!r} is not supported; send it "
                "uncompressed or as zstd, gzip or deflate."
            )
        decoded = bytearray()
        try:
            for chunk in decoder(body):
                decoded += chunk
                if len(decoded) > limit:
                    raise BodyTooLarge(
                        f"The request body decompresses ({coding}) to more than {limit} bytes "
                        "(responses_bridge_max_body_bytes)."
                    )
        except (_Corrupt, zlib.error, zstandard.ZstdError) as exc:
            raise InvalidRequest(
                f"The request body is not valid {coding} data ({exc}).",
                code="invalid_body_encoding",
            ) from exc
        body = bytes(decoded)
    return body


def _zlib(body: bytes, wbits: int) -> Iterator[bytes]:
    data = body
    while True:
        decoder = zlib.decompressobj(wbits=wbits)
        while not decoder.eof:
            chunk = decoder.decompress(data, _OUT_CHUNK)
            data = decoder.unconsumed_tail
            if not chunk and not data and not decoder.eof:
                raise _Corrupt("it ends before its end marker")
            yield chunk
        data = decoder.unused_data
        if not data:
            return
        if wbits != _GZIP:  # only gzip allows members one after another
            raise _Corrupt("data after its end marker")


def _gzip(body: bytes) -> Iterator[bytes]:
    return _zlib(body, _GZIP)


def _deflate(body: bytes) -> Iterator[bytes]:
    # HTTP's "deflate" is zlib-wrapped; some clients send a bare deflate stream.
    wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and int.from_bytes(body[:2], "big") % 31 == 0
    return _zlib(body, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)


def _zstd(body: bytes) -> Iterator[bytes]:
    # A body cut short decodes to a prefix without an error; its JSON then fails to parse.
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    while chunk := reader.read(_OUT_CHUNK):
        yield chunk


_DECODERS: dict[str, Callable[[bytes], Iterator[bytes]]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "zstd": _zstd,
}
