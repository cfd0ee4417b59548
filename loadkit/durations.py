"""OpenAI-style durations (``1s``, ``6m0s``, ``350ms``, ``1m30.5s``): the server formats
``x-ratelimit-reset-*`` headers with them and clients parse them back into seconds."""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_duration_ms", "parse_duration"]

_UNIT_S = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ns": 1e-9,
}
# Longest units first so "ms" is not read as "m" followed by garbage.
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|μs|ns|h|m|s)")


def format_duration_ms(ms: int) -> str:
    """Format a whole number of milliseconds: ``350ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h0m0s``."""
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise TypeError(f"ms: expected an int, got {ms!r}")
    if ms < 0:
        raise ValueError(f"ms: a duration cannot be negative, got {ms}")
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    sec_text = str(secs) if frac == 0 else f"{secs}.{frac:03d}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def format_duration(seconds: float) -> str:
    """Format seconds, rounded *up* to the millisecond so a reset or retry time is never
    understated (0.3501 s -> ``351ms``; 0.35 s -> ``350ms``)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"seconds: expected a number, got {seconds!r}")
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise ValueError(f"seconds: expected a finite number >= 0, got {seconds!r}")
    # Round to the microsecond first so float noise (0.35 * 1000 = 350.00000000000006)
    # does not push a value up a whole millisecond.
    us = round(seconds * 1_000_000)
    return format_duration_ms(-(-us // 1000))


def parse_duration(text: str) -> float:
    """Parse ``1s``, ``6m0s``, ``350ms``, ``1m30.5s``, ``1h2m``, ``20us``, a bare number of
    seconds (``"2"``, ``"0.5"``) into seconds. Raises ``ValueError`` naming the text."""
    if not isinstance(text, str):
        raise TypeError(f"duration: expected a string, got {text!r}")
    s = text.strip()
    if not s:
        raise ValueError(f"duration: empty string {text!r}")
    if s[-1] in "0123456789.":  # a bare number ("2", "0.5"); "1s" skips a raising float()
        try:
            bare = float(s)
        except ValueError:
            pass
        else:
            if math.isnan(bare) or math.isinf(bare) or bare < 0:
                raise ValueError(f"duration: expected a finite number >= 0, got {text[:40]!r}")
            return bare
    total = 0.0
    pos = 0
    # match() at each position, not finditer(): a search would rescan a long run of digits
    # from every start and go quadratic on a hostile header.
    while (m := _PART.match(s, pos)) is not None:
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(
            f"duration: cannot parse {text[:40]!r} (expected e.g. '1s', '6m0s', '350ms')"
        )
    if not math.isfinite(total):  # "999...9s" overflows a float
        raise ValueError(f"duration: out of range {text[:40]!r}")
    return total
