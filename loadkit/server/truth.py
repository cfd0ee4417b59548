"""The ground-truth log: one JSON line per request, flushed per line so a crash loses at
most the request in progress. Times are raw ``time.perf_counter_ns()`` values
(CLOCK_MONOTONIC on Linux, shared by every process of the machine)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

TRUTH_SCHEMA = "loadkit.truth/1"


@dataclass
class TruthRecord:
    request_id: str | None
    key: str | None  # the key's label, never the key
    method: str
    path: str
    endpoint: str  # chat | completions | models | model | admin | other
    stream: bool
    arrival_ns: int
    admitted_ns: int | None = None
    finish_ns: int | None = None
    status: int | None = None
    error_code: str | None = None
    # admitted | rate_limited | concurrency_limited | unauthenticated | unlimited
    decision: str = "unlimited"
    disconnect: str | None = None  # "server" | "client" for a cut stream
    tier: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["disconnect"] is None:
            del d["disconnect"]
        return d


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
    """Every record of a truth file (a torn last line is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
