"""``spice online``: the paper's online schedule (pools and proxy updates) and its outputs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .offline import _check_data


def cmd_online(args: argparse.Namespace) -> int:
    from ..pipeline import check_out_dir, removed_if_failed, require_extras

    require_extras("spice online", "hf")
    out = check_out_dir(args.out, args.overwrite, "selection.json")
    with removed_if_failed(out):  # a run that fails before writing anything leaves no folder
        return _online(args, out)


def _online(args: argparse.Namespace, out: Path) -> int:
    from ..hfdata import resolve_source, write_dataset_subset
    from ..online import preset, run_online
    from ..outputs import write_json, write_subset
    from ..pipeline import load_model, versions

    over: dict[str, Any] = {}
    for name in (
        "pool_size",
        "picks_per_pool",
        "update_every",
        "lr",
        "early_stop",
        "alpha",
        "conflict_penalty",
        "dim",
        "batch_size",
        "max_length",
        "seed",
    ):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    if args.lora_r is not None:
        over["lora_r"] = args.lora_r
    cfg = preset(args.preset, **over)
    records = _check_data(args)  # before the model loads: a data error comes first
    source = resolve_source(args.data, args.split)
    model, tok, _ = load_model(args.model, args.gguf_file)
    t0 = time.perf_counter()
    res = run_online(
        model, tok, records, out / "online", cfg, resume=not args.restart, progress=not args.quiet
    )
    if source is not None:
        write_dataset_subset(source, res.indices, out)
    else:
        write_subset(args.data, res.indices, out / f"subset{Path(args.data).suffix.lower()}")
    write_json(out / "timing.json", {"elapsed_s": time.perf_counter() - t0})
    from dataclasses import asdict

    write_json(
        out / "selection.json",
        {
            "mode": "online",
            "indices": res.indices,
            "pools": res.pools,
            "optimizer_steps": res.steps,
            "config": asdict(cfg),
            "preset": args.preset,
            "data": str(Path(args.data).resolve()),
            "model": args.model,
            "versions": versions(),
        },
    )
    print(
        f"spice online: {len(res.indices)} picks from {len(res.pools)} pools, "
        f"{res.steps} optimizer steps; outputs in {out}"
    )
    return 0
