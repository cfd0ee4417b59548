"""OpenAI-style durations: formatting rounds up to the millisecond, parsing accepts what
OpenAI and Go print."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadkit.durations import format_duration, format_duration_ms, parse_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.35, "350ms"),
        (0.0001, "1ms"),
        (0.3501, "351ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (90.5, "1m30.5s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
    ],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("350ms", 0.35),
        ("1m30.5s", 90.5),
        ("1h2m3s", 3723.0),
        ("20us", 20e-6),
        ("20µs", 20e-6),
        ("5ns", 5e-9),
        ("0s", 0.0),
        ("2", 2.0),
        (" 0.5 ", 0.5),
        (".5s", 0.5),
        ("0.5s", 0.5),
        ("20ms", 0.02),
        ("2h", 7200.0),
        ("1h0m0s", 3600.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "s",
        "1x",
        "1m30",
        "m1s",
        "-1s",
        "1s2",
        "abc",
        "nan",
        "inf",
        "1 s",
        "1e999",
        "9" * 400 + "s",
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_format_rejects(bad: float) -> None:
    with pytest.raises(ValueError):
        format_duration(bad)
    with pytest.raises(TypeError):
        format_duration("1")  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**9))
def test_round_trip_ms(ms: int) -> None:
    assert round(parse_duration(format_duration_ms(ms)) * 1000) == ms


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_format_never_understates(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) >= seconds - 1e-6


def test_parse_of_a_long_hostile_value_is_an_error_not_a_stall() -> None:
    # Digits without a unit once made the parser rescan them from every position.
    with pytest.raises(ValueError, match="cannot parse"):
        parse_duration("9" * 200_000 + "x")
