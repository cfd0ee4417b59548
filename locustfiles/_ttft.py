"""Time to first token in Locust's web UI and CSV, kept out of Locust's request statistics.

A TTFT row in ``environment.stats`` would be counted as a request: totals, RPS and the
failure ratio would all be wrong. So TTFT lives in its own ``RequestStats`` (one row per
request kind and tier), travels from workers to the master in ``report_to_master`` like
Locust's own stats, shows as a "TTFT" tab of the web UI, and is written as
``<csv prefix>_ttft.csv`` when ``--csv`` is given. Locust buckets these values (about two
significant digits); exact TTFT percentiles come from the request records.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from locust.stats import PERCENTILES_TO_REPORT, RequestStats, StatsEntry

REPORT_KEY = "loadkit_ttft"
TAB_KEY = "ttft"
CSV_ROUTE = "/loadkit/ttft.csv"
METHOD = "TTFT"


class TtftStats:
    def __init__(self) -> None:
        self.stats = RequestStats(use_response_times_cache=False)

    def log(self, name: str, ttft_ms: float) -> None:
        self.stats.log_request(METHOD, name, round(ttft_ms), 0)

    # -- distribution (same pattern as locust.stats.setup_distributed_stats_event_listeners)

    def on_report_to_master(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        data[REPORT_KEY] = self.stats.serialize_stats()

    def on_worker_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        for row in data.get(REPORT_KEY, ()):
            entry = StatsEntry.unserialize(row, self.stats)
            key = (entry.name, entry.method)
            if key not in self.stats.entries:
                self.stats.entries[key] = StatsEntry(self.stats, entry.name, entry.method)
            self.stats.entries[key].extend(entry)
            self.stats.total.extend(entry)

    def reset(self, **_: Any) -> None:
        self.stats.reset_all()

    # -- views

    def entries(self) -> list[StatsEntry]:
        return sorted(
            (e for e in self.stats.entries.values() if e.num_requests), key=lambda e: e.name
        )

    def ui_rows(self) -> list[dict[str, Any]]:
        rows = []
        for e in [*self.entries(), self.stats.total]:
            if not e.num_requests:
                continue
            rows.append(
                {
                    "name": e.name,
                    "count": e.num_requests,
                    "median_ms": e.median_response_time,
                    "avg_ms": round(e.avg_response_time, 1),
                    "min_ms": e.min_response_time or 0,
                    "max_ms": e.max_response_time,
                    "p90_ms": e.get_response_time_percentile(0.9),
                    "p99_ms": e.get_response_time_percentile(0.99),
                }
            )
        return rows

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        pct = [f"{p * 100:g}%" for p in PERCENTILES_TO_REPORT]
        w.writerow(["Type", "Name", "Count", "Median", "Average", "Min", "Max", *pct])
        for e in [*self.entries(), self.stats.total]:
            if not e.num_requests:
                continue
            w.writerow(
                [
                    e.method or METHOD,
                    e.name,
                    e.num_requests,
                    e.median_response_time,
                    f"{e.avg_response_time:.2f}",
                    e.min_response_time or 0,
                    e.max_response_time,
                    *[e.get_response_time_percentile(p) for p in PERCENTILES_TO_REPORT],
                ]
            )
        return buf.getvalue()


def install_web_ui(environment: Any, ttft: TtftStats) -> None:
    """Add the "TTFT" tab to Locust's web UI (the React UI renders ``extended_tabs`` /
    ``extended_tables`` from the template arguments and the rows from ``extended_stats``
    in ``/stats/requests``), plus a CSV download."""
    import json

    from flask import make_response, request

    web_ui = environment.web_ui
    cols = [
        ("name", "Name"),
        ("count", "# TTFT samples"),
        ("median_ms", "Median (ms)"),
        ("avg_ms", "Average (ms)"),
        ("min_ms", "Min (ms)"),
        ("max_ms", "Max (ms)"),
        ("p90_ms", "90%ile (ms)"),
        ("p99_ms", "99%ile (ms)"),
    ]
    web_ui.template_args["extended_tabs"] = [{"title": "TTFT", "key": TAB_KEY}]
    web_ui.template_args["extended_tables"] = [
        {"key": TAB_KEY, "structure": [{"key": k, "title": t} for k, t in cols]}
    ]
    web_ui.template_args["extended_csv_files"] = [
        {"href": CSV_ROUTE, "title": "Download time-to-first-token statistics CSV"}
    ]

    @web_ui.app.after_request
    def _add_ttft(response):  # type: ignore[no-untyped-def]
        if request.path != "/stats/requests" or not response.is_json:
            return response
        doc = response.get_json()
        doc["extended_stats"] = [{"key": TAB_KEY, "data": ttft.ui_rows()}]
        response.set_data(json.dumps(doc))
        return response

    @web_ui.app.route(CSV_ROUTE)
    def _ttft_csv():  # type: ignore[no-untyped-def]
        resp = make_response(ttft.csv_text())
        resp.headers["Content-Type"] = "text/csv"
        resp.headers["Content-Disposition"] = "attachment;filename=ttft.csv"
        return resp
