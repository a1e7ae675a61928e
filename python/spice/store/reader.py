"""Reading a finished store: :class:`FeatureStore` (rows memory-mapped, checksums verified) and
its per-row :class:`StoreIndex`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, StoreIncompleteError
from .manifest import _DTYPES, FORMAT, FORMAT_VERSION, PathLike


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
