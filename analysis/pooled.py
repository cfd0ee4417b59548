"""Exact statistics of a metric with too many values to hold sorted in memory (the
inter-token gaps: ~16 per streamed request, 1.3 GB at 10 M records).

The values are read in blocks, each value with a small group id, as often as needed (a
block source is called once per pass). Every wanted rank -- of a group, or of a union of
groups such as a tier -- is found by radix selection over the values' order-preserving
64-bit keys: a histogram of the top bits per group, then histograms of the next bits
inside the one bin that holds the rank, until that bin holds few enough values to collect
and sort. The percentiles are the numbers ``np.percentile`` (method 'linear') gives on all
the values, bit for bit; memory is bounded by a block, the histograms and ``COLLECT_MAX``
collected values, not by how many values there are. A pass reads every value once: two or
three passes describe every group and tier at once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from loadkit.analysis.stats import Stats, _from_keys, _order_keys, percentiles_by_rank

#: (values, group id of each value); NaN values count but have no rank.
Blocks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]

COLLECT_MAX = 1 << 24  # keys collected in one pass, at most (128 MB, and a target's copy)
_HIST_CELLS = 1 << 23  # counts in a pass's histograms (64 MB, and as much per batch)
_BIN_BATCH = 1 << 22  # bin numbers counted at once


@dataclass
class _Target:
    """One wanted rank of one set of groups, narrowed to the values whose key starts with
    ``prefix`` (its top ``depth`` bits), among which it is the ``rank``-th (0-based);
    ``cells``: how many of those values each of its groups holds."""

    groups: np.ndarray
    rank: int
    prefix: int = 0
    depth: int = 0
    cells: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    value: float | None = None

    @property
    def population(self) -> int:
        return int(self.cells.sum())

    def resolve(self, key: int) -> None:
        self.value = float(_from_keys(np.array([key], dtype=np.int64))[0])


def _bits_for(cells: int, room: int, most: int) -> int:
    """As many bits (4..``most``) as keep ``cells`` histograms of 2**bits within ``room``."""
    bits = most
    while bits > 4 and cells << bits > room:
        bits -= 1
    return bits


def describe_groups(blocks: Blocks, n_groups: int, sets: Sequence[Sequence[int]]) -> list[Stats]:
    """``stats.describe`` of the values of each set of groups (ids 0..n_groups-1; values
    of other ids are in no set), read from ``blocks`` in a few passes."""
    bits = _bits_for(n_groups, _HIST_CELLS, 20)
    counts, nans, sums, per_group = _first_pass(blocks, n_groups, bits)

    members = [np.unique(np.asarray(s, dtype=np.int64)) for s in sets]
    for i, m in enumerate(members):
        if m.size and (m[0] < 0 or m[-1] >= n_groups):
            raise ValueError(f"set {i} names groups outside 0..{n_groups - 1}: {m.tolist()}")
    targets: dict[tuple[int, int], _Target] = {}
    for i, m in enumerate(members):
        n = int(counts[m].sum())
        if n == 0 or nans[m].sum():
            continue
        for r in {*_ranks(n).tolist(), n - 1}:
            targets[(i, r)] = _Target(groups=m, rank=r)
    _first_level(list(targets.values()), per_group, bits)
    _narrow(blocks, n_groups, list(targets.values()))

    out: list[Stats] = []
    for i, m in enumerate(members):
        n, n_nan = int(counts[m].sum()), int(nans[m].sum())
        if n_nan:
            nan = float("nan")
            out.append(Stats(nan, nan, nan, nan, nan, nan, nan, count=n + n_nan))
            continue
        if n == 0:
            out.append(Stats(None, None, None, None, None, None, None, count=0))
            continue

        def select(ranks: np.ndarray, i: int = i, n: int = n) -> np.ndarray:
            ranks = np.where(ranks < 0, n + ranks, ranks)
            return np.array([targets[(i, int(r))].value for r in ranks], dtype=np.float64)

        p50, p90, p95, p99, p99_9 = (float(q) for q in percentiles_by_rank(n, select))
        peak = targets[(i, n - 1)].value
        assert peak is not None
        mean = float(sums[m].sum()) / n
        out.append(Stats(p50, p90, p95, p99, p99_9, mean, float(peak), count=n))
    return out


def _first_pass(
    blocks: Blocks, n_groups: int, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each group's count, NaNs, sum, and histogram over the top ``bits`` bits of its
    values' keys (groups x 2**bits)."""
    counts = np.zeros(n_groups, dtype=np.int64)
    nans = np.zeros(n_groups, dtype=np.int64)
    sums = np.zeros(n_groups, dtype=np.float64)
    hist = _Histogram(n_groups << bits)
    for values, groups in blocks():
        g, v = _in_groups(values, groups, n_groups)
        bad = np.isnan(v)
        if bad.any():
            nans += np.bincount(g[bad], minlength=n_groups)
            g, v = g[~bad], v[~bad]
        counts += np.bincount(g, minlength=n_groups)
        sums += np.bincount(g, weights=v, minlength=n_groups)
        top = (_order_keys(v) >> (64 - bits)) + (1 << (bits - 1))
        hist.add((g << bits) | top)
    return counts, nans, sums, hist.counts().reshape(n_groups, 1 << bits)


def _in_groups(values: np.ndarray, groups: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(groups, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    inside = (g >= 0) & (g < n)
    if not inside.all():
        g, v = g[inside], v[inside]
    return g, v


def _ranks(n: int) -> np.ndarray:
    """The 0-based ranks ``percentiles_by_rank`` asks of n values (-1: the largest)."""
    asked: list[np.ndarray] = []

    def record(ranks: np.ndarray) -> np.ndarray:
        asked.append(np.where(ranks < 0, n + ranks, ranks))
        return np.zeros(ranks.size)

    percentiles_by_rank(n, record)
    return np.unique(asked[0])


def _first_level(targets: list[_Target], hist: np.ndarray, bits: int) -> None:
    _descend(targets, lambda t: hist[t.groups], bits, -(1 << (bits - 1)))


def _descend(
    targets: list[_Target], rows_of: Callable[[_Target], np.ndarray], bits: int, base: int
) -> None:
    """Move each target into the bin that holds its rank, given each of its groups'
    histogram (``rows_of``) over the next ``bits`` bits under its prefix (bins ``base``,
    ``base`` + 1, ...); the targets of one set and prefix share the sums, one set's rows
    held at a time."""
    alike: dict[tuple[bytes, int], list[_Target]] = {}
    for t in targets:
        alike.setdefault((t.groups.tobytes(), t.prefix), []).append(t)
    for same in alike.values():
        rows = rows_of(same[0])
        cum = np.cumsum(rows.sum(axis=0))
        for t in same:
            b = int(np.searchsorted(cum, t.rank, side="right"))
            t.rank -= int(cum[b - 1]) if b else 0
            t.cells = rows[:, b].copy()
            t.prefix = (t.prefix << bits) + base + b if t.depth else base + b
            t.depth += bits
            if t.depth == 64:  # every bit known: the key is the value
                t.resolve(t.prefix)
        del rows, cum


def _plan(open_: list[_Target]) -> tuple[list[_Target], list[_Target]]:
    """The targets whose values this pass collects (the smallest bins first, at most
    COLLECT_MAX values over the distinct cells), and those it refines."""
    chosen: set[tuple[int, int]] = set()
    total = 0
    collect: list[_Target] = []
    refine: list[_Target] = []
    for t in sorted(open_, key=lambda t: t.population):
        new = [
            (g, p)
            for g, p in zip(t.groups.tolist(), t.cells.tolist(), strict=True)
            if (t.prefix, g) not in chosen
        ]
        more = sum(p for _, p in new)
        if total + more <= COLLECT_MAX:
            chosen.update((t.prefix, g) for g, _ in new)
            total += more
            collect.append(t)
        else:
            refine.append(t)
    return collect, refine


def _narrow(blocks: Blocks, n_groups: int, targets: list[_Target]) -> None:
    """Passes over the values until every target has its value: each pass collects the
    values of the targets whose bins are small, and refines the others' by as many bits
    as the histograms' room allows."""
    while True:
        open_ = [t for t in targets if t.value is None]
        if not open_:
            return
        depth = open_[0].depth  # the open targets descend together: one depth
        collect, refine = _plan(open_)
        cells = _Cells(n_groups, depth, open_)
        step = _bits_for(cells.size, _HIST_CELLS, min(20, 64 - depth)) if refine else 0
        hist = _Histogram(cells.size << step if refine else 0)
        # each cell's least and greatest key: a bin of one value repeated (gaps of 0.0
        # from coalesced chunks) is settled here, not bit by bit in passes to come
        low = np.full(cells.size, np.iinfo(np.int64).max, dtype=np.int64)
        high = np.full(cells.size, np.iinfo(np.int64).min, dtype=np.int64)
        want = np.zeros(cells.size, dtype=bool)
        for t in collect:
            want[cells.ids(t)] = True
        pieces: dict[int, list[np.ndarray]] = {}
        for values, groups in blocks():
            g, v = _in_groups(values, groups, n_groups)
            v_ok = ~np.isnan(v)
            if not v_ok.all():
                g, v = g[v_ok], v[v_ok]
            keys = _order_keys(v)
            del v, v_ok
            cell, at = cells.lookup(keys, g)
            keys = keys[at]
            del g
            if refine:
                sub = (keys >> (64 - depth - step)) & ((1 << step) - 1)
                hist.add((cell << step) | sub)
                np.minimum.at(low, cell, keys)
                np.maximum.at(high, cell, keys)
            if collect:
                _keep_pieces(pieces, cell, keys, want)
        for t in collect:
            mine = np.concatenate([p for c in cells.ids(t).tolist() for p in pieces.get(c, [])])
            t.resolve(int(np.partition(mine, t.rank)[t.rank]))
        del pieces
        for t in refine:
            _settle_ties(t, cells, low, high)
        refine = [t for t in refine if t.value is None]
        if refine:
            _descend(refine, partial(cells.rows, hist.counts()), step, 0)


def _keep_pieces(
    pieces: dict[int, list[np.ndarray]], cell: np.ndarray, keys: np.ndarray, want: np.ndarray
) -> None:
    """Append a block's keys of the wanted cells to each cell's pieces."""
    mine = want[cell]
    cell, keys = cell[mine], keys[mine]
    if cell.size == 0:
        return
    order = np.argsort(cell, kind="stable")
    cell, keys = cell[order], keys[order]
    starts = np.flatnonzero(np.diff(cell, prepend=-1))
    ends = np.append(starts[1:], cell.size)
    for c, a, b in zip(cell[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
        pieces.setdefault(c, []).append(keys[a:b].copy())


def _settle_ties(t: _Target, cells: _Cells, low: np.ndarray, high: np.ndarray) -> None:
    """A target whose bin holds one value only, in every group of its set: that is its
    value, whatever its rank."""
    ids = cells.ids(t)
    seen = ids[high[ids] >= low[ids]]
    if seen.size and (low[seen] == high[seen]).all() and (low[seen] == low[seen[0]]).all():
        t.resolve(int(low[seen[0]]))


class _Histogram:
    """Counts of bin numbers added block by block, binned a few million at a time: one
    ``bincount`` over a wide histogram per small block would cost more than the block."""

    def __init__(self, size: int) -> None:
        self._counts = np.zeros(size, dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._held = 0

    def add(self, bins: np.ndarray) -> None:
        self._pending.append(bins)
        self._held += bins.size
        if self._held >= _BIN_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            bins = np.concatenate(self._pending)
            self._counts += np.bincount(bins, minlength=self._counts.size)
        self._pending, self._held = [], 0

    def counts(self) -> np.ndarray:
        self._flush()
        return self._counts


class _Cells:
    """The (key prefix, group) cells the open targets read in a pass, numbered; a value's
    cell found by one table lookup while the prefixes are short, else by a binary search
    on its prefix and a table lookup on its group."""

    def __init__(self, n_groups: int, depth: int, targets: list[_Target]) -> None:
        self.n_groups = n_groups
        self.depth = depth
        pairs = sorted({(t.prefix, g) for t in targets for g in t.groups.tolist()})
        self.size = len(pairs)
        self.prefixes = np.array(sorted({p for p, _ in pairs}), dtype=np.int64)
        # prefixes x groups: a few thousand x the groups of a run's keys and endpoints
        self.table = np.full((self.prefixes.size, n_groups), -1, dtype=np.int64)
        for i, (p, g) in enumerate(pairs):
            self.table[int(np.searchsorted(self.prefixes, p)), g] = i
        self.dense: np.ndarray | None = None
        if n_groups << depth <= _HIST_CELLS:
            # the cell of (group, prefix) at [group << depth | prefix + 2**(depth - 1)]
            self.dense = np.full(n_groups << depth, -1, dtype=np.int32)
            half = 1 << (depth - 1)
            for i, (p, g) in enumerate(pairs):
                self.dense[(g << depth) | (p + half)] = i

    def rows(self, counts: np.ndarray, t: _Target) -> np.ndarray:
        """A target's cells' rows of a histogram of ``counts`` (cells x bins)."""
        return np.asarray(counts.reshape(self.size, -1)[self.ids(t)])

    def ids(self, t: _Target) -> np.ndarray:
        """The cells of a target (one per group of its set)."""
        row = int(np.searchsorted(self.prefixes, t.prefix))
        return np.asarray(self.table[row, t.groups])

    def lookup(self, keys: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cell of each value that is in one, and where those values are."""
        prefixes = keys >> (64 - self.depth)
        if self.dense is not None:
            cell = self.dense[(groups << self.depth) | (prefixes + (1 << (self.depth - 1)))]
            at = np.flatnonzero(cell >= 0)
            return cell[at].astype(np.int64), at
        i = np.searchsorted(self.prefixes, prefixes)
        np.minimum(i, self.prefixes.size - 1, out=i)
        hit = np.flatnonzero(self.prefixes[i] == prefixes)
        cell = self.table[i[hit], groups[hit]]
        inside = cell >= 0
        return cell[inside], hit[inside]
