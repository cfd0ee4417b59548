"""Record files of every schema version stay readable, by objects and as a DataFrame:
version 1 (no limit attribution, no token headers) reads with those fields null."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadkit.records import (
    RECORD_FIELDS,
    RECORD_SCHEMA,
    V2_FIELDS,
    RequestRecord,
    iter_records,
    read_records,
    read_table,
)

GOLDEN = Path(__file__).parent / "golden"
V1 = GOLDEN / "records-v1.jsonl"
V2 = GOLDEN / "records-v2.jsonl"


@pytest.fixture()
def run_dir(tmp_path):
    shutil.copy(V1, tmp_path / "records-golden.jsonl")
    return tmp_path


@pytest.fixture()
def run_dir_v2(tmp_path):
    shutil.copy(V2, tmp_path / "records-golden.jsonl")
    return tmp_path


def test_this_loadkit_writes_version_2():
    assert RECORD_SCHEMA == "loadkit.record/2"
    assert all(json.loads(line)["schema"] == RECORD_SCHEMA for line in V2.read_text().splitlines())


def test_golden_v1_reads_as_objects(run_dir):
    recs = iter_records(run_dir)
    assert [r.status for r in recs] == [200, 429, 0]
    assert recs[0].chunk_s == [0.552, 0.572, 0.592, 0.612]
    assert recs[1].retry_after_s == 0.75 and recs[2].transport_error == "timeout"
    # Fields version 1 did not have are None, and the record still says it is version 1.
    assert all(getattr(r, f) is None for r in recs for f in V2_FIELDS)
    assert {r.schema for r in recs} == {"loadkit.record/1"}


def test_golden_v1_reads_as_dataframe(run_dir):
    df = read_records(run_dir)
    assert list(df.columns) == list(RECORD_FIELDS)
    assert len(df) == 3 and df["stream"].tolist() == [True, False, True]
    assert list(df.loc[0, "chunk_s"]) == [0.552, 0.572, 0.592, 0.612]
    assert df[list(V2_FIELDS)].isna().all().all()


def test_golden_v2_reads_as_objects(run_dir_v2):
    recs = iter_records(run_dir_v2)
    assert [r.status for r in recs] == [200, 429, 429, 200, 429]
    assert [r.limit_kind for r in recs] == [None, "concurrency", "tokens", None, None]
    assert recs[1].limit_signal == "code=concurrency_limit_exceeded"
    assert recs[4].limit_signal.startswith("ambiguous: ")
    assert (recs[2].error_code, recs[2].error_type) == ("rate_limit_exceeded", "tokens")
    assert (recs[2].rl_limit_tokens, recs[2].rl_remaining_tokens) == (30000, 0)
    assert (recs[2].rl_reset_tokens_s, recs[2].retry_after_s) == (90.5, 30.0)
    assert [r.content_type for r in recs] == [
        "text/event-stream",
        "application/json",
        "application/json",
        "text/event-stream",
        "text/html",
    ]
    assert recs[3].transport_error == "line_too_long"


def test_golden_v2_reads_as_dataframe(run_dir_v2):
    df = read_records(run_dir_v2)
    assert list(df.columns) == list(RECORD_FIELDS)
    assert df["limit_kind"].tolist()[1:3] == ["concurrency", "tokens"]
    assert df["rl_remaining_tokens"].tolist()[2] == 0
    assert str(df["rl_limit_tokens"].dtype) in ("int64", "Int64", "float64")


def test_a_run_with_both_versions_reads_as_one_table(run_dir):
    shutil.copy(V2, run_dir / "records-other.jsonl")
    table = read_table(run_dir)
    assert table.num_rows == 8
    assert sorted(set(table.column("schema").to_pylist())) == [
        "loadkit.record/1",
        "loadkit.record/2",
    ]
    kinds = table.column("limit_kind").to_pylist()
    assert kinds.count("concurrency") == 1 and kinds.count(None) == 6
    assert len(iter_records(run_dir)) == 8


@pytest.mark.parametrize("golden", [V1, V2])
def test_round_trip_is_lossless_to_the_microsecond(tmp_path, golden):
    shutil.copy(golden, tmp_path / "records-golden.jsonl")
    for r in iter_records(tmp_path):
        assert RequestRecord.from_dict(json.loads(r.to_json())) == r


def test_torn_last_line_is_skipped_other_garbage_is_named(run_dir):
    p = run_dir / "records-golden.jsonl"
    p.write_text(p.read_text() + '{"run_id": "x", "eng')
    assert len(iter_records(run_dir)) == 3
    assert len(read_records(run_dir)) == 3
    p.write_text("garbage\n" + V1.read_text())
    with pytest.raises(ValueError, match="records-golden.jsonl:1"):
        iter_records(run_dir)


def test_unknown_schema_is_refused(run_dir):
    p = run_dir / "records-golden.jsonl"
    p.write_text(V1.read_text().replace("loadkit.record/1", "loadkit.record/9"))
    with pytest.raises(ValueError, match="loadkit.record/9"):
        iter_records(run_dir)
    with pytest.raises(ValueError, match="loadkit.record/9"):
        read_records(run_dir)


@pytest.mark.parametrize("golden", [V1, V2])
def test_parquet_copy_reads_back_the_same(tmp_path, golden):
    from loadkit.records import write_parquet

    shutil.copy(golden, tmp_path / "records-golden.jsonl")
    write_parquet(tmp_path)
    via_jsonl = read_records(tmp_path)
    (tmp_path / "records-golden.jsonl").unlink()
    via_parquet = read_records(tmp_path)
    assert via_parquet["request_id"].tolist() == via_jsonl["request_id"].tolist()
    assert list(via_parquet.loc[0, "chunk_s"]) == list(via_jsonl.loc[0, "chunk_s"])
    assert via_parquet["limit_kind"].tolist() == via_jsonl["limit_kind"].tolist()


def test_a_version_1_parquet_file_reads_with_the_new_fields_null(run_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    v1_columns = [f for f in RECORD_FIELDS if f not in V2_FIELDS]
    table = read_table(run_dir).select(v1_columns)  # what loadkit 1 wrote
    pq.write_table(table, run_dir / "records.parquet")
    (run_dir / "records-golden.jsonl").unlink()
    got = read_table(run_dir)
    assert got.column_names == list(RECORD_FIELDS) and got.num_rows == 3
    assert all(got.column(f).null_count == 3 for f in V2_FIELDS)
    assert got.column("status").to_pylist() == [200, 429, 0]
    assert isinstance(got, pa.Table)


def test_records_of_hostile_responses_read_back(tmp_path):
    """Records a hostile server produced: every field within its column type."""
    from loadkit.trace import RequestInfo, RequestTrace

    info = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", True, "m")
    bodies = [
        b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":[1]}],'
        b'"usage":{"prompt_tokens":1e400,"completion_tokens":99999999999999999999999}}\n\n',
        b'data: {"error":{"code":{"nested":true},"type":' + b"[" * 5000 + b"}}\n\n",
        b"\xff\xfe" * 100,
    ]
    lines = []
    for body in bodies:
        t = RequestTrace(info, 0.0)
        t.response(0.1, 200, {"retry-after": "1e999", "x-ratelimit-limit-tokens": "9" * 40})
        t.data(0.2, body)
        lines.append(t.finish(0.3).to_json())
    (tmp_path / "records-x.jsonl").write_text("\n".join(lines) + "\n")
    df = read_records(tmp_path)
    assert len(df) == 3 and df["prompt_tokens"].isna().all()
