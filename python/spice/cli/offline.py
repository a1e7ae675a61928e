"""``spice features``, ``spice select`` and ``spice run`` (the offline mode): the flags turned
into an ExtractConfig and SelectOptions, the data checked before the model loads, then the
extraction and the selection."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _budget(args: argparse.Namespace) -> int | float | None:
    """The row budget: --k, --fraction, none with --budget-tokens alone (the tokens decide), else
    the default fraction 0.1."""
    if args.k is not None:
        return int(args.k)
    if args.fraction is not None:
        return float(args.fraction)
    return None if getattr(args, "budget_tokens", None) is not None else 0.1


def _extract(args: argparse.Namespace, out: Path) -> Any:
    from ..features import extract
    from ..pipeline import load_model

    config = _extract_config(args)  # checked before the model loads
    device = _device(args.device)
    model, tok, model_id = load_model(args.model, args.gguf_file)
    if device is not None:
        model.to(device)
    return extract(
        model,
        tok,
        args.data,
        out=out,
        config=config,
        shard=args.shard,
        progress=not args.quiet,
        checkpoint_seconds=args.checkpoint_seconds,
        invalid="skip" if args.skip_invalid else "error",
        split=args.split,
        columns=args.columns,
    )


def _extract_config(args: argparse.Namespace) -> Any:
    """The extraction's settings from the flags made from ExtractConfig's fields, --lora-r and
    the shared --seed."""
    from .._flags import flagged
    from ..features.config import ExtractConfig, LoraSpec

    lora = LoraSpec(r=args.lora_r) if args.lora_r > 0 else None
    flags = {name: getattr(args, name) for name in flagged(ExtractConfig)}
    return ExtractConfig(lora=lora, seed=args.seed, **flags)


def _device(name: str) -> Any:
    """None for the CPU; for "cuda", this rank's GPU: LOCAL_RANK (set by torchrun) modulo the
    GPUs visible, so ranks share GPUs when there are fewer GPUs than ranks."""
    if name == "cpu":
        return None
    import torch

    from ..pipeline import PipelineError

    if not torch.cuda.is_available():
        raise PipelineError("--device cuda: torch sees no CUDA device (a CPU build, or no driver)")
    index = int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _check_data(args: argparse.Namespace) -> list:
    """The records of --data, checked (see :func:`spice.pipeline.check_data`)."""
    from ..pipeline import check_data

    invalid = "skip" if getattr(args, "skip_invalid", False) else "error"
    return check_data(
        args.data, split=args.split, columns=args.columns, invalid=invalid, what="--data"
    )


def _check_k(args: argparse.Namespace, n: int, of: str) -> None:
    """Refuse a --k larger than the ``n`` rows there are to choose from (``of``: "<n> <of>" says
    what they are); --k 0 is refused when the options are parsed."""
    if args.k is not None and args.k > n:
        raise ValueError(f"--k {args.k} is out of range: need 1 <= k <= {n} ({n} {of})")


def _unused(args: argparse.Namespace) -> tuple[str, ...]:
    """Optional modules this extraction does without (peft brings the LoRA adapters)."""
    return ("peft",) if args.lora_r == 0 else ()


def cmd_features(args: argparse.Namespace) -> int:
    from ..pipeline import require_extras

    require_extras("spice features", "hf", unused=_unused(args))
    _check_data(args)  # before the model loads (tens of seconds): a data error comes first
    store = _extract(args, Path(args.out))
    print(f"spice: wrote {store!r}")
    return 0


def _select_options(args: argparse.Namespace) -> Any:
    """The selection's settings from the flags :func:`_add_settings` made (and the shared
    --seed), checked again as a SelectOptions (the flags' own checks came first)."""
    from ..options import SelectOptions

    return SelectOptions(seed=args.seed, **{f: getattr(args, f) for f in _flagged_settings()})


def _check_quota_flags(args: argparse.Namespace) -> None:
    """--quotas and --group-field go together; say so before any work."""
    if (args.quotas is None) != (args.group_field is None):
        from ..pipeline import PipelineError

        missing, given = (
            ("--group-field", "--quotas")
            if args.group_field is None
            else ("--quotas", "--group-field")
        )
        raise PipelineError(
            f"{given} needs {missing}: --group-field names the record field that holds each "
            "record's group, --quotas the most picks per group (e.g. --group-field source "
            "--quotas wiki=0.5,code=1000)"
        )


def _select_into(args: argparse.Namespace, store: Any, out: Path, extra: dict) -> int:
    from ..pipeline import select_to_dir

    _check_k(args, len(store), f"rows in feature store {store.path}")
    sel = select_to_dir(
        store,
        args.data,
        out,
        _budget(args),
        options=_select_options(args),
        overwrite=args.overwrite,
        extra_config=extra,
        verify=not args.no_verify,
        split=args.split,
        columns=args.columns,
        budget_tokens=args.budget_tokens,
        group_field=args.group_field,
        quotas=args.quotas,
    )
    print(sel.summary())
    print(
        f"spice: subset, indices.npy, selection.json, scores.csv, dataset_info.json "
        f"(LLaMA-Factory), axolotl_dataset.yaml and trl_sft.py are in {out}"
    )
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from ..formats import open as open_store

    _check_quota_flags(args)
    store = open_store(args.features)
    note = getattr(store, "note", "")  # another tool's gradients: what cannot be checked
    if note:
        print(f"spice: note: {note}", file=sys.stderr)
    return _select_into(args, store, Path(args.out), {})


def cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline import PipelineError, check_out_dir, removed_if_failed, require_extras

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:  # every rank would select and write
        raise PipelineError(
            "spice run is one process; under torchrun run `spice features` (every rank writes "
            "its rows into one store), then `spice select` once"
        )

    # the report comes last: a missing extra must stop the run before the work, not after it
    require_extras(
        "spice run", "hf", *(() if args.no_report else ("report",)), unused=_unused(args)
    )
    _check_quota_flags(args)
    out = check_out_dir(args.out, args.overwrite, "selection.json")
    records = _check_data(args)  # before the model loads: a data error comes first
    _check_k(args, len(records), f"records in {args.data}")
    if args.quotas is not None:  # a missing group field or unknown group, before the model too
        from ..pipeline import check_quotas

        check_quotas(args.data, args.group_field, args.quotas, split=args.split)
    with removed_if_failed(out):  # a failed first step leaves no empty folder behind
        store = _extract(args, out / "features")
    rc = _select_into(args, store, out, {"model": args.model, "gguf_file": args.gguf_file})
    if not args.no_report:
        from ..report import make_report

        paths = make_report(out)
        print(f"spice: report at {paths['report']}")
    return rc


def _flagged_settings() -> list[str]:
    """The SelectOptions fields that have a command-line flag."""
    from dataclasses import fields

    from ..options import SelectOptions

    return [f.name for f in fields(SelectOptions) if f.metadata["flag"]]
