"""Run metadata (``run.json``): the one wall-clock anchor of a run, what was promised
(tiers' limits, SLOs), which keys (by label) and workers took part, and how it ended."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUN_SCHEMA = "loadkit.run/1"
RUN_FILE = "run.json"


def fingerprint(secret: str) -> str:
    """A short, stable, non-reversible name for a key (8 hex digits of SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class Clock:
    """A run's time origin: ``now()`` is monotonic seconds since the run started."""

    mono_anchor_ns: int = field(default_factory=time.perf_counter_ns)
    wall_anchor: float = field(default_factory=time.time)

    def now(self) -> float:
        return (time.perf_counter_ns() - self.mono_anchor_ns) / 1e9


def start_at(clock: Clock, meta: RunMeta, mono_ns: int, wall: float) -> None:
    """Make ``mono_ns`` / ``wall`` the run's t=0, for this process's clock and run.json
    alike (the caller writes run.json)."""
    clock.mono_anchor_ns = meta.mono_anchor_ns = mono_ns
    clock.wall_anchor = meta.started_unix = wall


@dataclass(frozen=True)
class Origin:
    """t=0 of a run as the process that decided it saw it: its wall clock, its monotonic
    clock (``perf_counter_ns``) and its machine's boot id. Monotonic readings compare only
    within one boot of one machine; elsewhere the wall-clock time is the common reference."""

    wall: float
    mono_ns: int
    boot_id: str

    def clock(self, boot_id: str, wall_now: float, mono_now_ns: int) -> Clock:
        """The run's clock in a process whose machine has ``boot_id`` and whose clocks read
        ``wall_now`` / ``mono_now_ns`` at this moment: the exact monotonic anchor on the
        same machine, else the wall-clock origin mapped onto this machine's monotonic clock
        (as good as the two machines' clock synchronisation)."""
        if self.boot_id and boot_id == self.boot_id:
            return Clock(self.mono_ns, self.wall)
        return Clock(mono_now_ns - round((wall_now - self.wall) * 1e9), self.wall)

    def local_clock(self) -> Clock:
        return self.clock(boot_id(), time.time(), time.perf_counter_ns())

    def to_dict(self) -> dict[str, Any]:
        return {"wall": self.wall, "mono_ns": self.mono_ns, "boot_id": self.boot_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Origin:
        return cls(float(d["wall"]), int(d["mono_ns"]), str(d.get("boot_id") or ""))

    @classmethod
    def now(cls, lead_s: float = 0.0) -> Origin:
        """An origin ``lead_s`` seconds from now on this machine."""
        lead_ns = round(lead_s * 1e9)
        return cls(time.time() + lead_s, time.perf_counter_ns() + lead_ns, boot_id())


def boot_id() -> str:
    """This machine's boot id (Linux); "" where there is none, so origins never match."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class WorkerInfo:
    """One load-generating process of a run, as the process that wrote the records saw it."""

    worker: str
    records: int = 0  # records received from it (and written into the run directory)
    status: str = "ok"  # "ok" | "interrupted" | "died" | "silent"
    detail: str = ""
    sent: int | None = None  # records the worker says it produced (its final report)
    in_flight: int | None = None  # its requests open when last heard of, if known


@dataclass
class RunMeta:
    run_id: str
    engine: str
    target: str
    scenario_name: str
    started_unix: float
    mono_anchor_ns: int
    # tier -> {"requests": int, "window_s": float, "concurrency": int}
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # [{"label": str, "tier": str, "fingerprint": str}]
    keys: list[dict[str, str]] = field(default_factory=list)
    # {"ttft_ms": {"p99": 800}, ..., "error_rate": 0.05}; per-request goodput thresholds
    slo: dict[str, Any] = field(default_factory=dict)
    goodput: dict[str, float] = field(default_factory=dict)
    scenario: dict[str, Any] = field(default_factory=dict)
    workers: list[WorkerInfo] = field(default_factory=list)
    ended_unix: float | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    interrupted: bool = False
    stop_reason: str = ""
    # loadkit.api.TargetApi.describe(): layout, paths, auth style, extra header names
    target_api: dict[str, Any] = field(default_factory=dict)
    loadkit_version: str = ""
    schema: str = RUN_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["started_at"] = _iso(self.started_unix)
        d["ended_at"] = _iso(self.ended_unix) if self.ended_unix else None
        return d

    def write(self, run_dir: str | os.PathLike[str]) -> Path:
        path = Path(run_dir) / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunMeta:
        schema = d.get("schema")
        if schema != RUN_SCHEMA:
            raise ValueError(f"unsupported run schema {schema!r} (this loadkit reads {RUN_SCHEMA})")
        d = {k: v for k, v in d.items() if k not in ("started_at", "ended_at")}
        d["workers"] = [worker_info(w) for w in d.get("workers", [])]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


def worker_info(d: dict[str, Any]) -> WorkerInfo:
    known = WorkerInfo.__dataclass_fields__
    return WorkerInfo(**{k: v for k, v in d.items() if k in known})


def read_run_meta(run_dir: str | os.PathLike[str]) -> RunMeta:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no run metadata (is {run_dir} a loadkit run directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return RunMeta.from_dict(data)


def _iso(unix: float) -> str:
    return (
        datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
