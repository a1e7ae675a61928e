"""Bergson (EleutherAI/bergson): a run folder's ``gradients.bin`` memory-mapped with the layout
``info.json`` records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .external import ExternalStore, _bf16, _note


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
