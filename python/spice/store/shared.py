"""One store written in place by N ranks together (:class:`SharedStoreWriter`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import StoreError, StoreIncompleteError, StoreMismatchError
from .atomic import _atomic_write_text, _dumps, rows_sha256
from .manifest import FORMAT, PathLike, _n_chunks, _norm_index_row, _write_index_and_manifest
from .reader import FeatureStore
from .writer import StoreWriter


class SharedStoreWriter(StoreWriter):
    """One store written in place by N cooperating processes (``torch.distributed`` ranks).

    Rank 0 pre-allocates ``features.npy`` at its final size (:meth:`prepare`); every rank then
    writes the rows of its chunks (c with ``c % N == rank``) straight to their final byte offsets
    with ``pwrite`` (exact byte ranges, never whole memory pages, so ranks on different machines
    sharing a file system never overwrite each other's rows), and rank 0 writes the index and the
    manifest once every rank is done (:meth:`finalize`). Nothing is copied or merged: the finished
    files are byte-identical to a single-process run's.

    In progress, ``shards/`` holds, per chunk, the marker ``chunk-NNNNN.json`` (index rows and the
    sha256 of the rows, written after the rows are on disk) and the unfinished chunk's partial
    progress ``chunk-NNNNN.partial.{npy,json}``; each file is written only by the rank that owns
    the chunk. A chunk counts as done when its marker's sha256 matches the rows in
    ``features.npy``, so a resumed run (with any number of ranks) recomputes exactly the rest.

    Args:
        path: the store directory (shared by all ranks).
        rank: this process's rank.
        world: the number of ranks.
        (others): as for :class:`StoreWriter`; ``part`` is always (0, 1) here.
    """

    LAYOUT = "shared"

    def __init__(
        self,
        path: PathLike,
        config: dict,
        *,
        total_rows: int,
        dim: int,
        dtype: str = "float16",
        shard_rows: int = 4096,
        rank: int = 0,
        world: int = 1,
        extra: dict | None = None,
        resume: bool = True,
    ):
        super().__init__(
            path, config, total_rows=total_rows, dim=dim, dtype=dtype, shard_rows=shard_rows,
            part=(0, 1), extra=extra, resume=resume,
        )  # fmt: skip
        if not (world >= 1 and 0 <= rank < world):
            raise ValueError(f"need 0 <= rank < world, got rank {rank} of {world}")
        self.rank, self.world = int(rank), int(world)
        self.all_chunks = list(range(_n_chunks(self.total_rows, self.shard_rows)))
        self.chunks = [c for c in self.all_chunks if c % self.world == self.rank]
        self.fpath = self.path / "features.npy"
        self._fd: int | None = None
        self._header = 0

    # -- rank 0, before the others start --------------------------------------------------------
    def prepare(self) -> bool:
        """(Rank 0 only, before any rank writes.) Create or check the store and pre-allocate
        ``features.npy``. Returns True when the store is already complete.

        Raises StoreMismatchError when an existing store was made with another configuration or
        by a single process (its chunk files cannot be resumed in place).
        """
        mpath = self.path / "manifest.json"
        if mpath.exists():
            try:
                have = json.loads(mpath.read_text(encoding="utf-8"))
            except ValueError as e:
                raise StoreError(f"unreadable manifest {mpath}: {e}") from e
            unfinished = have.get("format") == FORMAT and have.get("status") != "complete"
            if unfinished and have.get("layout") != self.LAYOUT:
                raise StoreMismatchError(
                    f"feature store {self.path} is an unfinished single-process run (chunk files); "
                    f"resume it with one process, or use another directory for {self.world} ranks"
                )
        if super().prepare():
            return True
        if not self._header_ok():
            # new, or damaged: allocate afresh (markers of rows no longer there fail their check)
            tmp = self.path / "features.npy.tmp"
            mm = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=self.np_dtype, shape=(self.total_rows, self.dim)
            )  # the header a single-process run writes; the rows stay sparse until written
            del mm
            os.replace(tmp, self.fpath)
        have = json.loads(mpath.read_text(encoding="utf-8"))
        if have.get("layout") != self.LAYOUT or have.get("ranks") != self.world:
            m = self._base_manifest()
            m.update(status="in_progress", layout=self.LAYOUT, ranks=self.world)
            m["my_chunks"] = self.all_chunks
            _atomic_write_text(mpath, _dumps(m))
        return False

    def _header_ok(self) -> bool:
        try:
            with open(self.fpath, "rb") as f:
                shape, fortran, dt, header = _npy_header(f)
            size = self.fpath.stat().st_size
        except (OSError, ValueError):
            return False
        want = header + self.total_rows * self.dim * self.np_dtype.itemsize
        return (
            shape == (self.total_rows, self.dim)
            and not fortran
            and dt == self.np_dtype
            and size == want
        )

    # -- every rank, after rank 0 prepared the store ----------------------------------------------
    def attach(self) -> None:
        """(Every rank, after :meth:`prepare` on rank 0.) Open ``features.npy`` for writing."""
        mpath = self.path / "manifest.json"
        try:
            have = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(
                f"rank {self.rank} cannot read {mpath} ({e}); do all ranks see the same "
                "directory (a shared file system across machines)?"
            ) from e
        if have.get("layout") != self.LAYOUT or not self._header_ok():
            raise StoreError(
                f"rank {self.rank}: {self.path} is not the store rank 0 prepared; do all ranks see "
                "the same directory (a shared file system across machines)?"
            )
        with open(self.fpath, "rb") as f:
            self._header = _npy_header(f)[3]
        self._fd = os.open(self.fpath, os.O_RDWR)
        self.shards.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        """Close ``features.npy`` (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _offset(self, chunk: int) -> int:
        return self._header + self.chunk_rows(chunk)[0] * self.dim * self.np_dtype.itemsize

    def _region_sha256(self, chunk: int) -> str:
        a, b = self.chunk_rows(chunk)
        left = (b - a) * self.dim * self.np_dtype.itemsize
        pos = self._offset(chunk)
        h = hashlib.sha256()
        step = 8 << 20
        with open(self.fpath, "rb", buffering=0) as f:
            while left:
                got = os.pread(f.fileno(), min(left, step), pos)
                if not got:
                    break  # a short file: the digest will not match
                h.update(got)
                pos += len(got)
                left -= len(got)
        return h.hexdigest()

    def _marker(self, chunk: int) -> dict | None:
        try:
            meta = json.loads(self._chunk_paths(chunk)[1].read_text(encoding="utf-8"))
            a, b = self.chunk_rows(chunk)
            ok = (
                int(meta["rows"]) == b - a
                and int(meta["row_start"]) == a
                and len(meta["index"]) == b - a
                and isinstance(meta["sha256"], str)
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return meta if ok else None

    def completed_chunks(self) -> set[int]:
        """This rank's chunks whose marker matches the rows in ``features.npy`` (re-hashed)."""
        if self._fd is None:
            raise StoreError("attach() the writer first")
        done = set()
        for c in self.chunks:
            meta = self._marker(c)
            if meta is not None and self._region_sha256(c) == meta["sha256"]:
                done.add(c)
        return done

    def write_chunk(self, chunk: int, rows: np.ndarray, index_rows: Sequence[dict]) -> None:
        """Write one chunk's rows at their place in ``features.npy`` (pwrite, fsync), then its
        marker; drops the chunk's partial files."""
        if self._fd is None:
            raise StoreError("attach() the writer first")
        if chunk not in self.chunks:
            raise ValueError(f"chunk {chunk} belongs to rank {chunk % self.world}, not {self.rank}")
        a, b = self.chunk_rows(chunk)
        if rows.shape != (b - a, self.dim):
            raise ValueError(f"chunk {chunk} needs shape {(b - a, self.dim)}, got {rows.shape}")
        if len(index_rows) != b - a:
            raise ValueError(f"chunk {chunk} needs {b - a} index rows, got {len(index_rows)}")
        arr = np.ascontiguousarray(rows, dtype=self.np_dtype)
        buf = memoryview(arr).cast("B")
        pos, done = self._offset(chunk), 0
        while done < len(buf):
            done += os.pwrite(self._fd, buf[done:], pos + done)
        os.fsync(self._fd)
        meta = {
            "chunk": chunk,
            "row_start": a,
            "rows": b - a,
            "sha256": rows_sha256(arr),
            "index": [_norm_index_row(r) for r in index_rows],
        }
        _atomic_write_text(self._chunk_paths(chunk)[1], _dumps(meta))
        for p in self._partial_paths(chunk):
            p.unlink(missing_ok=True)

    # -- rank 0, after every rank finished ---------------------------------------------------------
    def finalize(self) -> FeatureStore:
        """(Rank 0 only, once every rank has written its chunks.) Write ``index.jsonl``,
        ``skipped.jsonl`` and the final manifest from the chunk markers, and drop ``shards/``.

        The rows are not read again: each rank hashed what it wrote (and re-hashes its chunks on a
        resume); ``FeatureStore.verify`` (run by ``spice select``) checks them against the manifest.
        """
        self.close()
        metas, missing = [], []
        for c in self.all_chunks:
            meta = self._marker(c)
            if meta is None:
                missing.append(c)
            else:
                metas.append(meta)
        if missing:
            raise StoreIncompleteError(f"{self.path}: chunks {missing[:10]} are not written yet")
        with open(self.fpath, "rb+") as f:
            os.fsync(f.fileno())
        _write_index_and_manifest(self.path, self._base_manifest(), metas)
        shutil.rmtree(self.shards, ignore_errors=True)
        return FeatureStore.open(self.path)


def _npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, offset of the data) of the .npy file open as ``f``."""
    major, _ = np.lib.format.read_magic(f)
    read = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}
    if major not in read:
        raise ValueError(f"unsupported .npy format version {major}")
    shape, fortran, dt = read[major](f)
    return shape, fortran, dt, f.tell()
