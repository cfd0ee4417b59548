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
