"""The offline job: gradient features of a proxy model, then selection, then outputs.

Used by the ``spice`` command line; each step is also usable from Python.

Modules: ``checks`` (the data, the store and the output folder, checked before any work),
``limits`` (token costs and record groups for --budget-tokens and --quotas); the job itself
(:func:`select_to_dir`), the extras check, model loading and the versions recorded are here.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import PipelineError
from ..options import SelectOptions, setting_names
from ..outputs import (
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
from ..selection import Selection, select
from .checks import (
    check_data,
    check_out_dir,
    check_store_matches,
    prepare_out_dir,
    removed_if_failed,
    store_progress,
)
from .limits import check_quotas, record_groups, store_tokens

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
    from ..hfdata import check_columns, resolve_source

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
    from ..hfdata import dataset_description, write_dataset_subset

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
