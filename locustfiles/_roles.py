"""Support for ``tier_users.py``: sharing a scenario's roles out across Locust processes
(each role claimed by exactly one process, keys kept together on one clock), worker
markers for the run metadata, and the TTFT table in Locust's web UI and CSV."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadkit.scenario import Key, LoadSpec, Scenario

CLAIMS = ".claims"


@dataclass(frozen=True)
class Role:
    index: int  # position in the plan: seeds the role's RNG like the asyncio engine
    key: Key
    load: LoadSpec
    kind: str  # "closed" (one user of a closed-loop phase) or "open" (a phase's scheduler)
    user: int = 0


def roles_of(pairs: list[tuple[Key, LoadSpec]]) -> list[Role]:
    out: list[Role] = []
    for i, (key, load) in enumerate(pairs):
        if load.pattern == "closed":
            out += [Role(i, key, load, "closed", u) for u in range(load.concurrency)]
        else:
            out.append(Role(i, key, load, "open"))
    return out


class Roles:
    """Shares a scenario's keys out between Locust processes: a user claims one key with an
    O_EXCL file in the run directory and drives every role of that key, so no key is driven
    twice and each key's times come from one process's clock."""

    def __init__(self, pairs: list[tuple[Key, LoadSpec]], out: Path) -> None:
        self.roles = roles_of(pairs)
        self.dir = out / CLAIMS
        self._lock = threading.Lock()

    def keys(self, match: Callable[[Key], bool]) -> list[Key]:
        seen: dict[str, Key] = {}
        for r in self.roles:
            if match(r.key):
                seen.setdefault(r.key.label, r.key)
        return list(seen.values())

    def claim(self, worker: str, match: Callable[[Key], bool]) -> list[Role]:
        """The roles of the first unclaimed matching key ([] when none is left)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for key in self.keys(match):
                if _create(self.dir / f"key-{key.label}", worker):
                    return [r for r in self.roles if r.key.label == key.label]
        return []


def _create(path: Path, worker: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(worker)
    return True


def count_reached(p: Any, s: Scenario) -> bool:
    """Scenario ``max_requests``, shared evenly between the run's worker processes."""
    if not s.max_requests:
        return False
    workers = max(1, int(os.environ.get("LOADKIT_WORKERS", "1") or 1))
    return p.seq >= -(-s.max_requests // workers)


def weight(kind: str, default: int) -> int:
    """Plain mode task weights: LOADKIT_MIX="chat_stream=2,chat=1,models=0"."""
    mix = os.environ.get("LOADKIT_MIX", "")
    for part in mix.split(","):
        name, _, value = part.partition("=")
        if name.strip() == kind and value.strip():
            return int(float(value))
    return 0 if mix else default


# -- worker markers ---------------------------------------------------------------------


def mark(out: Path, worker: str, state: str, data: dict[str, Any]) -> None:
    path = out / f"worker-{worker}.{state}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def worker_status(out: Path) -> list[dict[str, Any]]:
    """Every process that started sending: ok when it wrote its done marker, else died."""
    rows = []
    for started in sorted(out.glob("worker-*.started.json")):
        worker = started.name.removeprefix("worker-").removesuffix(".started.json")
        done = out / f"worker-{worker}.done.json"
        records = out / f"records-{worker}.jsonl"
        n = _count_lines(records)
        if done.exists():
            rows.append({"worker": worker, "records": n, "status": "ok", "detail": ""})
        else:
            rows.append(
                {
                    "worker": worker,
                    "records": n,
                    "status": "died",
                    "detail": "no done marker: the process ended without Locust's quit "
                    "(killed or crashed); its finished records are kept",
                }
            )
    return rows


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.endswith(b"\n"))
    except OSError:
        return 0


# -- TTFT in Locust's UI and CSV (a separate RequestStats: Locust's totals stay clean) ----


def ttft_rows(stats: Any) -> list[dict[str, Any]]:
    rows = []
    for e in sorted(stats.entries.values(), key=lambda e: e.name):
        if not e.num_requests:
            continue
        rows.append(
            {
                "name": e.name,
                "count": e.num_requests,
                "median": e.median_response_time,
                "p95": e.get_response_time_percentile(0.95),
                "p99": e.get_response_time_percentile(0.99),
                "avg": round(e.avg_response_time, 1),
                "min": e.min_response_time,
                "max": e.max_response_time,
            }
        )
    return rows


_CSV_COLS = ("name", "count", "median", "p95", "p99", "avg", "min", "max")


def ttft_csv(stats: Any) -> str:
    lines = [",".join(_CSV_COLS)]
    lines += [",".join(str(r[c]) for c in _CSV_COLS) for r in ttft_rows(stats)]
    return "\n".join(lines) + "\n"


def write_ttft_csv(stats: Any, path: str) -> None:
    Path(path).write_text(ttft_csv(stats))


def extend_web_ui(environment: Any, stats: Any) -> None:
    web_ui = environment.web_ui
    if web_ui is None:
        return
    from flask import make_response, request

    structure = [
        {"key": k, "title": t}
        for k, t in (
            ("name", "Request kind"),
            ("count", "Streams"),
            ("median", "TTFT median (ms)"),
            ("p95", "p95"),
            ("p99", "p99"),
            ("avg", "Average"),
            ("min", "Min"),
            ("max", "Max"),
        )
    ]
    web_ui.template_args["extended_tabs"] = [{"title": "TTFT", "key": "ttft"}]
    web_ui.template_args["extended_tables"] = [{"key": "ttft", "structure": structure}]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "/loadkit/ttft.csv", "title": "Download time-to-first-token statistics CSV"}
    ]

    @web_ui.app.after_request
    def _add_ttft(response: Any) -> Any:
        if request.path == "/stats/requests" and response.is_json:
            data = response.get_json()
            data["extended_stats"] = [{"key": "ttft", "data": ttft_rows(stats)}]
            response.set_data(json.dumps(data))
        return response

    @web_ui.app.route("/loadkit/ttft.csv")
    def _ttft_csv() -> Any:
        resp = make_response(ttft_csv(stats))
        resp.headers["Content-Type"] = "text/csv"
        resp.headers["Content-Disposition"] = "attachment;filename=ttft.csv"
        return resp
