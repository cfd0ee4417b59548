"""summary.json against its golden files: a fixed synthetic run must analyse to the
``loadkit.summary/2`` golden, every golden (version 1 too) must read back byte for byte, and
``loadkit compare`` must read an old run's summary (pyperf keeps old results readable this
way).

Regenerate after an intended change of the format or the figures (and say why in the
commit): ``LOADKIT_UPDATE_GOLDEN=1 python -m pytest tests/analysis/test_golden.py``."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadkit.analysis.cli import analyze_and_report
from loadkit.analysis.compare import compare_runs
from loadkit.analysis.summary import SUMMARY_FILE, Summary, analyze_run, read_summary
from loadkit.cli import main as loadkit_main
from tests.analysis.builders import rec
from tests.analysis.synthetic import (
    Limiter,
    Timing,
    poisson_sends,
    run_meta,
    simulate_key,
    write_run,
)

GOLDEN = Path(__file__).parent / "golden" / "summary-v2.json"
GOLDEN_V1 = Path(__file__).parent / "golden" / "summary-v1.json"
# version 2 as written before limits carried their timing ``tolerance``
GOLDEN_V2_EARLY = Path(__file__).parent / "golden" / "summary-v2-before-tolerance.json"
STARTED_UNIX = 1_767_225_600.0  # 2026-01-01T00:00:00Z: run.started_at is the only clock read
FLOAT_REL = 1e-9  # numpy builds may differ in the last bits of a mean or an interpolation


def golden_run(run_dir: Path) -> Path:
    """A run that touches every part of the summary: a correct sliding-log key, a key whose
    fixed window lets a boundary burst through, a key of an unknown tier, a key in run.json
    that sent nothing, refusals with and without codes, one refused for tokens, one in a
    version-1 record, a wrong-route 404 page, transport errors, a model listing, SLOs met,
    missed and without data, goodput thresholds (one unknown)."""
    rng = np.random.default_rng(20260101)
    free = Limiter("sliding_log", requests=10, window_s=5.0, concurrency=3, remaining="off")
    paid = Limiter("fixed_window", requests=20, window_s=10.0, concurrency=6, retry_after="short")
    timing = Timing(ttft_s=0.08, itl_s=0.02, tokens=6, jitter=0.4)
    keys = [
        simulate_key("free-1", "free", free, poisson_sends(3.0, 20.0, rng), timing, rng),
        simulate_key("free-2", "free", free, poisson_sends(1.0, 20.0, rng), timing, rng),
        simulate_key(
            "paid-1",
            "paid",
            paid,
            np.concatenate([np.linspace(8.0, 12.0, 40), np.linspace(15.0, 19.0, 10)]),
            Timing(ttft_s=0.2, itl_s=0.03, tokens=4, stream=False),
            rng,
        ),
    ]
    extra = [
        rec(2.0, None, 32.0, key="free-1", status=0, transport_error="timeout"),
        rec(3.0, None, 3.2, key="free-2", status=0, transport_error="reset"),
        rec(4.0, None, 4.0, key="free-2", status=0, transport_error="refused"),
        rec(19.5, None, 20.5, key="paid-1", tier="paid", status=0, transport_error="cancelled"),
        rec(5.0, 5.01, 5.02, key="free-2", status=429),
        rec(6.0, 6.01, 6.02, key="free-2", status=401, code="invalid_api_key"),
        rec(7.0, 7.05, 7.06, key="paid-1", tier="paid", status=500, code="internal_error"),
        rec(
            8.0,
            8.01,
            8.3,
            key="paid-1",
            tier="paid",
            chunks=[8.1, 8.2],
            transport_error="incomplete_stream",
        ),
        rec(9.0, 9.01, 9.02, key="free-1", endpoint="models", stream=False),
        rec(11.0, 11.01, 11.02, key="free-1", status=429, code="tpm_rate_limit_exceeded"),
        rec(12.0, 12.01, 12.02, key="free-1", status=404, content_type="text/html"),
        rec(
            13.0,
            13.01,
            13.02,
            key="free-2",
            status=429,
            code="concurrency_limit_exceeded",
            limit_kind=None,
            schema="loadkit.record/1",
        ),
        rec(10.0, 10.01, 10.5, key="trial-1", tier="trial", chunks=[10.1, 10.2, 10.4]),
    ]
    meta = run_meta(
        {"free": free, "paid": paid},
        [("free-1", "free"), ("free-2", "free"), ("paid-1", "paid"), ("free-3", "free")],
        run_id="golden",
        warmup_s=1.0,
        slo={
            "ttft_ms": {"p99": 5000},
            "e2e_ms": {"p50": 1},
            "send_lateness_ms": {"max": 5},
            "error_rate": 0.5,
            "goodput_ratio": 0.5,
        },
        goodput={"ttft_ms": 150, "e2e_ms": 400, "bogus_ms": 1},
    )
    # Token and per-day promises: judged from each request's tokens (usage, or what the
    # client asked: the refusals have no usage)
    meta.tiers["free"].update(tokens=200, token_window_s=5.0, token_counts="total")
    meta.tiers["paid"].update(requests_per_day=45, day_window_s=86_400.0)
    meta.started_unix = STARTED_UNIX
    meta.loadkit_version = "golden"
    rows = [json.loads(r.to_json()) for r in extra]
    for i, row in enumerate(rows):  # ids of their own: not the builders' session-wide count
        row["request_id"] = f"extra-{i}"
    return write_run(run_dir, meta, keys, extra_rows=rows)


def first_difference(got: Any, want: Any, path: str = "$") -> str | None:
    """Where two parsed JSON documents differ: keys and their order, value types (1 vs 1.0
    is a visible change), strings, ints and booleans exactly, floats to FLOAT_REL."""
    if type(got) is not type(want):
        return (
            f"{path}: {type(got).__name__} {got!r:.60} vs golden {type(want).__name__} {want!r:.60}"
        )
    if isinstance(want, dict):
        if list(got) != list(want):
            return f"{path}: keys {list(got)} vs golden {list(want)}"
        for k in want:
            diff = first_difference(got[k], want[k], f"{path}.{k}")
            if diff:
                return diff
        return None
    if isinstance(want, list):
        if len(got) != len(want):
            return f"{path}: {len(got)} items vs golden {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            diff = first_difference(g, w, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if isinstance(want, float):
        ok = math.isclose(got, want, rel_tol=FLOAT_REL, abs_tol=1e-12)
        return None if ok else f"{path}: {got!r} vs golden {want!r}"
    return None if got == want else f"{path}: {got!r} vs golden {want!r}"


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = golden_run(tmp_path_factory.mktemp("golden") / "run")
    analyze_run(run, charts=False)
    if os.environ.get("LOADKIT_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        shutil.copy(run / SUMMARY_FILE, GOLDEN)
    return run


def test_summary_matches_the_golden_file(analysed: Path) -> None:
    got = json.loads((analysed / SUMMARY_FILE).read_text())
    want = json.loads(GOLDEN.read_text())
    assert first_difference(got, want) is None
    # the run covers what the golden is meant to pin down
    assert want["verdict"] == "fail"
    assert {(e["key"], e["kind"]) for e in want["limits"]} == {
        (k, kind) for k in ("free-1", "free-2", "paid-1") for kind in ("requests", "concurrency")
    }
    assert [c["status"] for c in want["slo"]["checks"]] == [
        "met",
        "missed",
        "no data",
        "met",
        "met",
    ]
    assert want["limit_notes"] == [
        "key trial-1: tier 'trial' has no promised limits in run.json; not judged",
        "key free-3: in run.json but sent no requests",
    ]
    assert want["schema"] == "loadkit.summary/2"
    assert want["headline"] == "FAIL — 3 limits violated, 1 SLO missed"
    assert want["completeness"]["complete"] is True
    keys = {k["key"]: k for k in want["keys"]}
    assert list(keys) == ["free-1", "free-2", "paid-1", "trial-1"]
    # the tokens refusal and the wrong-route page are counted, not judged
    assert keys["free-1"]["limited"]["tokens"] == 1 and keys["free-1"]["not_api"] == 1
    # the version-1 record's concurrency code still says which limit refused it
    assert keys["free-2"]["limited"]["concurrency"] == 1
    assert all(k["usable"] for k in want["keys"])


@pytest.mark.parametrize("path", [GOLDEN_V1, GOLDEN_V2_EARLY, GOLDEN], ids=["v1", "v2-early", "v2"])
def test_every_golden_file_reads_back_byte_for_byte(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    summary = read_summary(path)
    assert summary.to_json() == text
    # and the typed values are what the document says
    assert summary.verdict == "fail" and summary.run.started_at == "2026-01-01T00:00:00.000Z"
    paid = next(e for e in summary.limits if e.key == "paid-1" and e.kind == "requests")
    assert paid.verdict.enforced == "violated"
    assert summary.gaps() == ()  # a complete run, in both versions


def test_an_old_summary_is_read_by_loadkit_compare(tmp_path: Path, capsys) -> None:
    # Two copies of the golden run whose summary.json is the version-1 golden file, as an
    # earlier loadkit wrote it: compare reads both summaries and does not re-analyse.
    runs = []
    for name in ("base", "new"):
        run = golden_run(tmp_path / name)
        shutil.copy(GOLDEN_V1, run / SUMMARY_FILE)
        runs.append(run)
    junit = tmp_path / "compare.xml"
    rc = loadkit_main(["compare", str(runs[0]), str(runs[1]), "--junit", str(junit)])
    out = capsys.readouterr().out
    # paid-1's requests limit is violated in both: reported, not a regression
    assert rc == 0, out
    assert "no regression" in out
    assert "paid-1           requests     enforced         violated -> violated" in out
    result = compare_runs(runs[0], runs[1])
    golden = json.loads(GOLDEN_V1.read_text())
    requests_rps = next(m for m in result.metrics if m.metric == "requests_per_s")
    assert requests_rps.base == requests_rps.new == golden["throughput"]["requests_per_s"]
    assert (runs[1] / SUMMARY_FILE).read_bytes() == GOLDEN_V1.read_bytes()  # read, not rewritten


@pytest.mark.parametrize(
    "edit,field",
    [
        (
            lambda s: s["throughput"].__setitem__("requests_per_s", None),
            "throughput.requests_per_s",
        ),
        (lambda s: s.pop("throughput"), "throughput: missing"),
        (lambda s: s["limits"][0].__setitem__("enforced", "maybe"), "limits[0].enforced"),
        (lambda s: s["limits"][1].__setitem__("kind", "tokens"), "limits[1].kind"),
        (lambda s: s.__setitem__("schema", "loadkit.summary/3"), "loadkit.summary/3"),
        (lambda s: s["keys"][0].__setitem__("usable", "yes"), "keys[0].usable"),
        (lambda s: s["completeness"].pop("killed"), "completeness.killed: missing"),
    ],
)
@pytest.mark.parametrize("side", ["base", "new"])
def test_compare_refuses_a_summary_it_cannot_read(tmp_path, capsys, side, edit, field) -> None:
    # A null throughput figure in NEW used to crash compare (None / float, a TypeError
    # traceback); in BASE it was shown as "-" next to a change computed from other numbers.
    runs = {}
    for name in ("base", "new"):
        runs[name] = golden_run(tmp_path / name)
        shutil.copy(GOLDEN, runs[name] / SUMMARY_FILE)
    doc = json.loads(GOLDEN.read_text())
    edit(doc)
    (runs[side] / SUMMARY_FILE).write_text(json.dumps(doc))
    assert loadkit_main(["compare", str(runs["base"]), str(runs["new"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("loadkit compare: ") and "\n" not in err
    assert str(runs[side] / SUMMARY_FILE) in err and field in err


def test_analyze_and_report_matches_the_command(analysed: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    assert analyze_and_report(analysed, charts=False, out=out) == 1
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == "run golden (synthetic, 132 records)"
    # status codes by key, 429s by the limit that refused them, always on the console
    assert " ".join(lines[2].split()) == (
        "requests by key tier 2xx 429 req 429 conc 429 tok 429 ? 4xx 5xx no resp cancelled"
    )
    assert " ".join(lines[3].split()) == "free-1 free 35 18 0 1 0 1 0 1 0"
    assert " ".join(lines[4].split()) == "free-2 free 16 0 1 0 1 1 0 2 0"
    assert "VERDICT: FAIL — 3 limits violated, 1 SLO missed" in lines
    assert "  - paid-1 requests: not enforced" in lines
    assert Summary.from_dict(json.loads((analysed / SUMMARY_FILE).read_text())).verdict == "fail"
    quiet = io.StringIO()
    assert (
        analyze_and_report(
            analysed, slo_overrides=["e2e_ms.p50=100000"], quiet=True, charts=False, out=quiet
        )
        == 1
    )
    assert quiet.getvalue() == ""
    assert analyze_and_report(tmp_path / "nothing-here", out=quiet) == 2
