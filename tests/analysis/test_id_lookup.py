"""The analysis reads the request ids of its examples row by row: the same ids as
``Columns.ids``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from loadkit.analysis.columns import Columns
from loadkit.analysis.summary import id_lookup


def test_id_lookup_reads_the_ids_take_reads():
    ids = pa.chunked_array([["a", "b"], [], ["c", None, "d"], ["e"]], type=pa.string())
    fake = SimpleNamespace(request_id=ids)
    rows = np.array([5, 0, 3, 2, 4, 1, 5])
    assert id_lookup(fake)(rows) == Columns.ids(fake, rows)
    assert id_lookup(fake)(np.zeros(0, dtype=np.int64)) == []


def test_id_lookup_of_many_rows():
    ids = pa.chunked_array([[f"r{i}" for i in range(j, j + 50)] for j in range(0, 500, 50)])
    fake = SimpleNamespace(request_id=ids, ids=lambda rows: Columns.ids(fake, rows))
    rows = np.arange(499, -1, -3)
    assert id_lookup(fake)(rows) == [f"r{i}" for i in rows.tolist()]
