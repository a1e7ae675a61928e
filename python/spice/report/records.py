"""What the report reads of a run's records: their text for the first picks, streamed from the
data file (or the run's own subset file), and each record's source label when they carry one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# Fields that name where a record came from, in the order they are looked for.
GROUP_FIELDS = ("source", "family", "group", "dataset", "category", "task", "domain")
_SNIPPET = 60


def _snippet(text: str | None, limit: int = _SNIPPET) -> str:
    """The first words of a text on one line, safe inside a Markdown table cell."""
    t = " ".join((text or "").split())
    if len(t) > limit:
        t = t[: limit - 1].rstrip() + "…"
    return t.replace("|", "\\|") or "(empty)"


def _prompt_reply(rec: Any) -> tuple[str, str]:
    """A record's prompt and reply: the first user and assistant turns of a conversation."""
    if getattr(rec, "kind", "text") == "chat":
        msgs = getattr(rec, "messages", ()) or ()
        user = next((m.get("content", "") for m in msgs if m.get("role") == "user"), "")
        reply = next((m.get("content", "") for m in msgs if m.get("role") == "assistant"), "")
        return user, reply
    return getattr(rec, "prompt", "") or "", getattr(rec, "response", "") or ""


def _json_items(path: Path) -> Any:
    """The objects of a JSON Lines file (or a JSON array), one per record, counted as
    :func:`spice.features.load_records` counts them (blank lines skipped; an unreadable line stays
    a record, as None); None for other formats."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json"):
        return None
    with open(path, "rb") as f:
        if suffix == ".json" and f.read(4096).lstrip().startswith(b"["):
            f.seek(0)
            return iter(json.load(f))

    def lines() -> Any:
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    try:
                        yield json.loads(raw)
                    except (ValueError, RecursionError):
                        yield None

    return lines()


def _scan(items: Any, ids: list[str] | None, wanted: set[int], path: Path) -> dict:
    """One pass over the raw records: whether their ids match the store's, the parsed records at
    ``wanted`` positions, and for the first of :data:`GROUP_FIELDS` that every record carries as
    a label with 2 to 50 values, each record's label as a small int code. Keeps O(n) ints, not
    the records."""
    from ..features.records import RecordError, parse_record

    codes: dict[str, Any] = {f: ({}, []) for f in GROUP_FIELDS}
    got: dict[int, Any] = {}
    n = 0
    same = True
    for pos, obj in enumerate(items):
        obj = obj if isinstance(obj, dict) else {}
        rid = obj.get("id")
        rid = str(pos) if rid is None else str(rid)
        if ids is not None and (pos >= len(ids) or ids[pos] != rid):
            same = False
        for name in [f for f in codes if codes[f] is not None]:
            v = obj.get(name)
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                codes[name] = None
                continue
            table, col = codes[name]
            col.append(table.setdefault(str(v), len(table)))
            if len(table) > 50:
                codes[name] = None
        if pos in wanted:
            try:
                got[pos] = parse_record(obj, str(pos), f"{path} record {pos}")
            except RecordError:
                pass  # an unreadable record shows as "text not available"
        n = pos + 1
    groups = None
    for name in GROUP_FIELDS:
        if codes[name] is not None and len(codes[name][0]) >= 2:
            table, col = codes[name]
            groups = (name, list(table), np.asarray(col, dtype=np.int64))
            break
    return dict(n=n, same=same, records=got, groups=groups)


def _load_text(
    cfg: dict, run: Path, n_store: int, ids: list[str] | None, wanted: np.ndarray
) -> dict:
    """What the report can read of the records: ``records`` ({record position: Record} for the
    ``wanted`` positions, when the data is reachable and matches the store's ids),
    ``pick_records`` (the picks in pick order, from the run's subset file, when the data is not
    readable), ``groups`` ((field, label names, per-record label codes)) and ``note`` (why
    something could not be read). JSON and JSONL data are streamed; other formats are read with
    :func:`spice.features.load_records`."""
    from ..features import load_records

    out: dict[str, Any] = dict(records=None, pick_records=None, groups=None, note="")
    data = cfg.get("data")
    split, columns = cfg.get("split"), cfg.get("columns")
    path = Path(data) if isinstance(data, str) and not data.lstrip().startswith("{") else None
    want = {int(i) for i in wanted}
    if path is None:
        out["note"] = "the data was a Python object, not a file; its text is not recorded"
    elif not path.exists():
        out["note"] = f"the data file {path} is gone (moved or deleted)"
    else:
        try:
            items = _json_items(path) if columns is None else None
            if items is not None:
                scan = _scan(items, ids, want, path)
            else:
                recs = load_records(path, invalid="skip", split=split, columns=columns)
                scan = dict(
                    n=len(recs),
                    same=ids is None or [r.id for r in recs] == list(ids),
                    records={i: recs[i] for i in want if i < len(recs)},
                    groups=None,
                )
        except Exception as e:  # a report must still come out; the reason goes into it
            out["note"] = f"{path} could not be read ({type(e).__name__}: {e})"
        else:
            if scan["n"] != n_store or not scan["same"]:
                out["note"] = (
                    f"{path} no longer matches the feature store ({scan['n']} records, the store "
                    f"{n_store} rows, or other ids): it changed since the run"
                )
            else:
                out["records"], out["groups"] = scan["records"], scan["groups"]
    if out["records"] is None and cfg.get("subset"):
        sub = run / cfg["subset"]
        if sub.exists():
            try:
                out["pick_records"] = load_records(sub, invalid="skip", columns=columns)
            except Exception:  # the note above already says the pool's text is unavailable
                out["pick_records"] = None
    return out
