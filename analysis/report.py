"""report.html: one self-contained page (inline CSS, charts as base64 data URIs, no
network) that someone who did not run the test can read. It opens with one screen a planner
acts on (``glance``: the verdict, the limits by key, the key figures), then the details, one
section after another: the verdict's reasons, answers by key, limit verdicts with
plain-language evidence, SLOs, latency tables, throughput and errors, the charts."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from html import escape
from pathlib import Path

from loadkit.analysis.glance import GLANCE_CSS, at_a_glance, verdict_line
from loadkit.analysis.glance import badge as _badge
from loadkit.analysis.glance import num as _num
from loadkit.analysis.limits import Limit, RefusalCounts, RequestsLimit
from loadkit.analysis.outcome import RunVerdict, Verdict
from loadkit.analysis.stats import STATS, Stats
from loadkit.analysis.summary import REPORT_FILE, Summary
from loadkit.analysis.token_charts import CAPTIONS as TOKEN_CAPTIONS
from loadkit.analysis.token_report import token_section

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1200px;color:#1b1f24;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;color:#fff}
.pass,.held,.met,.agrees{background:#1a7f37}.fail,.violated,.missed,.disagrees{background:#cf222e}
.possible{background:#9a6700}.inconclusive,.nodata{background:#6e7781}
.error,.unusable{background:#82071e}.incomplete{background:#bc4c00}
.banner{padding:10px 14px;border-radius:6px;margin:12px 0;background:#fff8c5;
border:1px solid #d4a72c}
.banner.bad{background:#ffebe9;border:2px solid #cf222e}
.banner.partial{background:#fff1e5;border:2px solid #bc4c00}
.banner h2{margin:0 0 6px;border:0;font-size:1.25em}.banner ul{margin:4px 0}
tr.unusable td{background:#ffebe9}td.key{white-space:nowrap}
table.answers td:last-child{min-width:0}
.verdict{font-size:1.3em;margin:12px 0}ul.reasons{margin-top:4px}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
details{margin:4px 0}code{font-size:.85em;word-break:break-all}.muted{color:#57606a}
td:last-child{min-width:18em}td p{margin:2px 0 6px}
.limits-detail td .badge{font-size:.86em;padding:0 8px}
"""

METRIC_NAMES = {
    "ttft_ms": "time to first token",
    "itl_ms": "inter-token latency (gaps between chunks)",
    "tpot_ms": "time per output token after the first",
    "e2e_ms": "end-to-end latency",
    "headers_ms": "time to response headers",
    "send_lateness_ms": "send lateness (actual − scheduled send)",
    "queued_ms": "client-side queueing before send",
    "connect_wait_ms": "connect wait (connection ready − send; asyncio engine)",
}
CHART_CAPTIONS = {
    "ttft_cdf.png": "Time to first token, cumulative distribution per tier.",
    "itl_cdf.png": "Inter-token latency, cumulative distribution per tier.",
    "latency_over_time.png": "TTFT and end-to-end latency (p50, p99) per time bin.",
    "throughput_over_time.png": "Requests sent, completed and refused (429) per second, and "
    "output tokens per second.",
    "inflight_per_key.png": "Requests in flight per key: certainly (headers to end) and "
    "possibly (send to end), against the promised concurrency cap.",
    "window_per_key.png": "Admitted requests in the trailing window per key (admission taken "
    "as the midpoint of send and headers), against the promised limit.",
    "arrival_per_key.png": "Arrival curve: the most admissions seen in any span of length t, "
    "against the promise N·ceil(t/W). A curve above the dashed staircase "
    "is a burst the promise does not allow.",
    "status_over_time.png": "Response status classes per second.",
    **TOKEN_CAPTIONS,
}


def _ids(ids: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(escape(i) for i in ids[:limit])
    more = f" … and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"<code>{shown}{more}</code>"


def _evidence(e: Limit) -> str:
    from loadkit.analysis.explain import duration  # imported here: report.py is shared

    parts = []
    v = e.verdict
    tol = v.tolerance
    if tol is not None and tol.margin_s is not None:
        if isinstance(e, RequestsLimit):
            closest = (
                f"The shortest span that could hold {v.promised + 1} admissions: "
                f"{_num(e.verdict.window_s + tol.margin_s, 3)} s (margin "
                f"{duration(tol.margin_s)} against the {e.verdict.window_s:g} s window)"
            )
        elif tol.margin_s > 0:
            closest = (
                f"{v.promised + 1} requests never shared an instant: the closest came "
                f"{duration(tol.margin_s)} apart (margin)"
            )
        else:
            closest = (
                f"The longest {v.promised + 1} requests could have been open together: "
                f"{duration(-tol.margin_s)} (margin {duration(tol.margin_s)})"
            )
        parts.append(
            f"<li>{closest}; timing uncertainty {duration(tol.timing_uncertainty_s)}, "
            f"from {escape(tol.basis)}</li>"
        )
    if tol is not None and tol.limitation:
        parts.append(f"<li>Cannot be decided on this key: {escape(tol.limitation)}</li>")
    if isinstance(e, RequestsLimit):
        ev_e = e.verdict.evidence.enforced
        if ev_e.certain_span_s is not None:
            a, b = ev_e.certain_span_s
            parts.append(
                f"<li>Most requests certainly admitted inside one span: "
                f"{ev_e.certain_count} between {_num(a, 3)} s and {_num(b, 3)} s: "
                f"{_ids(ev_e.request_ids or ())}</li>"
            )
        if ev_e.possible_span_s is not None:
            a, b = ev_e.possible_span_s
            parts.append(
                f"<li>Most requests that could have been admitted in one window: "
                f"{v.observed_max_possible} in [{_num(a, 3)} s, {_num(b, 3)} s)"
                + (
                    f": {_ids(ev_e.possible_request_ids)}"
                    if ev_e.possible_request_ids is not None
                    else ""
                )
                + "</li>"
            )
    else:
        ev_c = e.verdict.evidence.enforced
        if ev_c.certain_instant_s is not None:
            parts.append(
                f"<li>Certainly in flight together at {_num(ev_c.certain_instant_s, 3)}"
                f" s: {_ids(ev_c.request_ids or ())}</li>"
            )
        if ev_c.possible_request_ids is not None:
            parts.append(
                f"<li>Possibly in flight together at "
                f"{_num(ev_c.possible_instant_s, 3)} s: "
                f"{_ids(ev_c.possible_request_ids)}</li>"
            )
    ev_h = v.evidence.honoured
    if ev_h.refusals is not None and _refused(ev_h.refusals):
        parts.append(f"<li>{_attribution(ev_h.refusals)}</li>")
    for examples in (ev_h.unjustified_examples, ev_h.unjustified_uncoded_examples):
        for x in examples[:10]:
            parts.append(
                f"<li>Unjustified 429 <code>{escape(x.request_id)}</code> sent at "
                f"{_num(x.send_s, 3)} s: at most {x.bound} could have counted against "
                "the limit</li>"
            )
    if isinstance(e, RequestsLimit):
        for r in e.retry_after.examples[:10]:
            parts.append(
                f"<li>Retry-After broken: <code>{escape(r.refused_id)}</code> advised "
                f"{_num(r.retry_after_s, 3)} s; <code>{escape(r.followup_id)}"
                f"</code> sent at {_num(r.followup_send_s, 3)} s was refused again</li>"
            )
        for m in e.remaining_header.examples[:10] if e.remaining_header else ():
            parts.append(
                f"<li>x-ratelimit-remaining on <code>{escape(m.request_id)}</code> "
                f"implies {m.reported_used} used; the count was between {m.lower} "
                f"and {m.upper}</li>"
            )
    if not parts:
        return ""
    return f"<details><summary>evidence</summary><ul>{''.join(parts)}</ul></details>"


def _refused(r: RefusalCounts) -> int:
    return r.requests + r.concurrency + r.tokens + r.unattributed + (r.models or 0)


def _attribution(r: RefusalCounts) -> str:
    """Which limit refused the key's 429s, in words."""
    parts = [f"{r.requests} by the requests limit", f"{r.concurrency} by the concurrency limit"]
    if r.tokens:
        parts.append(f"{r.tokens} refused for tokens (not judged: no token limit is promised)")
    if r.models:
        parts.append(f"{r.models} by a model's own limit (judged per model)")
    if r.unattributed:
        parts.append(f"{r.unattributed} unattributed (judged against both limits)")
    signals = ", ".join(f"<code>{escape(k)}</code> ×{n}" for k, n in r.signals.items())
    return f"429 refusals: {', '.join(parts)}" + (f"; what said so: {signals}" if signals else "")


def _problems(summary: Summary) -> list[str]:
    problems = [k.problem for k in summary.keys or () if k.problem]
    if summary.completeness is not None:
        problems += summary.completeness.reasons
    return problems


def _banner(summary: Summary) -> str:
    """The error or incomplete banner at the top: the headline and every reason."""
    run = summary.run
    gaps = summary.completeness.reasons if summary.completeness is not None else ()
    if summary.verdict == RunVerdict.ERROR:
        items = "".join(f"<li>{escape(k.problem)}</li>" for k in summary.keys or () if k.problem)
        also = ""
        if gaps:
            also = (
                "<p><b>Records are missing too:</b></p><ul>"
                + "".join(f"<li>{escape(p)}</li>" for p in gaps)
                + "</ul>"
            )
        return (
            f"<div class='banner bad'><h2>{escape(summary.headline or 'ERROR')}</h2>"
            "<p>The target's answers to these keys are not the API's, so they say nothing "
            "about its limits. Fix the target address, path layout or keys and run again"
            + (
                "; the keys that could be judged are still shown below"
                if any(k.usable for k in summary.keys or ())
                else ""
            )
            + f".</p><ul>{items}</ul>"
            f"{also}</div>"
        )
    if summary.verdict == RunVerdict.INCOMPLETE:
        items = "".join(f"<li>{escape(p)}</li>" for p in gaps)
        return (
            f"<div class='banner partial'><h2>{escape(summary.headline or 'INCOMPLETE')}</h2>"
            "<p>Records are missing, so this run cannot pass. The verdicts below are "
            f"computed from what was recorded.</p><ul>{items}</ul></div>"
        )
    if run.interrupted:
        return (
            "<div class=banner><b>This run was interrupted</b> "
            f"({escape(run.stop_reason or 'stopped early')}): the figures cover the "
            "records written before it stopped.</div>"
        )
    return ""


def _keys_table(summary: Summary) -> str:
    keys = summary.keys or ()
    if not keys:
        return ""
    other = any(k.other_status for k in keys)
    models = any(k.limited.models for k in keys)
    rows = []
    for k in keys:
        lim = k.limited
        cls = "" if k.usable else " class=unusable"
        usable = "yes" if k.usable else _badge("unusable")
        rows.append(
            f"<tr{cls}><td class=key>{escape(k.key)}</td><td>{escape(k.tier or '–')}</td>"
            f"<td class=num>{k.requests:,}</td><td class=num>{k.ok:,}</td>"
            f"<td class=num>{lim.requests:,}</td><td class=num>{lim.concurrency:,}</td>"
            f"<td class=num>{lim.tokens:,}</td>"
            + (f"<td class=num>{lim.models or 0:,}</td>" if models else "")
            + f"<td class=num>{lim.unattributed:,}</td>"
            f"<td class=num>{k.client_error:,}</td><td class=num>{k.server_error:,}</td>"
            f"<td class=num>{k.no_response:,}</td>"
            + (f"<td class=num>{k.other_status:,}</td>" if other else "")
            + f"<td class=num>{k.cancelled:,}</td><td>{usable}</td></tr>"
        )
        if k.problem:
            span = 13 + other + models
            rows.append(f"<tr{cls}><td colspan={span}>{escape(k.problem)}</td></tr>")
    return (
        "<h2>Answers by key</h2><p class=muted>Chat and completion requests of each key by "
        "what the target answered; 429s by the limit that refused them (the response's own "
        "signal: error code, type, message or headers).</p>"
        "<table class=answers><tr><th>key</th><th>tier</th><th>requests</th><th>2xx</th>"
        "<th>429 requests</th><th>429 concurrency</th><th>429 tokens</th>"
        + ("<th>429 a model's limit</th>" if models else "")
        + "<th>429 unattributed</th><th>other 4xx</th><th>5xx</th><th>no response</th>"
        + ("<th>other status</th>" if other else "")
        + "<th>cancelled</th><th>usable?</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _limits_table(summary: Summary) -> str:
    if not summary.limits:
        return (
            "<p>No limit could be judged: no requests to the limited endpoints with a promise.</p>"
        )
    rows = []
    untested: list[Limit] = []
    for e in summary.limits:
        v = e.verdict
        if v.enforced == v.honoured == Verdict.INCONCLUSIVE:
            untested.append(e)
            continue
        extra = ""
        if isinstance(e, RequestsLimit):
            promise = f"{v.promised} per {e.verdict.window_s:g} s"
            extra = f"<br>Retry-After {_badge(e.retry_after.verdict)}"
            if e.remaining_header is not None:
                extra += f" remaining header {_badge(e.remaining_header.verdict)}"
        else:
            promise = f"{v.promised} at once"
        text = "".join(f"<p>{escape(s)}</p>" for s in e.explanation)
        unusable = " class=unusable" if v.enforced == Verdict.UNUSABLE else ""
        if unusable:
            extra = ""
        rows.append(
            f"<tr{unusable}><td class=key>{escape(e.key)}</td><td>{escape(e.tier)}</td>"
            f"<td>{escape(e.kind)}</td>"
            f"<td>{promise}</td><td class=num>{v.observed_max}</td>"
            f"<td class=num>{v.observed_max_possible}</td><td class=num>{v.offered_max}</td>"
            f"<td>{_badge(v.enforced)}{_decided_at(e)}</td><td>{_badge(v.honoured)}{extra}</td>"
            f"<td>{text}{_evidence(e)}</td></tr>"
        )
    table = ""
    if rows:
        table = (
            "<table><tr><th>key</th><th>tier</th><th>limit</th><th>promised</th>"
            "<th>observed (certain)</th><th>observed (possible)</th><th>most offered</th>"
            "<th>enforced</th><th>honoured</th><th>what happened</th></tr>"
            + "".join(rows)
            + "</table>"
        )
    return table + _untested_table(untested)


def _decided_at(e: Limit) -> str:
    """Under a held enforced badge: what it proves, at the timing tolerance it was decided
    at."""
    from loadkit.analysis.explain import held_concurrency_text, held_requests_text

    v = e.verdict
    if v.enforced != Verdict.HELD:
        return ""
    if isinstance(e, RequestsLimit):
        text = held_requests_text(v.promised, e.verdict.window_s, v.tolerance)
    else:
        text = held_concurrency_text(v.promised, v.tolerance)
    return f"<br><span class=muted>{escape(text.removeprefix('held: '))}</span>"


def _untested_table(entries: Sequence[Limit]) -> str:
    """The limits the scenario did not set out to provoke, apart from the verdicts."""
    if not entries:
        return ""
    rows = "".join(
        f"<tr><td class=key>{escape(e.key)}</td><td>{escape(e.tier)}</td>"
        f"<td>{escape(e.kind)}</td>"
        f"<td class=num>{e.verdict.promised}</td><td class=num>{e.verdict.offered_max}</td>"
        f"<td>{escape(' '.join(e.explanation[1:]))}</td></tr>"
        for e in entries
    )
    return (
        "<h3>Not tested by this scenario</h3><p class=muted>The load never provoked these "
        "limits, so they were neither shown to hold nor to fail (<code>inconclusive</code>): "
        "the scenario did not set out to test them.</p>"
        "<table><tr><th>key</th><th>tier</th><th>limit</th><th>promised</th>"
        "<th>most offered</th><th>why</th></tr>" + rows + "</table>"
    )


def _slo_table(summary: Summary) -> str:
    checks = summary.slo.checks
    if not checks:
        return "<p class=muted>No SLOs were set (run.json <code>slo</code> or --slo).</p>"
    rows = "".join(
        f"<tr><td>{escape(c.name)}</td><td>{escape(c.direction)} {c.threshold:g}</td>"
        f"<td class=num>{_num(c.observed, 3)}</td><td>{_badge(c.status)}</td>"
        f"<td>{escape(c.source)}</td></tr>"
        for c in checks
    )
    return (
        "<table><tr><th>SLO</th><th>objective</th><th>observed</th><th>status</th>"
        f"<th>from</th></tr>{rows}</table>"
    )


def _stats_row(label: str, d: Stats) -> str:
    cells = "".join(
        f"<td class=num>{_num(d.value(s), 1) if s != 'count' else d.count}</td>" for s in STATS
    )
    return f"<tr><td>{label}</td>{cells}</tr>"


def _latency_tables(summary: Summary) -> str:
    lat = summary.latency
    head = (
        "<tr><th>metric (ms)</th>"
        + "".join(f"<th>{s.replace('_', '.')}</th>" for s in STATS)
        + "</tr>"
    )
    rows = []
    for m, desc in METRIC_NAMES.items():
        table = lat.table(m)
        rows.append(
            _stats_row(f"<b>{m}</b> <span class=muted>{escape(desc)}</span>", table.overall)
        )
        for tier, d in table.by_tier.items():
            rows.append(_stats_row(f"&nbsp;&nbsp;tier {escape(tier)}", d))
    out = f"<table>{head}{''.join(rows)}</table>"
    g_rows = []
    for g in lat.groups:
        lab = g.labels
        label = (
            f"{escape(str(lab.tier))} / {escape(str(lab.key))} / {escape(str(lab.endpoint))}"
            f" / {'stream' if lab.stream else 'no stream'}"
        )
        for m in ("ttft_ms", "tpot_ms", "e2e_ms"):
            stats = g.stats(m)
            if stats is not None:
                g_rows.append(_stats_row(f"{label}: {m}", stats))
    if g_rows:
        out += (
            "<details><summary>by tier / key / endpoint / stream</summary><table>"
            f"{head}{''.join(g_rows)}</table></details>"
        )
    return out


def _throughput(summary: Summary) -> str:
    tp, err = summary.throughput, summary.errors
    gp = tp.goodput
    gp_text = (
        "no goodput thresholds in run.json"
        if not gp.thresholds
        else f"{gp.requests_per_s:.2f} req/s met {escape(str(gp.thresholds))}"
        + (f" ({gp.ratio:.1%} of successes)" if gp.ratio is not None else "")
    )
    by_status = ", ".join(f"{escape(k)}: {v}" for k, v in err.by_status.items())
    by_code = ", ".join(f"{escape(k)}: {v}" for k, v in err.by_code.items()) or "none"
    transport = ", ".join(f"{escape(k)}: {v}" for k, v in err.transport.items()) or "none"
    return (
        f"<ul><li>{tp.requests_per_s:.2f} successful requests/s, "
        f"{tp.output_tokens_per_s:.1f} output tokens/s over {tp.duration_s:.1f} s "
        f"(from warm-up end to the last response)</li><li>goodput: {gp_text}</li>"
        f"<li>errors (not counting 429): {err.errors} of {err.requests} "
        f"({err.error_rate:.2%}); 429 refusals: {err.throttled} "
        f"({err.throttle_rate:.2%})</li><li>by status: {by_status}</li>"
        f"<li>by API error code: {by_code}</li><li>transport errors: {transport}</li></ul>"
    )


def _charts(summary: Summary, out_dir: Path) -> str:
    parts = []
    for name in summary.charts or ():
        path = out_dir / name
        if not path.exists():
            continue
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(CHART_CAPTIONS.get(name, name))}</figcaption></figure>"
        )
    return "".join(parts) or "<p class=muted>No charts.</p>"


def _header(summary: Summary) -> str:
    run = summary.run
    return (
        "<h1>loadkit report</h1>"
        f"<div class=muted>run <b>{escape(run.run_id)}</b> · engine {escape(str(run.engine))} · "
        f"target {escape(str(run.target))} · started {escape(str(run.started_at))} · "
        f"{run.records:,} requests · warm-up {run.warmup_s:g} s</div>"
    )


def _opening_screen(summary: Summary) -> str:
    """What a planner reads first, on one screen: the error or incomplete banner when there
    is one, the verdict, the limits by key, the key figures."""
    return (
        f"<section id=summary>{_banner(summary)}{verdict_line(summary)}"
        f"{at_a_glance(summary)}</section>"
    )


def _reasons_section(summary: Summary) -> str:
    # The banner lists the problems already; here the rest of the verdict's reasons.
    in_banner = set(_problems(summary)) if _banner(summary) else set()
    reasons = [r for r in summary.verdict_reasons if r not in in_banner]
    if not reasons:
        return ""
    items = "".join(f"<li>{escape(r)}</li>" for r in reasons)
    return f"<h2>Why this verdict</h2><ul class=reasons>{items}</ul>"


def _limits_section(summary: Summary) -> str:
    s = summary.settings
    return f"""<h2>Rate limits: promised vs observed</h2>
<p>Each key is judged against its tier's promise. <b>Enforced</b>: the server never admitted
more than promised. <b>Honoured</b>: it never refused a request the promise allowed.
The client only knows a request was admitted somewhere between sending it and receiving the
response headers, so a verdict is <i>violated</i> only when the timing proves it,
<i>possible</i> when only the timing uncertainty allows it (not a failure), and
<i>inconclusive</i> when the load never reached the limit, <i>unusable</i> when the key's
answers were not the API's (nothing to judge). Each 429 is judged against the limit the
response named; one that named none against both. Concurrency counts a request as
certainly in flight from its headers to its end minus {s.concurrency_margin_s * 1000:g} ms.
Under-admission tolerance: {s.under_admission_tolerance:.0%}.</p>
<div class=limits-detail>{_limits_table(summary)}</div>"""


def _slo_section(summary: Summary) -> str:
    return f"<h2>Service-level objectives</h2>{_slo_table(summary)}"


def _latency_section(summary: Summary) -> str:
    return (
        "<h2>Latency</h2><p class=muted>Successful (status 200, no transport error) chat and "
        "completion requests sent after warm-up; exact percentiles of the raw values.</p>"
        + _latency_tables(summary)
    )


def _throughput_section(summary: Summary) -> str:
    return f"<h2>Throughput and errors</h2>{_throughput(summary)}"


def _charts_section(summary: Summary, out_dir: Path) -> str:
    return f"<h2>Charts</h2>{_charts(summary, out_dir)}"


FOOTER = (
    "<p class=muted>Definitions: docs/metrics.md, docs/verdicts.md and docs/report.md in "
    "loadkit. summary.json in this directory holds every figure on this page.</p>"
)


def render_report(summary: Summary, out_dir: Path) -> str:
    """The page: the opening screen, then the details, one section after another."""
    sections = (
        _header(summary),
        _opening_screen(summary),
        _reasons_section(summary),
        _keys_table(summary),
        _limits_section(summary),
        token_section(summary),
        _slo_section(summary),
        _latency_section(summary),
        _throughput_section(summary),
        _charts_section(summary, out_dir),
        FOOTER,
    )
    body = "\n".join(s for s in sections if s)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>loadkit report {escape(summary.run.run_id)}</title>
<style>{CSS}{GLANCE_CSS}</style></head><body>
{body}
</body></html>
"""


def write_report(summary: Summary, out_dir: Path) -> Path:
    path = Path(out_dir) / REPORT_FILE
    path.write_text(render_report(summary, Path(out_dir)), encoding="utf-8")
    return path
