"""report.html's section on token and per-day promises: for each key (and model) the
promise, the most volume certainly and possibly admitted in one window, the load offered,
the verdicts with their evidence (unjustified refusals, a broken reset, the token headers
against what the client saw), and why a promise the run could not reach stayed
unjudged. An HTML fragment, styled by the page's own CSS (``report.py``)."""

from __future__ import annotations

from html import escape

from loadkit.analysis.summary import Summary
from loadkit.analysis.token_charts import ARRIVAL_FILE, CAPTIONS, WINDOW_FILE
from loadkit.analysis.token_verdicts import TOKENS, TokenLimit
from loadkit.analysis.tokens import WindowPromise

INTRO = (
    "<p>Token and per-day promises are judged like the requests limit, each request "
    "weighing what it asked: its prompt tokens (the service's <code>usage</code>, else the "
    "client's own count of what it sent) and its <code>max_tokens</code>, reserved at "
    "admission as OpenAI counts it. <b>Enforced</b>: never more volume admitted in one "
    "window than promised. <b>Honoured</b>: no refusal for this limit while the window, "
    "plus the refused request, fitted the promise. <b>Reset</b>: a request sent after the "
    "advertised Retry-After or <code>x-ratelimit-reset-tokens</code> was not refused again "
    "for the same limit (unless another admission took the room).</p>"
)


def _badge(word: str | None) -> str:
    w = word or "n/a"
    cls = "nodata" if w in ("no data", "n/a") else w
    return f'<span class="badge {escape(cls)}">{escape(w)}</span>'


def _num(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) else f"{x:,.1f}"


def promise_text(p: WindowPromise) -> str:
    """``10,000 total tokens / 60 s``, ``1,000 requests / 86400 s``."""
    what = f"{p.counts} tokens" if p.kind == TOKENS else "requests"
    return f"{p.limit:,} {what} / {p.window_s:g} s"


def _row(e: TokenLimit) -> str:
    v = e.verdict
    p = v.promise
    checks = f"reset {_badge(e.reset.verdict)}"
    if e.remaining_header is not None:
        checks += f"<br>remaining header {_badge(e.remaining_header.verdict)}"
    evidence = "".join(f"<p>{escape(s)}</p>" for s in e.explanation)
    if v.certain_request_ids:
        ids = ", ".join(escape(i) for i in v.certain_request_ids[:20])
        evidence += (
            "<details><summary>requests of the fullest window</summary>"
            f"<code>{ids}</code></details>"
        )
    unusable = " class=unusable" if v.enforced == "unusable" else ""
    return (
        f"<tr{unusable}><td class=key>{escape(e.key)}</td><td>{escape(e.tier)}</td>"
        f"<td>{escape(e.model or 'every model')}</td><td>{escape(promise_text(p))}</td>"
        f"<td class=num>{_num(v.observed_max)}</td>"
        f"<td class=num>{_num(v.observed_max_possible)}</td>"
        f"<td class=num>{_num(v.offered_max)}</td>"
        f"<td>{_badge(v.enforced)}</td><td>{_badge(v.honoured)}</td><td>{checks}</td>"
        f"<td>{evidence}</td></tr>"
    )


def token_section(summary: Summary) -> str:
    """The section, or "" for a run whose tiers promise no tokens nor requests per day."""
    entries = summary.tokens or ()
    if not entries:
        return ""
    charts = [n for n in (WINDOW_FILE, ARRIVAL_FILE) if n in (summary.charts or ())]
    chart_note = (
        "<p class=muted>Charts below: "
        + "; ".join(f"{escape(CAPTIONS[n])} ({escape(n)})" for n in charts)
        + ".</p>"
        if charts
        else ""
    )
    rows = "".join(_row(e) for e in entries)
    return (
        "<h2>Token and per-day limits: promised vs observed</h2>"
        + INTRO
        + "<table><tr><th>key</th><th>tier</th><th>model</th><th>promise</th>"
        "<th>certain max</th><th>possible max</th><th>offered max</th><th>enforced</th>"
        "<th>honoured</th><th>checks</th><th>evidence</th></tr>" + rows + "</table>" + chart_note
    )
