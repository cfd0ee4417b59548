"""The record writer: records held in a running loop are written together within the flush
interval (so a killed run loses at most that interval), everything else is written as it
comes, nothing is lost on close; and the JSON line keeps the record's meaning."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

from loadkit.records import FLUSH_INTERVAL_S, RequestRecord, iter_records
from tests.engine.scripted import VirtualTimeLoop


def record(i: int, **kw: object) -> RequestRecord:
    base: dict[str, object] = {
        "run_id": "r",
        "engine": "async",
        "worker": "async-0",
        "request_id": f"async-0-{i}",
        "attempt": 1,
        "tier": "free",
        "key": "free-1",
        "endpoint": "chat",
        "stream": True,
        "model": "m",
        "scheduled_s": 1.0 + i,
        "send_s": 1.0000004 + i,
        "headers_s": 1.25 + i,
        "first_token_s": 1.3 + i,
        "last_token_s": 1.4 + i,
        "end_s": 1.5 + i,
        "chunk_s": [1.3 + i, 1.35000049 + i, 1.4 + i],
        "status": 200,
    }
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_outside_a_loop_every_record_is_on_disk_as_it_is_written(tmp_path):
    from loadkit.records import RecordWriter

    path = tmp_path / "records-w.jsonl"
    with RecordWriter(path) as w:
        w.write(record(0))
        assert len(lines(path)) == 1
        w.write(record(1))
        assert len(lines(path)) == 2


def test_in_a_loop_records_are_written_together_within_the_interval(tmp_path):
    from loadkit.records import RecordWriter

    path = tmp_path / "records-w.jsonl"
    seen: list[int] = []

    async def main(w: RecordWriter) -> None:
        for i in range(3):
            w.write(record(i))
        seen.append(len(lines(path)))  # held: nothing written yet
        await asyncio.sleep(FLUSH_INTERVAL_S * 0.99)
        seen.append(len(lines(path)))
        await asyncio.sleep(FLUSH_INTERVAL_S * 0.02)
        seen.append(len(lines(path)))  # the interval is over: all three, in one write
        w.write(record(3))
        seen.append(len(lines(path)))

    loop = VirtualTimeLoop()  # the interval passes on virtual time, exactly
    with RecordWriter(path) as w, asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(main(w))
        assert w.count == 4
    assert seen == [0, 0, 3, 3]
    assert [r.request_id for r in iter_records(tmp_path)] == [f"async-0-{i}" for i in range(4)]


def test_records_held_when_the_loop_ended_are_written_on_the_next_write_or_close(tmp_path):
    from loadkit.records import RecordWriter

    path = tmp_path / "records-w.jsonl"

    async def burst(w: RecordWriter, start: int) -> None:
        for i in range(start, start + 2):
            w.write(record(i))

    w = RecordWriter(path, flush_interval_s=60.0)
    asyncio.run(burst(w, 0))
    assert lines(path) == []
    w.write(record(2))  # no loop now: this one and the two held go out
    assert len(lines(path)) == 3
    asyncio.run(burst(w, 3))
    w.close()
    assert len(lines(path)) == 5


_CHILD = """
import asyncio, sys
from loadkit.records import RecordWriter
from tests.unit.test_records_writer import record

async def main():
    w = RecordWriter(sys.argv[1])
    for i in range(500):
        w.write(record(i))
    print("written", flush=True)
    await asyncio.sleep(60)  # killed here, its records long since flushed

asyncio.run(main())
"""


def test_a_killed_writer_keeps_every_record_older_than_the_interval(tmp_path):
    path = tmp_path / "records-w.jsonl"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
        deadline = time.monotonic() + 30  # the flush is due 0.1 s after the writes
        while len(lines(path)) < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(iter_records(tmp_path)) == 500


def test_a_line_means_what_the_record_says_rounded_to_the_microsecond():
    r = record(0, retry_after_s=0.0000005, rl_limit_requests=2**63 - 1, conn_s=1.1234564)
    d = json.loads(r.to_json())
    assert r.to_jsonl() == (r.to_json() + "\n").encode()
    assert d["send_s"] == 1.0 and d["conn_s"] == 1.123456
    assert d["chunk_s"] == [1.3, 1.35, 1.4] and d["retry_after_s"] in (0.0, 1e-06)
    assert d["rl_limit_requests"] == 2**63 - 1
    assert RequestRecord.from_dict(d).to_json() == r.to_json()
    # Values the fast path cannot take still make a line: a huge integer, an infinite time.
    big = json.loads(record(0, rl_limit_requests=2**70).to_json())
    assert big["rl_limit_requests"] == 2**70
    inf = json.loads(record(0, retry_after_s=math.inf).to_json())
    assert inf["retry_after_s"] == math.inf


def test_without_conn_s_a_record_reads_it_as_not_measured(tmp_path):
    d = json.loads(record(0).to_json())
    del d["conn_s"]  # a line written before the field existed
    (tmp_path / "records-old.jsonl").write_text(json.dumps(d) + "\n")
    (rec,) = iter_records(tmp_path)
    assert rec.conn_s is None and rec.send_s == 1.0


def test_a_table_of_old_and_new_lines_has_conn_s_null_where_not_measured(tmp_path):
    from loadkit.records import read_table

    old = json.loads(record(0).to_json())
    del old["conn_s"]
    new = record(1, conn_s=2.25).to_json()
    (tmp_path / "records-a.jsonl").write_text(json.dumps(old) + "\n" + new + "\n")
    assert read_table(tmp_path).column("conn_s").to_pylist() == [None, 2.25]


def test_a_number_beyond_int64_reads_as_huge_instead_of_failing_the_run(tmp_path):
    # a hostile or broken server's header or usage number is kept in the record as sent;
    # the readers clamp it to int64 (still huge) rather than refuse every record of the run
    from loadkit.analysis.ingest import read_reduced
    from loadkit.records import RecordWriter, read_table

    with RecordWriter(tmp_path / "records-w.jsonl") as w:
        w.write(record(0))
        w.write(record(1, rl_limit_requests=2**70, prompt_tokens=-(2**65)))
        w.write(record(2, rl_limit_requests=60))
    table = read_table(tmp_path)
    assert table.column("rl_limit_requests").to_pylist() == [None, 2**63 - 1, 60]
    assert table.column("prompt_tokens").to_pylist()[1] == -(2**63)
    reduced = read_reduced(tmp_path)
    assert reduced.n == 3
    assert reduced.arrays["rl_limit_requests"][1] == float(2**63 - 1)
    assert reduced.arrays["rl_limit_requests"][2] == 60.0
