"""The messages between ``loadkit run`` and its asyncio worker processes: one JSON object
per line over a pair of pipes, never argv nor the environment (the first message carries
the keys). Parent to worker: ``job``, then ``go`` (the run's shared t=0) or ``abort``,
then at any time ``interrupt`` (a signal reached the parent; a second one cuts the drain)
or ``stop`` (the run ends for another reason, e.g. a worker died). Worker to parent:
``ready``, ``progress`` (counters, and its stop reason once it has one) and ``result``.
A closed control pipe tells a worker its parent is gone."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

JOB = "job"
GO = "go"
ABORT = "abort"
INTERRUPT = "interrupt"
STOP = "stop"
READY = "ready"
PROGRESS = "progress"
RESULT = "result"


def encode(kind: str, **fields: Any) -> bytes:
    return json.dumps({"kind": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def send(fd: int, kind: str, **fields: Any) -> bool:
    """Write one message on a blocking pipe; False if the other end is gone."""
    data = encode(kind, **fields)
    try:
        while data:
            data = data[os.write(fd, data) :]
    except (BrokenPipeError, OSError):
        return False
    return True


class LineReader:
    """Whole messages out of a pipe's bytes as they arrive (a message may span reads)."""

    def __init__(self) -> None:
        self._buf = b""
        # Messages read with the one ``read_message`` asked for, to be handled next.
        self.backlog: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        out = []
        for line in lines:
            if line.strip():
                msg = json.loads(line)
                if isinstance(msg, dict):
                    out.append(msg)
        return out


def read_message(fd: int, reader: LineReader) -> dict[str, Any] | None:
    """The next message on a blocking pipe (any that came with it go to
    ``reader.backlog``); None at its end."""
    while not reader.backlog:
        data = os.read(fd, 65536)
        if not data:
            return None
        reader.backlog += reader.feed(data)
    return reader.backlog.pop(0)


@dataclass
class Counts:
    """A worker's running counters, summed over workers for the progress line."""

    sent: int = 0
    done: int = 0
    in_flight: int = 0
    ok: int = 0
    limited: int = 0
    other: int = 0

    def add(self, other: Counts) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class WorkerResult:
    """A worker's final report (its ``EngineResult`` as the parent needs it)."""

    records: int = 0
    sent: int = 0
    not_sent: int = 0
    in_flight: int = 0
    interrupted: bool = False
    drain_cut: bool = False
    stop_reason: str = ""
    engine_errors: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerResult:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def counts_from(d: dict[str, Any]) -> Counts:
    known = Counts.__dataclass_fields__
    return Counts(**{k: int(v) for k, v in d.items() if k in known})
