"""Gradient features written by other tools, opened where they lie (no copies).

:func:`open` recognises four layouts and returns an object the selection path uses like spice's own
:class:`~spice.store.FeatureStore`: ``.features`` is the ``(n, d)`` array (a memory map of the
tool's file), ``len()``, ``.ids``, ``.config``, ``.verify()`` and ``np.asarray(store)``::

    import spice, spice.formats
    store = spice.formats.open("grads/")           # spice, LESS, Bergson or TRAK
    sel = spice.select(store.features, 0.1)

(``spice.stores`` is this module's former name, kept as an alias: ``spice.stores.open`` is this
``open``.)

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

from pathlib import Path

from ..errors import StoreError, UnrecognizedStoreError
from ..store import FeatureStore
from .bergson import _open_bergson
from .external import FORMATS, ExternalStore, PathLike, _int_dirs_with, _unrecognized
from .less import _LESS_NORMALIZED, _LESS_RAW, _less_dims, _open_less
from .trak import _open_trak

__all__ = ["open", "ExternalStore", "UnrecognizedStoreError", "FORMATS"]


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
