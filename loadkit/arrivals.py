"""Arrival schedules for open-loop load: when each request of one key should be sent.

Pure: a schedule is a function of the load spec, the run length and a seeded RNG. A
constant or Poisson rate never exposes a fixed window's boundary burst or a token
bucket's stored burst; bursts (B requests at once every P seconds, random phase) do.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from loadkit.scenario import LoadSpec


def arrivals(load: LoadSpec, run_duration: float, rng: random.Random) -> Iterator[float]:
    """Scheduled send times (seconds from run start), non-decreasing, all < the end of
    the load phase. Bursts yield the same time ``burst_size`` times."""
    start = load.start_s
    end = load.active_until(run_duration)
    if load.pattern == "constant":
        gap = 1.0 / load.rate_per_s
        t = start + rng.random() * gap  # a random phase so keys do not send in lockstep
        while t < end:
            yield t
            t += gap
    elif load.pattern == "poisson":
        t = start + rng.expovariate(load.rate_per_s)
        while t < end:
            yield t
            t += rng.expovariate(load.rate_per_s)
    elif load.pattern == "burst":
        period = load.burst_period_s
        phase = load.phase_s if load.phase_s is not None else rng.random() * period
        t = start + phase
        while t < end:
            for _ in range(load.burst_size):
                yield t
            t += period
    else:
        raise ValueError(f"pattern {load.pattern!r} has no arrival schedule (closed loop)")
