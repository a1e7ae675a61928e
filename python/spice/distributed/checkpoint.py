"""The checkpoint of a distributed run's picks: a JSON file keyed by the run (n, d, dtype and the
options that decide the picks), loaded to resume and written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

CHECKPOINT_FORMAT = "spice-distributed-picks"
_PICK_FIELDS = ("indices", "q", "scores", "gains", "base", "align", "conflict")


def _run_key(
    n: int, d: int, code: int, alpha: float, conflict_penalty: float, early_stop: float
) -> dict:
    # these key names are written into checkpoint files: renaming one breaks resuming them
    return dict(
        n=n,
        d=d,
        dtype_code=code,
        alpha=alpha,
        conflict_penalty=conflict_penalty,
        early_stop=early_stop,
    )


def _load_checkpoint(path: Path, key: dict) -> dict[str, list]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from e
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if doc.get("run") != key:
        have = doc.get("run", {})
        diff = [
            f"{k}: {have.get(k)!r} there, {v!r} now" for k, v in key.items() if have.get(k) != v
        ]
        raise ValueError(
            f"checkpoint {path} was written by another run ({'; '.join(diff)}); "
            "remove it or pass another checkpoint path"
        )
    picks = doc["picks"]
    m = len(picks["indices"])
    if any(len(picks[f]) != m for f in _PICK_FIELDS):
        raise ValueError(f"checkpoint {path} is damaged (per-pick lists of different lengths)")
    return {f: list(picks[f]) for f in _PICK_FIELDS}


def _save_checkpoint(path: Path, key: dict, picks: dict[str, list], complete: bool) -> None:
    """Write the checkpoint atomically: a temporary file beside it, fsync'd, renamed over it,
    and the directory fsync'd, so a crash or power loss leaves the old file or the new one."""
    doc = dict(format=CHECKPOINT_FORMAT, version=1, run=key, complete=complete, picks=picks)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc))  # floats as repr: exact round trip
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a directory that cannot be opened (some platforms): the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
