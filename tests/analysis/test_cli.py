"""``loadkit analyze`` through analyze_main: exit codes, summary.json schema, outputs."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest

from loadkit.analysis.cli import analyze_main
from loadkit.analysis.summary import analyze_run
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run


def args(run_dir, *slo, charts=False, quiet=True):
    return argparse.Namespace(
        run_dir=str(run_dir), slo=list(slo), no_charts=not charts, quiet=quiet
    )


def make_run(
    tmp: Path, kind: str = "sliding_log", *, slo=None, interrupted=False, name="run"
) -> Path:
    lim = Limiter(kind, requests=20, window_s=10.0, concurrency=4)
    sends = np.linspace(9.0, 11.0, 40) if kind == "fixed_window" else even_sends(0.3, 40.0)
    kr = simulate_key("key-a", "free", lim, sends, Timing(tokens=8))
    kr2 = simulate_key("key-b", "free", lim, even_sends(0.35, 40.0) + 0.05, Timing(tokens=8))
    meta = run_meta(
        {"free": lim},
        [("key-a", "free"), ("key-b", "free")],
        slo=slo or {},
        goodput={"ttft_ms": 500},
        interrupted=interrupted,
    )
    return write_run(tmp / name, meta, [kr, kr2])


def test_pass_or_inconclusive_exits_0_and_writes_schema(tmp_path):
    run = make_run(tmp_path, slo={"ttft_ms": {"p99": 800}, "error_rate": 0.05})
    out = io.StringIO()
    assert analyze_main(args(run, quiet=False), out=out) == 0
    text = out.getvalue()
    assert "VERDICT" in text and "key-a" in text
    s = json.loads((run / "summary.json").read_text())
    assert s["schema"] == "loadkit.summary/2"
    assert s["headline"] == "PASS — no violation and every SLO met"
    assert s["completeness"]["complete"] is True
    # Both keys offer ~3 req/s against 2 req/s promised: their requests limits held; the
    # concurrency cap of 4 was never reached, which is listed but does not stop a pass.
    assert s["verdict"] == "pass"
    assert s["verdict_reasons"] == [
        "no violation and every SLO met; 4 verdicts held, 4 not tested by this scenario "
        "(the load never provoked them):",
        "key-a concurrency enforced: inconclusive",
        "key-a concurrency honoured: inconclusive",
        "key-b concurrency enforced: inconclusive",
        "key-b concurrency honoured: inconclusive",
    ]
    for k in ("verdict", "limits", "latency", "throughput", "slo", "errors", "run"):
        assert k in s
    entry = s["limits"][0]
    for k in (
        "tier",
        "key",
        "kind",
        "promised",
        "window_s",
        "observed_max",
        "enforced",
        "honoured",
        "evidence",
        "observed_max_possible",
        "offered",
        "retry_after",
        "remaining_header",
    ):
        assert k in entry, k
    assert {e["kind"] for e in s["limits"]} == {"requests", "concurrency"}
    for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "headers_ms"):
        assert set(s["latency"][m]["overall"]) == {
            "p50",
            "p90",
            "p95",
            "p99",
            "p99_9",
            "mean",
            "max",
            "count",
        }
        assert "free" in s["latency"][m]["by_tier"]
    assert s["latency"]["groups"]
    assert all(c["met"] for c in s["slo"]["checks"])
    for k in ("run_id", "engine", "duration_s", "interrupted", "warmup_s"):
        assert k in s["run"]


def test_violation_exits_1(tmp_path):
    run = make_run(tmp_path, "fixed_window")
    assert analyze_main(args(run)) == 1
    s = json.loads((run / "summary.json").read_text())
    assert s["verdict"] == "fail"


def test_missed_slo_exits_1_and_override_wins(tmp_path):
    run = make_run(tmp_path, slo={"ttft_ms": {"p99": 800}})
    assert analyze_main(args(run, "ttft_ms.p99=1")) == 1
    s = json.loads((run / "summary.json").read_text())
    check = s["slo"]["checks"][0]
    assert check["source"] == "--slo" and check["met"] is False
    assert analyze_main(args(run, "itl_ms.p99.9=1000", "error_rate=0.5")) == 0


@pytest.mark.parametrize(
    "bad", ["ttft_ms", "ttft_ms.p98=3", "nope.p99=3", "error_rate.p99=1", "ttft_ms.p99=fast"]
)
def test_bad_slo_syntax_exits_2(tmp_path, bad, capsys):
    run = make_run(tmp_path)
    assert analyze_main(args(run, bad)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loadkit analyze:") and "\n" not in err


def test_unusable_input_exits_2(tmp_path, capsys):
    assert analyze_main(args(tmp_path / "missing")) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert analyze_main(args(empty)) == 2
    assert "run.json" in capsys.readouterr().err
    run = make_run(tmp_path)
    for f in run.glob("records-*.jsonl"):
        f.unlink()
    assert analyze_main(args(run)) == 2
    (run / "records-x.jsonl").write_text("")
    assert analyze_main(args(run)) == 2
    (run / "records-x.jsonl").write_text("not json\n{}\n")
    assert analyze_main(args(run)) == 2
    run2 = make_run(tmp_path, name="run2")
    (run2 / "run.json").write_text("{oops")
    assert analyze_main(args(run2)) == 2


def test_interrupted_run_is_incomplete_and_never_passes(tmp_path):
    run = make_run(tmp_path, interrupted=True)
    # a torn last line, as a killed writer leaves it
    with open(next(run.glob("records-*.jsonl")), "a") as fh:
        fh.write('{"run_id": "sim", "send_s": 1')
    out = io.StringIO()
    # The same load as the passing run above, but interrupted: incomplete, exit 3, said
    # first; the verdicts of what was recorded are still there.
    assert analyze_main(args(run, quiet=False), out=out) == 3
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "INCOMPLETE: the run was interrupted: the records cover only the part before it stopped"
    )
    assert "VERDICT: INCOMPLETE — no violation on what was recorded" in lines
    s = json.loads((run / "summary.json").read_text())
    assert s["run"]["interrupted"] is True
    assert s["verdict"] == "incomplete"
    assert s["completeness"]["complete"] is False and s["completeness"]["interrupted"] is True
    assert [e["enforced"] for e in s["limits"] if e["kind"] == "requests"] == ["held", "held"]


def test_charts_and_self_contained_report(tmp_path):
    run = make_run(tmp_path, "fixed_window")
    s = analyze_run(run, charts=True)
    assert len(s["charts"]) >= 8
    for name in s["charts"]:
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(s["charts"])
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert "NOT ENFORCED" in html and "violated" in html


def test_parquet_records_are_read_like_jsonl(tmp_path):
    import pyarrow.parquet as pq

    from loadkit.analysis.columns import read_table

    run = make_run(tmp_path)
    from_jsonl = analyze_run(run, charts=False)
    pq.write_table(read_table(run), run / "records.parquet")
    for f in run.glob("records-*.jsonl"):
        f.unlink()
    from_parquet = analyze_run(run, charts=False)
    assert from_parquet["limits"] == from_jsonl["limits"]
    assert from_parquet["latency"] == from_jsonl["latency"]


def test_analysis_never_imports_an_engine():
    import subprocess
    import sys

    code = (
        "import sys, loadkit.analysis.cli, loadkit.analysis.summary, loadkit.analysis.compare, "
        "loadkit.analysis.charts, loadkit.analysis.report; "
        "bad = [m for m in ('aiohttp', 'locust', 'gevent', 'loadkit.engine', 'loadkit.server') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_installing_loadkit_claims_no_other_import_name(tmp_path):
    import subprocess
    import sys

    # Outside a checkout (cwd elsewhere): only `loadkit` is importable.
    code = (
        "import importlib.util as u, loadkit.analysis.summary, loadkit.locustfiles._roles; "
        "print([n for n in ('analysis', 'locustfiles') if u.find_spec(n)])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
