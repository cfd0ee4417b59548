"""``loadkit compare``: an injected regression is caught, noise is not, JUnit XML is valid."""

from __future__ import annotations

import argparse
import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from loadkit.analysis.compare import compare_main, parse_thresholds
from loadkit.analysis.summary import analyze_run
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run


def make(tmp, name, *, seed, slow=1.0, kind="sliding_log"):
    rng = np.random.default_rng(seed)
    lim = Limiter(kind, requests=40, window_s=10.0, concurrency=50)
    timing = Timing(ttft_s=0.08 * slow, itl_s=0.01 * slow, tokens=12, jitter=0.5)
    sends = np.linspace(9.0, 11.0, 80) if kind == "fixed_window" else even_sends(0.23, 60.0)
    krs = [simulate_key(f"k{i}", "paid", lim, sends + i * 0.01, timing, rng) for i in range(3)]
    meta = run_meta({"paid": lim}, [(f"k{i}", "paid") for i in range(3)], run_id=name)
    path = write_run(tmp / name, meta, krs)
    analyze_run(path, charts=False)
    return path


def cmp(base, new, *thresholds, junit=None):
    out = io.StringIO()
    ns = argparse.Namespace(
        base=str(base),
        new=str(new),
        threshold=list(thresholds),
        junit=str(junit) if junit else None,
    )
    return compare_main(ns, out=out), out.getvalue()


def test_noise_is_not_a_regression(tmp_path):
    a = make(tmp_path, "a", seed=1)
    b = make(tmp_path, "b", seed=2)
    rc, text = cmp(a, b)
    assert rc == 0, text
    assert "no regression" in text


def test_injected_regression_is_caught_with_junit(tmp_path):
    a = make(tmp_path, "a", seed=1)
    b = make(tmp_path, "b", seed=2, slow=1.3)
    junit = tmp_path / "out.xml"
    rc, text = cmp(a, b, junit=junit)
    assert rc == 1
    assert "ttft_ms.p50" in text and "REGRESSION" in text
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    cases = root.findall(".//testcase")
    assert len(cases) == int(root.get("tests"))
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert "ttft_ms.p50" in failed and "tpot_ms.p99" in failed
    assert any(c.get("classname", "").startswith("limits.") for c in cases)
    # a generous threshold lets the same change pass
    rc, _ = cmp(a, b, "default=50")
    assert rc == 0


def test_verdict_held_to_violated_is_a_regression(tmp_path):
    a = make(tmp_path, "a", seed=1)
    b = make(tmp_path, "b", seed=1, kind="fixed_window")
    junit = tmp_path / "v.xml"
    rc, text = cmp(a, b, "default=1000", junit=junit)
    assert rc == 1 and "REGRESSION" in text and "enforced" in text
    fails = [c for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None]
    assert any(c.get("name") == "requests enforced" for c in fails)


def test_bad_threshold_and_missing_run_exit_2(tmp_path):
    a = make(tmp_path, "a", seed=1)
    assert cmp(a, a, "ttft_ms.p42=3")[0] == 2
    assert cmp(a, tmp_path / "nope")[0] == 2
    with pytest.raises(ValueError):
        parse_thresholds(["ttft_ms.p99"])
    assert parse_thresholds(["ttft_ms.p99=5%", "default=20"]) == {
        "ttft_ms.p99": 5.0,
        "default": 20.0,
    }
