"""The truth log is versioned (``loadkit.truth/1``): every line the server writes
carries the schema; golden files of version 1 and of the unversioned lines written
before keep old logs readable; an unknown schema is refused, naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadkit.server.truth import TRUTH_SCHEMA, TruthRecord, read_truth
from tests.server.conftest import Raw, truth_of

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", ["truth-v1.jsonl", "truth-unversioned.jsonl"])
def test_golden_truth_logs_read(name: str) -> None:
    recs = read_truth(GOLDEN / name)
    assert [r["status"] for r in recs] == [200, 429, 200, 401] + ([None] if "v1" in name else [])
    typed = [TruthRecord.from_dict(r) for r in recs]
    assert typed[0].key == "free-1" and typed[0].completion_tokens == 16
    assert typed[1].decision == "rate_limited" and typed[1].admitted_ns is None
    assert typed[2].disconnect == "server" and typed[2].completion_tokens == 3
    assert all(t.schema == TRUTH_SCHEMA for t in typed)


def test_unknown_schema_and_garbage_are_named(tmp_path: Path) -> None:
    p = tmp_path / "truth.jsonl"
    p.write_text(
        (GOLDEN / "truth-v1.jsonl").read_text().replace("loadkit.truth/1", "loadkit.truth/9")
    )
    with pytest.raises(
        ValueError, match=r"truth.jsonl:1: unsupported truth schema 'loadkit.truth/9'"
    ):
        read_truth(p)
    shutil.copy(GOLDEN / "truth-v1.jsonl", p)
    p.write_text(p.read_text() + '{"request_id": "r9", "ke')  # a server killed mid-line
    assert len(read_truth(p)) == 5
    p.write_text("garbage\n" + (GOLDEN / "truth-v1.jsonl").read_text())
    with pytest.raises(ValueError, match="truth.jsonl:1"):
        read_truth(p)


def test_the_server_writes_version_1(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    Raw(srv.api_root).request("GET", "/models")
    (line,) = truth_of(srv)
    assert line["schema"] == TRUTH_SCHEMA
    assert TruthRecord.from_dict(line).to_dict() == line
    raw_line = Path(srv.truth_path).read_text().splitlines()[0]
    assert json.loads(raw_line)["schema"] == "loadkit.truth/1"
