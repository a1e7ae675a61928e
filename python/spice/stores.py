"""Gradient features written by other tools, opened where they lie (no copies).

:func:`open` recognises four layouts and returns an object the selection path uses like spice's own
:class:`~spice.store.FeatureStore`: ``.features`` is the ``(n, d)`` array (a memory map of the
tool's file), ``len()``, ``.ids``, ``.config``, ``.verify()`` and ``np.asarray(store)``::

    import spice, spice.stores
    store = spice.stores.open("grads/")            # spice, LESS, Bergson or TRAK
    sel = spice.select(store.features, 0.1)

What each tool writes (read from their writers; the tests build files the same way):

* **spice** -- ``manifest.json`` + ``features.npy`` (:mod:`spice.store`); returned as a
  :class:`~spice.store.FeatureStore`.
* **LESS** (princeton-nlp/LESS) -- its ``collect_grad_reps.py`` writes, per checkpoint and
  projection size, ``<out>/<task>-ckpt<N>-<adam|sgd|sign>/dim<D>/``: ``grads-<count>.pt`` pieces,
  then two ``torch.save``-d 2-D tensors of all rows in input order: ``all_orig.pt``, the rows
  **normalised** to unit length (despite its name), and ``all_unormalized.pt`` (sic), the raw
  projected rows. The dtype is the projector's (bfloat16 by default, float16 or float32). A ``.pt``
  file is a zip archive whose tensor bytes are mapped by ``torch.load(mmap=True)``; a file saved in
  torch's legacy (non-zip) format cannot be mapped and is loaded into memory (a copy; the store's
  note says so). Needs torch.
* **Bergson** (EleutherAI/bergson) -- a run folder with ``gradients.bin``, a raw C-order memory map
  of ``num_grads`` rows, and ``info.json``. Its writer (``bergson/data.py``, ``create_index``) has
  recorded the layout in four ways over time: ``grad_sizes`` (module -> columns, laid out in that
  order) with ``base_dtype`` as a numpy name (``"float16"``, ``"bfloat16"``, ...); the same with
  ``base_dtype`` as a type string (``"<f2"``) and a structured ``dtype`` (one field per module,
  byte-identical to the flat matrix); the structured ``dtype`` alone; and ``grad_size`` alone
  (float16). Per-token stores (``"attribute_tokens": true``, with ``offsets.npy``) hold one row
  per token, not per example, and are refused; so are multi-shard folders (``*shard*/info.json``)
  and unfinished runs (``<run>.part``).
* **TRAK** (MadryLab/trak) -- a ``save_dir`` with ``metadata.json`` (``"train set size"``,
  ``"JL dimension"``), ``experiments.json``, ``id_<model_id>.json`` and per model id a folder
  ``<model_id>/`` holding ``grads.mmap`` (``(train set size, JL dimension)``, float16 or float32:
  the projected per-sample gradients), ``_is_featurized.mmap`` (int32, 1 where a row was written),
  ``out_to_loss.mmap`` and ``features.mmap``. Its ``MmapSaver`` writes these ``.mmap`` files with
  ``numpy.lib.format.open_memmap``, so they are ``.npy`` files with a header; a raw file without one
  is read with the shape from ``metadata.json``. Rows not featurised are an error naming how many.

None of these formats records which data its rows came from, nor checksums: ``spice select`` can
check only that the data has as many records as the store has rows (``store.note`` says so), and
``verify()`` has nothing to check. Row ``i`` is record ``i`` of the data the tool read, in order;
``store.ids`` are those positions as text.
"""

from __future__ import annotations

import builtins
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, Union

import numpy as np

from .errors import StoreError, UnrecognizedStoreError
from .store import FeatureStore

__all__ = ["open", "ExternalStore", "UnrecognizedStoreError", "FORMATS"]

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

# LESS's file names: the normalised rows (written first) and the raw ones
_LESS_NORMALIZED = "all_orig.pt"
_LESS_RAW = "all_unormalized.pt"
_NPY_MAGIC = b"\x93NUMPY"


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


# ----------------------------------------------------------------------------------------------
# detection


def open(
    path: PathLike,
    *,
    format: str | None = None,
    model_id: int | None = None,
    normalized: bool | None = None,
    verify: bool = False,
) -> FeatureStore | ExternalStore:
    """Open the gradient features at ``path`` in place, whichever tool wrote them.

    Args:
        path: a spice store folder; a LESS ``dim<D>/`` folder, its parent (with one ``dim<D>/``)
            or a ``.pt`` file; a Bergson run folder (``gradients.bin`` + ``info.json``) or one of
            its files; a TRAK ``save_dir``, one ``<model_id>/`` folder of it or its ``grads.mmap``.
        format: ``"spice"``, ``"less"``, ``"bergson"`` or ``"trak"`` to skip detection.
        model_id: the TRAK checkpoint to read when the ``save_dir`` holds several.
        normalized: LESS only: ``True`` reads ``all_orig.pt`` (unit rows), ``False``
            ``all_unormalized.pt``; ``None`` (default) the raw rows where present, since the
            log-det objective weighs gradients by their size.
        verify: spice stores only: re-hash every chunk (:meth:`FeatureStore.open`).

    Returns:
        A :class:`~spice.store.FeatureStore` for a spice store, else an :class:`ExternalStore`.

    Raises:
        UnrecognizedStoreError: the path holds none of these layouts (the message lists what each
            needs and what the folder holds).
        StoreError: a recognised store that cannot be used: shapes or sizes that disagree with the
            metadata, an unsupported dtype, TRAK rows not featurised, a per-token Bergson store.
        ModuleNotFoundError: a LESS ``.pt`` file without torch installed.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"no feature store at {p}: it does not exist")
    fmt = format if format is not None else _detect(p)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if fmt == "spice":
        return FeatureStore.open(p.parent if p.is_file() else p, verify=verify)
    if fmt == "less":
        return _open_less(p, normalized)
    if fmt == "bergson":
        return _open_bergson(p.parent if p.is_file() else p)
    return _open_trak(p, model_id)


def _int_dirs_with(p: Path, name: str) -> list[Path]:
    return sorted(
        (c for c in p.iterdir() if c.is_dir() and c.name.isdigit() and (c / name).exists()),
        key=lambda c: int(c.name),
    )


def _less_dims(p: Path) -> list[Path]:
    return sorted(
        c
        for c in p.iterdir()
        if c.is_dir()
        and re.fullmatch(r"dim\d+", c.name)
        and ((c / _LESS_RAW).is_file() or (c / _LESS_NORMALIZED).is_file())
    )


def _detect(p: Path) -> str:
    """Which format ``p`` holds; an :class:`UnrecognizedStoreError` listing them when none."""
    if p.is_file():
        if p.suffix == ".pt":
            return "less"
        if p.name in ("gradients.bin", "info.json"):
            return "bergson"
        if p.name == "grads.mmap":
            return "trak"
        if p.name in ("manifest.json", "features.npy"):
            return "spice"
        raise _unrecognized(p.parent, f"{p.name} is not a file of any of them")
    if (p / "manifest.json").is_file():
        return "spice"
    if (p / "gradients.bin").is_file() or (p / "info.json").is_file():
        return "bergson"
    if (p / "grads.mmap").exists() or (p / "_is_featurized.mmap").exists():
        return "trak"
    if (p / "metadata.json").is_file() and (
        _int_dirs_with(p, "_is_featurized.mmap") or _int_dirs_with(p, "grads.mmap")
    ):
        return "trak"
    if (p / _LESS_RAW).is_file() or (p / _LESS_NORMALIZED).is_file() or _less_dims(p):
        return "less"
    shards = sorted(c.name for c in p.iterdir() if "shard" in c.name and (c / "info.json").exists())
    if shards:
        return "bergson"
    if any(p.glob("grads-*.pt")):
        raise StoreError(
            f"{p} holds LESS's per-batch pieces (grads-*.pt) but not their merge "
            f"({_LESS_RAW} / {_LESS_NORMALIZED}): the LESS run did not finish; run it again "
            "(it resumes from the pieces)"
        )
    raise _unrecognized(p)


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


# ----------------------------------------------------------------------------------------------
# LESS


def _open_less(p: Path, normalized: bool | None) -> ExternalStore:
    if p.is_file():
        pt = p
        says = {_LESS_NORMALIZED: True, _LESS_RAW: False}.get(p.name)
        if normalized is not None and says is not None and says != normalized:
            raise StoreError(
                f"{p} holds LESS's {'unit-length' if says else 'raw'} rows, but "
                f"normalized={normalized} was asked for"
            )
    else:
        d = p
        if not ((d / _LESS_RAW).is_file() or (d / _LESS_NORMALIZED).is_file()):
            dims = _less_dims(d)
            if len(dims) != 1:
                raise StoreError(
                    f"{d} holds LESS gradients of several projection sizes "
                    f"({', '.join(c.name for c in dims) or 'none'}); name one: {d}/dim<D>"
                )
            d = dims[0]
        if normalized is None:
            want = [_LESS_RAW, _LESS_NORMALIZED]  # the raw rows first: they keep the sizes
        else:
            want = [_LESS_NORMALIZED if normalized else _LESS_RAW]
        found = [d / n for n in want if (d / n).is_file()]
        if not found:
            raise StoreError(f"{d} has no {' or '.join(want)} (LESS's merged gradients)")
        pt = found[0]
    torch = _import_torch()
    tensor, copied = _torch_load_mapped(torch, pt)
    if not isinstance(tensor, torch.Tensor):
        raise StoreError(f"{pt} holds a {type(tensor).__name__}, not a tensor of gradient rows")
    _check_rows(tensor, pt)
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        arr = tensor.view(torch.int16).numpy().view(_bf16())
    elif tensor.dtype in (torch.float16, torch.float32, torch.float64):
        arr = tensor.numpy()
    else:
        raise StoreError(
            f"{pt} holds {str(tensor.dtype).replace('torch.', '')} rows; "
            "gradient rows must be float16, bfloat16, float32 or float64"
        )
    arr.flags.writeable = False  # a private mapping: writes would never reach the file anyway
    meta: dict[str, Any] = {
        "file": pt.name,
        "normalized": {_LESS_NORMALIZED: True, _LESS_RAW: False}.get(pt.name),
        "dtype": str(arr.dtype),
        "rows": int(arr.shape[0]),
        "dim": int(arr.shape[1]),
    }
    m = re.fullmatch(r"dim(\d+)", pt.parent.name)
    if m:
        meta["proj_dim"] = int(m.group(1))
        if meta["proj_dim"] != arr.shape[1]:
            raise StoreError(
                f"{pt} has {arr.shape[1]} columns, but its folder {pt.parent.name} says LESS "
                f"projected to {meta['proj_dim']}"
            )
        run = re.fullmatch(r"(.+)-ckpt(\d+)-([A-Za-z]+)", pt.parent.parent.name)
        if run:
            meta.update(task=run.group(1), checkpoint=int(run.group(2)), gradient=run.group(3))
    if list(pt.parent.glob("reps-*.pt")) and not list(pt.parent.glob("grads-*.pt")):
        meta["kind"] = "representations"  # LESS's collect_reps merges into all_orig.pt too
    extra = []
    if meta["normalized"]:
        extra.append(
            "these are LESS's unit-length rows (all_orig.pt), which drop the gradient size"
        )
    if copied:
        extra.append(
            f"{pt.name} was loaded into memory (a copy): it is in torch's legacy format, which "
            "cannot be memory-mapped; torch.save it again to read it in place"
        )
    return ExternalStore(pt, "less", arr, meta, [pt], _note("LESS", "; ".join(extra)))


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ModuleNotFoundError(
            "LESS gradient files (.pt) need torch, which is not installed: "
            "pip install 'spice-select[hf]'",
            name="torch",
        ) from e
    return torch


def _torch_load_mapped(torch: Any, pt: Path) -> tuple[Any, bool]:
    """``torch.load`` with the tensor bytes memory-mapped; (object, True) when it had to be read
    into memory instead (a legacy-format file, or a torch without ``mmap=``)."""
    kw: dict[str, Any] = {"map_location": "cpu"}
    if "weights_only" in inspect.signature(torch.load).parameters:
        kw["weights_only"] = True  # tensors only: never run a pickle's code
    try:
        if "mmap" in inspect.signature(torch.load).parameters:
            try:
                return torch.load(pt, mmap=True, **kw), False
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
        return torch.load(pt, **kw), True
    except Exception as e:
        raise StoreError(f"cannot read {pt} as a torch tensor: {e}") from e


# ----------------------------------------------------------------------------------------------
# Bergson


def _bergson_dtype(name: str) -> np.dtype:
    if name in ("bfloat16", "bf16"):
        return _bf16()
    dt = np.dtype(name)
    if dt.kind == "V" and dt.itemsize == 2:
        # an older writer recorded dtype.str, which for ml_dtypes' bfloat16 is "<V2"
        return _bf16()
    return dt


def _open_bergson(d: Path) -> ExternalStore:
    if d.name.endswith(".part"):
        raise StoreError(
            f"{d} is an unfinished Bergson run (bergson renames <run>.part to <run> when it "
            "finishes); rows it has not reached yet are zeros"
        )
    info_path, grad_path = d / "info.json", d / "gradients.bin"
    if not info_path.is_file():
        shards = sorted(
            c.name for c in d.iterdir() if "shard" in c.name and (c / "info.json").exists()
        )
        if shards:
            raise StoreError(
                f"{d} holds {len(shards)} Bergson shards ({', '.join(shards[:4])}"
                f"{', ...' if len(shards) > 4 else ''}); spice reads one gradients.bin in place: "
                f"open one shard ({d / shards[0]}), or join them into one array"
            )
        raise StoreError(f"{d} has gradients.bin but no info.json (Bergson's shape and dtype)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StoreError(f"unreadable {info_path}: {e}") from e
    if not grad_path.is_file():
        what = "a Bergson score folder (scores.bin)" if (d / "scores.bin").exists() else ""
        raise StoreError(
            f"{d} has info.json but no gradients.bin" + (f": it is {what}" if what else "")
        )
    if info.get("attribute_tokens"):
        raise StoreError(
            f"{d} holds Bergson per-token gradients (attribute_tokens, offsets.npy): one row per "
            "token, not per example; build the index without attribute_tokens for spice"
        )
    try:
        rows = int(info["num_grads"])
        struct = info.get("dtype")
        if "grad_sizes" in info:
            cols = int(sum(int(v) for v in info["grad_sizes"].values()))
        elif "grad_size" in info:
            cols = int(info["grad_size"])
        elif isinstance(struct, dict):
            fields = np.dtype({k: struct[k] for k in ("names", "formats")})
            cols = sum(int(np.prod(fields[n].shape)) for n in fields.names)
        else:
            raise KeyError("grad_sizes")
        if "base_dtype" in info:
            dt = _bergson_dtype(str(info["base_dtype"]))
        elif isinstance(struct, dict):
            dt = _bergson_dtype(np.dtype(struct["formats"][0]).base.str)
        else:
            dt = np.dtype(np.float16)  # the first writer's only type
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(
            f"{info_path} does not describe the gradients (need num_grads and grad_sizes, "
            f"grad_size or a structured dtype): {type(e).__name__}: {e}"
        ) from e
    if dt not in (np.float16, np.float32, np.float64) and dt.name != "bfloat16":
        raise StoreError(f"{grad_path} rows are {dt}; gradient rows must be floating")
    want = rows * cols * dt.itemsize
    have = grad_path.stat().st_size
    if have != want or rows == 0 or cols == 0:
        raise StoreError(
            f"{grad_path} has {have} bytes, but info.json says {rows} rows x {cols} columns of "
            f"{dt} = {want} bytes"
        )
    arr = np.memmap(grad_path, dtype=dt, mode="r", shape=(rows, cols))
    meta = {k: info[k] for k in info if k != "dtype"}
    meta["dtype"] = str(dt)
    files = [grad_path, info_path]
    return ExternalStore(d, "bergson", arr, meta, files, _note("Bergson"))


# ----------------------------------------------------------------------------------------------
# TRAK


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
