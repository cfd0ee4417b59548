"""summary.json and run.json as history rows: a real folder written by ``loadkit analyze``,
and summaries with words and sections the analysis does not write yet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadkit.history.identity import TagSyntaxError, detect_identity, parse_tags
from loadkit.history.ingest import Identity, IngestError, ingest, read_run_dir
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run
from tests.history.builders import Night, summary, write_night


@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic run analysed by the real analysis: a fixed-window limiter that breaks
    its promise at the window edge, and a key that stays within it."""
    from loadkit.analysis.summary import analyze_run

    root = tmp_path_factory.mktemp("analysed")
    lim = Limiter("fixed_window", requests=20, window_s=10.0, concurrency=4)
    bad = simulate_key("key-a", "free", lim, np.linspace(9.0, 11.0, 40), Timing(tokens=8))
    good = simulate_key(
        "key-b",
        "free",
        Limiter(requests=20, window_s=10.0, concurrency=4),
        even_sends(0.35, 30.0),
        Timing(tokens=8),
    )
    meta = run_meta(
        {"free": lim}, [("key-a", "free"), ("key-b", "free")], slo={"ttft_ms": {"p99": 800}}
    )
    run = write_run(root / "run", meta, [bad, good])
    analyze_run(run, charts=False)
    return run


def test_real_analysed_run_becomes_rows(analysed_run):
    data = json.loads((analysed_run / "summary.json").read_text())
    item = read_run_dir(analysed_run, Identity(git_commit="abc123", tags=(("env", "ci"),)))
    assert item.run.run_id == data["run"]["run_id"]
    assert item.run.verdict == data["verdict"] == "fail"
    assert item.run.git_commit == "abc123" and item.tags == (("env", "ci"),)
    # summary/2 says the run was complete; the section is stored as it was written
    assert item.run.complete is True and item.run.completeness is not None
    assert json.loads(item.run.completeness) == data["completeness"]
    figures = {(m.metric, m.tier, m.key, m.endpoint, m.stream): m.value for m in item.metrics}
    ttft = data["latency"]["ttft_ms"]
    assert figures[("ttft_ms.p99", "", "", "", "")] == ttft["overall"]["p99"]
    assert figures[("ttft_ms.p99", "free", "", "", "")] == ttft["by_tier"]["free"]["p99"]
    g = data["latency"]["groups"][0]
    stream = "stream" if g["stream"] else "non-stream"
    assert figures[("e2e_ms.p50", g["tier"], g["key"], g["endpoint"], stream)] == g["e2e_ms"]["p50"]
    assert figures[("requests_per_s", "", "", "", "")] == data["throughput"]["requests_per_s"]
    assert figures[("error_rate", "", "", "", "")] == data["errors"]["error_rate"]
    # every limit verdict of the summary, aspect by aspect
    expected = set()
    for lim in data["limits"]:
        expected.add((lim["key"], lim["kind"], "enforced", lim["enforced"]))
        expected.add((lim["key"], lim["kind"], "honoured", lim["honoured"]))
        if "retry_after" in lim:
            expected.add((lim["key"], lim["kind"], "retry_after", lim["retry_after"]["verdict"]))
    got = {(v.key, v.kind, v.aspect, v.verdict) for v in item.verdicts}
    assert expected <= got
    assert ("key-a", "requests", "enforced", "violated") in got
    assert [s.name for s in item.slos] == [c["name"] for c in data["slo"]["checks"]]


def test_same_run_same_key_with_or_without_run_json(analysed_run, tmp_path):
    with_meta = read_run_dir(analysed_run)
    alone = tmp_path / "copy"
    alone.mkdir()
    (alone / "summary.json").write_bytes((analysed_run / "summary.json").read_bytes())
    assert read_run_dir(alone).run.run_key == with_meta.run.run_key


def test_new_verdict_words_and_completeness_are_kept():
    night = Night(
        limits={("free-1", "requests"): "unusable"},
        verdict="incomplete",
        completeness={"complete": False, "missing": ["worker async-1"]},
    )
    item = ingest(summary(night, "r1", 1.8e9))
    assert item.run.verdict == "incomplete"
    assert ("free-1", "requests", "enforced", "unusable") in {
        (v.key, v.kind, v.aspect, v.verdict) for v in item.verdicts
    }
    assert item.run.complete is False
    assert json.loads(item.run.completeness or "") == {
        "complete": False,
        "missing": ["worker async-1"],
    }


def test_unknown_summary_version_is_read_with_a_warning():
    data = summary(Night(), "r1", 1.8e9)
    data["schema"] = "loadkit.summary/3"
    item = ingest(data)
    assert item.warnings and "loadkit.summary/3" in item.warnings[0]
    assert any(m.metric == "ttft_ms.p99" for m in item.metrics)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="something/1"), "not a loadkit summary"),
        (lambda d: d["run"].pop("run_id"), "no run_id"),
        (lambda d: d["run"].pop("started_at"), "no start time"),
    ],
)
def test_unreadable_summaries_are_refused(mutate, message):
    data = summary(Night(), "r1", 1.8e9)
    mutate(data)
    with pytest.raises(IngestError, match=message):
        ingest(data)


def test_missing_and_broken_files_name_the_folder(tmp_path):
    with pytest.raises(IngestError, match="loadkit analyze"):
        read_run_dir(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(IngestError, match="not JSON"):
        read_run_dir(tmp_path)


def test_scenario_hash_ignores_the_target_url(tmp_path):
    a = read_run_dir(
        write_night(
            tmp_path / "a", 0, Night(), scenario_dict={"target": {"base_url": "https://a"}, "x": 1}
        )
    )
    b = read_run_dir(
        write_night(
            tmp_path / "b", 1, Night(), scenario_dict={"target": {"base_url": "https://b"}, "x": 1}
        )
    )
    c = read_run_dir(
        write_night(
            tmp_path / "c", 2, Night(), scenario_dict={"target": {"base_url": "https://a"}, "x": 2}
        )
    )
    assert a.run.scenario_hash == b.run.scenario_hash != c.run.scenario_hash
    assert (a.run.target, b.run.target) == ("https://a", "https://b")


def test_identity_from_ci_environment_and_flags():
    env = {"GITHUB_SHA": "f" * 40, "GITHUB_REF_NAME": "main", "LOADKIT_TAGS": "env=ci, gpu=none"}
    ident = detect_identity(tags=["env=staging"], env=env, use_git=False)
    assert ident.git_commit == "f" * 40 and ident.git_branch == "main"
    assert ident.tags == (("env", "staging"), ("gpu", "none"))  # the flag wins
    assert detect_identity(commit="abc", env=env, use_git=False).git_commit == "abc"
    with pytest.raises(TagSyntaxError, match="NAME=VALUE"):
        parse_tags(["novalue"])
