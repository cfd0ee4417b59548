"""Incremental Server-Sent Events decoder: bytes split anywhere in, events out.

Follows the WHATWG event-stream rules that matter for OpenAI-style streams: LF, CRLF and
CR line endings; ``data:`` lines joined with newlines; comment lines (``:``) ignored;
``event:`` and ``id:`` fields; an empty line dispatches the event. No I/O, no clock.
``feed`` returns events with their data decoded; ``feed_data`` only their data, as bytes
(what a JSON parser reads), and splits a read of whole one-line events without a line loop.

A line is at most ``max_line`` bytes (1 MiB by default; the largest OpenAI chunk is a few
KB). A longer line is never buffered: its bytes are dropped as they arrive, the event it
belongs to is dropped, ``long_lines`` counts it, and decoding resumes at the next event.
Buffering is linear in the bytes received however a line is split.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_LINE = 1024 * 1024


class SSEEvent(NamedTuple):
    data: str
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events each feed completes."""

    __slots__ = (
        "_parts",
        "_plen",
        "_pending_cr",
        "_odd",
        "_discard",
        "_skip",
        "_data",
        "_event",
        "_id",
        "_has_data",
        "comments",
        "long_lines",
        "max_line",
    )

    def __init__(self, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError(f"max_line: expected >= 1, got {max_line}")
        self.max_line = max_line
        self._parts: list[bytes] = []  # the unfinished line, in pieces (joined once)
        self._plen = 0
        self._pending_cr = False  # last feed ended in CR: a leading LF now belongs to it
        self._discard = False  # inside an over-long line: drop bytes up to its end
        self._skip = False  # the current event had an over-long line: drop it
        self._odd = False  # _discard or _skip: feed takes the general path
        self._data: list[bytes] = []  # the current event's data lines, undecoded
        self._event: str | None = None
        self._id: str | None = None
        self._has_data = False
        self.comments = 0
        self.long_lines = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events this chunk completes, their data decoded (invalid UTF-8 replaced)."""
        return [
            SSEEvent(data.decode("utf-8", "replace"), event, id_)
            for data, event, id_ in self._events(chunk)
        ]

    def feed_data(self, chunk: bytes) -> list[bytes]:
        """The data of each event this chunk completes, as the bytes received (lines joined
        with LF, not decoded): what a consumer that parses JSON from bytes needs, without
        the event and id fields. The same events as :meth:`feed`, cheaper: a chunk of whole
        single-line ``data:`` events, the common case, is split once and never decoded."""
        if (
            chunk[-2:] == b"\n\n"
            and not self._parts
            and not self._has_data
            and not self._odd
            and not self._pending_cr
            and len(chunk) <= self.max_line
            and b"\r" not in chunk
        ):
            if chunk[:6] == b"data: ":
                # Split at each event's start; when every event is one ``data:`` line, the
                # chunk holds exactly two LFs per event (its line's end and the blank line),
                # and the split is the answer: no Python step per event.
                datas = chunk[6:-2].split(b"\n\ndata: ")
                if chunk.count(b"\n") == 2 * len(datas):
                    self._event = None
                    return datas
            out: list[bytes] = []
            for ev in chunk[:-2].split(b"\n\n"):
                if ev[:6] == b"data: " and b"\n" not in ev:
                    out.append(ev[6:])
                    self._event = None
                else:  # comments, other fields, several lines: the general path
                    out += [e[0] for e in self._events(ev + b"\n\n")]
            return out
        return [e[0] for e in self._events(chunk)]

    def _events(self, chunk: bytes) -> list[tuple[bytes, str | None, str | None]]:
        """(data, event, id) of each event the chunk completes."""
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            self._pending_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._odd:  # inside an over-long line or its event
            return self._feed_odd(chunk)
        if b"\n" not in chunk:
            plen = self._plen + len(chunk)
            if plen > self.max_line:
                self._too_long(discard=True)
            else:
                self._parts.append(chunk)
                self._plen = plen
            return []
        if self._parts:
            self._parts.append(chunk)
            buf = b"".join(self._parts)
            self._parts = []
            self._plen = 0
        else:
            buf = chunk
        if len(buf) > self.max_line:  # only then can a line be over the bound
            return self._feed_odd(buf)
        lines = buf.split(b"\n")
        tail = lines.pop()
        if tail:
            self._parts.append(tail)
            self._plen = len(tail)
        events: list[tuple[bytes, str | None, str | None]] = []
        for raw in lines:
            if not raw:
                if self._has_data:
                    data = self._data
                    events.append(
                        (data[0] if len(data) == 1 else b"\n".join(data), self._event, self._id)
                    )
                    self._data = []
                    self._has_data = False
                self._event = None
            elif raw[:6] == b"data: ":  # the common case, without the general parse
                self._data.append(raw[6:])
                self._has_data = True
            else:
                self._line(raw)
        return events

    def _too_long(self, discard: bool) -> None:
        """A line over the bound: drop it (and, if ``discard``, its bytes still to come)
        and the event it belongs to."""
        self.long_lines += 1
        self._parts = []
        self._plen = 0
        self._data = []
        self._has_data = False
        self._skip = True
        self._discard = discard
        self._odd = True

    def _feed_odd(self, chunk: bytes) -> list[tuple[bytes, str | None, str | None]]:
        """The general path (LF line endings already): over-long lines, the rest of an
        over-long line being dropped, the rest of its event being dropped."""
        if self._discard:
            end = chunk.find(b"\n")
            if end < 0:
                return []
            self._discard = False
            chunk = chunk[end + 1 :]
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
            self._plen = 0
        lines = chunk.split(b"\n")
        tail = lines.pop()
        events: list[tuple[bytes, str | None, str | None]] = []
        limit = self.max_line
        for raw in lines:
            if len(raw) > limit:
                self._too_long(discard=False)
            elif not raw:
                if self._has_data and not self._skip:
                    events.append((b"\n".join(self._data), self._event, self._id))
                self._data = []
                self._has_data = False
                self._event = None
                self._skip = False
            elif not self._skip:
                self._line(raw)
        if len(tail) > limit:
            self._too_long(discard=True)
        elif tail:
            self._parts.append(tail)
            self._plen = len(tail)
        self._odd = self._skip or self._discard
        return events

    def _line(self, raw: bytes) -> None:
        if raw[:1] == b":":
            self.comments += 1
            return
        field, sep, value = raw.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
            self._has_data = True
        elif field == b"event":
            self._event = value.decode("utf-8", "replace")
        elif field == b"id":
            self._id = value.decode("utf-8", "replace")
        # "retry" and unknown fields are ignored, as the spec says.

    @property
    def pending(self) -> bool:
        """Bytes or data lines not yet dispatched: at end of stream, a truncated event."""
        return bool(self._parts) or self._discard or self._has_data
