"""A large run's reduced records (``ingest.Reduced``) kept on disk in the run folder, so
that parsing a gigabyte of JSON is paid once, and read memory-mapped, so that the columns
are file-backed pages the kernel can drop and read again rather than the process's own
memory: one ``.npy`` file per column (and the request ids as an Arrow IPC file) in
``.loadkit-columns/``. A later analysis maps them in a fraction of a second while every
record file still has the size and modification time it had before the first one read
them, and ingests the records afresh otherwise.

The first analysis writes the files while it reads (``SpillJoiner``): each part's arrays
are appended to them as the part is joined, so reading ten million records holds the parts
in flight, never the run. Only runs of at least ``CACHE_MIN_RECORDS`` records are cached: a
small run parses in well under a second and its folder stays as the run left it."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
import pyarrow as pa

from loadkit.analysis.ingest import (
    ARRAY_TYPES,
    CODE_FIELDS,
    TRIM_EVERY,
    CodeDictionary,
    Joiner,
    Reduced,
    trim_heap,
)

CACHE_DIR = ".loadkit-columns"
CACHE_FORMAT = 2
CACHE_MIN_RECORDS = 200_000
_MANIFEST = "manifest.json"
_IDS = "request_id.arrow"
_IDS_SCHEMA = pa.schema([("request_id", pa.string())])
_TMP_PREFIX = f"{CACHE_DIR}.tmp-"  # then the writer's pid
# A column file's header, fixed in size so that it can be written again with the final
# length once every part is appended (64-byte aligned, as numpy aligns its own).
_HEADER_BYTES = 128


class CannotSpill(OSError):
    """The cache's files could not be written (a full disk): read the records again, in
    memory."""


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
    """The cached reduction of the run's records, memory-mapped (read-only arrays), or None
    when there is none or the record files changed since it was written (or it cannot be
    read)."""
    where = Path(run_dir) / CACHE_DIR
    try:
        manifest = json.loads((where / _MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT:
            return None
        if manifest.get("sources") != source_signature(run_dir):
            return None
        return _mapped(where, manifest)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowInvalid):
        return None


def _mapped(where: Path, manifest: dict[str, Any]) -> Reduced:
    """The reduction in folder ``where`` described by ``manifest``, every file mapped."""
    n = int(manifest["n"])

    def load_npy(name: str) -> np.ndarray:
        arr: np.ndarray = np.load(where / f"{name}.npy", mmap_mode="r")
        if arr.ndim != 1:
            raise ValueError(f"{name}: not a column")
        return arr

    arrays = {name: load_npy(f"a.{name}") for name in manifest["arrays"]}
    codes = {
        name: (load_npy(f"c.{name}"), tuple(names)) for name, names in manifest["codes"].items()
    }
    gap_counts = load_npy("gap_counts")
    gap_ms = load_npy("gap_ms")
    with pa.ipc.open_file(pa.memory_map(str(where / _IDS))) as reader:
        ids = reader.read_all().column(0)
    columns = [*arrays.values(), *(c for c, _ in codes.values()), gap_counts]
    if any(arr.size != n for arr in columns) or len(ids) != n:
        raise ValueError("a column of another length than the records")
    return Reduced(
        n=n, arrays=arrays, codes=codes, gap_ms=gap_ms, gap_counts=gap_counts, request_id=ids
    )


def _npy_header(dtype: np.dtype[Any], length: int) -> bytes:
    """A version 1.0 ``.npy`` header of a one-dimensional array, _HEADER_BYTES long."""
    text = repr(
        {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (length,),
        }
    ).encode("latin1")
    room = _HEADER_BYTES - 10  # the magic string, version and header length come first
    if len(text) + 1 > room:
        raise ValueError(f"no room for the column header {text!r}")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", room) + text.ljust(room - 1) + b"\n"


class _ColumnFile:
    """One column's ``.npy`` file written part by part: a header for an empty column, the
    parts' bytes as they come, then the header again with the final length."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._fh: IO[bytes] = open(path, "wb")  # noqa: SIM115 -- closed by finish/close
        self._fh.write(_npy_header(self.dtype, 0))

    def append(self, part: np.ndarray) -> None:
        # the dtype an in-memory join gives (its parts are copied into an array of it)
        data = np.ascontiguousarray(part, dtype=self.dtype)
        self._fh.write(data.view(np.uint8).data)
        self.length += data.size

    def finish(self) -> None:
        self._fh.seek(0)
        self._fh.write(_npy_header(self.dtype, self.length))
        self._fh.close()

    def close(self) -> None:
        self._fh.close()


class SpillJoiner:
    """A ``Joiner`` whose parts, once they number ``min_records`` records, go to the
    column cache's files in ``folder`` (made on first need by ``make_folder``) instead of
    memory: string codes re-mapped onto the growing dictionaries as ``Joiner`` does, so
    the files hold exactly what ``Joiner.finish`` would. Fewer records: joined in memory,
    nothing written. ``finish`` returns the reduction mapped from the files."""

    def __init__(
        self, make_folder: Callable[[], Path], min_records: int, sources: list[list[Any]]
    ) -> None:
        self.n = 0
        self.folder: Path | None = None
        self._make_folder = make_folder
        self._min = min_records
        self._sources = sources
        self._memory: Joiner | None = Joiner()
        self._dicts = {f: CodeDictionary() for f in CODE_FIELDS}
        self._files: dict[str, _ColumnFile] = {}
        self._ids: pa.ipc.RecordBatchFileWriter | None = None
        self._written = 0  # bytes of parts written since the heap was last trimmed

    def add(self, part: Reduced) -> None:
        if part.n == 0:
            return
        if self._memory is None:
            self._write(part)
            return
        self._memory.add(part)
        self.n = self._memory.n
        if self.n >= self._min:
            # the parts so far, already joined (their codes the dictionaries' own, which
            # re-map onto a fresh dictionary unchanged), start the files
            held = self._memory.finish()
            self._memory = None
            self.n = 0
            self._open()
            self._write(held)

    def _open(self) -> None:
        folder = self.folder = self._make_folder()
        try:
            for name, dtype in ARRAY_TYPES.items():
                self._files[f"a.{name}"] = _ColumnFile(folder / f"a.{name}.npy", dtype)
            for name in CODE_FIELDS:
                self._files[f"c.{name}"] = _ColumnFile(folder / f"c.{name}.npy", np.int32)
            self._files["gap_ms"] = _ColumnFile(folder / "gap_ms.npy", np.float64)
            self._files["gap_counts"] = _ColumnFile(folder / "gap_counts.npy", np.int32)
            self._ids = pa.ipc.new_file(str(folder / _IDS), _IDS_SCHEMA)
        except OSError as exc:
            raise CannotSpill(f"{folder}: {exc}") from exc

    def _write(self, part: Reduced) -> None:
        assert self._ids is not None
        try:
            for name in ARRAY_TYPES:
                self._files[f"a.{name}"].append(part.arrays[name])
            for name, d in self._dicts.items():
                self._files[f"c.{name}"].append(d.map(*part.codes[name]))
            self._files["gap_ms"].append(part.gap_ms)
            self._files["gap_counts"].append(part.gap_counts)
            for chunk in part.request_id.chunks:
                self._ids.write_batch(pa.record_batch([chunk], schema=_IDS_SCHEMA))
        except (OSError, pa.ArrowIOError) as exc:
            raise CannotSpill(f"{self.folder}: {exc}") from exc
        self.n += part.n
        # the parts are freed by the reading threads' heaps, which keep the pages (1 M
        # records: 0.4 GB left resident) unless trimmed
        self._written += part.gap_ms.nbytes + 8 * part.n * len(ARRAY_TYPES)
        if self._written >= TRIM_EVERY:
            trim_heap()
            self._written = 0

    def finish(self) -> Reduced:
        if self._memory is not None:
            return self._memory.finish()
        assert self.folder is not None and self._ids is not None
        try:
            for f in self._files.values():
                f.finish()
            self._files = {}
            self._ids.close()
            self._ids = None
            manifest = {
                "format": CACHE_FORMAT,
                "n": self.n,
                "sources": self._sources,
                "arrays": list(ARRAY_TYPES),
                "codes": {name: d.names for name, d in self._dicts.items()},
            }
            (self.folder / _MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
        except (OSError, pa.ArrowIOError) as exc:
            raise CannotSpill(f"{self.folder}: {exc}") from exc
        trim_heap()
        return _mapped(self.folder, manifest)

    def discard(self) -> None:
        """Close and remove whatever was written (what is mapped stays readable: an
        unlinked file lives on while it is mapped)."""
        for f in self._files.values():
            f.close()
        self._files = {}
        if self._ids is not None:
            try:
                self._ids.close()
            except (OSError, pa.ArrowException):
                pass
            self._ids = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class Spill:
    """The joiners of one reading of a run's records (``joiner``, handed to
    ``ingest.read_reduced``: a fresh one each time the reading starts over) whose columns
    go to the cache's files, and what becomes of them: ``keep`` once the reduction is
    known good moves them into ``.loadkit-columns/`` atomically; leaving the ``with``
    removes whatever was not kept, so a failed or interrupted reading leaves no half cache.
    A run folder that cannot be written gets its files in a temporary folder instead,
    removed as soon as the reading is done (the mapped columns outlive the files)."""

    def __init__(
        self, run_dir: str | os.PathLike[str], sources: list[list[Any]], min_records: int
    ) -> None:
        self._run = Path(run_dir)
        self._sources = sources
        self._min = min_records
        self._current: SpillJoiner | None = None
        self._in_run = False

    def __enter__(self) -> Spill:
        _sweep(self._run)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._current is not None:
            self._current.discard()
            self._current = None

    def joiner(self) -> SpillJoiner:
        if self._current is not None:
            self._current.discard()
        self._current = SpillJoiner(self._make_folder, self._min, self._sources)
        return self._current

    def _make_folder(self) -> Path:
        try:
            folder = _new_folder(self._run)
            self._in_run = True
        except OSError:  # a read-only run folder
            try:
                folder = Path(tempfile.mkdtemp(prefix="loadkit-columns-"))
            except OSError as exc:
                raise CannotSpill(str(exc)) from exc
            self._in_run = False
        return folder

    def keep(self) -> bool:
        """Move the finished reading's files into the run folder's cache (replacing an
        outdated one); True when they are there. Files in a temporary folder stay there
        until the ``with`` ends, which removes them."""
        current = self._current
        if current is None or current.folder is None or not self._in_run:
            return False
        final = self._run / CACHE_DIR
        try:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(current.folder, final)
        except OSError:  # another analysis' cache just took its place: keep that one
            return False
        current.folder = None
        return True


def _new_folder(run_dir: Path) -> Path:
    """A fresh folder for the cache's files in the run folder, named after this process
    (``_sweep``), made with the usual permissions (``mkdtemp``'s are the owner's only, and
    the cache is for whoever reads the run)."""
    while True:
        folder = run_dir / f"{_TMP_PREFIX}{os.getpid()}-{next(_serial)}"
        try:
            folder.mkdir()
        except FileExistsError:  # a killed analysis' of a process that had this pid
            continue
        return folder


_serial = itertools.count()


def _sweep(run_dir: Path) -> None:
    """Remove the unfinished cache folders of analyses that were killed (whose process is
    gone): nothing else ever would."""
    for folder in run_dir.glob(f"{_TMP_PREFIX}*"):
        pid = folder.name[len(_TMP_PREFIX) :].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, another user's
            pass
