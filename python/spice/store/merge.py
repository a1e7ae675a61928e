"""Joining N part stores (written with ``shard=(i, N)``) into the store one process would have
written."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import StoreError, StoreMismatchError
from .atomic import _json_float
from .manifest import _DTYPES, PathLike, _n_chunks, _norm_index_row, config_mismatch_message
from .reader import FeatureStore
from .writer import _write_final


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
