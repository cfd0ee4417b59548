"""Locust's web UI for loadkit: a password login (``--web-login``, credentials from the
environment); the TTFT table, a separate ``RequestStats`` so Locust's totals stay clean, as
a tab, in ``/stats/requests`` and as a CSV download; and the tables by tier and by key
(``_board``) as tabs."""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadkit.locustfiles._board import TierBoard
from loadkit.locustfiles._options import WebLogin


def require_login(web_ui: Any, login: WebLogin, base_path: str) -> None:
    """Locust's login page (``--web-login``) checking one user name and password."""
    from flask import Blueprint, redirect, request, session, url_for
    from flask_login import UserMixin, login_user  # type: ignore[import-untyped]

    class Operator(UserMixin):
        def __init__(self, name: str) -> None:
            self.id = name

    def load(user_id: str) -> Operator | None:
        return Operator(user_id) if hmac.compare_digest(user_id, login.user) else None

    web_ui.app.secret_key = secrets.token_hex(32)  # sessions end with the process
    web_ui.login_manager.user_loader(load)
    blueprint = Blueprint("loadkit_login", __name__, url_prefix=base_path or None)

    @blueprint.route("/loadkit/login", methods=["POST"])
    def submit() -> Any:
        user = request.form.get("username", "")
        password = request.form.get("password", "")
        # Both compared in constant time, whichever is wrong.
        ok = hmac.compare_digest(user.encode(), login.user.encode())
        ok &= hmac.compare_digest(password.encode(), login.password.encode())
        if ok:
            login_user(Operator(login.user))
            return redirect(url_for("locust.index"))
        session["auth_error"] = "Invalid user name or password"
        return redirect(url_for("locust.login"))

    web_ui.app.register_blueprint(blueprint)
    web_ui.auth_args = {"username_password_callback": f"{base_path}/loadkit/login"}


TTFT_COLUMNS = (
    ("name", "Request kind"),
    ("count", "Streams"),
    ("median", "TTFT median (ms)"),
    ("p95", "p95"),
    ("p99", "p99"),
    ("avg", "Average"),
    ("min", "Min"),
    ("max", "Max"),
)


def ttft_rows(stats: Any) -> list[dict[str, Any]]:
    rows = []
    for e in sorted(stats.entries.values(), key=lambda e: e.name):
        if not e.num_requests:
            continue
        rows.append(
            {
                "name": e.name,
                "count": e.num_requests,
                "median": e.median_response_time,
                "p95": e.get_response_time_percentile(0.95),
                "p99": e.get_response_time_percentile(0.99),
                "avg": round(e.avg_response_time, 1),
                "min": e.min_response_time,
                "max": e.max_response_time,
            }
        )
    return rows


_CSV_COLS = ("name", "count", "median", "p95", "p99", "avg", "min", "max")


def ttft_csv(stats: Any) -> str:
    lines = [",".join(_CSV_COLS)]
    lines += [",".join(str(r[c]) for c in _CSV_COLS) for r in ttft_rows(stats)]
    return "\n".join(lines) + "\n"


def write_ttft_csv(stats: Any, path: str) -> None:
    Path(path).write_text(ttft_csv(stats))


TIER_COLUMNS = (
    ("tier", "Tier"),
    ("keys", "Keys"),
    ("rps", "Requests/s (last 10 s)"),
    ("ttft_p50", "TTFT median (ms, last 10 s)"),
    ("ttft_p95", "TTFT p95 (ms, last 10 s)"),
    ("requests", "Requests"),
    ("ok", "2xx"),
    ("limited", "429"),
    ("failed", "Other failures"),
    ("cancelled", "Stopped"),
)
KEY_COLUMNS = (
    ("key", "Key"),
    ("tier", "Tier"),
    ("status", "Status now"),
    ("rps", "Requests/s (last 10 s)"),
    ("ttft_p50", "TTFT median (ms, last 10 s)"),
    ("requests", "Requests"),
    ("ok", "2xx"),
    ("limited", "429"),
    ("failed", "Other failures"),
)


def _structure(columns: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"key": k, "title": t} for k, t in columns]


def add_tabs(
    web_ui: Any, stats: Any, board: TierBoard | None, now: Callable[[], float] | None
) -> None:
    """Locust's web UI gets the TTFT tab (``stats``: TTFT's own RequestStats) and, on the
    process that leads the run, the tabs by tier and by key (``board``, read at run time
    ``now()``), each in ``/stats/requests``; TTFT also as a CSV download."""
    from flask import make_response, request

    tabs = [{"title": "TTFT", "key": "ttft"}]
    tables = [{"key": "ttft", "structure": _structure(TTFT_COLUMNS)}]
    if board is not None:
        tabs += [{"title": "By tier", "key": "tiers"}, {"title": "By key", "key": "keys"}]
        tables += [
            {"key": "tiers", "structure": _structure(TIER_COLUMNS)},
            {"key": "keys", "structure": _structure(KEY_COLUMNS)},
        ]
    web_ui.template_args["extended_tabs"] = tabs
    web_ui.template_args["extended_tables"] = tables
    web_ui.template_args["extended_csv_files"] = [
        {"href": "/loadkit/ttft.csv", "title": "Download time-to-first-token statistics CSV"}
    ]

    @web_ui.app.after_request
    def _add_tables(response: Any) -> Any:
        if request.path.endswith("/stats/requests") and response.is_json:
            data = response.get_json()
            extended = [{"key": "ttft", "data": ttft_rows(stats)}]
            if board is not None and now is not None:
                t = now()
                extended += [
                    {"key": "tiers", "data": board.tier_rows(t)},
                    {"key": "keys", "data": board.key_rows(t)},
                ]
            data["extended_stats"] = extended
            response.set_data(json.dumps(data))
        return response

    @web_ui.app.route("/loadkit/ttft.csv")
    @web_ui.auth_required_if_enabled
    def _ttft_csv() -> Any:
        resp = make_response(ttft_csv(stats))
        resp.headers["Content-Type"] = "text/csv"
        resp.headers["Content-Disposition"] = "attachment;filename=ttft.csv"
        return resp
