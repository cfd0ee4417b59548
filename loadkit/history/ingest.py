"""One analysed run folder as history rows: its identity, every summary figure by tier,
key, endpoint and stream, every limit verdict, SLO results and completeness.

Reads the versioned files (``summary.json``, ``run.json``) and nothing of the analysis
code, so a history store outlives refactorings of the analysis. Every field is read
defensively: a verdict word loadkit does not know yet is stored as it comes, a section a
summary does not have (``completeness`` before it existed) is stored as unknown."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
SUMMARY_PREFIX = "loadkit.summary/"
KNOWN_SUMMARY_VERSIONS = (1, 2)  # 2 added completeness, keys, headline (docs/metrics.md)
LATENCY_SCOPES = ("overall", "by_tier")
GROUP_FIELDS = ("tier", "key", "endpoint", "stream")

# Limit-entry fields that are verdicts themselves; any other field holding a dict with a
# string ``verdict`` (retry_after, remaining_header, and whatever comes later) is one too.
DIRECT_ASPECTS = ("enforced", "honoured")


class IngestError(ValueError):
    """The folder is not an analysed loadkit run this version can read."""


@dataclass(frozen=True)
class Identity:
    """Where a run came from, beyond its files: the commit and branch under test, tags."""

    git_commit: str | None = None
    git_branch: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MetricRow:
    """One figure. Empty ``tier``/``key``/``endpoint``/``stream`` mean "all"; ``stream``
    is ``stream`` or ``non-stream`` for the per-group figures."""

    metric: str
    value: float | None
    tier: str = ""
    key: str = ""
    endpoint: str = ""
    stream: str = ""


@dataclass(frozen=True)
class LimitRow:
    tier: str
    key: str
    kind: str
    promised: float | None
    window_s: float | None
    observed_max: float | None
    observed_max_possible: float | None
    offered_requests: float | None
    offered_max_in_window: float | None


@dataclass(frozen=True)
class VerdictRow:
    """One verdict word of one limit (``aspect``: enforced, honoured, retry_after, …)."""

    tier: str
    key: str
    kind: str
    aspect: str
    verdict: str


@dataclass(frozen=True)
class SloRow:
    name: str
    metric: str
    stat: str
    threshold: float | None
    direction: str
    observed: float | None
    met: bool | None
    status: str
    source: str


@dataclass(frozen=True)
class RunRow:
    run_key: str  # stable identity: the same run added twice has the same key
    run_id: str
    started_unix: float
    started_at: str
    scenario: str
    scenario_hash: str
    target: str
    engine: str
    verdict: str
    duration_s: float | None
    records: int | None
    interrupted: bool | None
    loadkit_version: str
    summary_schema: str
    complete: bool | None  # None: the summary says nothing about completeness
    completeness: str | None  # the summary's completeness section as JSON, if any
    source: str
    git_commit: str | None = None
    git_branch: str | None = None


@dataclass(frozen=True)
class IngestedRun:
    run: RunRow
    metrics: tuple[MetricRow, ...] = ()
    limits: tuple[LimitRow, ...] = ()
    verdicts: tuple[VerdictRow, ...] = ()
    slos: tuple[SloRow, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = field(default=())


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _section(parent: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A sub-object, or an empty one when it is missing or not an object."""
    value = parent.get(name)
    return value if isinstance(value, Mapping) else {}


def _text(x: Any, default: str = "") -> str:
    return x if isinstance(x, str) else default


def _stat_rows(
    metric: str, stats: Any, tier: str = "", key: str = "", endpoint: str = "", stream: str = ""
) -> Iterator[MetricRow]:
    if not isinstance(stats, Mapping):
        return
    for stat, value in stats.items():
        if isinstance(value, bool) or not (value is None or isinstance(value, int | float)):
            continue
        yield MetricRow(f"{metric}.{stat}", _num(value), tier, key, endpoint, stream)


def latency_rows(latency: Any) -> Iterator[MetricRow]:
    """``latency.<metric>.overall``, ``.by_tier.<tier>`` and every ``groups`` entry."""
    if not isinstance(latency, Mapping):
        return
    for name, block in latency.items():
        if name == "groups" or not isinstance(block, Mapping):
            continue
        yield from _stat_rows(name, block.get("overall"))
        by_tier = block.get("by_tier")
        if isinstance(by_tier, Mapping):
            for tier, stats in by_tier.items():
                yield from _stat_rows(name, stats, tier=str(tier))
    groups = latency.get("groups")
    for g in groups if isinstance(groups, list) else []:
        if not isinstance(g, Mapping):
            continue
        stream = g.get("stream")
        where = {
            "tier": _text(g.get("tier")),
            "key": _text(g.get("key")),
            "endpoint": _text(g.get("endpoint")),
            "stream": "stream" if stream is True else "non-stream" if stream is False else "",
        }
        for name, stats in g.items():
            if name not in GROUP_FIELDS:
                yield from _stat_rows(name, stats, **where)


# summary field -> history metric name; SLO names where loadkit has one (goodput_per_s …)
_GOODPUT = {"requests_per_s": "goodput_per_s", "ratio": "goodput_ratio", "requests": "goodput"}


def scalar_rows(summary: Mapping[str, Any]) -> Iterator[MetricRow]:
    """Throughput and error figures: every numeric field, plus goodput and counts by
    status and error code (``status.429``, ``code.429 rate_limit_exceeded``)."""
    throughput = summary.get("throughput")
    if isinstance(throughput, Mapping):
        for name, value in throughput.items():
            if name.startswith("measured_"):
                continue
            if _num(value) is not None or value is None and name.endswith("_per_s"):
                yield MetricRow(name, _num(value))
        goodput = throughput.get("goodput")
        if isinstance(goodput, Mapping):
            for name, metric in _GOODPUT.items():
                if name in goodput:
                    yield MetricRow(metric, _num(goodput[name]))
    errors = summary.get("errors")
    if isinstance(errors, Mapping):
        for name, value in errors.items():
            if name != "requests" and _num(value) is not None:
                yield MetricRow(name, _num(value))
            elif name.endswith("_rate") and value is None:
                yield MetricRow(name, None)
        for section, prefix in (("by_status", "status"), ("by_code", "code")):
            counts = errors.get(section)
            if isinstance(counts, Mapping):
                for label, value in counts.items():
                    if _num(value) is not None:
                        yield MetricRow(f"{prefix}.{label}", _num(value))


def limit_rows(limits: Any) -> tuple[list[LimitRow], list[VerdictRow]]:
    rows: list[LimitRow] = []
    verdicts: list[VerdictRow] = []
    for entry in limits if isinstance(limits, list) else []:
        if not isinstance(entry, Mapping):
            continue
        tier, key, kind = (
            _text(entry.get("tier")),
            _text(entry.get("key")),
            _text(entry.get("kind")),
        )
        offered = _section(entry, "offered")
        rows.append(
            LimitRow(
                tier,
                key,
                kind,
                _num(entry.get("promised")),
                _num(entry.get("window_s")),
                _num(entry.get("observed_max")),
                _num(entry.get("observed_max_possible")),
                _num(offered.get("requests")),
                _num(offered.get("max_in_window")),
            )
        )
        for aspect, value in entry.items():
            word = value if aspect in DIRECT_ASPECTS else None
            if isinstance(value, Mapping) and aspect != "evidence":
                word = value.get("verdict")
            if isinstance(word, str):
                verdicts.append(VerdictRow(tier, key, kind, aspect, word))
    return rows, verdicts


def slo_rows(slo: Any) -> list[SloRow]:
    checks = slo.get("checks") if isinstance(slo, Mapping) else None
    out = []
    for c in checks if isinstance(checks, list) else []:
        if not isinstance(c, Mapping) or not isinstance(c.get("name"), str):
            continue
        met = c.get("met")
        out.append(
            SloRow(
                name=c["name"],
                metric=_text(c.get("metric")),
                stat=_text(c.get("stat")),
                threshold=_num(c.get("threshold")),
                direction=_text(c.get("direction")),
                observed=_num(c.get("observed")),
                met=met if isinstance(met, bool) else None,
                status=_text(c.get("status")),
                source=_text(c.get("source")),
            )
        )
    return out


def completeness_of(summary: Mapping[str, Any]) -> tuple[bool | None, str | None]:
    """(complete?, the section as JSON). Absent section: (None, None), unknown; a run whose
    overall verdict is ``incomplete`` is incomplete whatever the section says."""
    section = summary.get("completeness")
    text = None if section is None else json.dumps(section, sort_keys=True)
    complete: bool | None = None
    if isinstance(section, Mapping):
        flag = section.get("complete")
        status = section.get("status", section.get("verdict"))
        if isinstance(flag, bool):
            complete = flag
        elif isinstance(status, str):
            complete = status == "complete"
    elif isinstance(section, bool):
        complete = section
    if summary.get("verdict") == "incomplete":
        complete = False
    return complete, text


def scenario_hash(scenario: Any) -> str:
    """16 hex digits of SHA-256 over the scenario as run.json records it, without the
    target URL (kept apart: the same load against another target is the same scenario)."""
    if not isinstance(scenario, Mapping) or not scenario:
        return ""
    copy = json.loads(json.dumps(scenario, default=str))
    target = copy.get("target")
    if isinstance(target, dict):
        target.pop("base_url", None)
    blob = json.dumps(copy, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _parse_iso(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _started(run_info: Mapping[str, Any], meta: Mapping[str, Any]) -> tuple[float, str, float]:
    """(start as unix seconds, as ISO text, the start the run key is made of). The key uses
    summary.json's millisecond text where there is one, so a summary read without its
    run.json still gets the same key."""
    unix = _num(meta.get("started_unix"))
    text = _text(run_info.get("started_at")) or _text(meta.get("started_at"))
    from_text = _parse_iso(text) if text else None
    if unix is None:
        unix = from_text
    if unix is None:
        raise IngestError("the run has no start time (run.started_at in summary.json)")
    if not text:
        text = datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")
        text = text.replace("+00:00", "Z")
    key_time = from_text if from_text is not None else math.floor(unix * 1000) / 1000
    return unix, text, key_time


def run_key(run_id: str, started_unix: float, scenario: str) -> str:
    """The same run (same id, same start to the millisecond, same scenario) has one key,
    wherever its folder was copied to and however often it was re-analysed. Milliseconds:
    summary.json's ``started_at`` has no more, and a summary alone must give the same key."""
    blob = f"{run_id}\0{started_unix:.3f}\0{scenario}"
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def summary_version(schema: Any) -> int:
    if not isinstance(schema, str) or not schema.startswith(SUMMARY_PREFIX):
        raise IngestError(f"not a loadkit summary (schema {schema!r})")
    try:
        return int(schema[len(SUMMARY_PREFIX) :])
    except ValueError:
        raise IngestError(f"unreadable summary schema {schema!r}") from None


def ingest(
    summary: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    identity: Identity | None = None,
    source: str = "",
) -> IngestedRun:
    """History rows from a parsed summary.json and (optionally) run.json."""
    if not isinstance(summary, Mapping):
        raise IngestError("summary.json is not a JSON object")
    version = summary_version(summary.get("schema"))
    warnings = []
    if version not in KNOWN_SUMMARY_VERSIONS:
        warnings.append(
            f"summary schema {summary.get('schema')} is newer than this loadkit knows "
            f"({SUMMARY_PREFIX}{KNOWN_SUMMARY_VERSIONS[-1]}); fields it does not know "
            "are not stored"
        )
    meta = meta or {}
    identity = identity or Identity()
    info = _section(summary, "run")
    run_id = _text(info.get("run_id")) or _text(meta.get("run_id"))
    if not run_id:
        raise IngestError("the run has no run_id (run.run_id in summary.json)")
    started_unix, started_at, key_time = _started(info, meta)
    scenario_name = _text(info.get("scenario")) or _text(meta.get("scenario_name"))
    scenario = meta.get("scenario")
    target = ""
    if isinstance(scenario, Mapping) and isinstance(scenario.get("target"), Mapping):
        target = _text(scenario["target"].get("base_url"))
    target = target or _text(info.get("target")) or _text(meta.get("target"))
    records = _num(info.get("records"))
    interrupted = info.get("interrupted")
    complete, completeness = completeness_of(summary)
    limits, verdicts = limit_rows(summary.get("limits"))
    run = RunRow(
        run_key=run_key(run_id, key_time, scenario_name),
        run_id=run_id,
        started_unix=started_unix,
        started_at=started_at,
        scenario=scenario_name,
        scenario_hash=scenario_hash(scenario),
        target=target,
        engine=_text(info.get("engine")) or _text(meta.get("engine")),
        verdict=_text(summary.get("verdict"), "unknown"),
        duration_s=_num(info.get("duration_s")),
        records=int(records) if records is not None else None,
        interrupted=interrupted if isinstance(interrupted, bool) else None,
        loadkit_version=_text(info.get("loadkit_version")),
        summary_schema=str(summary.get("schema")),
        complete=complete,
        completeness=completeness,
        source=source,
        git_commit=identity.git_commit,
        git_branch=identity.git_branch,
    )
    metrics = _dedupe([*latency_rows(summary.get("latency")), *scalar_rows(summary)])
    return IngestedRun(
        run=run,
        metrics=tuple(metrics),
        limits=tuple(limits),
        verdicts=tuple(verdicts),
        slos=tuple(slo_rows(summary.get("slo"))),
        tags=tuple(identity.tags),
        warnings=tuple(warnings),
    )


def _dedupe(rows: list[MetricRow]) -> list[MetricRow]:
    """One row per (metric, tier, key, endpoint, stream): the first wins."""
    seen: dict[tuple[str, str, str, str, str], MetricRow] = {}
    for r in rows:
        seen.setdefault((r.metric, r.tier, r.key, r.endpoint, r.stream), r)
    return list(seen.values())


def read_run_dir(run_dir: str | os.PathLike[str], identity: Identity | None = None) -> IngestedRun:
    """Ingest an analysed run folder (``loadkit analyze`` has written summary.json)."""
    path = Path(run_dir)
    summary_path = path / SUMMARY_FILE
    if not summary_path.is_file():
        raise IngestError(f"{summary_path}: no summary (run `loadkit analyze {path}` first)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{summary_path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise IngestError(f"{summary_path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    meta: dict[str, Any] = {}
    meta_path = path / RUN_FILE
    if meta_path.is_file():
        try:
            loaded = json.loads(meta_path.read_text(encoding="utf-8"))
            meta = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = {}  # the summary alone identifies the run; run.json only adds to it
    return ingest(summary, meta, identity, source=str(path.resolve()))
