"""LESS (princeton-nlp/LESS): ``all_unormalized.pt`` / ``all_orig.pt``, read through
``torch.load(mmap=True)``."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .external import ExternalStore, _bf16, _check_rows, _note

# LESS's file names: the normalised rows (written first) and the raw ones
_LESS_NORMALIZED = "all_orig.pt"
_LESS_RAW = "all_unormalized.pt"


def _less_dims(p: Path) -> list[Path]:
    return sorted(
        c
        for c in p.iterdir()
        if c.is_dir()
        and re.fullmatch(r"dim\d+", c.name)
        and ((c / _LESS_RAW).is_file() or (c / _LESS_NORMALIZED).is_file())
    )


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
