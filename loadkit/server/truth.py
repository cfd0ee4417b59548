"""The ground-truth log: one JSON line per request, flushed per line so a crash loses at
most the request in progress. Times are raw ``time.perf_counter_ns()`` values
(CLOCK_MONOTONIC on Linux, shared by every process of the machine).

Each line carries ``"schema": "loadkit.truth/1"``. Lines written before the log was
versioned have no ``schema`` and the same fields: they read as version 1. A reader
refuses a schema it does not know, naming it; ``tests/server/golden/`` keeps a file of
each so old logs stay readable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

TRUTH_SCHEMA = "loadkit.truth/1"


@dataclass
class TruthRecord:
    request_id: str | None
    key: str | None  # the key's label, never the key
    method: str  # "" when the request could not be parsed
    path: str  # "" when the request could not be parsed
    endpoint: str  # chat | completions | models | model | admin | other
    stream: bool
    arrival_ns: int
    admitted_ns: int | None = None
    finish_ns: int | None = None
    status: int | None = None  # None: no response was sent (the client had gone)
    error_code: str | None = None
    # admitted | rate_limited | concurrency_limited | token_limited | daily_limited |
    # unauthenticated | unlimited
    decision: str = "unlimited"
    disconnect: str | None = None  # "server" | "client": who closed before the end
    tier: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # handed to the client's connection
    schema: str = TRUTH_SCHEMA
    # Token accounting at admission, for a tier with token, per-day or per-model limits
    # (written only then; lines without them read as before):
    input_tokens: int | None = None  # the prompt as the limiter counted it
    reserved_tokens: int | None = None  # output reserved: max_tokens x sequences
    charged: dict[str, int] | None = None  # admitted: units charged per rule (by its name)
    limit: str | None = None  # refused: the rule that refused (tokens, models.M.tokens, ...)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for optional in _OMITTED_WHEN_NONE:
            if d[optional] is None:
                del d[optional]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TruthRecord:
        check_schema(data)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known and k != "schema"})


_OMITTED_WHEN_NONE = ("disconnect", "input_tokens", "reserved_tokens", "charged", "limit")


def check_schema(data: dict[str, Any]) -> None:
    schema = data.get("schema", TRUTH_SCHEMA)  # unversioned lines are version 1
    if schema != TRUTH_SCHEMA:
        raise ValueError(f"unsupported truth schema {schema!r} (this loadkit reads {TRUTH_SCHEMA})")


class TruthWriter:
    """Appends records to a file (line-buffered, flushed per record)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f: IO[str] | None = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, rec: TruthRecord) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(rec.to_dict(), separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_truth(path: str | Path) -> list[dict[str, Any]]:
    """Every line of a truth file as a dict (``TruthRecord.from_dict`` for typed ones).
    A torn last line (a server killed mid-write) is skipped; any other unreadable line,
    or a schema this loadkit does not know, is an error naming the file and line."""
    out = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError:
            if i == len(lines):
                continue
            raise ValueError(f"{path}:{i}: not a JSON line") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}:{i}: not a JSON object")
        try:
            check_schema(d)
        except ValueError as e:
            raise ValueError(f"{path}:{i}: {e}") from None
        out.append(d)
    return out
