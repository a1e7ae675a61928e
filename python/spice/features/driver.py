"""The extraction driver: records -> batched per-sample projected gradients -> a FeatureStore."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..store import FeatureStore, SharedStoreWriter, StoreMismatchError, StoreWriter, skip_reason
from ..store import config_mismatch_message as _mismatch

# _batches, target_uniforms, DEFAULT_TARGETS: names spice.features.driver has offered (tests, bench)
from .chunks import _batches, _run_chunks, _say, target_uniforms  # noqa: F401
from .config import DEFAULT_TARGETS, ExtractConfig, LoraSpec  # noqa: F401
from .model import describe_tokenizer, param_fingerprint, prepared_model
from .projection import LayerSpec, make_projector
from .ranks import _extract_shared, _join_ranks, _layout, _Ranks, _resolve_shard, json_norm
from .records import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_WITH_INPUT,
    Record,
    RecordError,
    data_fingerprint,
    load_records,
)

__all__ = [
    "extract",
    "ExtractConfig",
    "LoraSpec",
    "DEFAULT_TARGETS",
    "DEFAULT_BATCH_TOKENS",
    "prepared_model",
    "describe_tokenizer",
    "summarize",
]

log = logging.getLogger("spice.features")

# Padded tokens per batch: bounds activation, logit and hook memory (bench/RESULTS.md, features).
DEFAULT_BATCH_TOKENS = ExtractConfig.max_batch_tokens


def _library_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("spice-select")
    except (ImportError, PackageNotFoundError):
        import spice

        return str(getattr(spice, "__version__", "unknown"))


# ----------------------------------------------------------------------------------------------
# the driver


class _Unset:
    """The default of :func:`extract`'s setting keywords: ExtractConfig's own default (shown as
    that value). A marker rather than the value, so that a setting passed beside ``config=`` is
    noticed even when it equals the default."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return repr(getattr(ExtractConfig, self.name))


_UNSET: Any = {f.name: _Unset(f.name) for f in fields(ExtractConfig)}

DataArg = Union[str, "os.PathLike[str]", Sequence[dict], Sequence[Record], Any]


def extract(
    model: nn.Module,
    tokenizer: Any,
    data: DataArg,
    out: str | os.PathLike[str],
    *,
    config: ExtractConfig | None = None,
    dim: int = _UNSET["dim"],
    projection: str = _UNSET["projection"],
    lora: LoraSpec | None = _UNSET["lora"],
    target_modules: Sequence[str] | None = _UNSET["target_modules"],
    loss_on: str = _UNSET["loss_on"],
    max_length: int = _UNSET["max_length"],
    batch_size: int = _UNSET["batch_size"],
    max_batch_tokens: int | None = _UNSET["max_batch_tokens"],
    normalize: str = _UNSET["normalize"],
    targets: str = _UNSET["targets"],
    dtype: str = _UNSET["dtype"],
    shard: tuple[int, int] | str = "auto",
    seed: int = _UNSET["seed"],
    chunk_rows: int = _UNSET["chunk_rows"],
    shard_rows: int = _UNSET["chunk_rows"],
    resume: bool = True,
    progress: bool = True,
    dense_cache_bytes: int = 1 << 30,
    checkpoint_seconds: float = 60.0,
    invalid: str = "error",
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> FeatureStore:
    """Write per-sample projected loss-gradient features of ``data`` on ``model`` to a store.

    One batched forward and backward per batch; per-sample gradients are projected inside module
    hooks (docs/algorithm.md §9), so no per-sample full gradient of a large layer and no
    parameters×d matrix is ever formed.

    Args:
        model: a Hugging Face causal LM, or any ``nn.Module`` mapping input_ids (B, T) (and
            ``attention_mask``) to logits (B, T, V). Left unchanged on return.
        tokenizer: its tokenizer (a fast tokenizer is best: response tokens are found by offsets).
        data: path to JSONL/JSON/Parquet/Arrow, a ``datasets`` ``save_to_disk`` folder, a
            ``datasets.Dataset``, or a list of dicts/Records.
        out: store directory. Under ``torch.distributed`` (or torchrun) with N > 1 ranks, all of
            them write their rows into this one store (it must be the same directory for all:
            a shared file system across machines). With ``shard=(i, N)``, N > 1, and no process
            group, this process writes its part to ``out/parts/part-iiii-of-NNNN``
            (:func:`spice.merge_stores` joins the parts).
        config: the settings below (dim ... chunk_rows) as one :class:`ExtractConfig`; then
            none of them may be passed as a keyword. Without it, the keywords make one, and a
            setting left out takes ExtractConfig's default.
        dim: feature dimension d (factorized uses at most the gradient's size).
        projection: "factorized" (per-layer Kronecker), "dense" (seeded Rademacher blocks), "none".
        lora: adapters to add and differentiate (default r=8 on q,k,v,o,up,down,gate); ``None``:
            differentiate the model's own linear layers named by ``target_modules``.
        target_modules: with ``lora=None``, module-name suffixes of the nn.Linear layers to use.
        loss_on: "response" (mean CE over response tokens) or "all" (every token but the first).
        max_length: truncate sequences to this many tokens (the response is kept: see
            :func:`spice.features.tokenize_record`).
        batch_size: at most this many samples per forward/backward (sorted by length within a
            chunk).
        max_batch_tokens: at most this many padded tokens (samples × longest sequence) per batch:
            what bounds memory. The default (512) keeps SmolLM2-135M under 2.5 GB on a CPU (raise
            it on a GPU);
            ``None`` leaves only ``batch_size``.
        normalize: "none" or "unit" (each row scaled to unit L2 norm; zero rows stay zero).
        targets: "given" (the gradient of the loss of the data's own response tokens, as in
            the SPICE paper) or "sampled" (each response position's target token is drawn from
            the model's own next-token distribution there, seeded by ``seed`` and the row; the
            given response stays the context). Sampled targets give a sample of the model's
            Fisher score, whose distribution does not depend on whether the given answer is
            right, so selection cannot prefer a wrong label for its large gradient. The index's
            loss is the given response's loss either way.
        dtype: "float16" or "float32" storage.
        shard: "auto" (default): under an initialised ``torch.distributed`` group of N > 1 ranks,
            or under torchrun (``WORLD_SIZE`` > 1; a gloo group is started for the call), every
            rank computes the chunks c with ``c % N == rank`` straight into one pre-allocated
            store, byte-identical to one process's; otherwise one process does it all.
            ``(i, N)``: process i of N (the same as "auto" inside a group of N ranks; without
            one, a part store). ``(0, 1)``: this process alone, even inside a group.
        seed: projection seed (and, with sampled targets, their seed).
        chunk_rows: rows per chunk, the unit of the store's layout and of sharding (recorded as
            ``shard_rows`` in the store's manifest).
        shard_rows: the former name of ``chunk_rows`` (deprecated).
        resume: keep complete chunks and saved partial progress of a matching unfinished store
            (a finished one is returned).
        progress: tqdm bar (examples/s, tokens/s, peak memory, ETA), a time estimate and a
            summary of skipped and truncated records.
        dense_cache_bytes: memory allowed for cached dense projection blocks.
        checkpoint_seconds: save an unfinished chunk's progress at least this often, so that an
            interrupted run loses at most about this much work.
        invalid: "error" (a malformed record stops the run before any work, naming its line) or
            "skip" (it becomes a skipped zero row listed in ``skipped.jsonl``).
        split: the split of a ``DatasetDict`` (object or ``save_to_disk`` folder) to read.
        columns: where the record fields are in an unusual schema, e.g. ``{"prompt":
            "question", "response": "answer"}`` (:func:`spice.features.load_records`).

    Records with nothing to learn from (an empty conversation, no user turn before the assistant,
    an empty response) are not an error: they keep their row, get a zero feature row and the flag
    ``"skipped"`` plus the reason, and are listed in the store's ``skipped.jsonl`` and manifest.

    Returns:
        The finished store, on every rank (or this process's part for ``shard=(i, N)`` without a
        process group).

    Raises:
        StoreMismatchError: ``out`` holds a store made with another configuration, or ranks were
            given different extractions.
        StoreIncompleteError: another rank stopped (the run resumes when started again).
        RecordError: malformed data (the message names file and line), or no usable record.
        ValueError: an argument out of range, or more ranks than chunks of rows.
        TypeError: ``config=`` together with a setting keyword, or a setting of the wrong type.
    """
    given = {
        k: v
        for k, v in dict(
            dim=dim, projection=projection, lora=lora, target_modules=target_modules,
            loss_on=loss_on, max_length=max_length, batch_size=batch_size,
            max_batch_tokens=max_batch_tokens, normalize=normalize, targets=targets, dtype=dtype,
            seed=seed, chunk_rows=chunk_rows,
        ).items()
        if not isinstance(v, _Unset)
    }  # fmt: skip
    if not isinstance(shard_rows, _Unset):
        warnings.warn(
            "extract(shard_rows=...) is deprecated: pass chunk_rows=...",
            DeprecationWarning,
            stacklevel=2,
        )
        if "chunk_rows" in given:
            raise TypeError("extract() got chunk_rows and shard_rows (its former name): pass one")
        given["chunk_rows"] = shard_rows
    cfg = _settings(config, given)
    if not (isinstance(checkpoint_seconds, (int, float)) and checkpoint_seconds > 0):
        raise ValueError(f"checkpoint_seconds must be a number > 0, got {checkpoint_seconds!r}")
    if invalid not in ("error", "skip"):
        raise ValueError(f"invalid must be 'error' or 'skip', got {invalid!r}")
    ranks = _join_ranks(shard)
    try:
        return _extract(
            model, tokenizer, data, Path(out), ranks, shard, cfg,
            resume=resume, progress=progress, dense_cache_bytes=dense_cache_bytes,
            checkpoint_seconds=float(checkpoint_seconds), invalid=invalid, split=split,
            columns=columns,
        )  # fmt: skip
    finally:
        if ranks is not None:
            ranks.close()


def _settings(config: ExtractConfig | None, given: dict[str, Any]) -> ExtractConfig:
    """The extraction's settings: ``config``, or the keywords ``given`` (refused together)."""
    if config is None:
        return ExtractConfig(**given)
    if not isinstance(config, ExtractConfig):
        raise TypeError(f"config must be an ExtractConfig, got {type(config).__name__}")
    if given:
        names = ", ".join(sorted(given))
        raise TypeError(
            f"extract() got config= and also {names}: pass the settings in one place, e.g. "
            f"config=dataclasses.replace(config, {sorted(given)[0]}=...)"
        )
    return config


def _load(data: DataArg, invalid: str, split: str | None, columns: Mapping[str, str] | None
          ) -> tuple[list[Record], dict]:  # fmt: skip
    if isinstance(data, Sequence) and data and isinstance(data[0], Record):
        records = list(data)  # type: ignore[arg-type]
        fp = data_fingerprint(records, records)
    else:
        records = load_records(data, invalid=invalid, split=split, columns=columns)
        fp = data_fingerprint(data, records)
    if not records:
        raise RecordError(f"{_name(data)} holds no records")
    if all(r.skipped for r in records):
        raise RecordError(
            f"none of the {len(records)} records of {_name(data)} has anything to learn from: "
            f"{_reason_counts(r.skip for r in records)}"
        )
    seen: set[str] = set()
    dups = [r.id for r in records if r.id in seen or seen.add(r.id)]  # type: ignore[func-returns-value]
    if dups:
        log.warning("%d duplicate record ids (first: %s)", len(dups), dups[:5])
    return records, fp


def _extract(
    model: nn.Module,
    tokenizer: Any,
    data: DataArg,
    out_root: Path,
    ranks: _Ranks | None,
    shard: tuple[int, int] | str,
    cfg: ExtractConfig,
    *,
    resume: bool,
    progress: bool,
    dense_cache_bytes: int,
    checkpoint_seconds: float,
    invalid: str,
    split: str | None,
    columns: Mapping[str, str] | None,
) -> FeatureStore:
    part = (0, 1) if ranks is not None else _resolve_shard(shard)
    if ranks is None and part[1] == 1 and _layout(out_root) == SharedStoreWriter.LAYOUT:
        ranks = _Ranks(0, 1)  # one process finishes a store that several ranks started
    sync = ranks.step if ranks is not None else _Ranks.solo
    store_dir = out_root
    if part[1] > 1:
        store_dir = out_root / "parts" / f"part-{part[0]:04d}-of-{part[1]:04d}"
    records, fp = sync("read the data", lambda: _load(data, invalid, split, columns))[0]

    with prepared_model(model, cfg.lora, cfg.target_modules) as (run, modules, lora_desc):
        layers = [LayerSpec(n, m.in_features, m.out_features) for n, m in modules]
        kw = {"cache_bytes": dense_cache_bytes} if cfg.projection == "dense" else {}
        projector = make_projector(cfg.projection, layers, cfg.dim, cfg.seed, **kw)
        cfg_model = getattr(model, "config", None)
        config = {
            "model": {
                "class": type(model).__name__,
                "name_or_path": str(getattr(cfg_model, "_name_or_path", "") or ""),
                "params_sha256": param_fingerprint(run),
            },
            "tokenizer": describe_tokenizer(tokenizer),
            "gradients": lora_desc,
            "layers": [[ly.name, ly.d_out, ly.d_in] for ly in layers],
            "projection": projector.describe(),
            **cfg.manifest(),
            "templates": {"alpaca": ALPACA_PROMPT, "alpaca_input": ALPACA_PROMPT_WITH_INPUT},
            "data": {**fp, "records": len(records)},
        }
        p0 = next(iter(run.parameters()), None)
        device = p0.device if p0 is not None else torch.device("cpu")
        extra = {
            "library": {"name": "spice-select", "version": _library_version()},
            # how the data was read: not compared on resume (the fingerprint covers the content),
            # kept so that a later mismatch can name the --split/--columns that differ
            "data_read": {"split": split, "columns": dict(columns) if columns else None},
            "compute": {
                "device_type": device.type,
                "param_dtype": str(p0.dtype) if p0 is not None else None,
                "torch": torch.__version__.split("+")[0],
            },
        }
        run_kw = dict(device=device, checkpoint_seconds=checkpoint_seconds)
        if ranks is not None:
            store = _extract_shared(
                ranks, run, tokenizer, records, out_root, config, extra, projector, modules, cfg,
                resume=resume, progress=progress, **run_kw,
            )  # fmt: skip
            if ranks.rank == 0:
                _warn(progress, summarize(store))
            return store
        if part[1] > 1 and (out_root / "manifest.json").exists():
            merged = FeatureStore.open(out_root)
            msg = _mismatch(out_root, merged.manifest["config"], json_norm(config))
            if msg:
                raise StoreMismatchError(msg)
            return merged
        writer = StoreWriter(
            store_dir,
            config,
            total_rows=len(records),
            dim=projector.dim,
            dtype=cfg.dtype,
            shard_rows=cfg.chunk_rows,  # the manifest's name: stores made before still resume
            part=part,
            extra=extra,
            resume=resume,
        )
        if writer.prepare():
            _say(progress, f"{store_dir} is already complete")
            return FeatureStore.open(store_dir)
        done = writer.completed_chunks()
        todo = [c for c in writer.chunks if c not in done]
        if done:
            _say(progress, f"resuming {store_dir}: {len(done)} of {len(writer.chunks)} chunks done")
        _run_chunks(
            run, tokenizer, records, writer, todo, projector, modules, cfg, progress=progress,
            **run_kw,
        )  # fmt: skip
        store = writer.finalize()
    _warn(progress, summarize(store))
    return store


def _name(data: Any) -> str:
    return str(data) if isinstance(data, (str, os.PathLike)) else f"the {type(data).__name__}"


def _reason_counts(reasons: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for r in reasons:
        if r:
            counts[r] = counts.get(r, 0) + 1
    return ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def summarize(store: FeatureStore) -> str:
    """One paragraph on what happened to a store's records: featurised, skipped (by reason, with
    the file listing them) and truncated (how)."""
    idx = store.index
    n = len(idx)
    skipped = [skip_reason(f) for f in idx.flags]
    n_skip = sum(1 for r in skipped if r)
    msg = f"{n} records: {n - n_skip} featurised"
    if n_skip:
        msg += (
            f", {n_skip} skipped with a zero row ({_reason_counts(skipped)}; listed in "
            f"{store.path / 'skipped.jsonl'})"
        )
    trunc = [f for f in idx.flags if "truncated" in f and "skipped" not in f]
    if trunc:
        how = {
            k: sum(1 for f in trunc if k in f)
            for k in ("turns_dropped", "prompt_truncated", "response_truncated")
        }
        msg += (
            f"; {len(trunc)} truncated to max_length={store.config.get('max_length')} ("
            + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in how.items() if v)
            + ")"
        )
    fixed = sum(1 for f in idx.flags if "dropped_leading_turns" in f and "skipped" not in f)
    if fixed:
        msg += f"; {fixed} lost assistant turns that came before any user turn"
    return msg


def _warn(progress: bool, msg: str) -> None:
    """Shown once: printed when progress is on, else logged."""
    if progress:
        print(f"spice.features: {msg}", file=sys.stderr, flush=True)
    else:
        log.info(msg)
