"""TRAK (MadryLab/trak): one model id's ``grads.mmap`` of a ``save_dir``, checked against
``_is_featurized.mmap``."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from .external import _EXPECTED, ExternalStore, _check_rows, _int_dirs_with, _note, _unrecognized

_NPY_MAGIC = b"\x93NUMPY"


def _read_json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StoreError(f"unreadable {path}: {e}") from e
    if not isinstance(out, dict):
        raise StoreError(f"{path} is not a JSON object")
    return out


def _load_mmap(path: Path, shape: tuple[int, ...] | None, dtypes: tuple[Any, ...]) -> np.ndarray:
    """A TRAK ``.mmap`` file read in place: a ``.npy`` file (what ``open_memmap`` writes), or a raw
    one of ``shape`` whose dtype (one of ``dtypes``) the file size decides."""
    with builtins.open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if head == _NPY_MAGIC:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot memory-map {path}: {e}") from e
    if shape is None:
        raise StoreError(f"{path} has no .npy header and no metadata.json gives its shape")
    size = path.stat().st_size
    count = int(np.prod(shape))
    for dt in dtypes:
        if size == count * np.dtype(dt).itemsize and count:
            return np.memmap(path, dtype=dt, mode="r", shape=shape)
    names = " or ".join(str(np.dtype(dt)) for dt in dtypes)
    raise StoreError(f"{path} has {size} bytes, not {shape} of {names}")


def _open_trak(p: Path, model_id: int | None) -> ExternalStore:
    if p.is_file():
        p = p.parent
    if (p / "grads.mmap").exists() or (p / "_is_featurized.mmap").exists():
        save_dir, mdir = p.parent, p
        if model_id is not None and str(model_id) != p.name:
            raise StoreError(f"{p} is TRAK model id {p.name}, not {model_id}")
    else:
        save_dir = p
        ids = _int_dirs_with(p, "_is_featurized.mmap") or _int_dirs_with(p, "grads.mmap")
        if model_id is not None:
            mdir = p / str(model_id)
            if not mdir.is_dir():
                have = ", ".join(c.name for c in ids) or "none"
                raise StoreError(f"{p} has no TRAK model id {model_id} (it has: {have})")
        elif len(ids) == 1:
            mdir = ids[0]
        elif not ids:
            raise _unrecognized(p, "no <model_id>/ folder with grads.mmap")
        else:
            raise StoreError(
                f"{p} holds TRAK features of {len(ids)} checkpoints (model ids "
                f"{', '.join(c.name for c in ids)}); choose one: model_id=... in Python, or "
                f"--features {p / ids[0].name}"
            )
    meta_path = save_dir / "metadata.json"
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    shape = None
    if "train set size" in meta and "JL dimension" in meta:
        shape = (int(meta["train set size"]), int(meta["JL dimension"]))
    grads_path, ft_path = mdir / "grads.mmap", mdir / "_is_featurized.mmap"
    if not grads_path.exists():
        why = (
            ": TRAK deletes it in finalize_features(del_grads=True); features.mmap holds "
            "Φ(ΦᵀΦ)⁻¹, not per-sample gradients, so featurize again without del_grads"
            if (mdir / "features.mmap").exists()
            else ""
        )
        raise StoreError(f"{mdir} has no grads.mmap (TRAK's projected gradients){why}")
    if not ft_path.exists():
        raise StoreError(
            f"{mdir} has no _is_featurized.mmap, which says which rows TRAK wrote; expected "
            f"{_EXPECTED['trak']}"
        )
    grads = _load_mmap(grads_path, shape, (np.float16, np.float32))
    _check_rows(grads, grads_path)
    if grads.dtype not in (np.float16, np.float32):
        raise StoreError(f"{grads_path} rows are {grads.dtype}; TRAK writes float16 or float32")
    if shape is not None and tuple(grads.shape) != shape:
        raise StoreError(
            f"{grads_path} has shape {tuple(grads.shape)}, but {meta_path} says train set size "
            f"{shape[0]} and JL dimension {shape[1]}"
        )
    n = grads.shape[0]
    ft = _load_mmap(ft_path, (n, 1), (np.int32,))
    if ft.size != n:
        raise StoreError(f"{ft_path} has {ft.size} entries for {n} rows of {grads_path}")
    missing = np.flatnonzero(np.asarray(ft).reshape(-1) == 0)
    if missing.size:
        first = ", ".join(str(int(i)) for i in missing[:8])
        raise StoreError(
            f"{missing.size} of {n} rows of TRAK model id {mdir.name} are not featurized "
            f"(_is_featurized is 0; rows {first}{', ...' if missing.size > 8 else ''}): their "
            "grads.mmap rows were never written; run traker.featurize over the whole train set"
        )
    info = dict(meta)
    info["model_id"] = int(mdir.name) if mdir.name.isdigit() else mdir.name
    info["dtype"] = str(grads.dtype)
    id_path = save_dir / f"id_{mdir.name}.json"
    if id_path.is_file():
        info["model_status"] = _read_json(id_path).get(mdir.name)
    files = [grads_path, ft_path] + ([meta_path] if meta_path.is_file() else [])
    return ExternalStore(mdir, "trak", grads, info, files, _note("TRAK"))
