"""On-disk store of per-sample feature rows (numpy + json only; no torch).

Layout of a finished store directory::

    manifest.json    what the rows are (model, tokenizer, LoRA, projection, data fingerprint, ...)
    features.npy     one contiguous (rows, dim) little-endian float16/float32 array (memory-mapped)
    index.jsonl      one line per row: global row, record id, token counts, loss, flags
    skipped.jsonl    the rows that got no features (zero rows) and why: row, id, reason, detail

While a run is in progress the rows live in ``shards/chunk-NNNNN.npy`` files, each made complete
by a ``chunk-NNNNN.json`` marker (its index rows and the sha256 of its row bytes) written atomically
after the rows. Inside a chunk, partial progress is saved as ``chunk-NNNNN.partial.{npy,json}``
(the rows done so far, float32, and their index rows), so a long chunk is not lost to a crash.
A resumed run keeps every complete chunk and the partial rows, and recomputes the rest; finalising
streams the chunks into ``features.npy`` in chunk order, so an interrupted-then-resumed run produces
the same bytes as an uninterrupted one.

A store written by N ranks together (:class:`SharedStoreWriter`, ``"layout": "shared"`` while in
progress) has no chunk ``.npy`` files: ``features.npy`` is allocated at the start and each rank
writes its chunks' rows in place; ``shards/`` holds only the markers and partial files.

A *part* store (``manifest["part"] == [i, N]`` with N > 1) holds the chunks c with ``c % N == i``;
:func:`merge_stores` checks N parts against each other and joins them into one store whose files are
byte-identical to the store a single process would have written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import StoreError, StoreIncompleteError, StoreMismatchError

__all__ = [
    "FeatureStore",
    "StoreIndex",
    "StoreError",
    "StoreMismatchError",
    "StoreIncompleteError",
    "StoreWriter",
    "SharedStoreWriter",
    "merge_stores",
    "SKIP_REASONS",
    "skip_reason",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "spice-features"
FORMAT_VERSION = 1
_DTYPES = {"float16": "<f2", "float32": "<f4"}

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------------------------
# small helpers


def _dumps(obj: Any) -> str:
    """Canonical JSON text (sorted keys, fixed separators) so equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rows_sha256(arr: np.ndarray) -> str:
    """sha256 of the raw C-order bytes of ``arr`` (the store's little-endian dtype)."""
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _json_float(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Paths (dotted) where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(p)
            else:
                out.extend(_diff_keys(a[k], b[k], p))
        return out
    return [] if a == b else [prefix or "<root>"]


def _describe(v: Any, limit: int = 80) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def config_mismatch_message(path: Path, have: dict, want: dict) -> str | None:
    """A readable explanation of how two store configurations differ, or None when equal."""
    keys = _diff_keys(have, want)
    if not keys:
        return None

    def get(d: Any, dotted: str) -> Any:
        for part in dotted.split("."):
            if not isinstance(d, dict) or part not in d:
                return "<absent>"
            d = d[part]
        return d

    lines = [
        f"feature store {path} was made with a different configuration; refusing to reuse or "
        f"overwrite it. Differences (store -> requested):"
    ]
    for k in keys[:12]:
        lines.append(f"  {k}: {_describe(get(have, k))} -> {_describe(get(want, k))}")
    if len(keys) > 12:
        lines.append(f"  ... and {len(keys) - 12} more")
    lines.append("Use another output directory, or delete this one to start over.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class StoreIndex:
    """Per-row metadata of a store (all arrays have one entry per stored row).

    Attributes:
        rows: int64 global row numbers (position of the record in the input data).
        ids: record ids (str).
        tokens: int32 sequence length after truncation, in tokens.
        loss_tokens: int32 number of tokens the loss was averaged over (0 for an empty response).
        loss: float64 per-sample mean cross-entropy (nats/token); NaN when ``loss_tokens == 0``.
        flags: per-row tuples of flag names, e.g. ``("empty_response", "skipped")`` or
            ``("truncated",)``.
        details: per-row text saying why a row was skipped ("" for the others).
    """

    rows: np.ndarray
    ids: list[str]
    tokens: np.ndarray
    loss_tokens: np.ndarray
    loss: np.ndarray
    flags: list[tuple[str, ...]]
    details: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def flagged(self, flag: str) -> np.ndarray:
        """Positions (into this store's rows) that carry ``flag``; int64 array."""
        return np.asarray([i for i, f in enumerate(self.flags) if flag in f], dtype=np.int64)

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> StoreIndex:
        return cls(
            rows=np.asarray([r["row"] for r in rows], dtype=np.int64),
            ids=[str(r["id"]) for r in rows],
            tokens=np.asarray([r["tokens"] for r in rows], dtype=np.int32),
            loss_tokens=np.asarray([r["loss_tokens"] for r in rows], dtype=np.int32),
            loss=np.asarray(
                [np.nan if r["loss"] is None else r["loss"] for r in rows], dtype=np.float64
            ),
            flags=[tuple(r.get("flags", ())) for r in rows],
            details=[str(r.get("detail", "")) for r in rows],
        )

    def skipped(self) -> np.ndarray:
        """Positions of the rows that got no features (flag ``"skipped"``); int64 array."""
        return self.flagged("skipped")


class FeatureStore:
    """A finished feature store, opened read-only with its rows memory-mapped.

    Use :meth:`open`; ``store.features`` is an ``(n, d)`` ``np.memmap`` (float16 or float32) that
    can be handed to the selector without loading it into RAM; ``np.asarray(store)`` is that view.
    """

    def __init__(self, path: Path, manifest: dict, features: np.ndarray):
        self.path = path
        self.manifest = manifest
        self.features = features
        self._index: StoreIndex | None = None
        self._verified: tuple | None = None  # _file_key() when verify() last passed

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: PathLike, verify: bool = False) -> FeatureStore:
        """Open the finished store at ``path`` (memory-mapped, read-only).

        Args:
            path: store directory (holds ``manifest.json``).
            verify: re-hash every chunk's rows against the manifest's sha256 (reads the whole file).

        Raises:
            StoreError: no store there or a damaged one; StoreIncompleteError: an unfinished run.
        """
        p = Path(path)
        mpath = p / "manifest.json"
        if not mpath.is_file():
            raise StoreError(f"no feature store at {p} (missing manifest.json)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise StoreError(f"unreadable manifest {mpath}: {e}") from e
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{mpath} is not a {FORMAT} manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"{p} uses store format {manifest['format_version']}, newer than this library "
                f"reads ({FORMAT_VERSION}); upgrade spice-select"
            )
        if manifest.get("status") != "complete":
            done = len(list((p / "shards").glob("chunk-*.json"))) if (p / "shards").is_dir() else 0
            raise StoreIncompleteError(
                f"feature store {p} is unfinished ({done} of {len(manifest.get('my_chunks', []))} "
                "chunks written); run the same extraction again to resume it"
            )
        fpath = p / "features.npy"
        try:
            feats = np.load(fpath, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot memory-map {fpath}: {e}") from e
        want = (int(manifest["rows"]), int(manifest["dim"]))
        if feats.shape != want or feats.dtype != np.dtype(_DTYPES[manifest["dtype"]]):
            raise StoreError(
                f"{fpath} has shape {feats.shape} dtype {feats.dtype}, manifest says {want} "
                f"{manifest['dtype']}"
            )
        store = cls(p, manifest, feats)
        if verify:
            store.verify()
        return store

    # -- views --------------------------------------------------------------------------------
    @property
    def index(self) -> StoreIndex:
        """Per-row metadata, read lazily from ``index.jsonl``."""
        if self._index is None:
            rows = []
            ipath = self.path / "index.jsonl"
            with open(ipath, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        rows.append(json.loads(line))
            if len(rows) != self.features.shape[0]:
                raise StoreError(f"{ipath} has {len(rows)} rows, features {self.features.shape[0]}")
            self._index = StoreIndex.from_rows(rows)
        return self._index

    @property
    def ids(self) -> list[str]:
        """Record id of every row."""
        return self.index.ids

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.features.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.features.dtype

    @property
    def config(self) -> dict:
        """The configuration block of the manifest (what produced the rows)."""
        return self.manifest["config"]

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if dtype is None or np.dtype(dtype) == self.features.dtype:
            return self.features
        return np.asarray(self.features, dtype=dtype)

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, rows={len(self)}, dim={self.dim}, "
            f"dtype={self.manifest['dtype']}, "
            f"projection={self.config.get('projection', {}).get('kind')!r})"
        )

    def verify(self, threads: int | None = None) -> None:
        """Re-hash every chunk's rows and compare them with the manifest's sha256.

        The rows are streamed from ``features.npy`` through one 8 MiB buffer per thread, so memory
        stays bounded whatever the store's size (the memory map is not paged in). Chunks are
        hashed in parallel on ``threads`` threads (default: the CPU count, at most 8).

        Raises:
            StoreError: naming the first damaged chunk (in row order) and its rows, or a manifest
                whose chunks do not cover every row with a checksum.
        """
        n, rowbytes = len(self), self.features.itemsize * self.dim
        chunks = sorted(self.manifest.get("chunks") or [], key=lambda c: int(c.get("offset", -1)))
        pos = 0  # rows outside the chunks would go unchecked: the chunks must tile [0, n)
        for ch in chunks:
            if not isinstance(ch.get("sha256"), str) or int(ch.get("offset", -1)) != pos:
                break
            pos += int(ch["rows"])
        if pos != n or (not chunks and n):
            raise StoreError(
                f"feature store {self.path} has a damaged manifest: its chunks' checksums do not "
                f"cover its {n} rows exactly (they stop at row {pos}). Extract the features again."
            )
        from concurrent.futures import ThreadPoolExecutor

        mm_file = getattr(self.features, "filename", None)
        step = max(1, (8 << 20) // max(1, rowbytes))  # rows per read

        def digest(ch: dict) -> str:
            a, m = int(ch["offset"]), int(ch["rows"])
            h = hashlib.sha256()
            if mm_file is None:  # an in-memory array: hash its rows in place
                for s in range(a, a + m, step):
                    rows = self.features[s : min(s + step, a + m)]
                    h.update(memoryview(np.ascontiguousarray(rows)))
                return h.hexdigest()
            buf = memoryview(bytearray(min(m, step) * rowbytes))
            with open(mm_file, "rb", buffering=0) as f:
                f.seek(int(self.features.offset) + a * rowbytes)
                left = m * rowbytes
                while left:
                    got = f.readinto(buf[: min(left, len(buf))])
                    if not got:
                        break  # a truncated file: the digest will not match
                    h.update(buf[:got])
                    left -= got
            return h.hexdigest()

        workers = max(1, min(threads or min(os.cpu_count() or 1, 8), len(chunks) or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:  # sha256 releases the GIL
            for ch, got in zip(chunks, pool.map(digest, chunks)):
                if got != ch["sha256"]:
                    pool.shutdown(wait=False, cancel_futures=True)
                    a, m = int(ch["offset"]), int(ch["rows"])
                    raise StoreError(
                        f"feature store {self.path} is damaged: chunk {ch.get('chunk')} (rows {a} "
                        f"to {a + m - 1}) does not match its checksum. Extract the features again "
                        "(into a new directory) rather than select from them."
                    )
        self._verified = self._file_key()

    def _file_key(self) -> tuple | None:
        """(inode, size, mtime) of the rows' file; None for rows held in memory."""
        name = getattr(self.features, "filename", None)
        if name is None:
            return None
        st = os.stat(name)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def verify_for_selection(self) -> None:
        """What ``spice.select(store)`` runs first (unless ``verify=False``): :meth:`verify`,
        the check ``spice select`` makes, skipped when it already passed on this object and the
        file is unchanged (same inode, size and modification time), so that selecting twice from
        one opened store hashes it once."""
        key = self._file_key()
        if key is None or key != self._verified:
            self.verify()


# ----------------------------------------------------------------------------------------------
# writing


def _n_chunks(total_rows: int, shard_rows: int) -> int:
    return (total_rows + shard_rows - 1) // shard_rows


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


def _norm_index_row(r: dict) -> dict:
    out = {
        "row": int(r["row"]),
        "id": str(r["id"]),
        "tokens": int(r["tokens"]),
        "loss_tokens": int(r["loss_tokens"]),
        "loss": None if r.get("loss") is None else _json_float(r["loss"]),
        "flags": sorted(str(f) for f in r.get("flags", ())),
    }
    if r.get("detail"):
        out["detail"] = str(r["detail"])
    return out


# Why a row got no features; the first of these among a skipped row's flags is its reason.
SKIP_REASONS = {
    "invalid_record": "the record is malformed (read with invalid='skip')",
    "empty_conversation": "the conversation has no messages",
    "no_user_turn_before_assistant": "no assistant turn follows a user turn",
    "no_assistant_turn": "the conversation has no assistant turn",
    "empty_response": "nothing is left to learn: the response is empty",
    "template_error": "the tokenizer's chat template refused the conversation",
}


def skip_reason(flags: Iterable[str]) -> str:
    """The reason a skipped row was skipped, from its flags ("" when it was not skipped)."""
    flags = tuple(flags)
    if "skipped" not in flags:
        return ""
    return next((f for f in SKIP_REASONS if f in flags), "other")


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


def _write_index_and_manifest(path: Path, manifest: dict, metas: Sequence[dict]) -> None:
    """Write ``index.jsonl``, ``skipped.jsonl`` and the final manifest of a store whose
    ``features.npy`` already holds the chunks' rows, in chunk order (the manifest goes last: it is
    what marks the store complete)."""
    chunks = []
    flags: dict[str, int] = {}
    lines = []
    skipped_lines = []
    reasons: dict[str, int] = {}
    off = 0
    for meta in metas:
        m = int(meta["rows"])
        chunks.append(
            {
                "chunk": int(meta["chunk"]),
                "row_start": int(meta["row_start"]),
                "rows": m,
                "offset": off,
                "sha256": meta["sha256"],
            }
        )
        for r in meta["index"]:
            for f in r["flags"]:
                flags[f] = flags.get(f, 0) + 1
            lines.append(json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False))
            why = skip_reason(r["flags"])
            if why:
                reasons[why] = reasons.get(why, 0) + 1
                entry = {
                    "row": r["row"],
                    "id": r["id"],
                    "reason": why,
                    "detail": r.get("detail") or SKIP_REASONS.get(why, ""),
                }
                skipped_lines.append(json.dumps(entry, sort_keys=True, ensure_ascii=False))
        off += m
    _atomic_write_text(path / "index.jsonl", "".join(line + "\n" for line in lines))
    _atomic_write_text(path / "skipped.jsonl", "".join(line + "\n" for line in skipped_lines))
    final = dict(manifest)
    final.update(
        {
            "status": "complete",
            "rows": off,
            "chunks": chunks,
            "flags": flags,
            "skipped": {"rows": len(skipped_lines), "reasons": reasons, "list": "skipped.jsonl"},
        }
    )
    final.pop("my_chunks", None)
    _atomic_write_text(path / "manifest.json", _dumps(final))


def merge_stores(parts: Sequence[PathLike] | PathLike, out: PathLike | None = None) -> FeatureStore:
    """Check N part stores (written with ``shard=(i, N)``) against each other and join them.

    Args:
        parts: the part directories, or one directory whose ``parts/`` subdirectory holds them.
        out: where to write the merged store (default: the directory given as ``parts``).

    Returns:
        The merged store; its files are byte-identical to a single-process run's.

    Raises:
        StoreError: a part is missing, unfinished, duplicated, or made with another configuration.
    """
    if isinstance(parts, (str, os.PathLike)):
        root = Path(parts)
        part_dirs = sorted(p for p in (root / "parts").glob("part-*") if p.is_dir())
        if not part_dirs:
            raise StoreError(f"no part stores under {root / 'parts'}")
        out = root if out is None else out
    else:
        part_dirs = [Path(p) for p in parts]
        if out is None:
            raise ValueError("out is required when parts is a list of directories")
    out_p = Path(out)
    stores = [FeatureStore.open(p) for p in part_dirs]
    ref = stores[0].manifest
    n_parts = int(ref["part"][1])
    seen: dict[int, Path] = {}
    keys = ("config", "total_rows", "dim", "dtype", "shard_rows")
    for s in stores:
        m = s.manifest
        msg = config_mismatch_message(
            s.path, {k: m.get(k) for k in keys}, {k: ref.get(k) for k in keys}
        )
        if msg:
            raise StoreMismatchError(f"cannot merge {s.path} with {stores[0].path}:\n{msg}")
        i, n = m["part"]
        if n != n_parts:
            raise StoreError(f"{s.path} is part {i} of {n}, others are parts of {n_parts}")
        if i in seen:
            raise StoreError(f"part {i} given twice: {seen[i]} and {s.path}")
        seen[i] = s.path
    if len(seen) != n_parts:
        miss = sorted(set(range(n_parts)) - set(seen))
        raise StoreError(f"missing parts {miss} of {n_parts}")
    by_chunk: dict[int, tuple[FeatureStore, dict]] = {}
    for s in stores:
        for ch in s.manifest["chunks"]:
            by_chunk[int(ch["chunk"])] = (s, ch)
    total, shard_rows = int(ref["total_rows"]), int(ref["shard_rows"])
    want = list(range(_n_chunks(total, shard_rows)))
    if sorted(by_chunk) != want:
        have = sorted(by_chunk)[:10]
        raise StoreError(f"parts cover chunks {have}..., expected 0..{len(want) - 1}")
    if (out_p / "manifest.json").exists():
        raise StoreError(f"{out_p} already holds a store; merge into an empty directory")
    out_p.mkdir(parents=True, exist_ok=True)

    def sources() -> Iterator[tuple[dict, np.ndarray]]:
        for c in want:
            s, ch = by_chunk[c]
            a = int(ch["offset"])
            m = int(ch["rows"])
            idx = s.index
            rows = [
                {
                    "row": int(idx.rows[k]),
                    "id": idx.ids[k],
                    "tokens": int(idx.tokens[k]),
                    "loss_tokens": int(idx.loss_tokens[k]),
                    "loss": _json_float(idx.loss[k]) if np.isfinite(idx.loss[k]) else None,
                    "flags": list(idx.flags[k]),
                    "detail": idx.details[k] if idx.details else "",
                }
                for k in range(a, a + m)
            ]
            meta = {**ch, "index": [_norm_index_row(r) for r in rows]}
            yield meta, s.features[a : a + m]

    base = {
        k: v for k, v in ref.items() if k not in ("status", "rows", "chunks", "flags", "skipped")
    }
    base["part"] = [0, 1]
    _write_final(out_p, base, sources(), int(ref["dim"]), np.dtype(_DTYPES[ref["dtype"]]))
    return FeatureStore.open(out_p)
