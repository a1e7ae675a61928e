"""``spice demo``: the whole job on the embedded default, with nothing downloaded.

Generates a synthetic instruction data set (several task families, with wrong answers, duplicates
and filler), trains a byte-level tokenizer on it, builds a tiny Llama from a config, extracts
LoRA gradient features, selects 10% with SPICE, and writes the subset, selection.json, scores and
the report into the output directory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

__all__ = ["run_demo"]

# What a demo writes; a folder holding only these (and the marker) is a demo folder.
_MARKER = ".spice-demo"
_OWNED = {
    _MARKER,
    "data.jsonl",
    "features",
    "subset.jsonl",
    "selection.json",
    "scores.csv",
    "dataset_info.json",
    "timing.json",
    "report.md",
    "gains.png",
    "epsilon.png",
    "conflict.png",
    "pool.png",
    "norms.png",
    "indices.npy",
    "axolotl_dataset.yaml",
    "trl_sft.py",
}


def _clear_demo_folder(out: Path, overwrite: bool) -> None:
    """Empty ``out`` of a previous demo's files so the new run starts fresh. A folder that holds
    anything else is refused unless ``overwrite`` (then only the demo's own names are removed)."""
    from .pipeline import PipelineError

    if out.exists() and not out.is_dir():
        raise PipelineError(f"{out} exists and is not a directory")
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir()}
    foreign = sorted(names - _OWNED)
    if foreign and not overwrite:
        raise PipelineError(
            f"{out} holds files that a demo did not write ({', '.join(foreign[:5])}); choose "
            "another --out, or pass --overwrite to replace the demo's files there"
        )
    for name in sorted(names & _OWNED):
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def run_demo(
    out: str | os.PathLike = "spice-demo", quick: bool = False, overwrite: bool = False
) -> dict:
    """Run the demo into ``out``; returns a dict of what was written.

    The demo owns its folder: running it again (quick or not) replaces the previous demo there.
    A non-empty folder with other files is refused unless ``overwrite``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .pipeline import require_extras

    require_extras("spice demo", "hf", "report")  # before any work (the report comes last)
    from . import toy
    from .features import LoraSpec, extract
    from .pipeline import select_to_dir
    from .report import make_report

    t0 = time.perf_counter()
    out = Path(out)
    _clear_demo_folder(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("written by spice demo; spice demo replaces this folder\n")
    n = 200 if quick else 2000
    data = toy.make_instruction_data(n, seed=0)
    data_path = out / "data.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
    tok = toy.train_tokenizer(
        [r["instruction"] + " " + r["input"] + " " + r["output"] for r in data], vocab_size=400
    )
    model = toy.tiny_llama(len(tok), hidden=64, layers=2, seed=0)
    print(
        f"spice demo: {n} synthetic records, tiny Llama "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters)",
        flush=True,
    )
    store = extract(
        model,
        tok,
        data_path,
        out=out / "features",
        dim=512,
        projection="factorized",
        lora=LoraSpec(r=8),
        max_length=64,
        batch_size=32,
        dtype="float32",
        max_batch_tokens=None,  # a 0.13M model: 32 rows of 64 tokens are cheap
        resume=False,
        progress=not quick,
    )
    sel = select_to_dir(
        store,
        data_path,
        out,
        0.1,
        conflict_penalty=0.1,
        overwrite=True,
        extra_config={"model": "spice.toy.tiny_llama(hidden=64, layers=2)"},
    )
    paths = make_report(out)
    fams: dict[str, int] = {}
    for i in sel.indices:
        fams[data[int(i)]["family"]] = fams.get(data[int(i)]["family"], 0) + 1
    print(sel.summary())
    print(f"picks per family: {dict(sorted(fams.items()))}")
    print(f"spice demo: done in {time.perf_counter() - t0:.1f} s; outputs in {out}/:")
    for name in (
        "subset.jsonl",
        "selection.json",
        "scores.csv",
        "dataset_info.json",
        "report.md",
        "gains.png",
        "epsilon.png",
        "conflict.png",
        "pool.png",
        "norms.png",
    ):
        print(f"  {Path(out) / name}")
    return {"selection": sel, "out": Path(out), "report": paths}
