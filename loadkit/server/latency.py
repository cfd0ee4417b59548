"""The latency model, pure: time to first token, inter-token latency with jitter, and a
shared decode capacity per model that stretches every stream's ITL as streams pile up.
Callers schedule tokens at absolute deadlines built from these values (no drift)."""

from __future__ import annotations

import random

from loadkit.server.config import LatencyProfile

_MS = 1_000_000  # ns per ms


def ttft_ns(p: LatencyProfile, prompt_tokens: int, rng: random.Random) -> int:
    """base + prefill per prompt token + U(0, jitter)."""
    ms = p.ttft_ms + p.prefill_ms_per_token * prompt_tokens
    if p.ttft_jitter_ms > 0:
        ms += rng.uniform(0.0, p.ttft_jitter_ms)
    return max(0, round(ms * _MS))


def itl_ns(p: LatencyProfile, active_sequences: int, rng: random.Random) -> int:
    """itl + U(-jitter, +jitter) (never negative), and at least the share of the decode
    capacity: ``active_sequences / decode_capacity_tps`` seconds per token."""
    ms = p.itl_ms
    if p.itl_jitter_ms > 0:
        ms += rng.uniform(-p.itl_jitter_ms, p.itl_jitter_ms)
    ns = max(0, round(ms * _MS))
    if p.decode_capacity_tps > 0 and active_sequences > 0:
        ns = max(ns, round(active_sequences * 1e9 / p.decode_capacity_tps))
    return ns


def fixed_itl_ns(p: LatencyProfile) -> int | None:
    """The ITL when nothing varies it (no jitter, no decode capacity): what ``itl_ns``
    returns whatever the load, without drawing; else None."""
    if p.itl_jitter_ms > 0 or p.decode_capacity_tps > 0:
        return None
    return max(0, round(p.itl_ms * _MS))


def knee_streams(p: LatencyProfile) -> float | None:
    """Concurrent single-choice streams beyond which capacity, not ``itl_ms``, sets ITL."""
    if p.decode_capacity_tps <= 0 or p.itl_ms <= 0:
        return None
    return p.decode_capacity_tps * p.itl_ms / 1000.0
