"""Token, per-day and per-model promises in a scenario's tiers, and load phases sized from
them (``token_factor``): what parses into what, what run.json's ``tiers`` holds, and the
message a wrong table gets."""

# ruff: noqa: E501  (the tables below hold whole messages, one case a line)

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from loadkit.scenario import (
    Dist,
    ScenarioError,
    load_scenario,
    scenario_from_dict,
    scenario_to_dict,
)

BASE: dict[str, Any] = {
    "run": {"duration_s": 10},
    "tiers": {
        "free": {
            "requests": 60,
            "concurrency": 3,
            "tokens": 6000,
            "token_counts": "input",
            "requests_per_day": 1000,
            "models": {
                "loadkit-small": {"tokens": 1200, "token_counts": "output"},
                "loadkit-chat": {"requests": 5, "window_s": 10},
            },
        }
    },
    "load": [{"tier": "free", "pattern": "poisson", "rate_per_s": 2}],
}


def changed(edit: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    edit(d)
    return d


def without(d: dict[str, Any], *fields: str) -> dict[str, Any]:
    """The free tier of ``d`` with ``fields`` removed."""
    for f in fields:
        del d["tiers"]["free"][f]
    tier: dict[str, Any] = d["tiers"]["free"]
    return tier


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data)
    return str(e.value).removeprefix("<dict>: ")


def test_a_toml_file_reads_naturally(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(
        "[run]\nduration_s = 30\n"
        "[tiers.free]\nrequests = 60\nconcurrency = 3\n"
        'tokens = 40000\ntoken_counts = "total"\nrequests_per_day = 200\n'
        "[tiers.free.models.loadkit-small]\ntokens = 10000\ntoken_window_s = 10\n"
        '[[load]]\ntier = "free"\npattern = "burst"\nburst_size = 5\nburst_period_s = 20\n'
        "token_factor = 1.5\nmax_tokens = 16\n"
    )
    s = load_scenario(p)
    free = s.tiers["free"]
    assert (free.tokens, free.token_window_s, free.token_counts) == (40000, 60.0, "total")
    assert (free.requests_per_day, free.day_window_s) == (200, 86400.0)
    small = free.models["loadkit-small"]
    # what the model table leaves out is the tier's; promises it does not make stay unset
    assert (small.tokens, small.token_window_s, small.token_counts) == (10000, 10.0, "total")
    assert (small.requests, small.window_s, small.requests_per_day) == (None, None, None)
    # the phase goes to the default model, whose own promise sizes it: a burst every 20 s
    # within a 10 s window carries 1.5 x 10000 tokens, in 5 requests of prompt + 16 output
    assert s.load[0].prompt_tokens == Dist("fixed", 3000 - 16)
    assert s.load[0].max_tokens == Dist("fixed", 16)


def test_promised_adds_the_new_promises_and_keeps_the_old_three() -> None:
    s = scenario_from_dict(BASE)
    assert s.tiers["free"].promised() == {
        "requests": 60,
        "window_s": 60.0,
        "concurrency": 3,
        "tokens": 6000,
        "token_window_s": 60.0,
        "token_counts": "input",
        "requests_per_day": 1000,
        "day_window_s": 86400.0,
        "models": {
            "loadkit-small": {"tokens": 1200, "token_window_s": 60.0, "token_counts": "output"},
            "loadkit-chat": {"requests": 5, "window_s": 10.0},
        },
    }
    plain = changed(lambda d: d["tiers"].__setitem__("free", {"requests": 60, "concurrency": 3}))
    # a tier without them reads exactly as before in run.json
    assert scenario_from_dict(plain).tiers["free"].promised() == {
        "requests": 60,
        "window_s": 60.0,
        "concurrency": 3,
    }


def test_token_promise_is_the_models_else_the_tiers() -> None:
    free = scenario_from_dict(BASE).tiers["free"]
    assert free.token_promise("loadkit-small") == (1200, 60.0, "output")
    assert free.token_promise("loadkit-chat") == (6000, 60.0, "input")  # no model tokens
    assert free.token_promise(None) == (6000, 60.0, "input")


def test_a_scenario_with_promises_survives_its_file_shape() -> None:
    s = scenario_from_dict(
        changed(lambda d: d["load"][0].update(token_factor=2.0, model="loadkit-chat"))
    )
    back = scenario_from_dict(scenario_to_dict(s))
    assert back.tiers == s.tiers and back.load == s.load


@pytest.mark.parametrize(
    "load,model,prompt,completion",
    [
        # open loop: 2 req/s x 60 s = 120 requests per window share 1.5 x 6000 input tokens
        ({"pattern": "poisson", "rate_per_s": 2, "token_factor": 1.5}, "loadkit-chat", 75, 16),
        # the model counts output: the completion carries 2 x 1200 / 120
        ({"pattern": "constant", "rate_per_s": 2, "token_factor": 2}, "loadkit-small", 16, 20),
        # rate_factor and token_factor together: 1 req/s (60 per 60 s) share 6000
        ({"pattern": "poisson", "rate_factor": 1, "token_factor": 1}, "loadkit-chat", 100, 16),
        # bursts faster than the window: 6 bursts of 10 per window share 3 x 6000
        ({"pattern": "burst", "burst_size": 10, "burst_period_s": 10, "token_factor": 3}, "loadkit-chat", 300, 16),
        # bursts rarer than the window: each burst alone carries 1.2 x 6000
        ({"pattern": "burst", "burst_size": 4, "burst_period_s": 600, "token_factor": 1.2}, "loadkit-chat", 1800, 16),
        # closed loop: the users' requests in flight at once carry it
        ({"pattern": "closed", "concurrency": 3, "token_factor": 1}, "loadkit-small", 16, 400),
        # the completion side named under a total promise: the prompt's tokens are left out
        ({"pattern": "closed", "concurrency": 2, "token_factor": 1, "token_side": "completion", "prompt_tokens": 100}, "other", 100, 2900),
    ],
)  # fmt: skip
def test_token_factor_sizes_one_side_from_the_promise(
    load: dict[str, Any], model: str, prompt: int, completion: int
) -> None:
    def edit(d: dict[str, Any]) -> None:
        d["load"] = [{"tier": "free", "model": model, **load}]
        if model == "other":
            d["tiers"]["free"]["token_counts"] = "total"

    ld = scenario_from_dict(changed(edit)).load[0]
    assert (ld.prompt_tokens, ld.max_tokens) == (Dist("fixed", prompt), Dist("fixed", completion))


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d["tiers"]["free"].pop("tokens"), "tiers.free.token_counts: only with tokens (it qualifies that promise)"),
        (lambda d: without(d, "requests_per_day").update(day_window_s=5), "tiers.free.day_window_s: only with requests_per_day (it qualifies that promise)"),
        (lambda d: d["tiers"]["free"].update(tokens=0), "tiers.free.tokens: must be >= 1, got 0"),
        (lambda d: d["tiers"]["free"].update(token_window_s=-1), "tiers.free.token_window_s: must be a positive number, got -1"),
        (lambda d: d["tiers"]["free"].update(token_counts="both"), "tiers.free.token_counts: expected 'input', 'output' or 'total', got 'both'"),
        (lambda d: d["tiers"]["free"].update(requests_per_day=2.5), "tiers.free.requests_per_day: expected an integer, got 2.5"),
        (lambda d: d["tiers"]["free"].update(models=[]), "tiers.free.models: expected a table, got []"),
        (lambda d: d["tiers"]["free"]["models"].update(m={}), "tiers.free.models.m: a model's table needs at least one promise: requests, concurrency, tokens or requests_per_day"),
        (lambda d: d["tiers"]["free"]["models"].update(m={"window_s": 10, "tokens": 5}), "tiers.free.models.m.window_s: only with requests (it qualifies that promise)"),
        (lambda d: d["tiers"]["free"]["models"].update(m={"rpm": 10}), "tiers.free.models.m.rpm: unknown field (expected one of requests, window_s, concurrency, tokens, token_window_s, token_counts, requests_per_day, day_window_s)"),
        (lambda d: d["tiers"]["free"]["models"].update(m={"concurrency": 0}), "tiers.free.models.m.concurrency: must be >= 1, got 0"),
        (lambda d: d["load"][0].update(token_side="prompt"), "load[0].token_side: only with token_factor (it says where the size goes)"),
        (lambda d: d["load"][0].update(token_factor=0), "load[0].token_factor: must be a positive number, got 0"),
        (lambda d: d["load"][0].update(token_factor=1, model="loadkit-chat", prompt_tokens=10), "load[0].prompt_tokens: give prompt_tokens or token_factor for the prompt, not both (the prompt is where token_factor puts the size)"),
        (lambda d: d["load"][0].update(token_factor=1, model="loadkit-chat", token_side="completion"), "load[0].token_side: the promise counts input tokens only: a completion sized by token_factor would not count"),
        (lambda d: d["load"][0].update(token_factor=1, rate_per_s=500), "load[0].token_factor: sizes each request's completion at 0.04 tokens: raise token_factor, or send fewer requests per token window"),
        (lambda d: without(d, "tokens", "token_counts") and d["load"][0].update(token_factor=1, model="m"), "load[0].token_factor: needs a tokens promise in tiers.free (or in tiers.free.models.m)"),
    ],
)  # fmt: skip
def test_wrong_promises_and_sizes_are_named(edit: Any, message: str) -> None:
    assert error_of(changed(edit)) == message


def test_the_documented_examples_read_as_documented() -> None:
    import tomllib

    doc = (Path(__file__).resolve().parents[2] / "docs" / "scenarios.md").read_text()
    blocks = [b.split("```")[0] for b in doc.split("```toml\n")[1:]]
    whole, token_burst = blocks[0], next(b for b in blocks if "token_factor" in b)
    free = scenario_from_dict(tomllib.loads(whole)).tiers["free"]
    assert free.promised()["models"] == {
        "my-model": {"tokens": 10000, "token_window_s": 60.0, "token_counts": "total",
                     "requests": 20, "window_s": 60.0}
    }  # fmt: skip
    burst = scenario_from_dict({"run": {"duration_s": 60}, **tomllib.loads(token_burst)})
    assert burst.load[0].prompt_tokens == Dist("fixed", 375)
