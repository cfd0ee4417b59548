"""connect_wait_ms: how long a request waited for its connection after its send (conn_s −
send_s), in summary.json's latency when the engine measured it, absent when not."""

from __future__ import annotations

import pytest

from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.metrics import Latency, latency_summary, metric_values
from tests.analysis.builders import rec


def test_connect_wait_is_connection_ready_minus_send_over_every_status():
    recs = [
        rec(1.0, 1.2, 1.5, conn_s=1.003),  # a pooled connection: 3 ms
        rec(2.0, 2.3, 2.4, conn_s=2.15, status=429, code="rate_limit_exceeded"),  # new: 150 ms
        rec(3.0, None, 9.0, status=0, transport_error="refused"),  # never connected
        rec(0.1, 0.2, 0.3, conn_s=0.2),  # before warm-up
    ]
    cols = columns_from_records(recs)
    v = metric_values(cols, warmup_s=0.5)
    assert v["connect_wait_ms"].values == pytest.approx([3.0, 150.0])
    lat = latency_summary(cols, v)
    assert lat.connect_wait_ms is not None
    assert lat.table("connect_wait_ms").overall.count == 2
    assert lat.table("connect_wait_ms").overall.max == pytest.approx(150.0)
    assert lat.connect_wait_ms.by_tier["free"].count == 2
    plain = lat.to_dict()
    assert plain["connect_wait_ms"]["overall"]["count"] == 2
    assert Latency.from_dict(plain) == lat


def test_a_run_that_did_not_measure_it_has_no_table():
    cols = columns_from_records([rec(1.0, 1.2, 1.5), rec(2.0, 2.1, 2.2)])
    v = metric_values(cols, warmup_s=0.0)
    assert "connect_wait_ms" not in v
    lat = latency_summary(cols, v)
    assert lat.connect_wait_ms is None and "connect_wait_ms" not in lat.to_dict()
    assert lat.table("connect_wait_ms").overall.count == 0  # an SLO on it has no data
    assert all(g.connect_wait_ms is None for g in lat.groups)
