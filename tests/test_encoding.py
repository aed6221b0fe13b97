"""``bodies.decode_body``: request bodies in a content coding (Codex sends zstd) are decoded,
bounded by the body limit, and bad ones get a clear 4xx."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from responses_bridge.protocol.encoding import UnsupportedContentEncoding, decode_body
from responses_bridge.protocol.errors import BodyTooLarge, InvalidRequest

BODY = b'{"model": "m", "input": "' + b"hello " * 500 + b'", "stream": true}'
LIMIT = 1024 * 1024


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "zstd": lambda data: zstandard.ZstdCompressor(level=3).compress(data),  # as Codex does
    "gzip": gzip.compress,
    "deflate": zlib.compress,
}


@pytest.mark.parametrize("header", [None, "", "identity", " Identity "])
def test_no_coding_is_the_body_itself(header: str | None) -> None:
    assert decode_body(BODY, header, LIMIT) is BODY


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_each_coding_round_trips(coding: str) -> None:
    assert decode_body(ENCODERS[coding](BODY), coding, LIMIT) == BODY
    assert decode_body(ENCODERS[coding](BODY), coding.upper(), LIMIT) == BODY


def test_other_spellings() -> None:
    assert decode_body(gzip.compress(BODY), "x-gzip", LIMIT) == BODY
    assert decode_body(raw_deflate(BODY), "deflate", LIMIT) == BODY  # no zlib wrapper


def test_several_codings_are_undone_last_first() -> None:
    twice = zstandard.ZstdCompressor().compress(gzip.compress(BODY))
    assert decode_body(twice, "gzip, zstd", LIMIT) == BODY


def test_several_gzip_members_and_zstd_frames() -> None:
    half = len(BODY) // 2
    members = gzip.compress(BODY[:half]) + gzip.compress(BODY[half:])
    assert decode_body(members, "gzip", LIMIT) == BODY
    compressor = zstandard.ZstdCompressor()
    frames = compressor.compress(BODY[:half]) + compressor.compress(BODY[half:])
    assert decode_body(frames, "zstd", LIMIT) == BODY


@pytest.mark.parametrize("header", ["br", "compress", "zstd, snappy", "exotic"])
def test_an_unknown_coding_is_415(header: str) -> None:
    with pytest.raises(UnsupportedContentEncoding) as caught:
        decode_body(BODY, header, LIMIT)
    assert caught.value.status == 415
    assert caught.value.code == "unsupported_content_encoding"
    assert "zstd, gzip or deflate" in caught.value.message


@pytest.mark.parametrize("coding", sorted(ENCODERS))
@pytest.mark.parametrize("damage", ["garbage", "truncated", "trailing"])
def test_bad_data_is_400(coding: str, damage: str) -> None:
    encoded = ENCODERS[coding](BODY)
    if damage == "garbage":
        data = b"\x00this is not compressed at all" * 3
    elif damage == "truncated":
        data = encoded[: len(encoded) // 2]
    else:
        data = encoded + b"\x01\x02 junk after the end"
    if coding == "zstd" and damage == "truncated":
        # zstd gives back the prefix it could decode; the JSON parser then rejects it.
        assert BODY.startswith(decode_body(data, coding, LIMIT))
        assert len(decode_body(data, coding, LIMIT)) < len(BODY)
        return
    with pytest.raises(InvalidRequest) as caught:
        decode_body(data, coding, LIMIT)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_body_encoding"
    assert coding in caught.value.message


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_a_decompression_bomb_stops_at_the_limit(coding: str) -> None:
    bomb = ENCODERS[coding](b"\0" * (64 * 1024 * 1024))
    assert len(bomb) < 200 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge) as caught:
            decode_body(bomb, coding, LIMIT)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413
    assert f"more than {LIMIT} bytes" in caught.value.message
    assert peak < 20 * LIMIT  # never the whole 64 MiB


def test_exactly_at_the_limit_is_accepted() -> None:
    assert decode_body(zlib.compress(BODY), "deflate", len(BODY)) == BODY
    with pytest.raises(BodyTooLarge):
        decode_body(zlib.compress(BODY), "deflate", len(BODY) - 1)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=20_000), coding=st.sampled_from(sorted(ENCODERS)))
def test_any_bytes_round_trip(data: bytes, coding: str) -> None:
    assert decode_body(ENCODERS[coding](data), coding, LIMIT) == data
