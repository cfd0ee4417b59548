"""The web UI's tables by tier and by key, fed records as the master receives them."""

from __future__ import annotations

from loadkit.locustfiles._board import TierBoard, key_status
from loadkit.records import RequestRecord


def rec(
    key: str,
    tier: str,
    send: float,
    end: float,
    status: int = 200,
    ttft: float | None = None,
    **kw: object,
) -> RequestRecord:
    return RequestRecord(
        run_id="r",
        engine="locust",
        worker="w",
        request_id=f"{key}-{send}",
        attempt=1,
        tier=tier,
        key=key,
        endpoint="chat",
        stream=ttft is not None,
        model="m",
        scheduled_s=None,
        send_s=send,
        headers_s=send + 0.01,
        first_token_s=None if ttft is None else send + ttft,
        last_token_s=None,
        end_s=end,
        status=status,
        **kw,  # type: ignore[arg-type]
    )


def test_tiers_and_keys_count_answers_and_rates_over_the_window():
    board = TierBoard(window_s=10.0)
    for i in range(20):  # pro-1: a stream every 0.5 s over 10 s, TTFT 50..69 ms
        board.add(rec("pro-1", "pro", 10 + i * 0.5, 10.2 + i * 0.5, ttft=0.05 + i * 0.001))
    for i in range(5):  # free-1: a 429 every 2 s, each waiting Retry-After
        board.add(
            rec("free-1", "free", 11 + 2 * i, 11.01 + 2 * i, status=429, pause_s=2.0,
                limit_kind="requests")
        )  # fmt: skip
    board.add(rec("free-2", "free", 19.0, 19.5, status=404, error_code="not_found", pause_s=1.0))
    board.add(rec("pro-1", "pro", 1.0, 1.1))  # long before the window: counted, not in rates

    tiers = {r["tier"]: r for r in board.tier_rows(now=20.0)}
    assert tiers["pro"]["keys"] == 1 and tiers["pro"]["requests"] == 21
    assert tiers["pro"]["ok"] == 21 and tiers["pro"]["limited"] == 0
    assert tiers["pro"]["rps"] == 2.0  # 20 answers in the last 10 s
    assert tiers["pro"]["ttft_p50"] == 59.0 and tiers["pro"]["ttft_p95"] == 68.0
    assert tiers["free"]["keys"] == 2
    assert (tiers["free"]["limited"], tiers["free"]["failed"], tiers["free"]["ok"]) == (5, 1, 0)
    assert tiers["free"]["rps"] == 0.6 and tiers["free"]["ttft_p50"] == ""

    keys = {r["key"]: r for r in board.key_rows(now=20.0)}
    assert [r["key"] for r in board.key_rows(now=20.0)] == ["free-1", "free-2", "pro-1"]
    assert keys["free-1"]["status"] == "limited (429 requests), waits 2.0 s"
    assert keys["free-2"]["status"] == "failing (404 not_found), backs off 1.0 s"
    assert keys["pro-1"]["status"] == "ok"
    # nothing new for more than a window: the rates fall to 0 and the keys read idle
    later = {r["key"]: r for r in board.key_rows(now=40.0)}
    assert later["pro-1"]["rps"] == 0.0 and later["pro-1"]["status"] == "idle 20 s"


def test_early_in_the_run_the_rate_is_over_the_time_elapsed():
    board = TierBoard(window_s=10.0)
    for i in range(4):
        board.add(rec("free-1", "free", 0.1 + i * 0.4, 0.3 + i * 0.4))
    assert board.tier_rows(now=2.0)[0]["rps"] == 2.0


def test_keys_show_before_their_first_answer_and_a_stopped_request_is_no_failure():
    board = TierBoard([("free-1", "free"), ("pro-1", "pro")])
    assert [r["status"] for r in board.key_rows(now=0.5)] == ["no answer yet"] * 2
    board.add(rec("free-1", "free", 1.0, 2.0, status=200, transport_error="cancelled"))
    row = board.key_rows(now=2.5)[0]
    assert (row["cancelled"], row["failed"], row["ok"], row["status"]) == (1, 0, 0, "stopped")
    assert key_status(None, 1.0, 10.0) == "no answer yet"
