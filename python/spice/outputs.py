"""Writing a selection back out: the subset in the input's own format, selection.json, per-record
scores and a LLaMA-Factory ``dataset_info.json`` entry. Every file is written atomically (a
temporary file in the same directory, then ``os.replace``), so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "write_subset", "write_json", "write_scores", "dataset_info_entry",
           "record_format", "pyarrow_modules"]


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def pyarrow_modules() -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, or an error naming the extra that installs them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("Parquet data needs pyarrow, which is not installed: pip "
                                  "install 'spice-select[parquet]'", name="pyarrow") from e
    return pa, pq


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, deterministic JSON (sorted keys, 1-space indent)."""
    text = json.dumps(_clean(obj), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_write(path, text)


def _jsonl_lines(path: Path) -> list[bytes]:
    """Non-blank lines of a JSONL file, as bytes (the records' own text, byte for byte)."""
    with open(path, "rb") as f:
        return [ln.rstrip(b"\r\n") for ln in f if ln.strip()]


def write_subset(data: str | os.PathLike, indices: Sequence[int], out: str | os.PathLike) -> Path:
    """Write records ``indices`` (in that order) of the data file ``data`` to ``out``.

    The format follows the input: JSONL lines are copied byte for byte, a JSON array is written
    as a JSON array of the same objects, Parquet as Parquet (same schema). Record numbering is
    the loader's: the non-blank lines of a JSONL file, the elements of a JSON array, the rows of a
    Parquet file.
    """
    src = Path(data)
    idx = [int(i) for i in indices]
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        pa, pq = pyarrow_modules()
        table = pq.read_table(src)
        sub = table.take(pa.array(idx, type=pa.int64()))
        buf = io.BytesIO()
        pq.write_table(sub, buf)
        return atomic_write(out, buf.getvalue())
    with open(src, "rb") as f:
        head = f.read(4096).lstrip()
    if suffix == ".json" and head.startswith(b"["):
        with open(src, encoding="utf-8") as f:
            arr = json.load(f)
        text = json.dumps([arr[i] for i in idx], ensure_ascii=False, indent=1) + "\n"
        return atomic_write(out, text)
    lines = _jsonl_lines(src)
    return atomic_write(out, b"".join(lines[i] + b"\n" for i in idx))


def record_format(obj: dict) -> str:
    """Which record layout a JSON object uses: alpaca | prompt | messages | sharegpt."""
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "messages"
    if "instruction" in obj:
        return "alpaca"
    return "prompt"


def dataset_info_entry(name: str, file_name: str, fmt: str, sample: dict | None = None) -> dict:
    """A LLaMA-Factory ``dataset_info.json`` entry so the subset can be trained on directly."""
    if fmt == "alpaca":
        cols = {"prompt": "instruction", "query": "input", "response": "output"}
        entry: dict[str, Any] = {"file_name": file_name, "columns": cols}
    elif fmt == "prompt":
        resp = "completion" if sample is not None and "completion" in sample else "response"
        entry = {"file_name": file_name, "columns": {"prompt": "prompt", "response": resp}}
    elif fmt == "messages":
        entry = {
            "file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"},
        }
    else:
        entry = {"file_name": file_name, "formatting": "sharegpt",
                 "columns": {"messages": "conversations"}}
    return {name: entry}


def write_scores(path: str | os.PathLike, ids: Sequence[str], base: np.ndarray,
                 indices: np.ndarray, gains: np.ndarray, conflict: np.ndarray,
                 extra: dict[str, np.ndarray] | None = None) -> Path:
    """Per-record CSV: row, id, base gain, selected, pick rank, Δ at pick, conflict at pick."""
    n = len(ids)
    rank = np.full(n, -1, dtype=np.int64)
    rank[indices] = np.arange(len(indices))
    g = np.full(n, np.nan)
    g[indices] = gains
    c = np.full(n, np.nan)
    c[indices] = conflict
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["row", "id", "base_gain", "selected", "pick_rank", "gain_at_pick", "conflict_at_pick"]
    extra = extra or {}
    w.writerow(cols + list(extra))
    for i in range(n):
        w.writerow([i, ids[i], f"{base[i]:.9g}", int(rank[i] >= 0), int(rank[i]),
                    "" if np.isnan(g[i]) else f"{g[i]:.9g}",
                    "" if np.isnan(c[i]) else f"{c[i]:.9g}"]
                   + [f"{float(v[i]):.9g}" for v in extra.values()])
    return atomic_write(path, buf.getvalue())
