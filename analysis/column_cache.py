"""A large run's reduced records (``ingest.Reduced``) kept on disk in the run folder, so
that parsing a gigabyte of JSON is paid once: the first analysis writes one ``.npy`` file
per column (and the request ids as an Arrow IPC file) into ``.loadkit-columns/``; a later
analysis loads them in a fraction of a second while every record file still has the size
and modification time it had then, and ingests the records afresh otherwise.

Only runs of at least ``CACHE_MIN_RECORDS`` records are cached: a small run parses in well
under a second and its folder stays as the run left it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from loadkit.analysis.ingest import Reduced

CACHE_DIR = ".loadkit-columns"
CACHE_FORMAT = 2
CACHE_MIN_RECORDS = 200_000
_MANIFEST = "manifest.json"
_IDS = "request_id.arrow"


def source_signature(run_dir: str | os.PathLike[str]) -> list[list[Any]]:
    """Name, size and modification time (ns) of every file the records are read from."""
    from loadkit.records import PARQUET_FILE, record_files

    files = list(record_files(run_dir))
    parquet = Path(run_dir) / PARQUET_FILE
    if parquet.is_file():
        files.append(parquet)
    out: list[list[Any]] = []
    for f in files:
        st = f.stat()
        out.append([f.name, st.st_size, st.st_mtime_ns])
    return out


def load(run_dir: str | os.PathLike[str]) -> Reduced | None:
    """The cached reduction of the run's records, or None when there is none or the record
    files changed since it was written (or it cannot be read)."""
    where = Path(run_dir) / CACHE_DIR
    try:
        manifest = json.loads((where / _MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT:
            return None
        if manifest.get("sources") != source_signature(run_dir):
            return None
        arrays = {name: np.load(where / f"a.{name}.npy") for name in manifest["arrays"]}
        codes = {
            name: (np.load(where / f"c.{name}.npy"), tuple(names))
            for name, names in manifest["codes"].items()
        }
        with pa.ipc.open_file(pa.memory_map(str(where / _IDS))) as reader:
            ids = reader.read_all().column(0)
        gap_ms = np.load(where / "gap_ms.npy")
        gap_counts = np.load(where / "gap_counts.npy")
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowInvalid):
        return None
    return Reduced(
        n=int(manifest["n"]),
        arrays=arrays,
        codes=codes,
        gap_ms=gap_ms,
        gap_counts=gap_counts,
        request_id=ids,
    )


def store(run_dir: str | os.PathLike[str], reduced: Reduced, sources: list[list[Any]]) -> bool:
    """Write the cache (atomically: a complete folder or none); False when the run folder
    cannot be written (the analysis goes on without it). ``sources``: the signature taken
    before the records were read, so records appended meanwhile invalidate it."""
    base = Path(run_dir)
    final = base / CACHE_DIR
    tmp = base / f"{CACHE_DIR}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, arr in reduced.arrays.items():
            np.save(tmp / f"a.{name}.npy", arr)
        for name, (codes, _) in reduced.codes.items():
            np.save(tmp / f"c.{name}.npy", codes)
        np.save(tmp / "gap_ms.npy", reduced.gap_ms)
        np.save(tmp / "gap_counts.npy", reduced.gap_counts)
        table = pa.table({"request_id": reduced.request_id})
        with pa.ipc.new_file(str(tmp / _IDS), table.schema) as writer:
            writer.write_table(table)
        manifest = {
            "format": CACHE_FORMAT,
            "n": reduced.n,
            "sources": sources,
            "arrays": sorted(reduced.arrays),
            "codes": {name: list(names) for name, (_, names) in reduced.codes.items()},
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True
