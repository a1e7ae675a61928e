"""What a store's manifest and index say: the format, how two configurations differ, one
normalised index row, and the final ``index.jsonl`` / ``skipped.jsonl`` / ``manifest.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from .atomic import _atomic_write_text, _dumps, _json_float
from .skips import SKIP_REASONS, skip_reason

FORMAT = "spice-features"
FORMAT_VERSION = 1
_DTYPES = {"float16": "<f2", "float32": "<f4"}


PathLike = Union[str, "os.PathLike[str]"]


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Paths (dotted) where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(p)
            else:
                out.extend(_diff_keys(a[k], b[k], p))
        return out
    return [] if a == b else [prefix or "<root>"]


def _describe(v: Any, limit: int = 80) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def config_mismatch_message(path: Path, have: dict, want: dict) -> str | None:
    """A readable explanation of how two store configurations differ, or None when equal."""
    keys = _diff_keys(have, want)
    if not keys:
        return None

    def get(d: Any, dotted: str) -> Any:
        for part in dotted.split("."):
            if not isinstance(d, dict) or part not in d:
                return "<absent>"
            d = d[part]
        return d

    lines = [
        f"feature store {path} was made with a different configuration; refusing to reuse or "
        f"overwrite it. Differences (store -> requested):"
    ]
    for k in keys[:12]:
        lines.append(f"  {k}: {_describe(get(have, k))} -> {_describe(get(want, k))}")
    if len(keys) > 12:
        lines.append(f"  ... and {len(keys) - 12} more")
    lines.append("Use another output directory, or delete this one to start over.")
    return "\n".join(lines)


def _n_chunks(total_rows: int, shard_rows: int) -> int:
    return (total_rows + shard_rows - 1) // shard_rows


def _norm_index_row(r: dict) -> dict:
    out = {
        "row": int(r["row"]),
        "id": str(r["id"]),
        "tokens": int(r["tokens"]),
        "loss_tokens": int(r["loss_tokens"]),
        "loss": None if r.get("loss") is None else _json_float(r["loss"]),
        "flags": sorted(str(f) for f in r.get("flags", ())),
    }
    if r.get("detail"):
        out["detail"] = str(r["detail"])
    return out


def _write_index_and_manifest(path: Path, manifest: dict, metas: Sequence[dict]) -> None:
    """Write ``index.jsonl``, ``skipped.jsonl`` and the final manifest of a store whose
    ``features.npy`` already holds the chunks' rows, in chunk order (the manifest goes last: it is
    what marks the store complete)."""
    chunks = []
    flags: dict[str, int] = {}
    lines = []
    skipped_lines = []
    reasons: dict[str, int] = {}
    off = 0
    for meta in metas:
        m = int(meta["rows"])
        chunks.append(
            {
                "chunk": int(meta["chunk"]),
                "row_start": int(meta["row_start"]),
                "rows": m,
                "offset": off,
                "sha256": meta["sha256"],
            }
        )
        for r in meta["index"]:
            for f in r["flags"]:
                flags[f] = flags.get(f, 0) + 1
            lines.append(json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False))
            why = skip_reason(r["flags"])
            if why:
                reasons[why] = reasons.get(why, 0) + 1
                entry = {
                    "row": r["row"],
                    "id": r["id"],
                    "reason": why,
                    "detail": r.get("detail") or SKIP_REASONS.get(why, ""),
                }
                skipped_lines.append(json.dumps(entry, sort_keys=True, ensure_ascii=False))
        off += m
    _atomic_write_text(path / "index.jsonl", "".join(line + "\n" for line in lines))
    _atomic_write_text(path / "skipped.jsonl", "".join(line + "\n" for line in skipped_lines))
    final = dict(manifest)
    final.update(
        {
            "status": "complete",
            "rows": off,
            "chunks": chunks,
            "flags": flags,
            "skipped": {"rows": len(skipped_lines), "reasons": reasons, "list": "skipped.jsonl"},
        }
    )
    final.pop("my_chunks", None)
    _atomic_write_text(path / "manifest.json", _dumps(final))
