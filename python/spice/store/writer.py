"""Writing one store (or one part of a sharded store) chunk by chunk: atomic chunk files, partial
saves inside a chunk, resume, and the final streaming of the chunks into ``features.npy``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import StoreError, StoreIncompleteError, StoreMismatchError
from .atomic import _atomic_save_npy, _atomic_write_text, _dumps, rows_sha256
from .manifest import (
    _DTYPES,
    FORMAT,
    FORMAT_VERSION,
    PathLike,
    _n_chunks,
    _norm_index_row,
    _write_index_and_manifest,
    config_mismatch_message,
)
from .reader import FeatureStore


class StoreWriter:
    """Writes one store (or one part of a sharded store) chunk by chunk, atomically, resumably.

    Args:
        path: output directory.
        config: everything that determines the rows (compared on resume; mismatch is refused).
        total_rows: number of records in the whole data set (all parts).
        dim: feature dimension d.
        dtype: "float16" or "float32".
        shard_rows: rows per chunk (the unit of atomic writing and of resuming).
        part: (i, N): this writer holds chunks c with c % N == i.
        extra: informational manifest entries (library version, compute device...).
        resume: keep a matching unfinished/finished store; if False an existing store is an error.
    """

    def __init__(
        self,
        path: PathLike,
        config: dict,
        *,
        total_rows: int,
        dim: int,
        dtype: str = "float16",
        shard_rows: int = 4096,
        part: tuple[int, int] = (0, 1),
        extra: dict | None = None,
        resume: bool = True,
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if shard_rows < 1:
            raise ValueError("shard_rows must be >= 1")
        i, n = part
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"part must be (i, N) with 0 <= i < N, got {part!r}")
        self.path = Path(path)
        self.config = json.loads(json.dumps(config))  # normalise to JSON types
        self.total_rows = int(total_rows)
        self.dim = int(dim)
        self.dtype = dtype
        self.np_dtype = np.dtype(_DTYPES[dtype])
        self.shard_rows = int(shard_rows)
        self.part = (int(i), int(n))
        self.extra = json.loads(json.dumps(extra or {}))
        self.resume = resume
        self.chunks = [
            c for c in range(_n_chunks(self.total_rows, self.shard_rows)) if c % self.part[1] == i
        ]
        self.shards = self.path / "shards"

    # manifest skeleton shared by the in-progress and final manifests
    def _base_manifest(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config,
            "total_rows": self.total_rows,
            "dim": self.dim,
            "dtype": self.dtype,
            "shard_rows": self.shard_rows,
            "part": list(self.part),
            **self.extra,
        }

    def chunk_rows(self, chunk: int) -> tuple[int, int]:
        """Global row range [start, stop) of a chunk."""
        a = chunk * self.shard_rows
        return a, min(a + self.shard_rows, self.total_rows)

    def prepare(self) -> bool:
        """Create or check the directory. Returns True when the store is already complete.

        Raises StoreMismatchError when an existing manifest's configuration differs.
        """
        mpath = self.path / "manifest.json"
        if mpath.exists():
            try:
                have = json.loads(mpath.read_text(encoding="utf-8"))
            except ValueError as e:
                raise StoreError(f"unreadable manifest {mpath}: {e}") from e
            if have.get("format") != FORMAT:
                raise StoreMismatchError(f"{self.path} holds something else than a {FORMAT} store")
            want = self._base_manifest()
            keys = ("config", "total_rows", "dim", "dtype", "shard_rows", "part")
            msg = config_mismatch_message(
                self.path, {k: have.get(k) for k in keys}, {k: want[k] for k in keys}
            )
            if msg:
                raise StoreMismatchError(msg)
            if not self.resume:
                raise StoreError(
                    f"feature store {self.path} already exists; pass resume=True to reuse it or "
                    "delete it"
                )
            if have.get("status") == "complete":
                return True
        elif self.path.exists() and any(self.path.iterdir()):
            raise StoreError(f"{self.path} exists, is not empty and holds no feature store")
        self.shards.mkdir(parents=True, exist_ok=True)
        for tmp in self.shards.glob("*.tmp"):
            tmp.unlink()
        if not mpath.exists():
            m = self._base_manifest()
            m["status"] = "in_progress"
            m["my_chunks"] = self.chunks
            _atomic_write_text(mpath, _dumps(m))
        return False

    def _chunk_paths(self, chunk: int) -> tuple[Path, Path]:
        return self.shards / f"chunk-{chunk:05d}.npy", self.shards / f"chunk-{chunk:05d}.json"

    def completed_chunks(self) -> set[int]:
        """Chunks whose rows and marker are on disk and agree (others will be recomputed)."""
        done = set()
        for c in self.chunks:
            npy, marker = self._chunk_paths(c)
            if not (npy.is_file() and marker.is_file()):
                continue
            try:
                meta = json.loads(marker.read_text(encoding="utf-8"))
                arr = np.load(npy, mmap_mode="r", allow_pickle=False)
                a, b = self.chunk_rows(c)
                ok = (
                    arr.shape == (b - a, self.dim)
                    and arr.dtype == self.np_dtype
                    and rows_sha256(arr) == meta["sha256"]
                )
            except (OSError, ValueError, KeyError):
                ok = False
            if ok:
                done.add(c)
        return done

    def _partial_paths(self, chunk: int) -> tuple[Path, Path]:
        return (
            self.shards / f"chunk-{chunk:05d}.partial.npy",
            self.shards / f"chunk-{chunk:05d}.partial.json",
        )

    def save_partial(
        self, chunk: int, done: Sequence[int], rows: np.ndarray, index_rows: Sequence[dict]
    ) -> None:
        """Atomically save the progress of an unfinished chunk.

        Args:
            chunk: the chunk.
            done: positions within the chunk (0-based) of the rows computed so far.
            rows: (len(done), d) float32, those rows as computed (before any normalisation or
                dtype conversion, so that the finished chunk is the same bytes either way).
            index_rows: their index rows, in the same order.
        """
        a, b = self.chunk_rows(chunk)
        arr = np.ascontiguousarray(rows, dtype=np.float32)
        if arr.shape != (len(done), self.dim) or len(index_rows) != len(done):
            raise ValueError(
                f"chunk {chunk}: partial rows {arr.shape} / {len(index_rows)} index "
                f"rows do not match {len(done)} done rows"
            )
        if any(not 0 <= int(i) < b - a for i in done):
            raise ValueError(f"chunk {chunk}: done positions outside [0, {b - a})")
        npy, marker = self._partial_paths(chunk)
        _atomic_save_npy(npy, arr)
        meta = {
            "chunk": chunk,
            "done": [int(i) for i in done],
            "sha256": rows_sha256(arr),
            "index": [_norm_index_row(r) for r in index_rows],
        }
        _atomic_write_text(marker, _dumps(meta))

    def load_partial(self, chunk: int) -> tuple[list[int], np.ndarray, list[dict]] | None:
        """The saved progress of a chunk: (done positions, (m, d) float32 rows, index rows), or
        None when there is none or it does not check out (then the chunk is recomputed)."""
        npy, marker = self._partial_paths(chunk)
        if not (npy.is_file() and marker.is_file()):
            return None
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            arr = np.load(npy, allow_pickle=False)
            done = [int(i) for i in meta["done"]]
            a, b = self.chunk_rows(chunk)
            ok = (
                arr.shape == (len(done), self.dim)
                and arr.dtype == np.float32
                and rows_sha256(arr) == meta["sha256"]
                and len(meta["index"]) == len(done)
                and all(0 <= i < b - a for i in done)
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (done, arr, list(meta["index"])) if ok else None

    def write_chunk(self, chunk: int, rows: np.ndarray, index_rows: Sequence[dict]) -> None:
        """Atomically write one chunk: its (m, d) rows, then the marker that makes it complete."""
        a, b = self.chunk_rows(chunk)
        if rows.shape != (b - a, self.dim):
            raise ValueError(f"chunk {chunk} needs shape {(b - a, self.dim)}, got {rows.shape}")
        if len(index_rows) != b - a:
            raise ValueError(f"chunk {chunk} needs {b - a} index rows, got {len(index_rows)}")
        arr = np.ascontiguousarray(rows, dtype=self.np_dtype)
        npy, marker = self._chunk_paths(chunk)
        _atomic_save_npy(npy, arr)
        meta = {
            "chunk": chunk,
            "row_start": a,
            "rows": b - a,
            "sha256": rows_sha256(arr),
            "index": [_norm_index_row(r) for r in index_rows],
        }
        _atomic_write_text(marker, _dumps(meta))
        for p in self._partial_paths(chunk):
            p.unlink(missing_ok=True)

    def finalize(self) -> FeatureStore:
        """Join all chunks into ``features.npy`` + ``index.jsonl``, mark complete, drop shards."""
        missing = [c for c in self.chunks if c not in self.completed_chunks()]
        if missing:
            raise StoreIncompleteError(f"{self.path}: chunks {missing[:10]} are not written yet")

        def sources() -> Iterator[tuple[dict, np.ndarray]]:
            for c in self.chunks:
                npy, marker = self._chunk_paths(c)
                meta = json.loads(marker.read_text(encoding="utf-8"))
                yield meta, np.load(npy, mmap_mode="r", allow_pickle=False)

        _write_final(self.path, self._base_manifest(), sources(), self.dim, self.np_dtype)
        shutil.rmtree(self.shards, ignore_errors=True)
        return FeatureStore.open(self.path)


def _write_final(
    path: Path,
    manifest: dict,
    sources: Iterable[tuple[dict, np.ndarray]],
    dim: int,
    np_dtype: np.dtype,
) -> None:
    """Stream chunks (meta with index rows, (m, d) rows) into the final files of a store."""
    sources = list(sources)
    n = sum(int(meta["rows"]) for meta, _ in sources)
    fpath = path / "features.npy"
    tmp = path / "features.npy.tmp"
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(n, dim))
    off = 0
    for meta, arr in sources:
        m = int(meta["rows"])
        if arr.shape != (m, dim) or rows_sha256(arr) != meta["sha256"]:
            raise StoreError(f"{path}: chunk {meta['chunk']} rows do not match their sha256")
        if m:
            mm[off : off + m] = arr
        off += m
    mm.flush()
    del mm
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, fpath)
    _write_index_and_manifest(path, manifest, [meta for meta, _ in sources])
