"""An incomplete run (interrupted, killed, a worker lost, records missing) never passes: its
verdict is ``incomplete`` (exit 3) with what is missing, the verdicts of what was recorded
stay, and ``loadkit compare`` refuses it unless told otherwise."""

from __future__ import annotations

import argparse
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from loadkit.analysis.cli import analyze_main
from loadkit.analysis.compare import compare_main
from loadkit.analysis.report import render_report
from loadkit.analysis.summary import analyze_run, summarize_run
from loadkit.runmeta import WorkerInfo
from tests.analysis.synthetic import (
    Limiter,
    Timing,
    answered_rows,
    even_sends,
    run_meta,
    simulate_key,
    write_run,
)

LIM = Limiter("sliding_log", requests=20, window_s=10.0, concurrency=4)


def make(tmp: Path, name: str = "run", *, kind: str = "sliding_log", **meta_kw) -> Path:
    lim = Limiter(kind, requests=20, window_s=10.0, concurrency=4)
    sends = np.linspace(9.0, 11.0, 40) if kind == "fixed_window" else even_sends(0.3, 40.0)
    kr = simulate_key("key-a", "free", lim, sends, Timing(tokens=8))
    kr2 = simulate_key("key-b", "free", LIM, even_sends(0.35, 40.0) + 0.05, Timing(tokens=8))
    meta = run_meta({"free": lim}, [("key-a", "free"), ("key-b", "free")], **meta_kw)
    return write_run(tmp / name, meta, [kr, kr2])


def analyse(run: Path) -> tuple[int, list[str], dict]:
    out = io.StringIO()
    ns = argparse.Namespace(run_dir=str(run), slo=[], no_charts=True, quiet=False)
    rc = analyze_main(ns, out=out)
    return rc, out.getvalue().splitlines(), json.loads((run / "summary.json").read_text())


def test_a_complete_run_passes(tmp_path):
    rc, _, s = analyse(make(tmp_path))
    assert (rc, s["verdict"], s["completeness"]["complete"]) == (0, "pass", True)


def test_a_killed_run_is_incomplete(tmp_path):
    # SIGKILL: run.json was written at the start and never got its end time
    rc, lines, s = analyse(make(tmp_path, killed=True))
    reason = (
        "run.json has no end time: the run was killed (or is still running) before it "
        "finished, so the records cover only what was written"
    )
    assert rc == 3
    assert lines[0] == f"INCOMPLETE: {reason}"
    assert s["verdict"] == "incomplete"
    assert s["headline"] == "INCOMPLETE — no violation on what was recorded"
    c = s["completeness"]
    assert (c["complete"], c["killed"], c["interrupted"], c["reasons"]) == (
        False,
        True,
        False,
        [reason],
    )
    assert s["verdict_reasons"][0] == reason


def test_a_dead_or_silent_worker_is_named_with_its_requests_in_flight(tmp_path):
    workers = [
        WorkerInfo("w-1", records=230, status="ok", sent=230),
        WorkerInfo("w-2", records=40, status="died", detail="killed", in_flight=3),
        WorkerInfo("w-3", records=12, status="silent", in_flight=None),
    ]
    rc, lines, s = analyse(make(tmp_path, workers=workers))
    died = "worker w-2 died with 3 requests in flight (40 of its records arrived and are kept)"
    silent = (
        "worker w-3 went silent with an unknown number of requests in flight "
        "(12 of its records arrived and are kept)"
    )
    assert rc == 3
    assert lines[:2] == [f"INCOMPLETE: {died}", f"INCOMPLETE: {silent}"]
    c = s["completeness"]
    assert c["lost_workers"] == [
        {"worker": "w-2", "status": "died", "records": 40, "in_flight": 3, "detail": "killed"},
        {"worker": "w-3", "status": "silent", "records": 12, "in_flight": None, "detail": ""},
    ]
    assert c["reasons"] == [died, silent]


def test_records_missing_against_what_the_workers_sent(tmp_path):
    run = make(tmp_path)
    n = len(next(run.glob("records-*.jsonl")).read_text().splitlines())
    meta = json.loads((run / "run.json").read_text())
    meta["workers"] = [{"worker": "sim", "records": n, "status": "ok", "sent": n + 7}]
    (run / "run.json").write_text(json.dumps(meta))
    rc, _, s = analyse(run)
    assert rc == 3
    c = s["completeness"]
    assert (c["records"], c["reported_records"], c["missing_records"]) == (n, n + 7, 7)
    assert c["reasons"] == [
        f"7 records missing: the workers reported {n + 7:,}, {n:,} are in the run directory"
    ]


def test_a_violation_on_an_incomplete_run_is_still_listed(tmp_path):
    rc, lines, s = analyse(make(tmp_path, kind="fixed_window", interrupted=True))
    assert rc == 3
    assert s["verdict"] == "incomplete"
    assert s["headline"] == "INCOMPLETE — 1 limit violated on what was recorded"
    assert "VERDICT: INCOMPLETE — 1 limit violated on what was recorded" in lines
    a = next(e for e in s["limits"] if e["key"] == "key-a" and e["kind"] == "requests")
    assert a["enforced"] == "violated"
    assert s["verdict_reasons"][:2] == [
        "the run was interrupted: the records cover only the part before it stopped",
        "key-a requests: not enforced",
    ]


def test_error_beats_incomplete(tmp_path):
    rows = answered_rows(
        "key-a", "free", even_sends(0.05, 10.0), status=404, content_type="text/html"
    )
    meta = run_meta({"free": LIM}, [("key-a", "free")], killed=True, target="http://t")
    run = write_run(tmp_path / "run", meta, [], extra_rows=rows)
    rc, lines, s = analyse(run)
    assert rc == 2 and s["verdict"] == "error"
    assert lines[0].startswith("ERROR: all 200 requests of key-a got 404 Not Found")
    assert lines[1].startswith("INCOMPLETE: run.json has no end time")
    assert s["completeness"]["killed"] is True


def test_the_report_leads_with_what_is_missing(tmp_path):
    workers = [WorkerInfo("w-2", records=40, status="died", in_flight=3)]
    run = make(tmp_path, workers=workers)
    html = render_report(summarize_run(run, charts=False), run)
    top = html.index(
        "<div class='banner partial'><h2>INCOMPLETE — no violation on what was recorded</h2>"
    )
    assert top < html.index("Verdict:")
    assert "worker w-2 died with 3 requests in flight" in html[top : html.index("Verdict:")]


# -- loadkit compare ----------------------------------------------------------------------


def compare(base: Path, new: Path, *extra: str, junit: Path | None = None):
    out = io.StringIO()
    ns = argparse.Namespace(
        base=str(base),
        new=str(new),
        threshold=["default=1000"],
        junit=str(junit) if junit else None,
        allow_incomplete="--allow-incomplete" in extra,
    )
    return compare_main(ns, out=out), out.getvalue()


def test_compare_refuses_an_incomplete_side(tmp_path, capsys):
    base = make(tmp_path, "base")
    new = make(tmp_path, "new", workers=[WorkerInfo("w-2", records=40, status="died", in_flight=3)])
    for run in (base, new):
        analyze_run(run, charts=False)
    rc, out = compare(base, new)
    assert rc == 2 and out == ""
    err = capsys.readouterr().err.strip()
    assert err == (
        f"loadkit compare: NEW {new} is incomplete (worker w-2 died with 3 requests in flight "
        "(40 of its records arrived and are kept)); refused: compare anyway with "
        "--allow-incomplete"
    )
    rc, _ = compare(new, base)
    assert rc == 2
    assert capsys.readouterr().err.startswith(f"loadkit compare: BASE {new} is incomplete (")


def test_compare_refuses_an_error_side_even_without_a_summary(tmp_path, capsys):
    base = make(tmp_path, "base")
    rows = answered_rows("key-a", "free", even_sends(0.05, 10.0), status=401)
    meta = run_meta({"free": LIM}, [("key-a", "free")], target="http://t")
    new = write_run(tmp_path / "new", meta, [], extra_rows=rows)  # analysed by compare
    rc, _ = compare(base, new)
    assert rc == 2
    err = capsys.readouterr().err
    assert f"NEW {new} is an error (all 200 requests of key-a got 401 Unauthorized" in err


def test_allow_incomplete_compares_with_a_loud_warning_and_a_failing_junit_case(tmp_path, capsys):
    base = make(tmp_path, "base")
    new = make(tmp_path, "new", killed=True)
    junit = tmp_path / "c.xml"
    rc, out = compare(base, new, "--allow-incomplete", junit=junit)
    assert rc == 0
    warning = (
        f"WARNING: NEW {new} is incomplete (run.json has no end time: the run was killed (or "
        "is still running) before it finished, so the records cover only what was written); "
        "compared anyway (--allow-incomplete): its figures cover only what was recorded"
    )
    lines = out.splitlines()
    assert lines[0] == warning and lines[-2] == warning and lines[-1] == "no regression"
    assert warning in capsys.readouterr().err
    root = ET.parse(junit).getroot()
    flagged = [c for c in root.iter("testcase") if c.get("classname") == "runs"]
    assert len(flagged) == 1 and flagged[0].get("name") == "NEW run complete"
    failure = flagged[0].find("failure")
    assert failure is not None and failure.get("type") == "incomplete"
    assert int(root.get("failures")) >= 1


def test_an_interrupted_version_1_summary_is_incomplete_to_compare(tmp_path, capsys):
    base = make(tmp_path, "base")
    new = make(tmp_path, "new")
    golden = json.loads((Path(__file__).parent / "golden" / "summary-v1.json").read_text())
    golden["run"]["interrupted"] = True
    golden["run"]["stop_reason"] = "interrupted (Ctrl-C)"
    (new / "summary.json").write_text(json.dumps(golden))
    rc, _ = compare(base, new)
    assert rc == 2
    assert f"NEW {new} is incomplete (the run was interrupted (Ctrl-C))" in capsys.readouterr().err


def test_a_refusal_explained_by_requests_a_kill_left_unrecorded_is_no_violation():
    # 3 streams open from 0 s (the cap) were still open when the run was SIGKILLed: they
    # have no record. The concurrency refusal at 1 s then looks unjustified on the records.
    from loadkit.analysis.columns import columns_from_records
    from loadkit.analysis.summary import analyse as analyse_run
    from tests.analysis.builders import rec

    lim = Limiter("sliding_log", requests=100, window_s=60.0, concurrency=3)
    recs = [rec(0.5 + 0.2 * i, key="k1") for i in range(3)]
    recs.append(rec(1.0, status=429, code="concurrency_limit_exceeded", key="k1"))

    def conc(killed: bool) -> tuple[dict, str]:
        meta = run_meta({"free": lim}, [("k1", "free")], killed=killed)
        s = analyse_run(meta, columns_from_records(recs)).summary.to_dict()
        e = next(e for e in s["limits"] if e["kind"] == "concurrency")
        return e, s["headline"]

    complete, headline = conc(killed=False)
    assert complete["honoured"] == "violated"  # nothing recorded in flight: unjustified
    killed, headline = conc(killed=True)
    assert killed["honoured"] == "inconclusive"
    assert headline.startswith("INCOMPLETE") and "violated" not in headline
    assert killed["explanation"][-1].startswith(
        "Refusals NOT JUDGED: the run was killed, so the requests open then have no record"
    )
