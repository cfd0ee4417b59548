"""What each request asked of the token limits, as flat columns beside ``columns.Columns``:
the model, the prompt and output tokens (the service's ``usage`` and the client's own count
of what it sent), the token headers, and the bounds on each request's weight under a
promise that counts input, output or total tokens (``tokens.weights``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A client's count of a prompt is exact for the reference server and an estimate for any
# other tokenizer: over the run's answers that carry usage, the ratio usage / count says
# how far off it is, and a request without usage is bounded by the ratio's extremes.
CALIBRATION_SLACK = 0.0


@dataclass(frozen=True)
class PromptCalibration:
    """How the client's prompt count compares with the service's ``usage.prompt_tokens``
    over the requests that have both: their ratio's range. ``pairs`` 0: nothing to compare
    with (then the count is taken as it is, and the explanation says so)."""

    pairs: int
    low: float
    high: float

    @property
    def exact(self) -> bool:
        return self.pairs > 0 and self.low == self.high == 1.0


@dataclass(frozen=True)
class TokenColumns:
    """One row per record, aligned with ``Columns``; NaN where a value is missing."""

    model: np.ndarray  # codes into model_names (-1: none)
    model_names: tuple[str, ...]
    usage_prompt: np.ndarray
    usage_completion: np.ndarray
    sent_prompt: np.ndarray  # the client's count of the prompt it sent
    sent_output: np.ndarray  # max_tokens x choices asked
    finish_length: np.ndarray  # choice 0 ended for its length (it generated max_tokens)
    rl_limit: np.ndarray  # x-ratelimit-limit-tokens
    rl_remaining: np.ndarray
    rl_reset: np.ndarray  # x-ratelimit-reset-tokens, seconds
    limit_kind: np.ndarray  # codes into kind_names (-1: none)
    kind_names: tuple[str, ...]

    def model_rows(self, name: str) -> np.ndarray:
        """Mask of the rows asking for model ``name``."""
        if name not in self.model_names:
            return np.zeros(self.model.size, dtype=bool)
        return np.asarray(self.model == self.model_names.index(name))

    def kind_is(self, name: str) -> np.ndarray:
        """Mask of the rows whose ``limit_kind`` is ``name``."""
        if name not in self.kind_names:
            return np.zeros(self.limit_kind.size, dtype=bool)
        return np.asarray(self.limit_kind == self.kind_names.index(name))

    def calibration(self) -> PromptCalibration:
        both = ~np.isnan(self.usage_prompt) & ~np.isnan(self.sent_prompt) & (self.sent_prompt > 0)
        if not both.any():
            return PromptCalibration(0, 1.0, 1.0)
        ratio = self.usage_prompt[both] / self.sent_prompt[both]
        return PromptCalibration(int(both.sum()), float(ratio.min()), float(ratio.max()))

    def weight_bounds(
        self, rows: np.ndarray, counts: str, cal: PromptCalibration
    ) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) tokens of each of ``rows`` under a promise counting ``counts``: usage
        where the response had it, else the client's count scaled by the calibration's
        extremes; hi NaN where no bound is known (``tokens.weights``)."""
        from loadkit.analysis.tokens import weights

        sent = self.sent_prompt[rows]
        common = dict(
            usage_prompt=self.usage_prompt[rows],
            usage_completion=self.usage_completion[rows],
            finish_length=self.finish_length[rows],
            sent_output=self.sent_output[rows],
        )
        lo, _ = weights(counts, sent_prompt=np.floor(sent * cal.low), **common)
        _, hi = weights(counts, sent_prompt=np.ceil(sent * cal.high), **common)
        return lo, hi


def _floats(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    return np.asarray(table.column(name).to_numpy(), dtype=np.float64)


def _encoded(table: pa.Table, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    col = table.column(name) if name in table.column_names else None
    if col is None or col.num_chunks == 0:
        return np.full(table.num_rows, -1, dtype=np.int32), ()
    enc = col.combine_chunks().dictionary_encode()
    codes = np.asarray(enc.indices.fill_null(-1).to_numpy(), dtype=np.int32)
    return codes, tuple(str(x) for x in enc.dictionary.to_pylist())


def token_columns(table: pa.Table) -> TokenColumns:
    """The token columns of a record table (``loadkit.records.arrow_schema``)."""
    model, model_names = _encoded(table, "model")
    kind, kind_names = _encoded(table, "limit_kind")
    finish = table.column("finish_reason") if "finish_reason" in table.column_names else None
    if finish is None or finish.num_chunks == 0:
        length = np.zeros(table.num_rows, dtype=bool)
    else:
        length = np.asarray(
            pc.equal(finish, "length").fill_null(False).to_numpy(zero_copy_only=False), dtype=bool
        )
    return TokenColumns(
        model=model,
        model_names=model_names,
        usage_prompt=_floats(table, "prompt_tokens"),
        usage_completion=_floats(table, "completion_tokens"),
        sent_prompt=_floats(table, "sent_prompt_tokens"),
        sent_output=_floats(table, "sent_max_tokens"),
        finish_length=length,
        rl_limit=_floats(table, "rl_limit_tokens"),
        rl_remaining=_floats(table, "rl_remaining_tokens"),
        rl_reset=_floats(table, "rl_reset_tokens_s"),
        limit_kind=kind,
        kind_names=kind_names,
    )
