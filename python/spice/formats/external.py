"""What the readers of other tools' gradients share: :class:`ExternalStore`, the list of formats and
what each one's folder holds, and the checks and messages common to them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import StoreError, UnrecognizedStoreError

PathLike = Union[str, "os.PathLike[str]"]


FORMATS = ("spice", "less", "bergson", "trak")


# what each format's folder holds, for the message when none is found
_EXPECTED = {
    "spice": "manifest.json + features.npy (spice features)",
    "less": "all_unormalized.pt or all_orig.pt, in a dim<D>/ folder or named directly "
    "(LESS collect_grad_reps)",
    "bergson": "gradients.bin + info.json (bergson build)",
    "trak": "metadata.json + <model_id>/grads.mmap + <model_id>/_is_featurized.mmap "
    "(a TRAKer save_dir, or one <model_id>/ folder of it)",
}


class ExternalStore:
    """Another tool's per-sample gradients, opened read-only where they lie.

    Attributes:
        path: the folder (or file) that was opened.
        format: ``"less"``, ``"bergson"`` or ``"trak"``.
        features: the ``(n, d)`` rows: an ``np.memmap`` of the tool's file (Bergson, TRAK) or a
            numpy view of a memory-mapped torch tensor (LESS); never a copy, except for a legacy
            ``.pt`` file (``note`` says so).
        metadata: what the tool recorded (its ``info.json`` / ``metadata.json``, names parsed from
            LESS's folders), JSON-serialisable.
        files: the files the rows and metadata were read from.
        note: what spice cannot check about these rows (their data, checksums).
    """

    def __init__(
        self,
        path: Path,
        format: str,
        features: Any,
        metadata: dict,
        files: list[Path],
        note: str,
    ) -> None:
        self.path = Path(path)
        self.format = format
        self.features = features
        self.metadata = metadata
        self.files = [Path(f) for f in files]
        self.note = note

    @property
    def config(self) -> dict:
        """What produced the rows, recorded in ``selection.json``; there is no ``"data"`` block
        (these formats do not record their data), which tells :func:`spice.pipeline.
        check_store_matches` to compare only the record count."""
        return {
            "format": self.format,
            "files": [str(f.resolve()) for f in self.files],
            "metadata": self.metadata,
        }

    @property
    def ids(self) -> list[str]:
        """Row positions as text (none of these formats records record ids)."""
        return [str(i) for i in range(len(self))]

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.features.shape[1])

    @property
    def dtype(self) -> np.dtype:
        """Element type of the rows."""
        return self.features.dtype

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if dtype is None or np.dtype(dtype) == self.features.dtype:
            return self.features
        return np.asarray(self.features, dtype=dtype)

    def verify(self, threads: int | None = None) -> None:
        """Nothing to check: LESS, Bergson and TRAK record no checksums (the shapes and sizes were
        checked when the store was opened). ``threads`` is accepted for
        :meth:`FeatureStore.verify`'s signature."""

    def __repr__(self) -> str:
        return (
            f"ExternalStore({str(self.path)!r}, format={self.format!r}, rows={len(self)}, "
            f"dim={self.dim}, dtype={self.dtype})"
        )


def _int_dirs_with(p: Path, name: str) -> list[Path]:
    return sorted(
        (c for c in p.iterdir() if c.is_dir() and c.name.isdigit() and (c / name).exists()),
        key=lambda c: int(c.name),
    )


def _unrecognized(p: Path, why: str = "") -> UnrecognizedStoreError:
    try:
        entries = sorted(c.name + ("/" if c.is_dir() else "") for c in p.iterdir())
    except OSError:
        entries = []
    held = ", ".join(entries[:12]) + (
        f", ... ({len(entries)} entries)" if len(entries) > 12 else ""
    )
    lines = [f"{p} is not a gradient store spice reads{': ' + why if why else ''}. Looked for:"]
    lines += [f"  {fmt}: {_EXPECTED[fmt]}" for fmt in FORMATS]
    lines.append(f"It holds: {held or 'nothing'}")
    return UnrecognizedStoreError("\n".join(lines))


def _note(fmt: str, extra: str = "") -> str:
    return (
        f"{fmt} gradients record nothing about the data they were made from, nor checksums: "
        "spice checks only that the data has as many records as the store has rows, not that "
        "they are the same records in the same order" + (f"; {extra}" if extra else "")
    )


def _bf16() -> np.dtype:
    try:
        import ml_dtypes  # type: ignore[import-not-found]
    except ImportError:
        raise StoreError(
            "these rows are bfloat16, which numpy reads through ml_dtypes: pip install ml_dtypes"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def _check_rows(arr: Any, where: Path) -> None:
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise StoreError(f"{where} holds an array of shape {tuple(arr.shape)}; need (rows, dim)")
