"""PNG charts of the token promises (matplotlib, Agg): each judged key's admitted token
volume in the trailing token window against the promise, and the arrival curve in
tokens (the most tokens admitted in any span of length t, next to the promised envelope
N x ceil(t / W)). Point estimates: a request counts at the midpoint of [send, headers]
with the tokens it certainly weighs; the verdicts (``tokens.py``) bound both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loadkit.analysis import figures
from loadkit.analysis.summary import Analysis
from loadkit.analysis.token_verdicts import TOKENS, TokenLimit, scope_requests
from loadkit.analysis.tokens import Requests

MAX_CHARTED = 12
CURVE_POINTS = 60
WINDOW_FILE = "tokens_window_per_key.png"
ARRIVAL_FILE = "tokens_arrival_per_key.png"
CAPTIONS = {
    WINDOW_FILE: "Tokens admitted in the trailing token window, per key, against the promise",
    ARRIVAL_FILE: "Arrival curve in tokens: most tokens admitted in any span of length t",
}


def admitted_points(r: Requests) -> tuple[np.ndarray, np.ndarray]:
    """Admitted requests' point-estimate admission instants (sorted) and their certain
    tokens."""
    adm = r.admitted
    mid = (r.s[adm] + r.hi[adm]) / 2.0
    order = np.argsort(mid, kind="stable")
    return mid[order], r.lo[adm][order]


def trailing_volume(t: np.ndarray, w: np.ndarray, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The tokens admitted in (x - W, x] as a step function of x (t sorted): its value
    changes only at an admission t_i or when one leaves the window, at t_i + W."""
    x = np.unique(np.concatenate((t, t + window_s)))
    prefix = np.concatenate(([0.0], np.cumsum(w)))
    upto = np.searchsorted(t, x, side="right")
    after = np.searchsorted(t, x - window_s, side="right")
    return x, np.asarray(prefix[upto] - prefix[after])


def arrival_tokens(t: np.ndarray, w: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """For each span length: the most tokens of points in one closed span [t_i, t_i + L]."""
    prefix = np.concatenate(([0.0], np.cumsum(w)))
    starts = np.arange(t.size)
    out = np.zeros(spans.size)
    for j, length in enumerate(spans.tolist()):
        ends = np.searchsorted(t, t + length, side="right")
        out[j] = float((prefix[ends] - prefix[starts]).max()) if t.size else 0.0
    return out


def _charted(result: Analysis) -> list[tuple[TokenLimit, Requests]]:
    out = []
    for e in result.summary.tokens or ():
        if e.verdict.promise.kind != TOKENS:
            continue
        r = scope_requests(result.cols, e.key, e.verdict.promise)
        if r is not None and r.n:
            out.append((e, r))
    return out[:MAX_CHARTED]


def _axes(n: int, title: str) -> tuple[Any, list[Any]]:
    fig, axes = figures.figure(10.0, 1.75, n, figures.Margins(gap=0.35))
    fig.suptitle(title, y=1 - 0.1 / fig.get_figheight())
    return fig, axes


def _label(e: TokenLimit) -> str:
    return e.key if e.model is None else f"{e.key}\n{e.model}"


def chart_token_window(charted: list[tuple[TokenLimit, Requests]], out: Path) -> str:
    fig, axes = _axes(len(charted), "Tokens admitted in the trailing token window")
    for ax, (e, r) in zip(axes, charted, strict=True):
        p = e.verdict.promise
        t, w = admitted_points(r)
        x, level = trailing_volume(t, w, p.window_s)
        ax.step(
            np.concatenate(([0.0], x)),
            np.concatenate(([0.0], level)),
            where="post",
            label=f"{p.counts} tokens in trailing {p.window_s:g} s",
        )
        refused = r.refused
        if refused.any():
            ax.scatter(
                r.s[refused],
                np.full(int(refused.sum()), p.limit),
                marker="x",
                color="orange",
                label="refused for tokens",
                zorder=3,
            )
        ax.axhline(p.limit, color="red", linestyle="--", label="promised", zorder=0)
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], p.limit * 1.15))
        ax.set_ylabel(_label(e))
        ax.legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("run time (s)")
    figures.save_png(fig, out / WINDOW_FILE)
    return WINDOW_FILE


def chart_token_arrival(charted: list[tuple[TokenLimit, Requests]], out: Path) -> str:
    fig, axes = _axes(len(charted), "Arrival curve in tokens: most admitted in a span of length t")
    for ax, (e, r) in zip(axes, charted, strict=True):
        p = e.verdict.promise
        horizon = 3 * p.window_s
        spans = np.linspace(0.0, horizon, CURVE_POINTS)
        t, w = admitted_points(r)
        ax.step(spans, arrival_tokens(t, w, spans), where="post", label="observed (midpoint)")
        env = np.linspace(1e-9, horizon, 600)
        ax.plot(
            env,
            p.limit * np.ceil(env / p.window_s),
            color="red",
            linestyle="--",
            label="promised N*ceil(t/W)",
        )
        ax.set_xlim(0, horizon)
        ax.set_ylabel(_label(e))
        ax.legend(loc="lower right", fontsize="small")
    axes[-1].set_xlabel("span length t (s)")
    figures.save_png(fig, out / ARRIVAL_FILE)
    return ARRIVAL_FILE


def write_token_charts(result: Analysis, out: Path, written: list[str]) -> None:
    """Both token charts into ``out`` (nothing when no key has a token promise); their
    names are appended to ``written``."""
    charted = _charted(result)
    if not charted:
        return
    written.append(chart_token_window(charted, out))
    written.append(chart_token_arrival(charted, out))
