"""The offline job: gradient features of a proxy model, then selection, then outputs.

Used by the ``spice`` command line; each step is also usable from Python.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import PipelineError
from .options import SelectOptions, setting_names
from .outputs import (
    atomic_write,
    axolotl_snippet,
    dataset_info_entry,
    record_format,
    subset_columns,
    subset_layout,
    trl_snippet,
    write_indices,
    write_json,
    write_scores,
    write_subset,
)
from .selection import Selection, select

__all__ = [
    "PipelineError",
    "EXTRAS",
    "require_extras",
    "load_model",
    "check_data",
    "check_store_matches",
    "store_progress",
    "check_out_dir",
    "prepare_out_dir",
    "removed_if_failed",
    "select_to_dir",
    "record_groups",
    "check_quotas",
    "versions",
]


# the optional dependencies each extra of spice-select installs
EXTRAS = {
    "hf": ("torch", "transformers", "peft"),
    "report": ("matplotlib",),
    "parquet": ("pyarrow",),
    "hf-datasets": ("datasets", "pyarrow"),
}


def require_extras(what: str, *extras: str, unused: tuple[str, ...] = ()) -> None:
    """Check, before any work, that the modules of ``extras`` (but those in ``unused``) are
    installed; none is imported.

    Raises:
        ModuleNotFoundError: naming the missing modules and one ``pip install`` line for all the
            extras they belong to.
    """
    missing: dict[str, list[str]] = {}
    for extra in extras:
        for mod in EXTRAS[extra]:
            if mod in unused:
                continue
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.setdefault(extra, []).append(mod)
    if missing:
        mods = [m for ms in missing.values() for m in ms]
        verb = "is" if len(mods) == 1 else "are"
        raise ModuleNotFoundError(
            f"{what} needs {', '.join(mods)}, which {verb} not installed: "
            f"pip install 'spice-select[{','.join(missing)}]'",
            name=mods[0],
        )


def versions() -> dict[str, str]:
    """Library versions recorded in every selection.json."""
    from importlib import metadata

    out = {"spice": __version__, "numpy": np.__version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "peft"):
        # the installed version, without importing torch (seconds) just to name it
        loaded = sys.modules.get(mod)
        try:
            out[mod] = loaded.__version__ if loaded is not None else metadata.version(mod)
        except Exception:
            pass
    return out


def load_model(spec: str, gguf_file: str | None = None) -> tuple[Any, Any, str]:
    """Load a causal LM and its tokenizer: a local directory, a Hugging Face id from the offline
    cache, or a GGUF file inside a directory (``gguf_file``). Returns (model, tokenizer, model_id).
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise PipelineError(
            "model loading needs the hf extra: pip install 'spice-select[hf]'"
        ) from e
    p = Path(spec)
    kw: dict[str, Any] = {}
    if gguf_file:
        if not p.is_dir():
            raise PipelineError(f"--gguf-file needs --model to be the directory holding it: {spec}")
        if not (p / gguf_file).is_file():
            raise PipelineError(f"no GGUF file {gguf_file!r} in {spec}")
        kw["gguf_file"] = gguf_file
    elif not p.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):
        raise PipelineError(f"model path {spec} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(spec, local_files_only=True, **kw)
        model = AutoModelForCausalLM.from_pretrained(spec, local_files_only=True, **kw)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PipelineError(f"cannot load model {spec!r}: {msg}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    model_id = f"{spec}::{gguf_file}" if gguf_file else spec
    return model, tok, model_id


def check_data(
    data: Any,
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    invalid: str = "error",
    what: str = "data",
) -> list:
    """Read and check ``data`` before any costly step (loading a model): it exists and can be
    read, every record parses (with ``invalid="error"``), and at least one record has something
    to learn from. ``split``, ``columns`` and ``invalid`` are :func:`spice.features.load_records`'s;
    ``what`` names the data in messages (the CLI passes ``"--data"``).

    Returns:
        the records (a list of :class:`spice.features.Record`, one per row, skipped ones included).

    Raises:
        PipelineError: a missing or unreadable path, no records, or none with anything to learn.
        RecordError: a malformed record (the message names the file and line), with
            ``invalid="error"``.
    """
    from collections import Counter

    from .features.records import load_records

    name = f"{what} {data}" if isinstance(data, (str, os.PathLike)) else what
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if not p.exists():
            raise PipelineError(f"{name}: no such file or folder")
        if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            raise PipelineError(f"{name}: cannot be read (permission denied)")
    try:
        records = load_records(data, invalid=invalid, split=split, columns=columns)
    except PermissionError as e:  # a file inside a dataset folder
        raise PipelineError(f"{name}: cannot read {e.filename} (permission denied)") from e
    if not records:
        empty = isinstance(data, (str, os.PathLike)) and Path(data).is_file()
        empty = empty and Path(data).stat().st_size == 0
        raise PipelineError(
            f"{name} holds no records ({'an empty file' if empty else 'no rows or lines'})"
        )
    if all(r.skipped for r in records):
        reasons = Counter(r.skip for r in records)
        listed = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        raise PipelineError(
            f"none of the {len(records)} records of {name} has anything to learn from ({listed})"
        )
    return records


def _columns_text(columns: Mapping[str, str] | None) -> str:
    """``--columns`` as typed (``prompt=question,response=answer``)."""
    return ",".join(f"{k}={v}" for k, v in columns.items()) if columns else ""


def _mismatch_reason(
    store: Any, data: Any, records: list, split: str | None, columns: Mapping[str, str] | None
) -> str:
    """Why ``data`` read as asked is not what ``store`` was made from, as far as can be told:
    other --split/--columns (when the store records them), no records, an invalid record (its
    line), or another record count; the content otherwise."""
    want = store.config.get("data", {})
    made = store.manifest.get("data_read") if hasattr(store, "manifest") else None
    if isinstance(made, dict):
        if (made.get("columns") or None) != (dict(columns) if columns else None):
            used = made.get("columns")
            return (
                f"it was made with {'--columns ' + _columns_text(used) if used else 'no --columns'}"
                f", this run reads {data} with "
                f"{'--columns ' + _columns_text(columns) if columns else 'none'}: pass the same "
                "--columns as `spice features` had"
            )
        if made.get("split") != split:
            used, now = made.get("split"), split
            return (
                f"it was made from split {used!r}, this run reads split {now!r}: pass the same "
                "--split as `spice features` had"
            )
    made_from = f"it was made from {want['records']} records" if "records" in want else ""
    if not records:
        return f"{data} holds no records" + (f"; {made_from}" if made_from else "")
    bad = [r for r in records if r.kind == "invalid"]
    if bad:
        more = f" ({len(bad)} of its {len(records)} records are invalid)" if len(bad) > 1 else ""
        text = f"{bad[0].detail}{more}"
        if not isinstance(made, dict) and columns is None and len(bad) == len(records):
            # an older store does not record --columns: the likeliest cause when nothing parses
            text += "; if the features were made with --columns, pass the same --columns here"
        return text
    if "records" in want and int(want["records"]) != len(records):
        return f"{data} has {len(records)} records; {made_from}"
    return "the records' content differs"


def check_store_matches(
    store: Any, data: Any, split: str | None = None, columns: Mapping[str, str] | None = None
) -> dict:
    """Refuse a feature store that was not made from ``data`` (row count and fingerprint);
    ``split`` and ``columns`` say how to read ``data`` (:func:`spice.features.load_records`).
    A store that records no data (another tool's, :func:`spice.stores.open`) is checked by its
    row count only. The message says what differs where it can be told: the ``--columns`` or
    ``--split`` the store was made with, an empty file, or the first invalid record's line."""
    from .features.records import data_fingerprint, file_sha256, load_records

    want = store.config.get("data", {})
    records = load_records(data, invalid="skip", split=split, columns=columns)
    if not want:  # another tool's gradients (spice.stores): they record nothing of their data
        if len(records) != len(store):
            raise PipelineError(
                f"feature store {store.path} has {len(store)} rows, the data has "
                f"{len(records)} records: row i must be record i"
            )
        return data_fingerprint(data, records)
    fp = data_fingerprint(data, records)
    # stores written before content fingerprints recorded the file's bytes
    have = file_sha256(data) if want.get("kind") == "file" else fp["sha256"]
    if want.get("sha256") and want["sha256"] != have:
        raise PipelineError(
            f"feature store {store.path} was made from other data: "
            f"{_mismatch_reason(store, data, records, split, columns)} "
            f"(fingerprint {want['sha256'][:12]}…, {data} is {have[:12]}…)"
        )
    rows = len(store)
    if want.get("records") is not None and int(want["records"]) != rows:
        raise PipelineError(
            f"feature store {store.path} has {rows} rows, its data had {want['records']}"
        )
    return fp


def store_progress(path: str | os.PathLike) -> dict | None:
    """What a feature store folder holds so far, from its manifest and chunk markers (the rows
    are not read or checked; a resumed run checks them): ``{"complete": bool, "rows": total
    rows, "chunks": chunks of this store or part, "done_chunks", "done_rows": rows of finished
    chunks, "partial_rows": rows saved in unfinished chunks}``; None where there is no store."""
    import json

    path = Path(path)
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return None
    total = int(m.get("rows", m.get("total_rows", 0)) or 0)
    if m.get("status") == "complete":
        n = len(m.get("chunks", ())) or 1
        return dict(complete=True, rows=total, chunks=n, done_chunks=n, done_rows=total,
                    partial_rows=0)  # fmt: skip
    mine = m.get("my_chunks") or []
    done_chunks = done_rows = partial = 0
    for marker in sorted((path / "shards").glob("chunk-*.json")):
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            if marker.name.endswith(".partial.json"):
                partial += len(meta["done"])
            else:
                done_chunks += 1
                done_rows += int(meta["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged marker: its chunk is recomputed
    return dict(complete=False, rows=total, chunks=len(mine), done_chunks=done_chunks,
                done_rows=done_rows, partial_rows=partial)  # fmt: skip


def check_out_dir(out: str | os.PathLike, overwrite: bool, marker: str) -> Path:
    """Refuse an ``out`` that is a file, or that already holds ``marker`` unless ``overwrite``;
    creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PipelineError(f"output path {out} exists and is not a directory")
    if (out / marker).exists() and not overwrite:
        raise PipelineError(f"{out} already holds a result ({marker}); pass --overwrite")
    return out


def prepare_out_dir(out: str | os.PathLike, overwrite: bool, marker: str) -> Path:
    """:func:`check_out_dir`, then create ``out``."""
    out = check_out_dir(out, overwrite, marker)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def removed_if_failed(path: Path) -> Iterator[None]:
    """If the block fails, remove the folders it made for ``path`` (``path`` and those of its
    parents that did not exist before) when they hold no file: empty folders are all a failed
    first step can leave, and a file in them (a resumable chunk, say) is kept."""
    path = Path(path).absolute()
    made = next((p for p in reversed((path, *path.parents)) if not p.exists()), None)
    try:
        yield
    except BaseException:
        if made is not None and made.is_dir() and not any(p.is_file() for p in made.rglob("*")):
            shutil.rmtree(made, ignore_errors=True)
        raise


# What a selection run writes into its folder (spice report adds the last six); --overwrite
# replaces these and leaves every other file of the folder alone.
_RUN_FILES = (
    "subset.jsonl",
    "subset.json",
    "subset.parquet",
    "subset",
    "indices.npy",
    "scores.csv",
    "dataset_info.json",
    "axolotl_dataset.yaml",
    "trl_sft.py",
    "timing.json",
    "report.md",
    "gains.png",
    "epsilon.png",
    "conflict.png",
    "pool.png",
    "norms.png",
)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished files of ``staging`` into ``out`` (``selection.json`` last, each move
    atomic), then drop ``staging``. A previous run's ``selection.json`` goes first, then the files
    it described (its report too), so that at no moment does a selection.json describe files it
    did not write, nor does a report describe another selection."""
    if not out.exists():
        os.replace(staging, out)
        return
    if (out / "selection.json").exists():
        (out / "selection.json").unlink()
        for name in _RUN_FILES:
            if (out / name).is_dir() and not (out / name).is_symlink():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
    names = sorted(p.name for p in staging.iterdir())
    for name in [n for n in names if n != "selection.json"] + ["selection.json"]:
        if (staging / name).exists():
            os.replace(staging / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)


def select_to_dir(
    store: Any,
    data: Any,
    out: str | os.PathLike,
    k: int | float | None,
    *,
    overwrite: bool = False,
    extra_config: dict | None = None,
    verify: bool = True,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    budget_tokens: int | None = None,
    group_field: str | None = None,
    quotas: Mapping[str, int | float] | None = None,
    options: SelectOptions | None = None,
    **settings: Any,
) -> Selection:
    """Select from ``store`` (a :class:`spice.FeatureStore`, or what :func:`spice.stores.open`
    returns) and write the run directory ``out``:
    the chosen records in pick order (``subset.<ext>`` in a data file's own format; for a Hugging
    Face dataset, a ``save_to_disk`` folder or an ``.arrow`` file: the flattened ``subset/``
    folder and ``subset.parquet``), ``indices.npy``, ``selection.json``, ``scores.csv``,
    ``dataset_info.json`` (LLaMA-Factory), ``axolotl_dataset.yaml``, ``trl_sft.py`` and
    ``timing.json``. ``split`` and ``columns`` say how to read ``data``
    (:func:`spice.features.load_records`); they must be those the store was made with.
    ``budget_tokens`` caps the summed token counts of the picks (each record's ``tokens`` in the
    store's index: its length after truncation, what training pays for; ``k`` may then be None).
    ``group_field`` and ``quotas`` cap the picks per group: each record's group is its field
    ``group_field`` (:func:`record_groups`), ``quotas`` maps group names to an int count or a
    float share in (0, 1] of k (groups not named: no cap). The selection's settings are
    ``options`` (a :class:`spice.SelectOptions`) or its fields as keywords (``settings``:
    ``alpha=``, ``conflict_penalty=``, ...), as :func:`spice.select` takes them.

    Everything except ``timing.json`` (and the ``subset/`` folder's ``state.json``) is identical
    when rerun with the same inputs and seed (``spill_dir``, passed on to :func:`spice.select`,
    changes where the run keeps its state, not its results). With ``verify`` (the default) every
    chunk of the store is checked against its sha256 first, so a damaged store is an error naming
    the chunk, never a different selection. Nothing is written unless the whole run succeeds: the
    files are made in a sibling staging folder and moved into ``out`` at the end. With
    ``overwrite``, a previous run's files in ``out`` (its subset, scores and report) are replaced;
    any other file there is kept.
    """
    from .hfdata import check_columns, resolve_source

    unknown = sorted(set(settings) - set(setting_names()))
    if unknown:
        raise TypeError(f"select_to_dir() got unexpected keyword(s) {', '.join(unknown)}")
    columns = check_columns(columns)
    out = check_out_dir(out, overwrite, "selection.json")
    fp = check_store_matches(store, data, split, columns)
    groups = None
    if group_field is not None or quotas is not None:
        groups = check_quotas(data, group_field, quotas, split=split, rows=len(store))
    if verify:
        store.verify()
    base = np.empty(len(store))  # per-record base gains, filled by the run (no second pass)
    costs: dict[str, Any] = {}
    if budget_tokens is not None:
        costs = dict(budget=budget_tokens, cost=store_tokens(store))
    if groups is not None:
        costs.update(groups=groups, quotas=dict(quotas or {}))
    sel = select(
        store,
        k,
        options=options,
        base_out=base,
        verify=False,  # done above, or --no-verify
        **settings,
        **costs,
    )
    source = resolve_source(data, split)
    if source is not None:
        subset_name = "subset.parquet"
    else:
        data = Path(data)
        ext = ".jsonl" if data.suffix.lower() in (".jsonl", ".ndjson") else data.suffix.lower()
        subset_name = f"subset{ext}"
    extra = dict(extra_config or {})
    if split is not None:
        extra["split"] = split
    if columns is not None:
        extra["columns"] = columns
    if budget_tokens is not None:
        extra["budget_tokens"] = int(budget_tokens)
    if groups is not None:
        extra["group_field"] = group_field
        extra["quotas"] = dict(quotas or {})
    with removed_if_failed(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            _write_selection(
                store, data, source, sel, base, fp, staging, out, subset_name, columns, extra
            )
            _publish(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return sel


def store_tokens(store: Any) -> np.ndarray:
    """Per-row token counts of a feature store (its index's ``tokens``: sequence length after
    truncation), as the costs of a token budget; a skipped record's 0 counts as 1 (its zero row
    is never picked, and costs must be positive).

    Raises:
        PipelineError: the store records no token counts (another tool's gradients).
    """
    index = getattr(store, "index", None)
    tokens = getattr(index, "tokens", None)
    if tokens is None:
        raise PipelineError(
            f"feature store {getattr(store, 'path', store)} records no token counts; "
            "--budget-tokens needs a store written by spice features"
        )
    tokens = np.asarray(tokens, dtype=np.float64)
    if tokens.shape != (len(store),):
        raise PipelineError(f"feature store has {len(store)} rows but {tokens.size} token counts")
    return np.maximum(tokens, 1.0)


def record_groups(data: Any, field: str, *, split: str | None = None) -> np.ndarray:
    """The group of every record of ``data``: its field ``field`` (a string, or an integer read
    as its text), in record order (row i of a feature store made from ``data`` is record i).
    Records are read raw, as :func:`spice.features.load_records` reads them (same files, same
    order, table nulls as absent fields); ``--columns`` does not apply (the field is named as
    the data has it).

    Raises:
        PipelineError: a record without the field, with a value that is not a string or an
            integer, or that is not an object (invalid JSON); the message names its file and
            line (or row).
    """
    from .features.records.readers import _Bad, _iter_json_array, _iter_jsonl, _iter_parquet
    from .hfdata import iter_source_rows, resolve_source, source_name

    items: Any
    source = resolve_source(data, split)
    if source is not None:
        items = iter_source_rows(source, source_name(data, split))
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            items = _iter_parquet(path)
        elif suffix == ".json":
            with open(path, "rb") as f:
                head = f.read(4096).lstrip()
            items = _iter_json_array(path) if head.startswith(b"[") else _iter_jsonl(path)
        elif suffix in (".jsonl", ".ndjson"):
            items = _iter_jsonl(path)
        else:
            raise PipelineError(f"{path}: cannot read a group field from a {suffix!r} file")
    else:
        items = ((obj, f"records[{i}]") for i, obj in enumerate(data))
    labels = []
    for obj, where in items:
        if isinstance(obj, _Bad) or not isinstance(obj, dict):
            why = obj.message if isinstance(obj, _Bad) else f"a {type(obj).__name__}"
            raise PipelineError(
                f"{where}: the record is not an object ({why}), so it has no group field {field!r}"
            )
        v = obj.get(field)
        if v is None:
            keys = ", ".join(sorted(obj)[:8])
            raise PipelineError(
                f"{where}: the record has no field {field!r} to read its group from (its "
                f"fields: {keys})"
            )
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise PipelineError(
                f"{where}: field {field!r} is a {type(v).__name__}; a group is a string or an "
                "integer"
            )
        labels.append(str(v))
    return np.array(labels, dtype=str)


def check_quotas(
    data: Any,
    group_field: str | None,
    quotas: Mapping[str, int | float] | None,
    *,
    split: str | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """The records' groups (:func:`record_groups`), after checking that ``group_field`` and
    ``quotas`` come together, that every group ``quotas`` names is one some record has, and
    (``rows``) that there is one group per row of the store.

    Raises:
        PipelineError: what is missing or unknown, with the groups the data has.
    """
    if group_field is None or quotas is None:
        raise PipelineError(
            "quotas and a group field go together: --quotas needs --group-field (the record "
            "field that names each record's group) and --group-field needs --quotas"
        )
    groups = record_groups(data, group_field, split=split)
    if rows is not None and groups.size != rows:
        raise PipelineError(
            f"the data has {groups.size} records but the feature store {rows} rows: row i "
            "must be record i"
        )
    have = set(groups.tolist())
    unknown = [g for g in quotas if g not in have]
    if unknown:
        names = sorted(have)
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise PipelineError(
            f"quotas name the group(s) {', '.join(map(repr, unknown))}, which no record has in "
            f"its field {group_field!r} (its groups: {shown})"
        )
    return groups


def _write_selection(
    store: Any,
    data: Any,
    source: Any,
    sel: Selection,
    base: np.ndarray,
    fp: dict,
    staging: Path,
    out: Path,
    subset_name: str,
    columns: dict | None,
    extra_config: dict,
) -> None:
    """The run directory's files, written into ``staging`` (the snippets name the files at their
    final place in ``out``)."""
    from .hfdata import dataset_description, write_dataset_subset

    if source is not None:
        write_dataset_subset(source, sel.indices, staging, "subset", subset_name)
    else:
        write_subset(data, sel.indices, staging / subset_name)
    write_indices(staging / "indices.npy", sel.indices)
    write_scores(staging / "scores.csv", store.ids, base, sel.indices, sel.gains, sel.conflict)
    available, first = subset_columns(staging / subset_name)
    fmt = record_format(first) if first is not None else "alpaca"
    write_json(
        staging / "dataset_info.json",
        dataset_info_entry("spice_subset", subset_name, fmt, first, columns, available),
    )
    layout = subset_layout(fmt, first, columns, available)
    final = out.resolve() / subset_name
    atomic_write(staging / "axolotl_dataset.yaml", axolotl_snippet(final, layout))
    trl = trl_snippet(final, getattr(store, "config", None), extra_config, columns)
    atomic_write(staging / "trl_sft.py", trl)
    body = sel.to_dict()
    timing = {
        "elapsed_s": body.pop("elapsed_s"),
        "picks_per_s": len(sel) / sel.elapsed_s if sel.elapsed_s > 0 else None,
    }
    body["config"] = {
        "features": str(Path(store.path).resolve()),
        "features_config": store.config,
        "data": dataset_description(data, None),
        "data_fingerprint": fp,
        "subset": subset_name,
        **extra_config,
    }
    body["versions"] = versions()
    write_json(staging / "timing.json", timing)
    write_json(staging / "selection.json", body)
