"""The report's opening screen: the verdict, the limits by key with colour badges, the key
latency figures and the throughput, sized to fit one 1280x800 screen for a handful of keys.
Also the badge and number formatting the rest of the report uses."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from loadkit.analysis.limits import ConcurrencyLimit, Limit, RequestsLimit
from loadkit.analysis.stats import Stats
from loadkit.analysis.summary import Summary

# Element ids the screenshot test and readers' bookmarks rely on.
VERDICT_ID = "verdict"
LIMITS_ID = "limits-at-a-glance"
FIGURES_ID = "figures-at-a-glance"

GLANCE_CSS = """
#summary table{margin:6px 0 10px;font-size:.88em}#summary td,#summary th{padding:2px 7px}
#summary th.group{text-align:center}#summary td.badges{white-space:nowrap}
#summary td .badge{font-size:.86em;padding:0 8px}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:8px;
margin:4px 0}
.fig{border:1px solid #d0d7de;border-radius:6px;padding:5px 10px;background:#f6f8fa}
.fig .label{font-size:.74em;color:#57606a;text-transform:uppercase;letter-spacing:.03em}
.fig .value{font-size:1.1em;font-weight:600;font-variant-numeric:tabular-nums;
white-space:nowrap}
.fig .sub{font-size:.76em;color:#57606a}
.verdict .badge{font-size:1.05em;padding:3px 14px;text-transform:uppercase}
.legend{font-size:.8em;margin:6px 0 0}.legend .badge{font-size:.85em;padding:0 7px}
"""


def badge(word: str | None) -> str:
    """A coloured pill for a verdict word (the CSS class is the word itself)."""
    w = word or "n/a"
    cls = "nodata" if w in ("no data", "n/a") else w
    return f'<span class="badge {escape(cls)}">{escape(w)}</span>'


def num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return escape(str(x))


def verdict_line(summary: Summary) -> str:
    headline = escape((summary.headline or "").partition(" — ")[2])
    return f"<div class=verdict id={VERDICT_ID}>Verdict: {badge(summary.verdict)} {headline}</div>"


def _limit_cells(limit: Limit | None, with_retry: bool) -> str:
    span = 4 if with_retry else 3
    if limit is None:
        return f"<td colspan={span} class=muted>not promised</td>"
    v = limit.verdict
    if isinstance(limit, RequestsLimit):
        promise = f"{v.promised:,} / {v.window_s:g} s"
    else:
        promise = f"{v.promised:,} at once"
    cells = (
        f"<td class=num>{promise}</td><td class=badges>{badge(v.enforced)}</td>"
        f"<td class=badges>{badge(v.honoured)}</td>"
    )
    if with_retry:
        retry = limit.retry_after.verdict if isinstance(limit, RequestsLimit) else None
        cells += f"<td class=badges>{badge(retry) if retry else '–'}</td>"
    return cells


def limits_by_key(limits: Sequence[Limit]) -> str:
    """One row per key: its tier, then each limit's promise and its enforced and honoured
    badges (and Retry-After for the requests limit)."""
    if not limits:
        return (
            f"<table id={LIMITS_ID}><tr><td>No limit could be judged: no requests to the "
            "limited endpoints with a promise.</td></tr></table>"
        )
    # A model's own limits get a row of their own under the key's.
    by_key: dict[tuple[str, str | None], list[Limit]] = {}
    for lim in limits:
        by_key.setdefault((lim.key, lim.model), []).append(lim)
    rows = []
    for (key, model), lims in by_key.items():
        req = next((x for x in lims if isinstance(x, RequestsLimit)), None)
        conc = next((x for x in lims if isinstance(x, ConcurrencyLimit)), None)
        who = escape(key) if model is None else f"{escape(key)} · model {escape(model)}"
        rows.append(
            f"<tr><td class=key>{who}</td><td>{escape(lims[0].tier)}</td>"
            f"{_limit_cells(req, True)}{_limit_cells(conc, False)}</tr>"
        )
    return (
        f"<table id={LIMITS_ID}><tr><th rowspan=2>key</th><th rowspan=2>tier</th>"
        "<th colspan=4 class=group>requests per window</th>"
        "<th colspan=3 class=group>concurrency</th></tr>"
        "<tr><th>promised</th><th>enforced</th><th>honoured</th><th>Retry-After</th>"
        "<th>promised</th><th>enforced</th><th>honoured</th></tr>" + "".join(rows) + "</table>"
    )


def _figure(label: str, value: str, sub: str = "") -> str:
    sub_html = f"<div class=sub>{sub}</div>" if sub else ""
    return (
        f"<div class=fig><div class=label>{escape(label)}</div>"
        f"<div class=value>{value}</div>{sub_html}</div>"
    )


def _latency_figure(label: str, overall: Stats, by_tier: dict[str, Stats]) -> str:
    def ms(x: float | None) -> str:
        return "–" if x is None else f"{x:,.0f}"

    tiers = " · ".join(f"{escape(t)} {ms(s.p99)}" for t, s in by_tier.items() if s.p99 is not None)
    return _figure(
        f"{label} p50 / p99",
        f"{ms(overall.p50)} / {ms(overall.p99)} ms",
        f"p99 by tier: {tiers}" if len(by_tier) > 1 and tiers else "",
    )


def key_figures(summary: Summary) -> str:
    """TTFT, inter-token and end-to-end latency (p50, p99), throughput, 429s and errors,
    SLOs."""
    lat, tp, err = summary.latency, summary.throughput, summary.errors
    tiles = [
        _latency_figure("TTFT", lat.ttft_ms.overall, lat.ttft_ms.by_tier),
        _latency_figure("end-to-end", lat.e2e_ms.overall, lat.e2e_ms.by_tier),
        _latency_figure("inter-token", lat.itl_ms.overall, lat.itl_ms.by_tier),
        _figure(
            "throughput",
            f"{tp.requests_per_s:,.1f} req/s",
            f"{tp.output_tokens_per_s:,.0f} output tokens/s over {tp.duration_s:,.0f} s",
        ),
        _figure(
            "429 refusals",
            f"{err.throttle_rate:.1%}",
            f"{err.throttled:,} of {err.requests:,} requests",
        ),
        _figure(
            "errors (not 429)",
            f"{err.error_rate:.2%}",
            f"{err.errors:,} of {err.requests:,} requests",
        ),
    ]
    checks = summary.slo.checks
    if checks:
        met = sum(1 for c in checks if c.met)
        missed = [c.name for c in checks if c.met is False]
        tiles.append(
            _figure(
                "SLOs",
                f"{met} of {len(checks)} met",
                "missed: " + ", ".join(escape(n) for n in missed) if missed else "",
            )
        )
    return f"<div class=figures id={FIGURES_ID}>{''.join(tiles)}</div>"


BADGE_LEGEND = (
    "<p class='legend muted'>"
    f"{badge('held')} shown to hold · {badge('violated')} proven broken · "
    f"{badge('possible')} only the timing uncertainty allows a breach · "
    f"{badge('inconclusive')} the load never reached the limit · "
    "<b>enforced</b>: never admitted more than promised; <b>honoured</b>: never refused what "
    "the promise allowed.</p>"
)


def at_a_glance(summary: Summary) -> str:
    """The opening screen's body under the verdict: the limits by key, what the badges
    mean, then a strip of key figures."""
    return f"{limits_by_key(summary.limits)}{BADGE_LEGEND}{key_figures(summary)}"
