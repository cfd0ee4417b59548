"""Incremental decoding of a compressed response body, for servers that compress although
loadkit asks for ``Accept-Encoding: identity``: ``gzip`` / ``x-gzip`` and ``deflate``
(zlib-wrapped as RFC 9110 says, or raw as some servers send it). Output comes in bounded
pieces, so a small compressed body can never expand into one huge buffer. Pure."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

__all__ = ["BodyDecoder", "DecodeError", "UnsupportedEncoding", "body_decoder"]

# Decompressed bytes handed out per step: large enough to cost nothing per byte, small
# enough that a zip bomb never sits in memory at once.
STEP = 256 * 1024


class UnsupportedEncoding(ValueError):
    """A Content-Encoding loadkit cannot decode (br, zstd, compress, a chain, …)."""


class DecodeError(ValueError):
    """The body is not valid data of its Content-Encoding."""


def body_decoder(content_encoding: str | None) -> BodyDecoder | None:
    """The decoder for a ``Content-Encoding`` header value; None for identity (absent,
    empty or ``identity``). Raises UnsupportedEncoding naming anything else."""
    if not content_encoding:
        return None
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return BodyDecoder(codings[0])
    raise UnsupportedEncoding(f"Content-Encoding {content_encoding[:40]!r}")


class BodyDecoder:
    """Feed compressed bytes as they arrive; iterate the decompressed pieces."""

    __slots__ = ("coding", "_z", "_head")

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._z: zlib._Decompress | None = None
        self._head = b""  # deflate: the first bytes, until the zlib header can be told
        if coding != "deflate":
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper only

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decompressed pieces of at most STEP bytes (iterate to the end: the input is
        consumed as the pieces are taken). Raises DecodeError."""
        z = self._z
        if z is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._head = b""
            z = self._z = zlib.decompressobj(_deflate_wbits(data))
        if z.eof:  # bytes after the end of the compressed stream are not body
            return
        try:
            while True:
                out = z.decompress(data, STEP)
                if out:
                    yield out
                if z.eof:
                    return
                data = z.unconsumed_tail
                # A full step may leave output inside zlib even with no input left.
                if not data and len(out) < STEP:
                    return
        except zlib.error as exc:
            raise DecodeError(f"{self.coding} body: {exc}") from None

    def flush(self) -> Iterator[bytes]:
        """At the end of the body: what the decompressor still holds. Raises DecodeError."""
        if self._z is None:
            if self._head:  # one byte of deflate can hold nothing
                raise DecodeError(f"{self.coding} body: truncated")
            return
        try:
            out = self._z.flush()
        except zlib.error as exc:
            raise DecodeError(f"{self.coding} body: {exc}") from None
        if out:
            yield out

    @property
    def complete(self) -> bool:
        """The compressed stream reached its end marker (a cut body has not)."""
        return self._z is not None and self._z.eof


def _deflate_wbits(head: bytes) -> int:
    # A zlib header: compression method 8, and the two bytes a multiple of 31 (RFC 1950).
    cmf, flg = head[0], head[1]
    if cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0:
        return zlib.MAX_WBITS
    return -zlib.MAX_WBITS  # raw deflate
