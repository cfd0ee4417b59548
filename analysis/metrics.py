"""Latency metrics derived from raw record timestamps (TTFT, ITL, TPOT, end-to-end, time
to headers, send lateness, client queueing, connect wait), exact percentiles overall, per
tier and per (tier, key, endpoint, stream) group. ``docs/metrics.md`` defines each one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from loadkit.analysis.codec import JsonRecord, flatten, omit_none
from loadkit.analysis.columns import INFERENCE_ENDPOINTS, Columns
from loadkit.analysis.stats import Stats, describe, describe_sorted

LATENCY_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "headers_ms")
CLIENT_METRICS = ("send_lateness_ms", "queued_ms", "connect_wait_ms")
# Measured by some engines only (records with conn_s): absent from a run that has none.
OPTIONAL_METRICS = ("connect_wait_ms",)
METRICS = LATENCY_METRICS + CLIENT_METRICS  # the order of summary.json's latency tables


class MetricValues:
    """Raw values of one metric (milliseconds) and the record row each came from.

    ``rows`` is either given, or -- for a metric pooling several values per row, such as
    ITL -- implied by ``repeats`` (row i owns ``repeats[i]`` consecutive values) and
    built only when asked for: at 10 M records the ITL rows alone are ~650 MB, and the
    summary needs only small per-value ids (``of_rows``)."""

    __slots__ = ("values", "_rows", "_repeats")

    def __init__(
        self, values: np.ndarray, rows: np.ndarray | None = None, repeats: np.ndarray | None = None
    ) -> None:
        if (rows is None) == (repeats is None):
            raise ValueError("MetricValues takes rows or repeats, not both")
        self.values = values
        self._rows = rows
        self._repeats = repeats

    @property
    def rows(self) -> np.ndarray:
        """The record row of each value (int32 below 2**31 rows)."""
        if self._rows is not None:
            return self._rows
        assert self._repeats is not None
        n = self._repeats.size
        return np.repeat(np.arange(n, dtype=np.int32 if n < 2**31 else np.int64), self._repeats)

    def of_rows(self, per_row: np.ndarray) -> np.ndarray:
        """``per_row[rows]``: a per-record array read at each value's row."""
        if self._rows is not None:
            return np.asarray(per_row[self._rows])
        assert self._repeats is not None
        return np.repeat(per_row, self._repeats)


def latency_eligible(cols: Columns, warmup_s: float) -> np.ndarray:
    """Records whose latency counts: status 200, no transport error, sent after warm-up."""
    return np.asarray(
        (cols.status == 200) & (cols.transport_error.codes < 0) & (cols.send >= warmup_s)
    )


def output_tokens(cols: Columns) -> np.ndarray:
    """usage.completion_tokens, else the number of content chunks."""
    return np.where(np.isnan(cols.completion_tokens), cols.content_chunks, cols.completion_tokens)


def itl_values(cols: Columns, rows_mask: np.ndarray) -> MetricValues:
    """Gaps between consecutive content chunks of the same request, pooled."""
    if rows_mask[cols.gap_counts > 0].all():  # every row with gaps counts: no copy of them
        return MetricValues(cols.gap_ms, repeats=cols.gap_counts)
    values = cols.gap_ms[np.repeat(rows_mask, cols.gap_counts)]
    return MetricValues(values, repeats=np.where(rows_mask, cols.gap_counts, 0))


def _mv(values_s: np.ndarray, mask: np.ndarray) -> MetricValues:
    rows = np.flatnonzero(mask)
    if mask.size < 2**31:  # a metric's rows are kept for the charts: half the memory
        rows = rows.astype(np.int32)
    return MetricValues(values_s[rows] * 1000.0, rows)


def metric_values(cols: Columns, warmup_s: float) -> dict[str, MetricValues]:
    """Every latency and client metric's raw values, in milliseconds."""
    ok = latency_eligible(cols, warmup_s)
    has_first = ~np.isnan(cols.first_token)
    ttft_mask = ok & cols.stream & has_first
    tokens = output_tokens(cols)
    tpot_mask = ttft_mask & (tokens >= 2)
    denom = np.where(tpot_mask, tokens - 1, 1)
    after_warmup = cols.send >= warmup_s
    late_mask = after_warmup & ~np.isnan(cols.scheduled)
    out = {
        "ttft_ms": _mv(cols.first_token - cols.send, ttft_mask),
        "itl_ms": itl_values(cols, ok & cols.stream),
        "tpot_ms": _mv((cols.end - cols.first_token) / denom, tpot_mask),
        "e2e_ms": _mv(cols.end - cols.send, ok),
        "headers_ms": _mv(cols.headers - cols.send, ok & ~np.isnan(cols.headers)),
        "send_lateness_ms": _mv(cols.send - cols.scheduled, late_mask),
        "queued_ms": _mv(cols.queued, after_warmup),
    }
    has_conn = ~np.isnan(cols.conn)
    if has_conn.any():
        # Waiting for a connection (new, or free in the pool) after the send: with many new
        # connections, the lateness at the server that send_lateness_ms does not show.
        out["connect_wait_ms"] = _mv(cols.conn - cols.send, after_warmup & has_conn)
    return out


def _grouped(g_of: np.ndarray, n_groups: int, values: np.ndarray) -> Iterator[np.ndarray]:
    """Split values by their small integer group id (``g_of``, one per value; ids outside
    0..n_groups-1 in no group), one group at a time, each a fresh array in the values'
    order that the caller may reorder."""
    if n_groups <= 16:
        # a few boolean masks beat sorting millions of pooled values
        for g in range(n_groups):
            yield values[g_of == g]
        return
    order = np.argsort(g_of, kind="stable")
    counts = np.bincount(g_of[(g_of >= 0) & (g_of < n_groups)], minlength=n_groups)
    start = int(np.searchsorted(g_of[order], 0, side="left"))
    bounds = start + np.concatenate([[0], np.cumsum(counts)])
    sorted_vals = values[order]
    del order
    for g in range(n_groups):
        yield sorted_vals[bounds[g] : bounds[g + 1]]


def _small_ids(ids: np.ndarray, n: int) -> np.ndarray:
    """Ids in 0..n as the narrowest unsigned integers that hold them."""
    for t in (np.uint8, np.uint16, np.uint32):
        if n < np.iinfo(t).max:
            return ids.astype(t)
    return ids.astype(np.int64)


@dataclass(frozen=True)
class MetricLatency(JsonRecord):
    """One metric's table: over the inference endpoints, and by tier."""

    unit: str
    overall: Stats
    by_tier: dict[str, Stats]


@dataclass(frozen=True)
class GroupLabels(JsonRecord):
    tier: str | None
    key: str | None
    endpoint: str | None
    stream: bool


@dataclass(frozen=True)
class GroupLatency(JsonRecord):
    """The metrics of one (tier, key, endpoint, stream) group that had values."""

    labels: GroupLabels = flatten()
    ttft_ms: Stats | None = omit_none()
    itl_ms: Stats | None = omit_none()
    tpot_ms: Stats | None = omit_none()
    e2e_ms: Stats | None = omit_none()
    headers_ms: Stats | None = omit_none()
    send_lateness_ms: Stats | None = omit_none()
    queued_ms: Stats | None = omit_none()
    connect_wait_ms: Stats | None = omit_none()

    def stats(self, metric: str) -> Stats | None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
        s: Stats | None = getattr(self, metric)
        return s


@dataclass(frozen=True)
class Latency(JsonRecord):
    """summary.json's ``latency``: a table per metric, and ``groups``."""

    ttft_ms: MetricLatency
    itl_ms: MetricLatency
    tpot_ms: MetricLatency
    e2e_ms: MetricLatency
    headers_ms: MetricLatency
    send_lateness_ms: MetricLatency
    queued_ms: MetricLatency
    groups: tuple[GroupLatency, ...]
    connect_wait_ms: MetricLatency | None = omit_none()  # None: no record measured conn_s

    def table(self, metric: str) -> MetricLatency:
        """One metric's table; a metric the run did not measure has no values."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r} (one of {', '.join(METRICS)})")
        m: MetricLatency | None = getattr(self, metric)
        return m if m is not None else MetricLatency("ms", describe(np.zeros(0)), {})


def group_ids(cols: Columns) -> tuple[np.ndarray, list[GroupLabels]]:
    """A group id per row for (tier, key, endpoint, stream), and each group's labels."""
    nk, ne = len(cols.key.names) + 1, len(cols.endpoint.names) + 1
    combined = (
        ((cols.tier.codes.astype(np.int64) + 1) * nk + cols.key.codes + 1) * ne
        + cols.endpoint.codes
        + 1
    ) * 2 + cols.stream
    uniq, inverse = np.unique(combined, return_inverse=True)
    labels = []
    for c in uniq.tolist():
        c, s = divmod(c, 2)
        c, e = divmod(c, ne)
        t, k = divmod(c, nk)
        labels.append(
            GroupLabels(
                tier=cols.tier.label(t - 1),
                key=cols.key.label(k - 1),
                endpoint=cols.endpoint.label(e - 1),
                stream=bool(s),
            )
        )
    return inverse.reshape(-1).astype(np.int64), labels


def latency_summary(cols: Columns, values: dict[str, MetricValues]) -> Latency:
    """summary.json's ``latency``: per metric overall (inference endpoints) and by tier,
    plus ``groups`` by (tier, key, endpoint, stream) over every endpoint.

    Each group's values are copied once, in record order, for their mean (a sum depends on
    its order), then sorted in place; a tier's and the overall percentiles are read from
    its groups' sorted values (``stats.describe_sorted``), the same numbers as
    ``np.percentile`` on all of them, without partitioning them again."""
    inference = cols.endpoint.isin(INFERENCE_ENDPOINTS)
    gid, labels = group_ids(cols)
    # each group's tier (rows without one count in the first tier's table) and endpoint
    first_row = np.zeros(len(labels), dtype=np.int64)
    first_row[gid[::-1]] = np.arange(cols.n - 1, -1, -1)
    group_tier = np.maximum(cols.tier.codes, 0)[first_row].tolist()
    group_inference = inference[first_row].tolist()
    tiers = cols.tier.names
    # a value's tier (for the tier tables, inference endpoints only) from its group's:
    # len(tiers) is none
    tier_of_group = _small_ids(
        np.where(group_inference, group_tier, len(tiers)).astype(np.int64), len(tiers)
    )
    inference_of_group = np.array(group_inference, dtype=bool)
    all_inference = bool(inference_of_group.all())
    one_tier = group_tier[0] if len(set(group_tier)) == 1 and tiers else None
    gid = _small_ids(gid, len(labels))
    tables: dict[str, MetricLatency] = {}
    per_group: list[dict[str, Stats]] = [{} for _ in labels]
    for name in METRICS:
        mv = values.get(name)
        if mv is None:  # an optional metric nothing measured
            continue
        g_of = mv.of_rows(gid)
        # A metric of the ITL kind pools ~15 values per request: one tier's copy at a
        # time is held beside them for its mean, then the groups' sorted copies.
        if all_inference:
            overall_mean = float(mv.values.mean()) if mv.values.size else 0.0
        else:
            inf = inference_of_group[g_of]
            overall_mean = float(mv.values[inf].mean()) if inf.any() else 0.0
            del inf
        if one_tier is not None and all_inference:  # one tier's table holds every value
            tier_means = {one_tier: overall_mean} if mv.values.size else {}
        else:
            tier_of = tier_of_group[g_of]
            tier_means = {
                code: float(chunk.mean())
                for code, chunk in enumerate(_grouped(tier_of, len(tiers), mv.values))
                if chunk.size
            }
            del tier_of
        sorted_groups: dict[int, np.ndarray] = {}
        for g, chunk in enumerate(_grouped(g_of, len(labels), mv.values)):
            if chunk.size:
                mean = float(chunk.mean())
                chunk.sort()
                sorted_groups[g] = chunk
                per_group[g][name] = describe_sorted([chunk], mean)
        del g_of
        inference_groups = [g for g in sorted_groups if group_inference[g]]
        by_tier = {
            tiers[code]: describe_sorted(
                [sorted_groups[g] for g in inference_groups if group_tier[g] == code], mean
            )
            for code, mean in tier_means.items()
        }
        overall = describe_sorted([sorted_groups[g] for g in inference_groups], overall_mean)
        tables[name] = MetricLatency(unit="ms", overall=overall, by_tier=by_tier)
        del sorted_groups
    groups = tuple(
        GroupLatency(labels=lab, **stats)
        for lab, stats in zip(labels, per_group, strict=True)
        if stats
    )
    return Latency(**tables, groups=groups)
