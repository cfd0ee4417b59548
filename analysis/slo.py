"""Service-level objectives: parsed from run.json's ``slo`` and ``--slo METRIC.STAT=VALUE``
overrides, each checked against the summary as met, missed or without data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadkit.analysis.metrics import CLIENT_METRICS, LATENCY_METRICS
from loadkit.analysis.stats import STATS

# scalar SLOs: name -> (where in the summary, direction)
SCALARS: dict[str, tuple[tuple[str, ...], str]] = {
    "error_rate": (("errors", "error_rate"), "<="),
    "throttle_rate": (("errors", "throttle_rate"), "<="),
    "requests_per_s": (("throughput", "requests_per_s"), ">="),
    "output_tokens_per_s": (("throughput", "output_tokens_per_s"), ">="),
    "goodput_per_s": (("throughput", "goodput", "requests_per_s"), ">="),
    "goodput_ratio": (("throughput", "goodput", "ratio"), ">="),
}
DISTRIBUTIONS = LATENCY_METRICS + CLIENT_METRICS
STAT_NAMES = tuple(s for s in STATS if s != "count")


class SloSyntaxError(ValueError):
    """An SLO that cannot be understood (names the text and what is wrong)."""


@dataclass(frozen=True)
class Slo:
    metric: str
    stat: str | None
    threshold: float
    source: str

    @property
    def name(self) -> str:
        return self.metric if self.stat is None else f"{self.metric}.{self.stat}"

    @property
    def direction(self) -> str:
        return SCALARS[self.metric][1] if self.stat is None else "<="


def _stat(text: str, where: str) -> str:
    stat = text.replace(".", "_")
    if stat not in STAT_NAMES:
        raise SloSyntaxError(
            f"{where}: unknown statistic {text!r} (use one of "
            f"{', '.join(s.replace('_', '.') for s in STAT_NAMES)})"
        )
    return stat


def make_slo(metric: str, stat: str | None, value: Any, source: str) -> Slo:
    where = f"SLO {metric}{'.' + stat if stat else ''} ({source})"
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise SloSyntaxError(f"{where}: threshold {value!r} is not a number") from None
    if threshold != threshold:
        raise SloSyntaxError(f"{where}: threshold is NaN")
    if threshold < 0:
        raise SloSyntaxError(f"{where}: threshold must be >= 0, got {value!r}")
    if metric in SCALARS:
        if stat is not None:
            raise SloSyntaxError(f"{where}: {metric} takes no statistic (write {metric}=VALUE)")
        if metric in ("error_rate", "throttle_rate", "goodput_ratio") and threshold > 1:
            raise SloSyntaxError(f"{where}: {metric} is a fraction in [0, 1], got {value!r}")
        return Slo(metric, None, threshold, source)
    if metric in DISTRIBUTIONS:
        if stat is None:
            raise SloSyntaxError(f"{where}: {metric} needs a statistic, e.g. {metric}.p99=VALUE")
        return Slo(metric, _stat(stat, where), threshold, source)
    raise SloSyntaxError(
        f"{where}: unknown metric {metric!r} (one of {', '.join(DISTRIBUTIONS + tuple(SCALARS))})"
    )


def parse_slo_arg(text: str) -> Slo:
    """``ttft_ms.p99=800``, ``itl_ms.p99.9=40`` or ``error_rate=0.01``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise SloSyntaxError(f"--slo {text!r}: expected METRIC.STAT=VALUE or METRIC=VALUE")
    metric, dot, stat = name.strip().partition(".")
    return make_slo(metric, stat if dot else None, value.strip(), "--slo")


def slos_from_run(spec: dict[str, Any]) -> list[Slo]:
    """run.json's ``slo``: {"ttft_ms": {"p99": 800}, "error_rate": 0.05}."""
    out = []
    for metric, v in (spec or {}).items():
        if isinstance(v, dict):
            out.extend(make_slo(metric, str(stat), val, "run.json") for stat, val in v.items())
        else:
            out.append(make_slo(metric, None, v, "run.json"))
    return out


def merge_slos(from_run: list[Slo], overrides: list[Slo]) -> list[Slo]:
    """Overrides replace a run SLO of the same name and add new ones."""
    by_name = {s.name: s for s in from_run}
    for s in overrides:
        by_name[s.name] = s
    return list(by_name.values())


def _observed(slo: Slo, summary: dict[str, Any]) -> float | None:
    if slo.stat is None:
        node: Any = summary
        for part in SCALARS[slo.metric][0]:
            node = node.get(part) if isinstance(node, dict) else None
        return None if node is None else float(node)
    val = summary.get("latency", {}).get(slo.metric, {}).get("overall", {}).get(slo.stat)
    return None if val is None else float(val)


def evaluate_slos(slos: list[Slo], summary: dict[str, Any]) -> dict[str, Any]:
    """Each SLO as a check; ``met`` is False when any was missed, None when one had no data."""
    checks = []
    for s in slos:
        obs = _observed(s, summary)
        if obs is None:
            met = None
        elif s.direction == "<=":
            met = obs <= s.threshold
        else:
            met = obs >= s.threshold
        checks.append(
            {
                "name": s.name,
                "metric": s.metric,
                "stat": s.stat,
                "threshold": s.threshold,
                "direction": s.direction,
                "observed": obs,
                "met": met,
                "status": "no data" if met is None else ("met" if met else "missed"),
                "source": s.source,
            }
        )
    missed = any(c["met"] is False for c in checks)
    no_data = any(c["met"] is None for c in checks)
    return {"met": False if missed else (None if no_data else True), "checks": checks}
