"""Latency metrics derived from raw record timestamps (TTFT, ITL, TPOT, end-to-end, time
to headers, send lateness, client queueing, connect wait), exact percentiles overall, per
tier and per (tier, key, endpoint, stream) group. ``docs/metrics.md`` defines each one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

from loadkit.analysis.codec import JsonRecord, flatten, omit_none
from loadkit.analysis.columns import INFERENCE_ENDPOINTS, Columns
from loadkit.analysis.pooled import describe_groups
from loadkit.analysis.stats import Stats, describe, describe_sorted

# A pooled metric of at most this many values is copied and sorted in memory (0.27 GB,
# twice: at 1 M records, 16 M gaps, numpy's sort takes 0.3 s where the passes of
# ``pooled`` take 0.8 s); a larger one is read in blocks, so no run needs memory in
# proportion to its size for it.
SORT_IN_MEMORY = 1 << 25
LATENCY_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "headers_ms")
CLIENT_METRICS = ("send_lateness_ms", "queued_ms", "connect_wait_ms")
# Measured by some engines only (records with conn_s): absent from a run that has none.
OPTIONAL_METRICS = ("connect_wait_ms",)
METRICS = LATENCY_METRICS + CLIENT_METRICS  # the order of summary.json's latency tables


class MetricValues:
    """Raw values of one metric (milliseconds) and the record row each came from."""

    __slots__ = ("_values", "_rows")

    def __init__(self, values: np.ndarray, rows: np.ndarray) -> None:
        self._values = values
        self._rows = rows

    @property
    def values(self) -> np.ndarray:
        return self._values

    @property
    def rows(self) -> np.ndarray:
        """The record row of each value."""
        return self._rows

    @property
    def size(self) -> int:
        return int(self.values.size)

    def of_rows(self, per_row: np.ndarray) -> np.ndarray:
        """``per_row[rows]``: a per-record array read at each value's row."""
        return np.asarray(per_row[self.rows])

    def blocks(self, per_row: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The values with their rows (or ``per_row`` read at their rows), a block at a
        time (here: one block)."""
        yield self.values, self.rows if per_row is None else self.of_rows(per_row)

    def load(self) -> MetricValues:
        """The values to read now (a reader holds them while it reads, then drops them)."""
        return self

    def in_memory(self) -> bool:
        """Whether a reader should take the values whole (``values``, sorted in memory)
        rather than in ``blocks``."""
        return True


class LazyValues(MetricValues):
    """A per-record metric computed from the columns each time a reader asks (``load``),
    and dropped by that reader: at 10 M records each is ~120 MB, and the analysis would
    otherwise hold eight of them from the first table to the last chart."""

    __slots__ = ("_compute",)

    def __init__(self, compute: Callable[[], MetricValues]) -> None:
        self._compute = compute

    def load(self) -> MetricValues:
        return self._compute()

    @property
    def values(self) -> np.ndarray:
        return self.load().values

    @property
    def rows(self) -> np.ndarray:
        return self.load().rows

    @property
    def size(self) -> int:
        return self.load().size

    def of_rows(self, per_row: np.ndarray) -> np.ndarray:
        return self.load().of_rows(per_row)

    def blocks(self, per_row: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.load().blocks(per_row)


class PooledValues(MetricValues):
    """A metric pooling several values per row (ITL: ~16 per streamed request), kept as
    the whole run's per-row values (``pooled``, row i owning ``counts[i]`` consecutive
    ones; possibly memory-mapped) and which rows count: at 10 M records the values alone
    are 1.3 GB, so they are read a block of rows at a time (``blocks``) and never copied
    whole. ``values`` and ``rows`` build the whole arrays, for small runs and tests."""

    __slots__ = ("_pooled", "_counts", "_keep", "_size")

    BLOCK_VALUES = 1 << 22  # values per block (32 MB, and their rows)

    def __init__(self, pooled: np.ndarray, counts: np.ndarray, keep: np.ndarray) -> None:
        self._pooled = pooled
        self._counts = counts
        self._keep = keep
        self._size = int(counts[keep].sum(dtype=np.int64))

    @property
    def values(self) -> np.ndarray:
        if self._keep[self._counts > 0].all():  # every row with values counts: no copy
            return self._pooled
        return np.asarray(self._pooled[np.repeat(self._keep, self._counts)])

    @property
    def rows(self) -> np.ndarray:
        n = self._counts.size
        index = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        return np.repeat(index, np.where(self._keep, self._counts, 0))

    @property
    def size(self) -> int:
        return self._size

    def in_memory(self) -> bool:
        return self._size <= SORT_IN_MEMORY

    def of_rows(self, per_row: np.ndarray) -> np.ndarray:
        return np.repeat(per_row, np.where(self._keep, self._counts, 0))

    def restrict(self, rows: np.ndarray) -> PooledValues:
        """The values of the given rows only (a boolean per row)."""
        return PooledValues(self._pooled, self._counts, self._keep & rows)

    def statistics(self, stats: tuple[str, ...]) -> np.ndarray:
        """``stats`` (names in ``stats.STATS``) of all the values, read in blocks: a
        ``stats.Sample`` for the bootstrap."""
        one_group = np.zeros(self._counts.size, dtype=np.int8)
        whole = describe_groups(partial(self.blocks, one_group), 1, [[0]])[0]
        return np.array([whole.value(s) for s in stats], dtype=np.float64)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The values at ``positions`` (in the order of ``values``), in one pass."""
        order = np.argsort(positions, kind="stable")
        wanted = positions[order]
        out = np.empty(positions.size, dtype=np.float64)
        at = 0
        for values, _ in self.blocks():
            lo, hi = np.searchsorted(wanted, [at, at + values.size])
            out[order[lo:hi]] = values[wanted[lo:hi] - at]
            at += values.size
        return out

    def blocks(self, per_row: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The values of the rows that count with their rows (or ``per_row`` read at
        their rows), BLOCK_VALUES at most at a time (or one row's): cut where the running
        count of values reaches it, so rows dense with values (long streams, a file of
        them) make more blocks, not larger. The values may be a read-only view."""
        n = self._counts.size
        if n == 0 or self._size == 0:
            return
        at = 0  # where the pooled values of row ``lo`` start
        for lo in range(0, n, _ROWS_READ):
            counts = np.asarray(self._counts[lo : lo + _ROWS_READ], dtype=np.int64)
            keep = np.asarray(self._keep[lo : lo + _ROWS_READ])
            ends = np.cumsum(counts)
            a = 0
            while a < counts.size:
                first = int(ends[a - 1]) if a else 0
                b = max(a + 1, int(np.searchsorted(ends, first + self.BLOCK_VALUES, "right")))
                c, k = counts[a:b], keep[a:b]
                if k.any():
                    block = self._pooled[at + first : at + int(ends[b - 1])]
                    of_row = (
                        np.arange(lo + a, lo + b)
                        if per_row is None
                        else np.asarray(per_row[lo + a : lo + b])
                    )
                    if k.all():
                        values = np.asarray(block, dtype=np.float64)
                        rows = np.repeat(of_row, c)
                    else:
                        values = np.asarray(block[np.repeat(k, c)], dtype=np.float64)
                        rows = np.repeat(of_row[k], c[k])
                    if values.size:
                        yield values, rows
                a = b
            at += int(ends[-1]) if ends.size else 0


# Rows whose counts are read at a time while blocks are cut (8 MB of counts).
_ROWS_READ = 1 << 20


def latency_eligible(cols: Columns, warmup_s: float) -> np.ndarray:
    """Records whose latency counts: status 200, no transport error, sent after warm-up."""
    return np.asarray(
        (cols.status == 200) & (cols.transport_error.codes < 0) & (cols.send >= warmup_s)
    )


def output_tokens(cols: Columns) -> np.ndarray:
    """usage.completion_tokens, else the number of content chunks."""
    return np.where(np.isnan(cols.completion_tokens), cols.content_chunks, cols.completion_tokens)


def itl_values(cols: Columns, rows_mask: np.ndarray) -> PooledValues:
    """Gaps between consecutive content chunks of the same request, pooled."""
    return PooledValues(cols.gap_ms, cols.gap_counts, rows_mask)


def _mv(values_s: np.ndarray, mask: np.ndarray) -> MetricValues:
    rows = np.flatnonzero(mask)
    if mask.size < 2**31:  # a metric's rows are kept for the charts: half the memory
        rows = rows.astype(np.int32)
    return MetricValues(values_s[rows] * 1000.0, rows)


def metric_values(cols: Columns, warmup_s: float) -> dict[str, MetricValues]:
    """Every latency and client metric's raw values, in milliseconds: the per-record ones
    computed when read (``LazyValues``), ITL read in blocks (``PooledValues``)."""

    def ok() -> np.ndarray:
        return latency_eligible(cols, warmup_s)

    def ttft_mask() -> np.ndarray:
        return np.asarray(ok() & cols.stream & ~np.isnan(cols.first_token))

    def after_warmup() -> np.ndarray:
        return np.asarray(cols.send >= warmup_s)

    def tpot() -> MetricValues:
        tokens = output_tokens(cols)
        mask = ttft_mask() & (tokens >= 2)
        return _mv((cols.end - cols.first_token) / np.where(mask, tokens - 1, 1), mask)

    out: dict[str, MetricValues] = {
        "ttft_ms": LazyValues(lambda: _mv(cols.first_token - cols.send, ttft_mask())),
        "itl_ms": itl_values(cols, ok() & cols.stream),
        "tpot_ms": LazyValues(tpot),
        "e2e_ms": LazyValues(lambda: _mv(cols.end - cols.send, ok())),
        "headers_ms": LazyValues(
            lambda: _mv(cols.headers - cols.send, ok() & ~np.isnan(cols.headers))
        ),
        "send_lateness_ms": LazyValues(
            lambda: _mv(cols.send - cols.scheduled, after_warmup() & ~np.isnan(cols.scheduled))
        ),
        "queued_ms": LazyValues(lambda: _mv(cols.queued, after_warmup())),
    }
    if not np.isnan(cols.conn).all():
        # Waiting for a connection (new, or free in the pool) after the send: with many new
        # connections, the lateness at the server that send_lateness_ms does not show.
        out["connect_wait_ms"] = LazyValues(
            lambda: _mv(cols.conn - cols.send, after_warmup() & ~np.isnan(cols.conn))
        )
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
        lazy = values.get(name)
        if lazy is None:  # an optional metric nothing measured
            continue
        mv = lazy.load()
        if isinstance(mv, PooledValues) and not mv.in_memory():
            tables[name] = _pooled_table(
                mv, gid, per_group, name, group_tier, group_inference, tiers
            )
            continue
        g_of = mv.of_rows(gid)
        vals = mv.values  # built once (a pooled metric's is a copy)
        if all_inference:
            overall_mean = float(vals.mean()) if vals.size else 0.0
        else:
            inf = inference_of_group[g_of]
            overall_mean = float(vals[inf].mean()) if inf.any() else 0.0
            del inf
        if one_tier is not None and all_inference:  # one tier's table holds every value
            tier_means = {one_tier: overall_mean} if vals.size else {}
        else:
            tier_of = tier_of_group[g_of]
            tier_means = {
                code: float(chunk.mean())
                for code, chunk in enumerate(_grouped(tier_of, len(tiers), vals))
                if chunk.size
            }
            del tier_of
        sorted_groups: dict[int, np.ndarray] = {}
        for g, chunk in enumerate(_grouped(g_of, len(labels), vals)):
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
        del sorted_groups, mv, vals
    groups = tuple(
        GroupLatency(labels=lab, **stats)
        for lab, stats in zip(labels, per_group, strict=True)
        if stats
    )
    return Latency(**tables, groups=groups)


def _pooled_table(
    mv: PooledValues,
    gid: np.ndarray,
    per_group: list[dict[str, Stats]],
    name: str,
    group_tier: list[int],
    group_inference: list[bool],
    tiers: tuple[str, ...],
) -> MetricLatency:
    """A pooled metric's table and its groups' stats, read in blocks (``pooled``): every
    group, tier and the overall table in the same few passes over the values."""
    n_groups = len(per_group)
    inference = [g for g in range(n_groups) if group_inference[g]]
    by_code = [[g for g in inference if group_tier[g] == code] for code in range(len(tiers))]
    sets = [[g] for g in range(n_groups)] + by_code + [inference]

    stats = describe_groups(partial(mv.blocks, gid), n_groups, sets)
    for g in range(n_groups):
        if stats[g].count:
            per_group[g][name] = stats[g]
    by_tier = {tiers[code]: st for code, st in enumerate(stats[n_groups:-1]) if st.count}
    return MetricLatency(unit="ms", overall=stats[-1], by_tier=by_tier)
