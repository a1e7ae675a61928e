"""The extraction driver: records -> batched per-sample projected gradients -> a FeatureStore."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from ..store import (
    FeatureStore,
    SharedStoreWriter,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreWriter,
    skip_reason,
)
from ..store import config_mismatch_message as _mismatch
from .hooks import GradientCollector, batch_features
from .projection import LayerSpec, derive_seed, make_projector
from .records import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_WITH_INPUT,
    Record,
    RecordError,
    TokenizedRecord,
    data_fingerprint,
    load_records,
    tokenize_record,
)

__all__ = [
    "extract",
    "LoraSpec",
    "DEFAULT_TARGETS",
    "DEFAULT_BATCH_TOKENS",
    "prepared_model",
    "describe_tokenizer",
    "summarize",
]

log = logging.getLogger("spice.features")

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")
# Padded tokens per batch: bounds activation, logit and hook memory (bench/RESULTS.md, features).
DEFAULT_BATCH_TOKENS = 512


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters to add (with peft) and take gradients with respect to; the base stays frozen.

    Attributes:
        r: adapter rank.
        alpha: LoRA alpha (scaling alpha / r).
        target_modules: module name suffixes to adapt (peft's ``target_modules``).
        init: "default" (peft's: A random, B = 0; a fresh adapter, so A's gradient is exactly zero
            and only B's gradient is featurised) or "random" (B random too; both featurised).
        seed: seed of the adapter initialisation (deterministic across processes and machines).
    """

    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    init: str = "default"
    seed: int = 0

    def describe(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


# ----------------------------------------------------------------------------------------------
# model preparation


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and any(
        hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) for m in model.modules()
    )


def _lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict):
            active = getattr(m, "active_adapters", None) or list(m.lora_A.keys())
            for ad in active:
                if ad in m.lora_A and isinstance(m.lora_A[ad], nn.Linear):
                    out.append((f"{name}.lora_A.{ad}", m.lora_A[ad]))
                    out.append((f"{name}.lora_B.{ad}", m.lora_B[ad]))
    return out


def _match_linear(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Module]]:
    targets = list(targets)
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            out.append((name, m))
    return out


def _uniform_(w: torch.Tensor, bound: float, seed: int) -> None:
    g = torch.Generator(device="cpu").manual_seed(seed % (2**63))
    vals = (torch.rand(w.shape, generator=g, dtype=torch.float32) * 2 - 1) * bound
    with torch.no_grad():
        w.copy_(vals.to(dtype=w.dtype, device=w.device))


def param_fingerprint(model: nn.Module, samples: int = 4096) -> str:
    """sha256 over every parameter's name, shape, dtype and up to ``samples`` evenly spaced values
    (a cheap identity of the weights: different checkpoints differ here)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}\n".encode())
        flat = p.detach().reshape(-1)
        n = flat.numel()
        if n > samples:  # evenly spaced, in exact integer arithmetic
            idx = torch.arange(samples, dtype=torch.int64) * (n - 1) // (samples - 1)
            flat = flat[idx.to(flat.device)]
        h.update(flat.to(torch.float32).cpu().numpy().astype("<f4").tobytes())
    return h.hexdigest()


@contextmanager
def prepared_model(
    model: nn.Module,
    lora: LoraSpec | None,
    target_modules: Sequence[str] | None = None,
) -> Iterator[tuple[nn.Module, list[tuple[str, nn.Module]], dict]]:
    """Yield (model to run, featurised (name, nn.Linear) modules, description) and undo everything
    afterwards: added LoRA adapters are removed, ``requires_grad`` and train/eval mode restored.

    A model that already carries peft LoRA adapters is used as is (its active adapters).
    """
    training = model.training
    params = list(model.parameters())
    saved_rg = [p.requires_grad for p in params]
    peft_model = None
    run: nn.Module = model
    handles: list[Any] = []
    grad_weights: list[nn.Parameter] = []
    try:
        if _is_peft(model):
            modules = _lora_modules(model)
            desc: dict = {"kind": "existing_lora"}
            cfg = getattr(model, "peft_config", {})
            desc["peft_config"] = {
                k: {kk: str(vv) for kk, vv in sorted(v.to_dict().items())} for k, v in cfg.items()
            }
        elif lora is not None:
            if lora.init not in ("default", "random"):
                raise ValueError(f"LoraSpec.init must be 'default' or 'random', got {lora.init!r}")
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as e:  # pragma: no cover
                raise ImportError("LoRA features need peft (pip install 'spice-select[hf]')") from e
            if not _match_linear(model, lora.target_modules):
                raise ValueError(
                    f"none of the LoRA target modules {list(lora.target_modules)} is an nn.Linear "
                    "in this model; pass LoraSpec(target_modules=...) or lora=None with "
                    "target_modules=..."
                )
            cfg = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=0.0,
                target_modules=list(lora.target_modules),
                bias="none",
            )
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # peft calls a deprecated transformers helper; not the user's concern
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                torch.manual_seed(lora.seed)
                peft_model = get_peft_model(model, cfg)
            run = peft_model
            modules = _lora_modules(peft_model)
            for name, m in modules:
                kind = "A" if ".lora_A." in name else "B"
                if kind == "A" or lora.init == "random":
                    fan_in = m.weight.shape[1]
                    bound = 1.0 / math.sqrt(fan_in)
                    _uniform_(m.weight, bound, derive_seed(lora.seed, "lora", name))
                else:
                    with torch.no_grad():
                        m.weight.zero_()
            desc = {"kind": "lora", **lora.describe()}
        else:
            targets = DEFAULT_TARGETS if target_modules is None else tuple(target_modules)
            modules = _match_linear(model, targets)
            if not modules:
                raise ValueError(
                    f"no nn.Linear module matches target_modules={list(targets)}; name them "
                    "(suffixes of module names such as 'q_proj')"
                )
            desc = {"kind": "modules", "target_modules": list(targets)}
        if not modules:
            raise ValueError("found no layers to take gradients of")
        if desc["kind"] != "modules":
            b_zero = all(
                float(m.weight.detach().abs().max()) == 0.0 for n, m in modules if ".lora_B." in n
            )
            if b_zero:  # fresh adapter: dL/dA = B^T (...) = 0 exactly, so drop A's zero columns
                modules = [(n, m) for n, m in modules if ".lora_B." in n]
                desc["featurised"] = "lora_B only (B = 0, so the gradient of A is zero)"
            else:
                desc["featurised"] = "lora_A and lora_B"
        for p in run.parameters():
            p.requires_grad_(False)
        run.eval()
        emb = None
        get_emb = getattr(run, "get_input_embeddings", None)
        if callable(get_emb):
            try:
                emb = get_emb()
            except (NotImplementedError, AttributeError):
                emb = None
        if isinstance(emb, nn.Module):

            def _req(mod: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
                return out.requires_grad_(True) if torch.is_grad_enabled() else out

            handles.append(emb.register_forward_hook(_req))
        else:  # no embedding to start the backward from: let the featurised weights require grad
            grad_weights = [m.weight for _, m in modules]
            for w in grad_weights:
                w.requires_grad_(True)
        desc["layers"] = len(modules)
        yield run, modules, desc
    finally:
        for h in handles:
            h.remove()
        for w in grad_weights:
            w.grad = None
        if peft_model is not None:
            peft_model.unload()
        for p, rg in zip(params, saved_rg):
            p.requires_grad_(rg)
        model.train(training)


def describe_tokenizer(tokenizer: Any) -> dict:
    """Identity of a tokenizer: class, vocabulary size, sha256 of its definition and template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:
        vocab = tokenizer.get_vocab()
        for k in sorted(vocab):
            h.update(f"{k}\t{vocab[k]}\n".encode())
    tmpl = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(tmpl, dict):
        tmpl = repr(sorted(tmpl.items()))
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
        "vocab_size": len(tokenizer),
        "sha256": h.hexdigest(),
        "chat_template_sha256": hashlib.sha256(tmpl.encode("utf-8")).hexdigest() if tmpl else None,
        "bos_token": getattr(tokenizer, "bos_token", None),
        "eos_token": getattr(tokenizer, "eos_token", None),
    }


def _library_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("spice-select")
    except (ImportError, PackageNotFoundError):
        import spice

        return str(getattr(spice, "__version__", "unknown"))


def _resolve_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    if shard == "auto":
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    i, n = shard  # type: ignore[misc]
    return int(i), int(n)


def _fmt_time(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"
    return f"{s // 60}m{s % 60:02d}s"


def _say(progress: bool, msg: str) -> None:
    log.info(msg)
    if progress:
        print(f"spice.features: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# the driver

DataArg = Union[str, "os.PathLike[str]", Sequence[dict], Sequence[Record], Any]


def extract(
    model: nn.Module,
    tokenizer: Any,
    data: DataArg,
    out: str | os.PathLike[str],
    *,
    dim: int = 8192,
    projection: str = "factorized",
    lora: LoraSpec | None = LoraSpec(),  # noqa: B008 (frozen dataclass)
    target_modules: Sequence[str] | None = None,
    loss_on: str = "response",
    max_length: int = 512,
    batch_size: int = 64,
    max_batch_tokens: int | None = DEFAULT_BATCH_TOKENS,
    normalize: str = "none",
    targets: str = "given",
    dtype: str = "float16",
    shard: tuple[int, int] | str = "auto",
    seed: int = 0,
    shard_rows: int = 4096,
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
        seed: projection seed.
        shard_rows: rows per chunk, the unit of the store's layout and of sharding.
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
    """
    if normalize not in ("none", "unit"):
        raise ValueError(f"normalize must be 'none' or 'unit', got {normalize!r}")
    if targets not in ("given", "sampled"):
        raise ValueError(f"targets must be 'given' or 'sampled', got {targets!r}")
    _check_int("dim", dim, 1)
    _check_int("max_length", max_length, 2)
    _check_int("batch_size", batch_size, 1)
    _check_int("shard_rows", shard_rows, 1)
    if max_batch_tokens is not None:
        _check_int("max_batch_tokens", max_batch_tokens, 1)
    if not (isinstance(checkpoint_seconds, (int, float)) and checkpoint_seconds > 0):
        raise ValueError(f"checkpoint_seconds must be a number > 0, got {checkpoint_seconds!r}")
    if invalid not in ("error", "skip"):
        raise ValueError(f"invalid must be 'error' or 'skip', got {invalid!r}")
    ranks = _join_ranks(shard)
    try:
        return _extract(
            model, tokenizer, data, Path(out), ranks, shard,
            dim=dim, projection=projection, lora=lora, target_modules=target_modules,
            loss_on=loss_on, max_length=max_length, batch_size=batch_size,
            max_batch_tokens=max_batch_tokens, normalize=normalize, targets=targets,
            dtype=dtype, seed=seed,
            shard_rows=shard_rows, resume=resume, progress=progress,
            dense_cache_bytes=dense_cache_bytes, checkpoint_seconds=float(checkpoint_seconds),
            invalid=invalid, split=split, columns=columns,
        )  # fmt: skip
    finally:
        if ranks is not None:
            ranks.close()


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
    *,
    dim: int,
    projection: str,
    lora: LoraSpec | None,
    target_modules: Sequence[str] | None,
    loss_on: str,
    max_length: int,
    batch_size: int,
    max_batch_tokens: int | None,
    normalize: str,
    targets: str,
    dtype: str,
    seed: int,
    shard_rows: int,
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

    with prepared_model(model, lora, target_modules) as (run, modules, lora_desc):
        layers = [LayerSpec(n, m.in_features, m.out_features) for n, m in modules]
        kw = {"cache_bytes": dense_cache_bytes} if projection == "dense" else {}
        projector = make_projector(projection, layers, dim, seed, **kw)
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
            "loss_on": loss_on,
            "max_length": int(max_length),
            "normalize": normalize,
            # only when sampled, so that stores made before this option still resume
            **({"targets": {"kind": targets, "seed": int(seed)}} if targets != "given" else {}),
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
        run_kw = dict(
            loss_on=loss_on, max_length=max_length, batch_size=batch_size,
            max_batch_tokens=max_batch_tokens, normalize=normalize, dtype=dtype,
            device=device, checkpoint_seconds=checkpoint_seconds,
            sample_seed=int(seed) if targets == "sampled" else None,
        )  # fmt: skip
        if ranks is not None:
            store = _extract_shared(
                ranks, run, tokenizer, records, out_root, config, extra, projector, modules,
                shard_rows=shard_rows, resume=resume, progress=progress, **run_kw,
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
            dtype=dtype,
            shard_rows=shard_rows,
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
            run, tokenizer, records, writer, todo, projector, modules, progress=progress, **run_kw
        )
        store = writer.finalize()
    _warn(progress, summarize(store))
    return store


def _extract_shared(
    ranks: _Ranks,
    run: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    out_root: Path,
    config: dict,
    extra: dict,
    projector: Any,
    modules: Sequence[tuple[str, nn.Module]],
    *,
    shard_rows: int,
    resume: bool,
    progress: bool,
    **run_kw: Any,
) -> FeatureStore:
    """Every rank writes its chunks (c % world == rank) into one store that rank 0 prepared and
    finishes: the same batches, and so the same bytes, as one process."""
    rank, world = ranks.rank, ranks.world
    n = len(records)
    writer = SharedStoreWriter(
        out_root, config, total_rows=n, dim=projector.dim, dtype=run_kw["dtype"],
        shard_rows=shard_rows, rank=rank, world=world, extra=extra, resume=resume,
    )  # fmt: skip
    n_chunks = len(writer.all_chunks)

    def check_world() -> None:
        if world > n:
            raise ValueError(
                f"{world} ranks for {n} record(s): every rank needs at least one chunk of rows; "
                f"run with at most {n_chunks} ranks"
            )
        if world > n_chunks:
            raise ValueError(
                f"{world} ranks but {n} records make only {n_chunks} chunk(s) of shard_rows="
                f"{shard_rows} rows (--chunk-rows), a rank's unit of work: run with at most "
                f"{n_chunks} ranks, or shard_rows <= {-(-n // world)}"
            )

    ranks.step("share the records", check_world)
    # every rank must compute the same rows the same way, or the store would mix two extractions
    mine = {
        "config": config,
        "dim": projector.dim,
        "dtype": run_kw["dtype"],
        "shard_rows": shard_rows,
        "batching": [run_kw["batch_size"], run_kw["max_batch_tokens"]],
    }
    for r, theirs in enumerate(ranks.gather(json_norm(mine))):
        msg = _mismatch(out_root, theirs, json_norm(mine))
        if msg:
            lines = msg.splitlines()[1:-1]
            raise StoreMismatchError(
                f"rank {r} and rank {rank} of {world} were given different extractions "
                "(other data, model, tokenizer or options); every rank must run the same command. "
                f"Differences (rank {r} -> rank {rank}):\n" + "\n".join(lines)
            )
    complete = ranks.step(f"prepare {out_root}", lambda: rank == 0 and writer.prepare())[0]
    if complete:
        if rank == 0:
            _say(progress, f"{out_root} is already complete")
        return FeatureStore.open(out_root)

    def work() -> None:
        writer.attach()
        done = writer.completed_chunks()
        todo = [c for c in writer.chunks if c not in done]
        if done:
            _say(
                progress and rank == 0,
                f"resuming {out_root}: rank 0 has {len(done)} of its {len(writer.chunks)} chunks",
            )
        _run_chunks(
            run, tokenizer, records, writer, todo, projector, modules,
            progress=progress and rank == 0, who=f"rank 0 of {world}: ", **run_kw,
        )  # fmt: skip
        writer.close()

    def finish() -> None:
        if rank == 0:
            writer.finalize()

    try:
        ranks.step("extract", work)
        ranks.step("write the manifest", finish)
    finally:
        writer.close()
    if rank == 0:
        _say(progress, f"{world} ranks wrote {out_root}")
    return FeatureStore.open(out_root)


def _layout(path: Path) -> str | None:
    """The ``layout`` of the unfinished store at ``path`` (None: none there, or finished)."""
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m.get("layout") if isinstance(m, dict) and m.get("status") != "complete" else None


# Ranks wait for each other only at the start and the end; the end may come hours apart (a resumed
# rank with most of its rows left), so the coordination group's timeout is long. A rank that dies
# closes its connections and the others stop at once.
_SYNC_TIMEOUT = timedelta(days=7)
# a failure on one rank is raised on the others as the same class when it is one of these
_SHARED_ERRORS = (
    StoreError, StoreMismatchError, StoreIncompleteError, RecordError, ValueError, TypeError,
)  # fmt: skip


class _Ranks:
    """This process's place among the ranks of a shared extraction, and the steps they take
    together: each step's failure on any rank is raised on every rank, so none waits forever."""

    def __init__(self, rank: int, world: int, group: Any = None, owns_default: bool = False):
        self.rank, self.world = rank, world
        self.group = group
        self.owns_default = owns_default

    @staticmethod
    def solo(what: str, fn: Any) -> list[Any]:
        return [fn()]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        try:
            torch.distributed.all_gather_object(out, obj, group=self.group)
        except RuntimeError as e:
            raise StoreIncompleteError(
                f"rank {self.rank} of {self.world}: another rank stopped ({str(e).strip()}). "
                "Run the same command again to resume: finished chunks and saved rows are kept"
            ) from e
        return out

    def step(self, what: str, fn: Any) -> list[Any]:
        """Run ``fn`` here, then wait for every rank; the results of all ranks, or the first
        failure (this rank's own exception where it failed here)."""
        try:
            res, err = fn(), None
        except Exception as e:  # noqa: BLE001 (re-raised below, on every rank)
            res, err = None, e
        got = self.gather((None, res) if err is None else (f"{type(err).__name__}: {err}", None))
        if err is not None:
            raise err
        for r, (msg, _) in enumerate(got):
            if msg is not None:
                name = msg.split(":", 1)[0]
                cls = {c.__name__: c for c in _SHARED_ERRORS}.get(name, StoreError)
                raise cls(f"rank {r} of {self.world} failed to {what}: {msg}")
        return [res for _, res in got]

    def close(self) -> None:
        dist = torch.distributed
        if self.world == 1 or not dist.is_initialized():
            return
        if self.owns_default:
            dist.destroy_process_group()
        elif self.group is not None:
            dist.destroy_process_group(self.group)


def _join_ranks(shard: tuple[int, int] | str) -> _Ranks | None:
    """The ranks to share one store with, or None for a process on its own (or one part of
    ``shard=(i, N)`` without a process group). Under torchrun without a process group, "auto"
    starts one (gloo) and ends it on return."""
    dist = torch.distributed
    if not dist.is_available():
        return None
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if shard != "auto":
            i, n = _resolve_shard(shard)
            if n != world:
                return None  # a part of another split than the group's: written on its own
            if i != rank:
                raise ValueError(f"shard={shard!r} in rank {rank} of {world}: pass shard='auto'")
        if world == 1:
            return None
        # a gloo group of our own: works whatever the default backend is, with a long timeout
        return _Ranks(rank, world, dist.new_group(backend="gloo", timeout=_SYNC_TIMEOUT))
    if shard != "auto" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    dist.init_process_group("gloo", timeout=_SYNC_TIMEOUT)  # torchrun's env:// settings
    return _Ranks(dist.get_rank(), dist.get_world_size(), owns_default=True)


def _check_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


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


def json_norm(obj: Any) -> Any:
    """Round-trip through JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(obj))


def _batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None
) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        too_many = len(cur) >= batch_size or (
            max_batch_tokens is not None and cur and (len(cur) + 1) * longest > max_batch_tokens
        )
        if too_many:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def _peak_memory(device: torch.device) -> str:
    """Peak resident memory of this process (and of the GPU when the model is on one)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    out = f"peak {peak / 2**30:.2f} GB"
    if device.type == "cuda":
        out += f", GPU {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB"
    return out


def _index_row(row: int, record: Record, t: TokenizedRecord, loss: float | None) -> dict:
    entry = {
        "row": row,
        "id": record.id,
        "tokens": len(t.input_ids),
        "loss_tokens": t.n_loss_tokens,
        "loss": loss,
        "flags": t.flags,
    }
    if t.skipped:
        entry["detail"] = t.detail or record.detail
    return entry


def target_uniforms(seed: int, row: int, n: int) -> np.ndarray:
    """The (n,) float64 uniforms in [0, 1) that draw row ``row``'s sampled targets.

    A function of (seed, row) alone, so a record's draw does not depend on its batch, chunk, rank
    or on a resume.
    """
    return np.random.default_rng([int(seed), int(row), 0x7A56E7]).random(n)


def _run_chunks(
    run: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    writer: StoreWriter,
    todo: Sequence[int],
    projector: Any,
    modules: Sequence[tuple[str, nn.Module]],
    *,
    loss_on: str,
    max_length: int,
    batch_size: int,
    max_batch_tokens: int | None,
    normalize: str,
    dtype: str,
    device: torch.device,
    progress: bool,
    checkpoint_seconds: float,
    sample_seed: int | None = None,
    who: str = "",
) -> None:
    toks: dict[int, TokenizedRecord] = {}
    for c in todo:
        a, b = writer.chunk_rows(c)
        for r in range(a, b):
            toks[r] = tokenize_record(records[r], tokenizer, max_length=max_length, loss_on=loss_on)
    partial = {c: writer.load_partial(c) for c in todo}
    saved = {writer.chunk_rows(c)[0] + i for c, p in partial.items() if p for i in p[0]}
    work = [r for r, t in toks.items() if not t.skipped and r not in saved]
    n_rec = len(work)
    n_tok = sum(len(toks[r].input_ids) for r in work)
    n_loss = sum(toks[r].n_loss_tokens for r in work)
    resumed = f" ({len(saved)} rows of unfinished chunks were saved before)" if saved else ""
    _say(
        progress,
        f"{who}{n_rec} records to featurise in {len(todo)} chunk(s){resumed}: {n_tok} tokens "
        f"({n_loss} in the loss), d={projector.dim} {projector.kind}, {len(modules)} layers, on "
        f"{device.type}",
    )
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None) or 0
    bar = None
    if progress and n_rec:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_rec, unit="ex", desc="spice features", dynamic_ncols=True)
    t0 = time.perf_counter()
    last_save = t0
    tok_done = 0
    first = True
    collector = GradientCollector(modules, projector)
    warned_fp16 = False
    with collector.attached():
        for c in todo:
            a, b = writer.chunk_rows(c)
            feats = np.zeros((b - a, projector.dim), dtype=np.float32)
            entries: dict[int, dict] = {}
            if partial[c] is not None:
                done_list, rows_done, index_done = partial[c]
                feats[done_list] = rows_done
                entries.update(zip(done_list, index_done))
            for i in range(b - a):
                t = toks[a + i]
                if t.skipped:  # a zero row: nothing to run
                    entries[i] = _index_row(a + i, records[a + i], t, None)
            live = [i for i in range(b - a) if not toks[a + i].skipped]
            lengths = [len(toks[a + i].input_ids) for i in live]
            # the plan covers the whole chunk so that a resumed chunk runs the same batches
            for plan in _batches(lengths, batch_size, max_batch_tokens):
                batch = [live[j] for j in plan if live[j] not in entries]
                if not batch:
                    continue
                T = max(len(toks[a + i].input_ids) for i in batch)
                ids = torch.full((len(batch), T), int(pad_id), dtype=torch.long)
                am = torch.zeros((len(batch), T), dtype=torch.long)
                lm = torch.zeros((len(batch), T), dtype=torch.bool)
                uni = None
                if sample_seed is not None:
                    uni = torch.zeros((len(batch), T), dtype=torch.float64)
                for k, i in enumerate(batch):
                    t = toks[a + i]
                    n = len(t.input_ids)
                    ids[k, :n] = torch.from_numpy(t.input_ids)
                    am[k, :n] = 1
                    lm[k, :n] = torch.from_numpy(t.loss_mask)
                    if uni is not None:
                        uni[k, :n] = torch.from_numpy(target_uniforms(sample_seed, a + i, n))
                f, loss, counts = batch_features(
                    run, collector, ids.to(device), am.to(device), lm.to(device), uniforms=uni
                )
                f = f.cpu().numpy()
                loss = loss.cpu().numpy()
                for k, i in enumerate(batch):
                    feats[i] = f[k]
                    ok = int(counts[k]) > 0 and math.isfinite(float(loss[k]))
                    entries[i] = _index_row(
                        a + i, records[a + i], toks[a + i], float(loss[k]) if ok else None
                    )
                ntok = int(am.sum())
                tok_done += ntok
                now = time.perf_counter()
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix_str(
                        f"{tok_done / max(now - t0, 1e-9):.0f} tok/s, {_peak_memory(device)}",
                        refresh=False,
                    )
                if first and progress and n_tok > ntok:
                    est = (now - t0) * n_tok / max(ntok, 1)
                    msg = f"first batch took {now - t0:.2f}s; estimated total {_fmt_time(est)}"
                    log.info(msg)
                    if bar is not None:
                        bar.write(f"spice.features: {msg}", file=sys.stderr)
                first = False
                if now - last_save >= checkpoint_seconds and len(entries) < b - a:
                    done = sorted(i for i in entries if not toks[a + i].skipped)
                    writer.save_partial(c, done, feats[done], [entries[i] for i in done])
                    last_save = time.perf_counter()
            if normalize == "unit":
                norms = np.linalg.norm(feats, axis=1, keepdims=True)
                np.divide(feats, norms, out=feats, where=norms > 0)
            if dtype == "float16":
                big = float(np.abs(feats).max()) if feats.size else 0.0
                if not math.isfinite(big) or big > 65504.0:
                    raise StoreError(
                        f"chunk {c}: feature values up to {big:g} do not fit float16; use "
                        "dtype='float32' or normalize='unit'"
                    )
                nz = feats != 0
                lost = int((nz & (feats.astype(np.float16) == 0)).sum())
                if lost > 1e-3 * max(1, int(nz.sum())) and not warned_fp16:
                    warned_fp16 = True
                    log.warning(
                        "chunk %d: %d of %d nonzero feature values underflow to 0 in float16; "
                        "consider dtype='float32' or normalize='unit'",
                        c, lost, int(nz.sum()),
                    )  # fmt: skip
            elif not np.isfinite(feats).all():
                raise StoreError(f"chunk {c}: non-finite feature values (NaN/inf gradients)")
            writer.write_chunk(c, feats, [entries[i] for i in range(b - a)])
            last_save = time.perf_counter()
    if bar is not None:
        bar.close()
