"""Service-level objectives: parsed from run.json's ``slo`` and ``--slo METRIC.STAT=VALUE``
overrides, each checked against the typed summary figures as met, missed or without data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loadkit.analysis.codec import JsonRecord
from loadkit.analysis.metrics import METRICS, Latency
from loadkit.analysis.stats import STATS
from loadkit.analysis.throughput import Errors, Throughput


@dataclass(frozen=True)
class Observed:
    """The summary figures an SLO can be set on."""

    latency: Latency
    throughput: Throughput
    errors: Errors


@dataclass(frozen=True)
class Scalar:
    """A single-figure SLO: where its figure is, and which side of the threshold is good."""

    read: Callable[[Observed], float | None]
    direction: str


SCALARS: dict[str, Scalar] = {
    "error_rate": Scalar(lambda o: o.errors.error_rate, "<="),
    "throttle_rate": Scalar(lambda o: o.errors.throttle_rate, "<="),
    "requests_per_s": Scalar(lambda o: o.throughput.requests_per_s, ">="),
    "output_tokens_per_s": Scalar(lambda o: o.throughput.output_tokens_per_s, ">="),
    "goodput_per_s": Scalar(lambda o: o.throughput.goodput.requests_per_s, ">="),
    "goodput_ratio": Scalar(lambda o: o.throughput.goodput.ratio, ">="),
}
DISTRIBUTIONS = METRICS
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
        return SCALARS[self.metric].direction if self.stat is None else "<="

    def observe(self, observed: Observed) -> float | None:
        """The figure this SLO is about, None when the run gave it no data."""
        if self.stat is None:
            value = SCALARS[self.metric].read(observed)
        else:
            value = observed.latency.table(self.metric).overall.value(self.stat)
        return None if value is None else float(value)

    def check(self, observed: Observed) -> SloCheck:
        obs = self.observe(observed)
        if obs is None:
            met = None
        elif self.direction == "<=":
            met = obs <= self.threshold
        else:
            met = obs >= self.threshold
        return SloCheck(
            name=self.name,
            metric=self.metric,
            stat=self.stat,
            threshold=self.threshold,
            direction=self.direction,
            observed=obs,
            met=met,
            source=self.source,
        )


@dataclass(frozen=True)
class SloCheck(JsonRecord):
    """One SLO checked: ``met`` is None when the run gave it no data."""

    name: str
    metric: str
    stat: str | None
    threshold: float
    direction: str
    observed: float | None
    met: bool | None
    source: str

    @property
    def status(self) -> str:
        return "no data" if self.met is None else ("met" if self.met else "missed")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        source = d.pop("source")
        return d | {"status": self.status, "source": source}


@dataclass(frozen=True)
class SloResult(JsonRecord):
    """summary.json's ``slo``: False when any SLO was missed, None when one had no data."""

    met: bool | None
    checks: tuple[SloCheck, ...]


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


def slos_from_run(spec: Mapping[str, Any] | None) -> list[Slo]:
    """run.json's ``slo``: {"ttft_ms": {"p99": 800}, "error_rate": 0.05}."""
    out: list[Slo] = []
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


def evaluate_slos(slos: list[Slo], observed: Observed) -> SloResult:
    """Each SLO as a check; ``met`` is False when any was missed, None when one had no data."""
    checks = tuple(s.check(observed) for s in slos)
    missed = any(c.met is False for c in checks)
    no_data = any(c.met is None for c in checks)
    return SloResult(met=False if missed else (None if no_data else True), checks=checks)
