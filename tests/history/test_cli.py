"""``loadkit history add|report|show`` and ``loadkit run --history`` as a user runs them."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadkit.cli import _build_parser, main
from loadkit.history.cli import add_after_run, parse_since
from loadkit.history.store import open_store
from tests.history.builders import T0, Night, noisy, write_night
from tests.history.test_check import add_nights

ROOT = Path(__file__).resolve().parents[2]


def test_help_stays_light():
    code = (
        "import sys, loadkit.cli as c; c._build_parser().format_help();"
        "heavy = {'sqlalchemy', 'scipy', 'matplotlib', 'pandas', 'numpy'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_add_reports_each_folder_and_refuses_a_broken_one(db_url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOADKIT_TAGS", "env=ci")
    monkeypatch.setenv("GITHUB_SHA", "1234567890abcdef")
    good = [write_night(tmp_path, i, Night()) for i in range(2)]
    broken = tmp_path / "not-analysed"
    broken.mkdir()
    code = main(
        [
            "history",
            "add",
            str(good[0]),
            str(broken),
            str(good[1]),
            "--db",
            db_url,
            "--tag",
            "gpu=none",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out.count("added as run") == 2
    assert "not-analysed/summary.json: no summary (run `loadkit analyze" in captured.err
    assert main(["history", "add", str(good[0]), "--db", db_url]) == 0
    assert "already in the history" in capsys.readouterr().out
    with open_store(db_url) as store:
        runs = store.runs()
        assert [r.git_commit for r in runs] == ["1234567890abcdef"] * 2
        assert store.tags_of([runs[0].id]) == {runs[0].id: {"env": "ci", "gpu": "none"}}


def _history(db: str, root: Path) -> None:
    ttft = noisy(20, 100.0, seed=2) + noisy(8, 130.0, seed=3)
    nights = [Night(ttft=v) for v in ttft]
    nights[-1] = Night(
        ttft=ttft[-1],
        limits={("free-1", "requests"): "violated", ("free-1", "concurrency"): "held"},
        verdict="fail",
    )
    add_nights(db, root / "a", nights, scenario="nightly")
    add_nights(db, root / "b", [Night() for _ in range(5)], scenario="other", first=40)


def test_report_is_one_self_contained_page_with_its_charts(db_url, tmp_path, capsys):
    _history(db_url, tmp_path)
    out = tmp_path / "report"
    assert main(["history", "report", "--db", db_url, "--out", str(out)]) == 0
    assert "(2 series, 33 runs)" in capsys.readouterr().out
    page = (out / "history.html").read_text()
    assert 'src="http' not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 12  # ttft, itl, e2e, throughput, errors, verdicts per series
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for name in ("nightly-ttft.png", "nightly-verdicts.png", "other-throughput.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # the shift at night 20 is listed as a regression of each TTFT percentile
    rows = re.findall(r"<tr><td>2026-10-21 03:00</td><td>nightly-020</td>.*?</tr>", page)
    assert len(rows) == 3 and all("ttft_ms.p" in r and 'class="worse"' in r for r in rows)
    assert "verdict <b>fail</b>" in page


def test_report_filters(db_url, tmp_path, capsys):
    _history(db_url, tmp_path)
    out = tmp_path / "r"
    since = "2026-10-25"
    assert (
        main(
            [
                "history",
                "report",
                "--db",
                db_url,
                "--out",
                str(out),
                "--scenario",
                "nightly",
                "--since",
                since,
            ]
        )
        == 0
    )
    assert "(1 series, 4 runs)" in capsys.readouterr().out
    assert not (out / "other-ttft.png").exists()


def test_show_prints_runs_change_points_and_verdicts(db_url, tmp_path, capsys):
    _history(db_url, tmp_path)
    assert main(["history", "show", "--db", db_url, "--scenario", "nightly", "--last", "10"]) == 0
    text = capsys.readouterr().out
    assert "nightly @ https://staging.example/api/v1: 28 runs, last 10 shown" in text
    line = next(ln for ln in text.splitlines() if "nightly-020" in ln)
    assert "▲ttft_ms.p50 +" in line and "▲ttft_ms.p99 +" in line
    assert sum("▲" in ln for ln in text.splitlines() if ln.startswith("2026-")) == 1
    verdicts = re.search(r"free-1 requests enforced\s+(\S+)", text)
    assert verdicts is not None and verdicts.group(1) == "HHHHHHHHHV"


def test_empty_history(tmp_path, capsys):
    db = str(tmp_path / "h.db")
    assert main(["history", "show", "--db", db]) == 0
    assert "no runs in the history" in capsys.readouterr().out
    assert main(["history", "report", "--db", db, "--out", str(tmp_path / "r")]) == 0
    assert "No runs in the history" in (tmp_path / "r" / "history.html").read_text()


def test_since_parsing():
    assert parse_since("30d", now=T0) == T0 - 30 * 86400
    assert parse_since("12h", now=T0) == T0 - 12 * 3600
    assert parse_since("2026-10-01T03:00:00Z") == T0
    assert parse_since("2026-10-01T03:00") == T0  # UTC unless it says
    with pytest.raises(ValueError, match="--since"):
        parse_since("last week")


def test_run_has_a_history_option():
    parser = _build_parser()
    assert parser.parse_args(["run"]).history is None
    assert parser.parse_args(["run", "--history"]).history == ""
    assert (
        parser.parse_args(["run", "--history", "postgresql://h/db"]).history == "postgresql://h/db"
    )


def test_add_after_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default database is loadkit-history.db here
    monkeypatch.delenv("LOADKIT_HISTORY_DB", raising=False)
    run = write_night(tmp_path, 0, Night())
    assert add_after_run(run, "") == 0
    with open_store(None) as store:
        assert [r.run_id for r in store.runs()] == ["nightly-000"]
    assert (tmp_path / "loadkit-history.db").exists()
    assert add_after_run(tmp_path / "nothing", "") == 2


@pytest.mark.slow
def test_loadkit_run_with_history_stores_the_run(default_async_run):
    # the built-in scenario's asyncio run with --history (and --no-charts: the history
    # stores figures, not charts), shared with tests/test_default_run.py
    proc, out, db = default_async_run.proc, default_async_run.out, default_async_run.history_db
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert "added as run #1" in proc.stderr
    with open_store(str(db)) as store:
        (run,) = store.runs()
        assert (run.run_id, run.verdict, run.target) == ("run", summary["verdict"], "embedded")
        values = store.metric_values([run.id], ["requests_per_s"])
        assert values["requests_per_s"][run.id] == summary["throughput"]["requests_per_s"]


def test_show_a_tier(tmp_path, capsys):
    db = str(tmp_path / "h.db")
    add_nights(db, tmp_path, [Night(ttft=100.0), Night(ttft=200.0)])
    assert main(["history", "show", "--db", db, "--tier", "free"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("2026-")]
    # the builder's free tier is 10 % slower than overall; TTFT p99 = 2 x p50
    assert [ln.split()[4] for ln in rows] == ["220.0", "440.0"]
