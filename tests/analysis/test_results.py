"""The typed results: every verdict value has a meaning for the run, the overall verdict
and the SLOs are decided on typed figures, and the JSON reader names what does not fit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from loadkit.analysis.capacity import step_row
from loadkit.analysis.cli import EXIT_STATUS, exit_status
from loadkit.analysis.codec import FormatError
from loadkit.analysis.limits import ConcurrencyLimit, RequestsLimit
from loadkit.analysis.outcome import VERDICT_EFFECT, Effect, RunVerdict, Verdict
from loadkit.analysis.slo import Observed, evaluate_slos, parse_slo_arg
from loadkit.analysis.summary import Summary, overall_verdict, read_summary

GOLDEN = Path(__file__).parent / "golden" / "summary-v1.json"


@pytest.fixture(scope="module")
def golden() -> Summary:
    return read_summary(GOLDEN)


def test_every_verdict_value_has_an_effect_and_every_outcome_an_exit_status() -> None:
    assert set(VERDICT_EFFECT) == set(Verdict)
    assert set(EXIT_STATUS) == set(RunVerdict)
    assert [v for v in Verdict if v.effect is Effect.FAILS] == [Verdict.VIOLATED]
    assert [v for v in Verdict if v.effect is Effect.ERROR] == [Verdict.UNUSABLE]
    # the documented exit codes (README "CI nightly recipe", docs/verdicts.md)
    assert {str(v): EXIT_STATUS[v] for v in RunVerdict} == {
        "pass": 0,
        "inconclusive": 0,
        "fail": 1,
        "error": 2,
        "incomplete": 3,
    }


def test_overall_verdict_is_decided_on_the_typed_summary(golden: Summary) -> None:
    # the reasons as this loadkit writes them (the version-1 file has an older wording)
    current = read_summary(GOLDEN.with_name("summary-v2.json"))
    verdict, reasons = overall_verdict(current.limits, current.slo, current.tokens)
    assert (verdict, tuple(reasons)) == (current.verdict, current.verdict_reasons)
    assert exit_status(golden) == 1


def _with(entry: RequestsLimit | ConcurrencyLimit, enforced: Verdict, honoured: Verdict):
    return replace(entry, verdict=replace(entry.verdict, enforced=enforced, honoured=honoured))


def test_overall_verdict_pass_and_inconclusive(golden: Summary) -> None:
    ok_slo = replace(golden.slo, met=True, checks=golden.slo.checks[:1])
    req = next(e for e in golden.limits if isinstance(e, RequestsLimit) and e.key == "free-1")
    req = replace(req, retry_after=replace(req.retry_after, verdict=Verdict.HELD))
    conc = next(e for e in golden.limits if isinstance(e, ConcurrencyLimit) and e.key == "free-1")
    held = [_with(req, Verdict.HELD, Verdict.HELD), _with(conc, Verdict.HELD, Verdict.HELD)]
    assert overall_verdict(held, ok_slo) == (
        RunVerdict.PASS,
        ["every limit verdict held and every SLO was met"],
    )
    doubt = [held[0], _with(conc, Verdict.POSSIBLE, Verdict.HELD)]
    assert overall_verdict(doubt, ok_slo) == (
        RunVerdict.PASS,
        [
            "no violation and every SLO met; 3 verdicts held, 1 could not be shown either way:",
            "free-1 concurrency enforced: possible",
        ],
    )
    untested = [_with(req, Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE)]
    assert overall_verdict(untested, ok_slo) == (
        RunVerdict.INCONCLUSIVE,
        [
            "no limit verdict held: the offered load never provoked a promise",
            "free-1 requests enforced: inconclusive",
            "free-1 requests honoured: inconclusive",
        ],
    )
    assert overall_verdict([], ok_slo)[0] == RunVerdict.INCONCLUSIVE


def test_slos_are_checked_against_the_typed_figures(golden: Summary) -> None:
    observed = Observed(golden.latency, golden.throughput, golden.errors)
    slos = [
        parse_slo_arg("itl_ms.p99.9=1000"),
        parse_slo_arg("goodput_ratio=0.99"),
        parse_slo_arg("requests_per_s=1"),
        parse_slo_arg("queued_ms.max=0"),
    ]
    result = evaluate_slos(slos, observed)
    by_name = {c.name: c for c in result.checks}
    assert by_name["itl_ms.p99_9"].observed == golden.latency.itl_ms.overall.p99_9
    assert by_name["itl_ms.p99_9"].met is True
    # 90 of 91 successes met the goodput thresholds: 0.989 < 0.99
    assert by_name["goodput_ratio"].observed == golden.throughput.goodput.ratio
    assert by_name["goodput_ratio"].status == "missed"
    assert by_name["requests_per_s"].observed == golden.throughput.requests_per_s
    assert by_name["requests_per_s"].direction == ">=" and by_name["requests_per_s"].met is True
    assert by_name["queued_ms.max"].met is True  # the simulator never queues
    assert result.met is False


def test_the_reader_names_the_field_that_does_not_fit(golden: Summary) -> None:
    doc = golden.to_dict()
    doc["latency"]["ttft_ms"]["overall"]["count"] = 1.5
    with pytest.raises(FormatError, match=r"^latency\.ttft_ms\.overall\.count: expected an int"):
        Summary.from_dict(doc)
    doc = golden.to_dict()
    del doc["limits"][0]["evidence"]["enforced"]["possible_span_s"]
    # an optional evidence key may be absent (and stays absent when written again)
    again = Summary.from_dict(doc)
    assert again.limits[0].verdict.evidence.enforced.possible_span_s is None
    assert again.to_dict() == doc
    doc["limits"][0]["evidence"]["enforced"]["certain_span_s"] = [1.0]
    with pytest.raises(FormatError, match=r"certain_span_s: expected 2 items, got 1"):
        Summary.from_dict(doc)


def test_a_summary_without_charts_written_omits_charts_and_report(golden: Summary) -> None:
    doc = replace(golden, charts=None, report=None).to_dict()
    assert "charts" not in doc and "report" not in doc
    assert list(golden.to_dict())[-2:] == ["charts", "report"]


def test_capacity_rows_read_the_typed_summary_and_the_dict_alike(golden: Summary) -> None:
    typed = step_row(2, 3.0, "req/s/key", golden, "poisson", 0.9)
    assert typed == step_row(2, 3.0, "req/s/key", golden.to_dict(), "poisson", 0.9)
    assert typed["offered_rps"] == 9.0  # three judged keys
    assert typed["achieved_rps"] == golden.throughput.requests_per_s
    assert typed["slo_missed"] == ["e2e_ms.p50"]
    assert typed["ttft_ms_p99"] == golden.latency.ttft_ms.overall.p99
    assert typed["saturated"] is True  # 2.9 req/s achieved of 9 offered
