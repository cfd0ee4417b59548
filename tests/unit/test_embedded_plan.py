"""A scenario run against the embedded server whose promises differ from the server's plan
is told so before the run: otherwise its verdicts read as the server breaking its limits."""

from __future__ import annotations

from loadkit.run import builtin_scenario, plan_differences
from loadkit.scenario.parse import scenario_from_dict
from loadkit.server.config import config_from_dict, default_config


def scenario(**pro: object) -> object:
    return scenario_from_dict(
        {
            "name": "s",
            "target": {"base_url": "embedded", "model": "loadkit-small"},
            "run": {"duration_s": 5},
            "tiers": {
                "free": {"requests": 60, "window_s": 60, "concurrency": 3, "keys": 1},
                "pro": {"requests": 1000, "window_s": 60, "concurrency": 10, "keys": 1, **pro},
            },
            "load": [{"tier": "pro", "pattern": "constant", "rate_per_s": 1}],
        }
    )


def test_the_shipped_scenarios_promise_what_the_embedded_server_enforces():
    assert plan_differences(builtin_scenario(), default_config()) == []
    assert plan_differences(scenario(), default_config()) == []


def test_a_promise_the_server_does_not_keep_is_named_with_both_figures():
    (line,) = plan_differences(scenario(requests=100_000, concurrency=100), default_config())
    assert line == (
        "tier pro: the scenario promises 100,000 requests, 100 concurrent; the embedded "
        "server enforces 1,000 requests, 10 concurrent (the verdicts judge the promise)"
    )
    (line,) = plan_differences(scenario(tokens=5000), default_config())
    assert "promises 5,000 tokens" in line and "enforces no tokens limit" in line


def test_the_servers_own_config_is_what_is_compared():
    config = config_from_dict(
        {"tiers": {"free": {}, "pro": {"requests": 2000, "window_s": 60, "concurrency": 10}}}
    )
    (line,) = plan_differences(scenario(), config)
    assert line.startswith("tier pro: the scenario promises 1,000 requests;")
    assert plan_differences(scenario(requests=2000), config) == []
