"""A target whose answers are not the API's (wrong URL or layout, refused keys, no answer)
is an error with exit 2 naming the count, status and URL, never a violation; the keys that
could be judged keep their verdicts."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np

from loadkit.analysis.cli import analyze_main
from loadkit.analysis.report import render_report
from loadkit.analysis.summary import summarize_run
from tests.analysis.synthetic import (
    Limiter,
    Timing,
    answered_rows,
    even_sends,
    run_meta,
    simulate_key,
    write_run,
)

LIM = Limiter("sliding_log", requests=20, window_s=10.0, concurrency=4)
TARGET = "http://127.0.0.1:8080"
OPENAI = {
    "api": "openai",
    "paths": {
        "chat": "/chat/completions",
        "completions": "/completions",
        "models": "/models",
        "model": "/models/{model}",
    },
    "auth": "api-key: <key>",
    "extra_headers": [],
}


def analyse(run: Path) -> tuple[int, list[str], dict]:
    out = io.StringIO()
    ns = argparse.Namespace(run_dir=str(run), slo=[], no_charts=True, quiet=False)
    rc = analyze_main(ns, out=out)
    return rc, out.getvalue().splitlines(), json.loads((run / "summary.json").read_text())


def write(tmp: Path, rows: list[dict], keys=(("free-1", "free"),), key_runs=(), **meta_kw) -> Path:
    meta = run_meta({"free": LIM}, list(keys), target=meta_kw.pop("target", TARGET), **meta_kw)
    return write_run(tmp / "run", meta, list(key_runs), extra_rows=rows)


def test_wrong_url_run_is_an_error_never_a_violation(tmp_path):
    # 100 requests/s for 30 s against a limit of 20 per 10 s, every one a 404 HTML page:
    # counted as admitted, this was "requests violated, observed 1000 (promised 20)".
    rows = answered_rows(
        "free-1", "free", even_sends(0.01, 30.0), status=404, content_type="text/html"
    )
    rows += answered_rows(
        "free-2", "free", even_sends(0.02, 30.0), status=404, content_type="text/html"
    )
    run = write(tmp_path, rows, keys=(("free-1", "free"), ("free-2", "free")))
    rc, lines, s = analyse(run)
    free1 = (
        "all 3,000 requests of free-1 got 404 Not Found from "
        "http://127.0.0.1:8080/ai/chat/completions: wrong base URL or api layout?"
    )
    free2 = (
        "all 1,500 requests of free-2 got 404 Not Found from "
        "http://127.0.0.1:8080/ai/chat/completions: wrong base URL or api layout?"
    )
    assert rc == 2
    assert lines[:2] == [f"ERROR: {free1}", f"ERROR: {free2}"]
    assert "VERDICT: ERROR — 2 keys unusable (free-1, free-2)" in lines
    assert s["verdict"] == "error"
    assert s["headline"] == "ERROR — 2 keys unusable (free-1, free-2)"
    assert s["verdict_reasons"] == [free1, free2]
    for e in s["limits"]:
        assert (e["enforced"], e["honoured"]) == ("unusable", "unusable")
        assert e["observed_max"] == 0 and e["offered"]["admitted"] == 0
        assert e["explanation"][0] == f"UNUSABLE: {free1 if e['key'] == 'free-1' else free2}"
    assert '"violated"' not in (run / "summary.json").read_text()
    k1 = s["keys"][0]
    assert (k1["key"], k1["requests"], k1["client_error"], k1["not_api"], k1["usable"]) == (
        "free-1",
        3000,
        3000,
        3000,
        False,
    )
    assert k1["problem"] == free1
    # the status table: every 4xx, no admitted request
    assert " ".join(lines[5].split()) == "free-1 free 0 0 0 0 0 3000 0 0 UNUSABLE"


def test_the_message_names_the_url_of_the_run_s_layout_and_its_endpoint(tmp_path):
    rows = answered_rows(
        "free-1",
        "free",
        even_sends(0.5, 20.0),
        status=405,
        content_type="text/plain",
        endpoint="completions",
    )
    run = write(tmp_path, rows, target="https://gw.example/v1/", target_api=OPENAI)
    rc, _, s = analyse(run)
    assert rc == 2
    assert s["keys"][0]["problem"] == (
        "all 40 requests of free-1 got 405 Method Not Allowed from "
        "https://gw.example/v1/completions: wrong base URL or api layout?"
    )


def test_refused_keys_are_unusable_and_say_to_check_the_auth_header(tmp_path):
    rows = answered_rows(
        "free-1",
        "free",
        even_sends(0.1, 30.0),
        status=401,
        content_type="application/json",
        error_code="invalid_api_key",
    )
    # a 403 page that is not the API's error: the key (or its header) was not accepted
    rows += answered_rows(
        "free-2", "free", even_sends(0.1, 30.0), status=403, content_type="text/html"
    )
    run = write(
        tmp_path,
        rows,
        keys=(("free-1", "free"), ("free-2", "free")),
        target_api=OPENAI,
        target="http://127.0.0.1:8080/v1",
    )
    rc, lines, s = analyse(run)
    assert rc == 2 and s["verdict"] == "error"
    assert [k["problem"] for k in s["keys"]] == [
        "all 300 requests of free-1 got 401 Unauthorized from "
        "http://127.0.0.1:8080/v1/chat/completions: check the key / auth header "
        "(api-key: <key>)",
        "all 300 requests of free-2 got 403 Forbidden from "
        "http://127.0.0.1:8080/v1/chat/completions: check the key / auth header "
        "(api-key: <key>)",
    ]
    assert [k["auth"] for k in s["keys"]] == [300, 300]
    assert {(e["enforced"], e["honoured"]) for e in s["limits"]} == {("unusable", "unusable")}


def test_a_target_that_never_answers_is_unusable(tmp_path):
    rows = answered_rows(
        "free-1", "free", even_sends(0.25, 10.0), status=0, transport_error="refused"
    )
    rows += answered_rows(
        "free-1", "free", even_sends(0.5, 10.0) + 0.1, status=0, transport_error="timeout"
    )
    run = write(tmp_path, rows)
    rc, _, s = analyse(run)
    assert rc == 2
    assert s["keys"][0]["problem"] == (
        "all 60 requests of free-1 got no response (refused ×40, timeout ×20) from "
        "http://127.0.0.1:8080/ai/chat/completions: the target did not answer "
        "(connection refused): is it up, and reachable at that address?"
    )
    assert s["keys"][0]["no_response"] == 60


def test_one_unusable_key_makes_an_error_and_the_good_keys_keep_their_verdicts(tmp_path):
    good = simulate_key("free-1", "free", LIM, even_sends(0.3, 40.0), Timing(tokens=8))
    rows = answered_rows(
        "free-2", "free", even_sends(0.05, 30.0), status=404, content_type="text/html"
    )
    run = write(tmp_path, rows, keys=(("free-1", "free"), ("free-2", "free")), key_runs=[good])
    rc, lines, s = analyse(run)
    problem = (
        "all 600 requests of free-2 got 404 Not Found from "
        "http://127.0.0.1:8080/ai/chat/completions: wrong base URL or api layout?"
    )
    assert rc == 2
    assert lines[0] == f"ERROR: {problem}"
    assert s["headline"] == "ERROR — 1 key unusable (free-2); the other keys: no violation"
    assert s["verdict_reasons"] == [
        problem,
        "no violation and every SLO met; 2 verdicts held, 2 not tested by this scenario "
        "(the load never provoked them):",
        "free-1 concurrency enforced: inconclusive",
        "free-1 concurrency honoured: inconclusive",
    ]
    verdicts = {(e["key"], e["kind"]): (e["enforced"], e["honoured"]) for e in s["limits"]}
    assert verdicts == {
        ("free-1", "requests"): ("held", "held"),
        ("free-1", "concurrency"): ("inconclusive", "inconclusive"),
        ("free-2", "requests"): ("unusable", "unusable"),
        ("free-2", "concurrency"): ("unusable", "unusable"),
    }
    assert [k["usable"] for k in s["keys"]] == [True, False]


def test_a_key_is_unusable_only_when_most_of_its_answers_are(tmp_path):
    sends = even_sends(0.01, 10.0)  # 1,000 requests
    half = answered_rows("free-1", "free", sends[::2], status=200, content_type="application/json")
    bad = answered_rows("free-1", "free", sends[1::2], status=502, content_type="text/html")
    # Cancelled requests (the run stopping) are nobody's answer: left out of the share.
    cancelled = answered_rows(
        "free-1", "free", sends[:300] + 10.0, status=0, transport_error="cancelled"
    )
    run = write(tmp_path, half + bad + cancelled)
    rc, _, s = analyse(run)
    key = s["keys"][0]
    # exactly half of the 1,000 answered: not "mostly", the key is judged
    assert (key["not_api"], key["cancelled"], key["usable"]) == (500, 300, True)
    assert s["verdict"] != "error" and rc != 2
    more = answered_rows(
        "free-2", "free", even_sends(0.01, 1.0) + 20.0, status=502, content_type="text/html"
    )
    for r in more:
        r["key"] = "free-1"
        r["request_id"] += "-more"
    run2 = write(tmp_path / "two", half + bad + cancelled + more)
    rc, _, s = analyse(run2)
    assert rc == 2
    assert s["keys"][0]["problem"] == (
        "600 of 1,100 requests of free-1 got 502 Bad Gateway from "
        "http://127.0.0.1:8080/ai/chat/completions: the target, or a proxy in front of it, "
        "failed without the API's error (a text/html page)"
    )


def test_several_statuses_are_named_with_their_counts(tmp_path):
    rows = answered_rows(
        "free-1", "free", even_sends(0.01, 20.0), status=404, content_type="text/html"
    )
    rows += answered_rows(
        "free-1", "free", even_sends(0.04, 20.0) + 0.005, status=405, content_type="text/html"
    )
    run = write(tmp_path, rows)
    _, _, s = analyse(run)
    assert s["keys"][0]["problem"] == (
        "all 2,500 requests of free-1 got 404 Not Found ×2,000, 405 Method Not Allowed ×500 "
        "from http://127.0.0.1:8080/ai/chat/completions: wrong base URL or api layout?"
    )


def test_the_report_leads_with_the_error_and_says_why_on_the_key_s_rows(tmp_path):
    good = simulate_key("free-1", "free", LIM, even_sends(0.3, 40.0), Timing(tokens=8))
    rows = answered_rows(
        "free-2", "free", even_sends(0.05, 30.0), status=404, content_type="text/html"
    )
    run = write(tmp_path, rows, keys=(("free-1", "free"), ("free-2", "free")), key_runs=[good])
    html = render_report(summarize_run(run, charts=False), run)
    banner = html.index("<div class='banner bad'><h2>ERROR — 1 key unusable (free-2)")
    assert banner < html.index("<h2>Answers by key</h2>") < html.index("Rate limits")
    problem = (
        "all 600 requests of free-2 got 404 Not Found from "
        "http://127.0.0.1:8080/ai/chat/completions: wrong base URL or api layout?"
    )
    # in the banner, under the key's row of the answers table, and in its limit rows
    assert html.count(problem) == 4
    assert html.count("<tr class=unusable>") == 4  # answers row + its reason + 2 limit rows
    assert "UNUSABLE: " + problem in html


def test_limits_are_judged_on_admitted_answers_only(tmp_path):
    # 20 per 10 s promised; a key that got 15 answers and 30 wrong-route pages in one
    # window: only the 15 count, nothing is violated and it was never tested past its limit
    ok = answered_rows("free-1", "free", np.linspace(0.0, 5.0, 15), status=200)
    pages = answered_rows(
        "free-1", "free", np.linspace(0.1, 5.1, 10), status=404, content_type="text/html"
    )
    run = write(tmp_path, ok + pages)
    _, _, s = analyse(run)
    req = next(e for e in s["limits"] if e["kind"] == "requests")
    assert (req["observed_max"], req["offered"]["max_in_window"]) == (15, 15)
    assert (req["enforced"], req["honoured"]) == ("inconclusive", "inconclusive")
    assert s["keys"][0]["usable"] is True
