"""The console verdict table lists the token and per-day promises (summary.json
``tokens``) in the request rows' columns, with a broken reset and a promise the run could
not reach said under their row."""

from __future__ import annotations

from loadkit.analysis.cli import console_table
from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.summary import Summary, analyse
from tests.analysis.test_tokens_pipeline import meta_with, ok


def summary_of(recs: list, **promise: object) -> Summary:
    return analyse(meta_with(**promise), columns_from_records(recs)).summary


def rows(table: str, kind: str) -> list[list[str]]:
    """The verdict table's rows of ``kind`` (the lines that start with the key)."""
    return [x.split() for x in table.splitlines() if x.startswith("k1 ") and x.split()[2] == kind]


def test_token_and_daily_rows_beside_the_request_rows() -> None:
    # 3 x 40 tokens within 1 s against 100 per 10 s; a day of 1,000 the run cannot reach
    s = summary_of(
        [ok(t, 30, 10) for t in (0.0, 0.3, 0.6)],
        tokens=100,
        token_window_s=10.0,
        requests_per_day=1000,
        day_window_s=86_400.0,
    )
    table = console_table(s)
    assert rows(table, "tokens") == [
        ["k1", "free", "tokens", "100", "120", "120", "120", "violated", "held"]
    ]
    assert rows(table, "requests_per_day") == [
        ["k1", "free", "requests_per_day", "1000", "3", "3", "3", "inconclusive", "inconclusive"]
    ]
    lines = table.splitlines()
    day = next(i for i, x in enumerate(lines) if x.startswith("k1 ") and "requests_per_day" in x)
    assert lines[day + 1].strip() == (
        "cannot be reached in this run: at most 3 requests sent in any 86400 s span, the "
        "promise is 1000; the run lasted 0.8 s, so a load that reaches it sends over 1000 "
        "requests within the run"
    )
    # one table: the request rows, then the token rows, under one header
    kinds = [x.split()[2] for x in lines if x.startswith("k1 ")][1:]  # after the status row
    assert kinds == ["requests", "concurrency", "tokens", "requests_per_day"]


def test_a_models_token_promise_is_named_with_its_model() -> None:
    s = summary_of([ok(0.0, 30, 10)], models={"big": {"tokens": 100, "token_window_s": 10.0}})
    ((row),) = rows(console_table(s), "models.big.tokens")
    assert row[:4] == ["k1", "free", "models.big.tokens", "100"]
