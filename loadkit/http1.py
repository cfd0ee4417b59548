"""HTTP/1.1 on the client side, pure: a request's head as bytes, and a response parsed from
the bytes as they arrive (status line, headers, then the body by Content-Length, chunked
transfer coding or the connection's end), its body handed on in the pieces it came in.

No sockets and no clocks: the asyncio engine's own client (``engine/http1_transport.py``)
feeds it what each read returned. Lenient where clients are (a bare ``\\n`` ends a line of
the head, trailers are skipped), strict where a load tool must be: a body that ends before
its framing says, or framing that cannot be read, is an error and never a shorter answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from multidict import CIMultiDict

__all__ = [
    "BadBody",
    "BadHead",
    "ProtocolError",
    "ResponseParser",
    "Truncated",
    "request_head",
]

MAX_HEAD = 64 * 1024  # status line and headers; aiohttp allows 8 KiB per line
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, or one trailer line
MAX_HEADERS = 1000  # lines of a head

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 token)

# Defaults a request gets unless its own headers name them (what aiohttp sends, minus its
# User-Agent, with the body never compressed: bytes are timed as they arrive).
_DEFAULTS = (("accept", "Accept: */*\r\n"), ("accept-encoding", "Accept-Encoding: identity\r\n"))
_HEX = frozenset(b"0123456789abcdefABCDEF")


class ProtocolError(Exception):
    """What arrived is not an HTTP/1.1 response; the message names how, never quoting it."""


class BadHead(ProtocolError):
    """The status line or a header cannot be read."""


class BadBody(ProtocolError):
    """The body's framing cannot be read (a chunk size, a chunk's end, a length)."""


class Truncated(ProtocolError):
    """The connection ended before the response did."""


def request_head(
    method: str, target: str, host: str, headers: Mapping[str, str], length: int | None
) -> bytes:
    """A request's head: request line, ``Host``, the caller's headers (which win over the
    defaults of the same name), ``Content-Length`` when there is a body, and the blank
    line. A line break in a name or value would smuggle a header of its own: refused."""
    names = {k.lower() for k in headers}
    parts = [f"{method} {target} HTTP/1.1\r\n"]
    if "host" not in names:  # else the caller's own (a virtual host behind an address)
        parts.append(f"Host: {host}\r\n")
    parts.extend(line for name, line in _DEFAULTS if name not in names)
    parts.extend(f"{k}: {v}\r\n" for k, v in headers.items())
    if length is not None:
        parts.append(f"Content-Length: {length}\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    lines = len(parts)  # one line each
    if text.count("\n") != lines or text.count("\r") != lines:
        raise ValueError("a request header's name or value holds a line break")
    return text.encode("utf-8")


# Body framing.
_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3
# Chunked decoding states.
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3


class ResponseParser:
    """One response on a connection. ``feed`` each read's bytes; the head's fields are set
    once it is complete (``status`` is None until then), body pieces are appended to
    ``body`` as they are decoded, and ``done`` turns True when the response has ended.
    ``eof`` says the connection ended. Errors are :class:`ProtocolError` subclasses; after
    one the parser must not be fed again. ``keep_alive`` says, once ``done``, whether the
    connection may carry another request."""

    __slots__ = (
        "status",
        "headers",
        "keep_alive",
        "body",
        "done",
        "_no_body",
        "_buf",
        "_scan",
        "_framing",
        "_remaining",
        "_state",
    )

    def __init__(self, head_request: bool = False) -> None:
        self.status: int | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.keep_alive = False
        self.body: list[bytes] = []
        self.done = False
        self._no_body = head_request
        self._buf = b""  # unparsed bytes: the head so far, or a partial chunk line
        self._scan = 0  # where in _buf the search for the head's end resumes
        self._framing = _NONE
        self._remaining = 0
        self._state = _SIZE

    def feed(self, data: bytes) -> None:
        if self.status is None:
            data = self._head(data)
            if self.status is None or not data:
                return
        if self.done:
            if data:  # bytes beyond the response: this connection cannot be trusted again
                self.keep_alive = False
            return
        framing = self._framing
        if framing == _CHUNKED:
            self._chunked(data)
        elif framing == _LENGTH:
            r = self._remaining
            n = len(data)
            if n < r:
                self.body.append(data)
                self._remaining = r - n
            else:
                self.body.append(data if n == r else data[:r])
                self._remaining = 0
                self.done = True
                if n > r:
                    self.keep_alive = False
        else:  # _CLOSE: everything until the connection ends
            self.body.append(data)

    def eof(self) -> None:
        """The peer ended the connection: ends a body read to the connection's end, and
        raises :class:`Truncated` if the response was not complete."""
        self.keep_alive = False
        if self.done:
            return
        if self.status is not None and self._framing == _CLOSE:
            self.done = True
            return
        raise Truncated("the connection ended before the response's end")

    # -- the head ---------------------------------------------------------------------

    def _head(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        while True:
            # The head ends at the first line break followed by an empty line, CRLF or bare
            # LF alike (as lenient clients read it), wherever the reads split the bytes.
            scan = self._scan
            lf = buf.find(b"\n\n", scan)
            crlf = buf.find(b"\n\r\n", scan)
            if lf < 0 and crlf < 0:
                if len(buf) > MAX_HEAD:
                    raise BadHead(f"the response's head is over {MAX_HEAD} bytes")
                self._buf = buf
                self._scan = max(0, len(buf) - 2)  # a trickled head is not rescanned
                return b""
            if crlf < 0 or 0 <= lf < crlf:
                end, sep = lf, 2
            else:
                end, sep = crlf, 3
            if end > MAX_HEAD:
                raise BadHead(f"the response's head is over {MAX_HEAD} bytes")
            status = self._parse_head(buf[:end])
            buf = buf[end + sep :]
            self._scan = 0
            if 100 <= status < 200 and status != 101:
                self.headers = CIMultiDict()  # an interim answer (100 Continue): skip it
                continue
            self._buf = b""
            self.status = status
            self._frame(status)
            return buf

    def _parse_head(self, head: bytes) -> int:
        lines = head.decode("utf-8", "surrogateescape").split("\n")
        if len(lines) > MAX_HEADERS:
            raise BadHead(f"the response has over {MAX_HEADERS} header lines")
        line = lines[0].rstrip("\r")
        if not line.startswith("HTTP/1.") or len(line) < 12 or line[8] != " ":
            raise BadHead("the status line is not HTTP/1.x")
        code = line[9:12]
        if (
            not (code.isascii() and code.isdigit())
            or code[0] == "0"
            or (len(line) > 12 and line[12] != " ")
        ):
            raise BadHead("the status code is not three digits from 100")
        pairs: list[tuple[str, str]] = []
        for raw in lines[1:]:
            text = raw.rstrip("\r")
            if text[:1] in (" ", "\t"):  # obsolete line folding: continues the last value
                if not pairs:
                    raise BadHead("a header line starts with white space")
                name, value = pairs[-1]
                pairs[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if not colon or not _TOKEN.fullmatch(name):
                raise BadHead("a header line is not 'name: value'")
            pairs.append((name, value.strip(" \t")))
        headers = self.headers = CIMultiDict(pairs)
        minor = line[7]
        connection = headers.get("connection", "").lower()
        if minor == "1":
            self.keep_alive = "close" not in connection
        else:
            self.keep_alive = "keep-alive" in connection
        return int(code)

    def _frame(self, status: int) -> None:
        h = self.headers
        if self._no_body or status in (204, 304) or status < 200:
            self._framing = _NONE
            self.done = True
            if status == 101:
                self.keep_alive = False
            return
        te = h.getall("transfer-encoding", None)
        if te is not None:
            last = ",".join(te).rsplit(",", 1)[-1].strip().lower()
            if last != "chunked":
                # A coding other than chunked last: the body runs to the connection's end.
                self._framing = _CLOSE
                self.keep_alive = False
                return
            self._framing = _CHUNKED
            if "content-length" in h:
                # Both framings: read as chunked (RFC 9112 6.3), but the connection is
                # not trusted with another request.
                self.keep_alive = False
            return
        cl = h.getall("content-length", None)
        if cl is not None:
            values = {v.strip() for c in cl for v in c.split(",")}
            if len(values) != 1:
                raise BadHead("conflicting Content-Length values")
            (value,) = values
            if not value.isdigit() or not value.isascii():
                raise BadHead("Content-Length is not a number")
            n = int(value)
            self._framing = _LENGTH
            self._remaining = n
            if n == 0:
                self.done = True
            return
        self._framing = _CLOSE
        self.keep_alive = False

    # -- chunked transfer coding ------------------------------------------------------

    def _chunked(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        body = self.body
        pos = 0
        n = len(data)
        state = self._state
        while pos < n:
            if state == _DATA:
                r = self._remaining
                end = pos + r
                if end <= n:
                    body.append(data[pos:end] if pos or end != n else data)
                    pos = end
                    state = _DATA_END
                else:
                    body.append(data[pos:] if pos else data)
                    self._remaining = r - (n - pos)
                    pos = n
            elif state == _SIZE:
                eol = data.find(b"\n", pos)
                if eol < 0:
                    if n - pos > MAX_CHUNK_LINE:
                        raise BadBody("a chunk-size line is too long")
                    self._buf = data[pos:]
                    break
                line = data[pos:eol]
                if line.endswith(b"\r"):
                    line = line[:-1]
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or len(size.lstrip(b"0")) > 16 or not _HEX.issuperset(size):
                    raise BadBody("a chunk size is not a hexadecimal number")
                pos = eol + 1
                r = int(size, 16)
                if r:
                    self._remaining = r
                    state = _DATA
                else:
                    state = _TRAILER
            elif state == _DATA_END:
                if data[pos : pos + 2] == b"\r\n":
                    pos += 2
                elif data[pos : pos + 1] == b"\n":
                    pos += 1
                elif n - pos < 2 and data[pos:] == b"\r":
                    self._buf = b"\r"
                    break
                else:
                    raise BadBody("a chunk does not end where its size says")
                state = _SIZE
            else:  # _TRAILER: trailer lines, then the blank line that ends the body
                eol = data.find(b"\n", pos)
                if eol < 0:
                    if n - pos > MAX_CHUNK_LINE:
                        raise BadBody("a trailer line is too long")
                    self._buf = data[pos:]
                    break
                blank = eol == pos or (eol == pos + 1 and data[pos] == 13)
                pos = eol + 1
                if blank:
                    self.done = True
                    if pos < n:
                        self.keep_alive = False
                    break
        self._state = state
