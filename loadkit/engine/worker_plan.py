"""How a run's load is shared between the asyncio engine's worker processes: whole keys
per worker (a key's limit is judged on one clock, so a key is never split), balanced by
the load each key is offered. Pure: a function of the scenario, the keys and a count."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from loadkit.scenario import Key, LoadSpec, Scenario, plan

# A closed-loop user's requests per second when nothing is known of the target's latency:
# only the relative weight of keys matters here, never the absolute figure.
_CLOSED_LOOP_RATE = 1.0


@dataclass(frozen=True)
class WorkerShare:
    """One worker's part of the plan: (plan index, key label, load phase index) triples.
    The plan index seeds the pair's random schedule and payloads, so a pair behaves the
    same whichever worker drives it."""

    worker: str
    pairs: tuple[tuple[int, str, int], ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(label for _, label, _ in self.pairs))


@dataclass(frozen=True)
class WorkerPlan:
    """The shares, and the worker count asked for (more than the keys allow: fewer)."""

    shares: tuple[WorkerShare, ...]
    asked: int

    @property
    def note(self) -> str:
        """Why fewer workers run than were asked for ("" when as many)."""
        n = len(self.shares)
        if n >= self.asked:
            return ""
        return (
            f"{n} worker{'s' if n != 1 else ''} instead of {self.asked}: a key is never "
            f"split between processes, and {n} key{'s' if n != 1 else ''} carr"
            f"{'y' if n != 1 else 'ies'} load"
        )


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where the
    platform has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(cores: int, server_pinned: bool) -> int:
    """``--workers`` unset: one worker per available core, less the core the embedded
    reference server is pinned to (it would compete with a worker for it)."""
    return max(1, cores - 1) if server_pinned else max(1, cores)


def offered_rate(load: LoadSpec, run_duration: float) -> float:
    """Requests the phase offers one key over the run, as a weight (closed loop: its users
    at a nominal rate, less their think time)."""
    end = load.active_until(run_duration)
    span = 1.0 if math.isinf(end) else max(end - load.start_s, 0.0)
    if load.pattern == "closed":
        per_s = load.concurrency * _CLOSED_LOOP_RATE / (1.0 + load.think_s)
    elif load.pattern == "burst":
        per_s = load.burst_size / load.burst_period_s if load.burst_period_s > 0 else 0.0
    else:
        per_s = load.rate_per_s
    return per_s * span


def split_plan(scenario: Scenario, keys: list[Key], workers: int) -> WorkerPlan:
    """Whole keys to ``workers`` workers (at most one per key that has load), heaviest key
    first to the least loaded worker (ties: the lower worker number), so the result is
    deterministic. Worker names are ``async-0`` … ``async-<n-1>``."""
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    pairs = plan(scenario, keys)
    load_index = {id(load): n for n, load in enumerate(scenario.load)}
    by_key: dict[str, list[tuple[int, str, int]]] = {}
    weight: dict[str, float] = {}
    for i, (key, load) in enumerate(pairs):
        by_key.setdefault(key.label, []).append((i, key.label, load_index[id(load)]))
        weight[key.label] = weight.get(key.label, 0.0) + offered_rate(load, scenario.duration_s)
    n = min(workers, len(by_key)) or 1
    bins: list[list[str]] = [[] for _ in range(n)]
    totals = [0.0] * n
    first_seen = {label: pos for pos, label in enumerate(by_key)}
    for label in sorted(by_key, key=lambda lb: (-weight[lb], first_seen[lb])):
        w = min(range(n), key=lambda b: (totals[b], b))
        bins[w].append(label)
        totals[w] += weight[label]
    shares = tuple(
        WorkerShare(
            f"async-{w}",
            tuple(sorted(p for label in labels for p in by_key[label])),
        )
        for w, labels in enumerate(bins)
    )
    return WorkerPlan(shares, workers)
