"""Atomic file writes (temporary file, fsync, rename) and the canonical JSON and row hashes a
store's files are made of."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


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
