"""What `loadkit analyze --quiet` and `loadkit compare` tell a user about what they leave
out or cannot vouch for: the count of verdict reasons not printed; runs that differ in
scenario, target, engine or completeness."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from loadkit.analysis.cli import analyze_main
from loadkit.analysis.compare import compare_main
from loadkit.analysis.summary import analyze_run
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run
from tests.analysis.test_cli import args, make_run


def test_quiet_prints_the_first_reasons_and_how_many_it_left_out(tmp_path, capsys):
    run = make_run(tmp_path, "fixed_window")  # violated: 6 reasons
    assert analyze_main(args(run, quiet=True)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "loadkit analyze: FAIL — 2 limits violated: key-a requests: not enforced; "
        "key-b requests: not enforced; key-a concurrency enforced: inconclusive (and 3 more "
        f"reasons: in {run / 'summary.json'}, or run without --quiet)\n"
    )
    # without --quiet every reason is printed
    shown = io.StringIO()
    assert analyze_main(args(run, quiet=False), out=shown) == 1
    assert "key-b concurrency honoured: inconclusive" in shown.getvalue()


def analysed(tmp: Path, name: str, **meta_changes: object) -> Path:
    rng = np.random.default_rng(1)
    lim = Limiter("sliding_log", requests=40, window_s=10.0, concurrency=50)
    timing = Timing(ttft_s=0.08, itl_s=0.01, tokens=12, jitter=0.5)
    sends = even_sends(0.23, 30.0)
    krs = [simulate_key(f"k{i}", "paid", lim, sends + i * 0.01, timing, rng) for i in range(2)]
    meta = run_meta({"paid": lim}, [(f"k{i}", "paid") for i in range(2)], run_id=name)
    for field, value in meta_changes.items():
        setattr(meta, field, value)
    path = write_run(tmp / name, meta, krs)
    analyze_run(path, charts=False)
    return path


def compare(base: Path, new: Path, allow_incomplete: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    ns = argparse.Namespace(
        base=str(base), new=str(new), threshold=[], junit=None, allow_incomplete=allow_incomplete
    )
    return compare_main(ns, out=out), out.getvalue()


def test_compare_warns_when_the_runs_differ_in_scenario_target_and_engine(tmp_path, capsys):
    base = analysed(tmp_path, "a")
    new = analysed(
        tmp_path, "b", scenario_name="free-tier-check", target="http://gw:8000", engine="locust"
    )
    rc, text = compare(base, new)
    assert rc == 0, text
    warning = (
        "WARNING: the runs differ in scenario (BASE synthetic, NEW free-tier-check); "
        "target (BASE simulated, NEW http://gw:8000); engine (BASE synthetic, NEW locust): "
        "a change may come from that, not from the target"
    )
    assert text.count(warning) == 2  # above the tables and again below them
    assert warning in capsys.readouterr().err


def test_compare_of_like_runs_warns_of_nothing(tmp_path):
    rc, text = compare(analysed(tmp_path, "a"), analysed(tmp_path, "b"))
    assert rc == 0 and "WARNING" not in text


def test_compare_warns_when_one_run_is_complete_and_the_other_is_not(tmp_path):
    base = analysed(tmp_path, "a")
    new = analysed(tmp_path, "b", interrupted=True, stop_reason="interrupted (signal)")
    assert compare(base, new)[0] == 2  # refused without --allow-incomplete
    rc, text = compare(base, new, allow_incomplete=True)
    assert rc == 0
    assert "the runs differ in completeness (BASE complete, NEW incomplete)" in text
