"""Compressed bodies: gzip and deflate (zlib-wrapped or raw) decode whatever the split, a
zip bomb comes out in bounded pieces, anything else is refused by name."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.content_coding import STEP, DecodeError, UnsupportedEncoding, body_decoder

RAW = b"".join(
    b'data: {"choices":[{"index":0,"delta":{"content":"w%d"}}]}\n\n' % i for i in range(500)
)
ENCODED = {
    "gzip": gzip.compress(RAW),
    "x-gzip": gzip.compress(RAW),
    "deflate": zlib.compress(RAW),  # RFC 9110: the zlib format
    "deflate-raw": zlib.compress(RAW)[2:-4],  # what some servers send as "deflate"
}


def decode(coding: str, parts: list[bytes]) -> bytes:
    d = body_decoder("deflate" if coding == "deflate-raw" else coding)
    assert d is not None
    out = [piece for p in parts for piece in d.feed(p)]
    out += list(d.flush())
    assert d.complete
    return b"".join(out)


@pytest.mark.parametrize("coding", list(ENCODED))
def test_whole_and_byte_by_byte(coding):
    data = ENCODED[coding]
    assert decode(coding, [data]) == RAW
    assert decode(coding, [data[i : i + 1] for i in range(len(data))]) == RAW


@settings(max_examples=100)
@given(st.sampled_from(list(ENCODED)), st.lists(st.integers(0, 5000), max_size=10))
def test_every_split(coding, cuts):
    data = ENCODED[coding]
    cuts = sorted(min(c, len(data)) for c in cuts)
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert decode(coding, parts) == RAW


def test_a_zip_bomb_comes_out_in_bounded_pieces():
    bomb = gzip.compress(b"\n" * (64 * 1024 * 1024))  # 64 MiB from ~64 KB
    d = body_decoder("gzip")
    assert d is not None
    sizes = [len(p) for p in d.feed(bomb)]
    assert max(sizes) <= STEP and sum(sizes) == 64 * 1024 * 1024


@pytest.mark.parametrize("value", [None, "", "identity", " Identity ", "identity, identity"])
def test_identity(value):
    assert body_decoder(value) is None


@pytest.mark.parametrize("value", ["br", "zstd", "compress", "gzip, br", "gzip, gzip", "snappy"])
def test_unsupported_is_named(value):
    with pytest.raises(UnsupportedEncoding, match="Content-Encoding"):
        body_decoder(value)


def test_corrupt_data_is_a_decode_error():
    d = body_decoder("gzip")
    assert d is not None
    with pytest.raises(DecodeError, match="gzip"):
        list(d.feed(b"\x1f\x8b\x08\x00garbage-not-deflate" * 10))


def test_a_cut_body_is_not_complete():
    d = body_decoder("gzip")
    assert d is not None
    out = b"".join(d.feed(ENCODED["gzip"][:200]))
    assert RAW.startswith(out) and not d.complete


def test_bytes_after_the_end_are_ignored():
    assert decode("gzip", [ENCODED["gzip"] + b"trailing junk"]) == RAW
