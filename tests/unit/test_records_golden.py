"""Record files of schema version 1 stay readable, by objects and as a DataFrame."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadkit.records import RECORD_FIELDS, RequestRecord, iter_records, read_records

GOLDEN = Path(__file__).parent / "golden" / "records-v1.jsonl"


@pytest.fixture()
def run_dir(tmp_path):
    shutil.copy(GOLDEN, tmp_path / "records-golden.jsonl")
    return tmp_path


def test_golden_v1_reads_as_objects(run_dir):
    recs = iter_records(run_dir)
    assert [r.status for r in recs] == [200, 429, 0]
    assert recs[0].chunk_s == [0.552, 0.572, 0.592, 0.612]
    assert recs[1].retry_after_s == 0.75 and recs[2].transport_error == "timeout"


def test_golden_v1_reads_as_dataframe(run_dir):
    df = read_records(run_dir)
    assert list(df.columns) == list(RECORD_FIELDS)
    assert len(df) == 3 and df["stream"].tolist() == [True, False, True]
    assert list(df.loc[0, "chunk_s"]) == [0.552, 0.572, 0.592, 0.612]


def test_round_trip_is_lossless_to_the_microsecond(run_dir):
    for r in iter_records(run_dir):
        assert RequestRecord.from_dict(__import__("json").loads(r.to_json())) == r


def test_torn_last_line_is_skipped_other_garbage_is_named(run_dir):
    p = run_dir / "records-golden.jsonl"
    p.write_text(p.read_text() + '{"run_id": "x", "eng')
    assert len(iter_records(run_dir)) == 3
    assert len(read_records(run_dir)) == 3
    p.write_text("garbage\n" + GOLDEN.read_text())
    with pytest.raises(ValueError, match="records-golden.jsonl:1"):
        iter_records(run_dir)


def test_unknown_schema_is_refused(run_dir):
    p = run_dir / "records-golden.jsonl"
    p.write_text(GOLDEN.read_text().replace("loadkit.record/1", "loadkit.record/9"))
    with pytest.raises(ValueError, match="loadkit.record/9"):
        iter_records(run_dir)
    with pytest.raises(ValueError, match="loadkit.record/9"):
        read_records(run_dir)


def test_parquet_copy_reads_back_the_same(run_dir):
    from loadkit.records import write_parquet

    write_parquet(run_dir)
    via_jsonl = read_records(run_dir)
    (run_dir / "records-golden.jsonl").unlink()
    via_parquet = read_records(run_dir)
    assert via_parquet["request_id"].tolist() == via_jsonl["request_id"].tolist()
    assert list(via_parquet.loc[0, "chunk_s"]) == [0.552, 0.572, 0.592, 0.612]
