"""``loadkit history check``, the nightly gate, on synthetic histories: a regression fails
the night it becomes significant, in the metric's direction, above the minimum change; a
limit that held K nights and breaks fails; a night that cannot be judged does not pass."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from loadkit.cli import main
from loadkit.history.ingest import read_run_dir
from loadkit.history.store import open_store
from tests.history.builders import Night, noisy, write_night


def add_nights(db: str, root: Path, nights: list[Night], first: int = 0, **kw) -> None:
    with open_store(db) as store:
        store.add_many(
            [read_run_dir(write_night(root, first + i, n, **kw)) for i, n in enumerate(nights)]
        )


def check(db: str, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        code = main(["history", "check", "--db", db, *extra])
    return code, out.getvalue()


def steady(n: int, seed: int = 1, **fixed) -> list[Night]:
    return [Night(ttft=v, **fixed) for v in noisy(n, 100.0, seed=seed)]


def test_latest_night_starting_a_regression_fails_with_junit(db_url, tmp_path):
    add_nights(db_url, tmp_path, [*steady(29), Night(ttft=135.0)])
    junit = tmp_path / "check.xml"
    code, text = check(db_url, "--junit", str(junit))
    assert code == 1, text
    assert "REGRESSION: ttft_ms.p50, ttft_ms.p99" in text
    assert "from run nightly-029" in text
    root = ET.parse(junit).getroot()
    failed = {c.get("name") for c in root.iter("testcase") if c.find("failure") is not None}
    assert failed == {"ttft_ms.p50", "ttft_ms.p99"}
    names = {c.get("name") for c in root.iter("testcase")}
    assert {"requests_per_s", "error_rate", "free-1 requests enforced"} <= names
    # the same database checked again gives the same answer
    assert check(db_url)[0] == 1


def test_improvement_and_noise_do_not_fail(db_url, tmp_path):
    add_nights(db_url, tmp_path, [*steady(29), Night(ttft=70.0)])
    code, text = check(db_url)
    assert code == 0 and "better" in text and "ttft_ms.p50" in text
    assert text.rstrip().endswith("no regression")


def test_pure_noise_has_no_change_point(db_url, tmp_path):
    add_nights(db_url, tmp_path, steady(40, seed=7))
    code, text = check(db_url)
    assert code == 0, text
    assert "REGRESSION" not in text and "better" not in text


def test_throughput_down_is_the_regression_not_up(db_url, tmp_path):
    base = [Night(rps=v) for v in noisy(25, 30.0, seed=3)]
    add_nights(db_url, tmp_path / "down", [*base, Night(rps=20.0)], scenario="down")
    add_nights(db_url, tmp_path / "up", [*base, Night(rps=40.0)], scenario="up")
    code, text = check(db_url, "--scenario", "down")
    assert code == 1 and "REGRESSION: requests_per_s, output_tokens_per_s" in text
    assert check(db_url, "--scenario", "up")[0] == 0


def test_rates_are_judged_in_percentage_points(db_url, tmp_path):
    base = [Night(error_rate=0.0) for _ in range(20)]
    add_nights(db_url, tmp_path / "big", [*base, Night(error_rate=0.05)], scenario="big")
    add_nights(db_url, tmp_path / "small", [*base, Night(error_rate=0.002)], scenario="small")
    code, text = check(db_url, "--scenario", "big")
    assert code == 1 and "error_rate +5.00 pp" in text
    code, text = check(db_url, "--scenario", "small")
    assert code == 0, text  # significant (the rate was 0 every night) but below 1 pp


def test_minimum_magnitude_is_a_knob(db_url, tmp_path):
    # a 3 % step with 0.5 % noise: certainly real, and below the default 5 %
    values = noisy(20, 100.0, cv=0.005, seed=5) + noisy(6, 103.0, cv=0.005, seed=6)
    add_nights(db_url, tmp_path, [Night(ttft=v) for v in values])
    keep_failing = ["--repeat", "--recent", "10"]  # the step is 6 nights old
    code, text = check(db_url, *keep_failing)
    assert code == 0, text
    assert "ttft_ms.p50 +3.3%" in text and "below the minimum change" in text
    code, text = check(db_url, *keep_failing, "--min-magnitude", "2")
    assert code == 1 and "ttft_ms.p50 +3.3%" in text


def test_a_regression_fails_once_the_night_it_becomes_significant(db_url, tmp_path):
    """+8 % from night 20 under 3 % noise: one night cannot prove it, so the gate fails on
    a later night, naming night 20 as the start, and only on that night."""
    values = noisy(20, 100.0, seed=11) + noisy(10, 108.0, seed=12)
    add_nights(db_url, tmp_path, [Night(ttft=v) for v in values[:20]])
    results = []
    for night in range(20, 30):
        add_nights(db_url, tmp_path, [Night(ttft=values[night])], first=night)
        code, text = check(db_url, "--metric", "ttft_ms.p50")
        results.append((night, code, text))
    failing = [(n, text) for n, code, text in results if code == 1]
    assert len(failing) == 1, [(n, c) for n, c, _ in results]
    night, text = failing[0]
    assert night > 20 and "from run nightly-020" in text
    later = [(code, text) for n, code, text in results if n > night]
    assert later and {code for code, _ in later} == {0}
    assert "known" in later[0][1] and "since run nightly-020" in later[0][1]
    assert "(last: ttft_ms.p50 +" in results[-1][2]  # 10 runs back: no longer recent
    # --repeat keeps it red while the regression is among the last --recent runs
    code, _ = check(db_url, "--metric", "ttft_ms.p50", "--repeat", "--recent", "10")
    assert code == 1


def test_confirm_two_ignores_a_one_night_outlier(db_url, tmp_path):
    add_nights(db_url, tmp_path, [*steady(29), Night(ttft=160.0)])
    assert check(db_url, "--metric", "ttft_ms.p99")[0] == 1
    code, text = check(db_url, "--metric", "ttft_ms.p99", "--confirm", "2")
    assert code == 0, text
    assert "unconfirmed" in text and "fewer than 2 runs at the new level" in text


def _limit(word: str) -> Night:
    return Night(limits={("free-1", "requests"): word, ("free-1", "concurrency"): "held"})


def test_limit_that_held_k_nights_and_breaks_fails(db_url, tmp_path):
    add_nights(
        db_url,
        tmp_path / "a",
        [_limit("inconclusive"), *[_limit("held")] * 3, _limit("violated")],
        scenario="a",
    )
    add_nights(
        db_url,
        tmp_path / "b",
        [_limit("possible"), *[_limit("held")] * 2, _limit("violated")],
        scenario="b",
    )
    code, text = check(db_url, "--scenario", "a")
    assert code == 1 and "BROKEN       free-1 requests enforced" in text
    assert "REGRESSION: free-1 requests enforced" in text
    code, text = check(db_url, "--scenario", "b")
    assert code == 0 and "violated (held 2 nights before; the gate needs 3)" in text
    assert check(db_url, "--scenario", "b", "--held-nights", "2")[0] == 1


def test_a_night_that_cannot_be_judged_does_not_pass(db_url, tmp_path):
    add_nights(db_url, tmp_path, [*steady(10), Night(ttft=500.0, verdict="incomplete")])
    code, text = check(db_url)
    assert code == 2
    assert "is incomplete" in text and "NOT JUDGED" in text
    assert "ttft_ms" not in text  # its figures were not compared with anything


def test_a_changed_scenario_starts_a_new_series(db_url, tmp_path):
    add_nights(db_url, tmp_path, steady(20), scenario_dict={"rate": 1})
    add_nights(db_url, tmp_path, [Night(ttft=150.0)] * 5, first=20, scenario_dict={"rate": 2})
    code, text = check(db_url)
    assert code == 0, text  # 150 ms is the new scenario's level, not a regression
    assert "the scenario changed before run nightly-020: 20 earlier runs are not compared" in text


def test_stale_series_are_skipped_and_an_empty_history_is_an_error(db_url, tmp_path):
    code, _ = check(db_url)
    assert code == 2
    add_nights(db_url, tmp_path / "old", [*steady(10), Night(ttft=300.0)], scenario="old")
    add_nights(db_url, tmp_path / "new", steady(10), first=30, scenario="new")
    code, text = check(db_url)
    assert code == 0 and "skipped old @" in text
    assert check(db_url, "--scenario", "old")[0] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pvalue", "0"], "pvalue"),
        (["--recent", "0"], "recent"),
        (["--window", "2"], "window"),
        (["--since", "yesterday"], "--since"),
        (["--metric", "ttft_ms.p999"], "--metric ttft_ms.p999: no such figure"),
    ],
)
def test_bad_knobs_are_refused(tmp_path, args, message, capsys):
    db = str(tmp_path / "h.db")
    add_nights(db, tmp_path, steady(5))
    assert main(["history", "check", "--db", db, *args]) == 2
    assert message in capsys.readouterr().err
