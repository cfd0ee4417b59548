"""Incremental Server-Sent Events decoder: bytes split anywhere in, events out.

Follows the WHATWG event-stream rules that matter for OpenAI-style streams: LF, CRLF and
CR line endings; ``data:`` lines joined with newlines; comment lines (``:``) ignored;
``event:`` and ``id:`` fields; an empty line dispatches the event. No I/O, no clock.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    data: str
    event: str | None = None
    id: str | None = None


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the events each feed completes."""

    __slots__ = ("_buf", "_pending_cr", "_data", "_event", "_id", "_has_data", "comments")

    def __init__(self) -> None:
        self._buf = b""
        self._pending_cr = False  # last feed ended in CR: a leading LF now belongs to it
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._has_data = False
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._pending_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        if b"\n" not in buf:
            self._buf = buf
            return []
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[SSEEvent] = []
        for raw in lines:
            if not raw:
                if self._has_data:
                    data = self._data
                    events.append(
                        SSEEvent(
                            data[0] if len(data) == 1 else "\n".join(data), self._event, self._id
                        )
                    )
                    self._data = []
                    self._has_data = False
                self._event = None
            elif raw[:6] == b"data: ":  # the common case, without the general parse
                self._data.append(raw[6:].decode("utf-8", "replace"))
                self._has_data = True
            else:
                self._line(raw)
        return events

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            self.comments += 1
            return
        field, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        # "retry" and unknown fields are ignored, as the spec says.

    @property
    def pending(self) -> bool:
        """Bytes or data lines not yet dispatched: at end of stream, a truncated event."""
        return bool(self._buf) or self._has_data
