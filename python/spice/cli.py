"""The ``spice`` command line: features, select, run, online, report, demo.

Failures print one line (``spice: error: ...``) and exit with status 1; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _shard(s: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N, got {s!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard {s}: need 0 <= i < N")
    return i, n


def _budget(args: argparse.Namespace) -> int | float:
    if args.k is not None:
        return int(args.k)
    return float(args.fraction)


def _extract(args: argparse.Namespace, out: Path) -> Any:
    from .features import LoraSpec, extract
    from .pipeline import load_model

    model, tok, model_id = load_model(args.model, args.gguf_file)
    lora = LoraSpec(r=args.lora_r) if args.lora_r > 0 else None
    return extract(model, tok, args.data, out=out, dim=args.dim, projection=args.projection,
                   lora=lora, loss_on=args.loss_on, max_length=args.max_length,
                   batch_size=args.batch_size, shard=args.shard, seed=args.seed,
                   dtype=args.dtype, progress=not args.quiet)


def cmd_features(args: argparse.Namespace) -> int:
    store = _extract(args, Path(args.out))
    print(f"spice: wrote {store!r}")
    return 0


def _select_into(args: argparse.Namespace, store: Any, out: Path, extra: dict) -> int:
    from .pipeline import select_to_dir

    sel = select_to_dir(store, args.data, out, _budget(args), alpha=args.alpha,
                        conflict_penalty=args.penalty, early_stop=args.early_stop,
                        method=args.method, objective=args.objective, seed=args.seed,
                        overwrite=args.overwrite, extra_config=extra, spill_dir=args.spill_dir)
    print(sel.summary())
    print(f"spice: subset, selection.json, scores.csv and dataset_info.json are in {out}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .store import FeatureStore

    store = FeatureStore.open(args.features)
    return _select_into(args, store, Path(args.out), {})


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import prepare_out_dir

    out = prepare_out_dir(args.out, args.overwrite, "selection.json")
    store = _extract(args, out / "features")
    rc = _select_into(args, store, out, {"model": args.model, "gguf_file": args.gguf_file})
    if not args.no_report:
        from .report import make_report

        paths = make_report(out)
        print(f"spice: report at {paths['report']}")
    return rc


def cmd_online(args: argparse.Namespace) -> int:
    from .online import preset, run_online
    from .outputs import write_json, write_subset
    from .pipeline import load_model, prepare_out_dir, versions

    out = prepare_out_dir(args.out, args.overwrite, "selection.json")
    over: dict[str, Any] = {}
    for name in ("pool_size", "picks_per_pool", "update_every", "lr", "early_stop", "alpha",
                 "dim", "batch_size", "max_length", "seed"):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    if args.penalty is not None:
        over["conflict_penalty"] = args.penalty
    if args.lora_r is not None:
        over["lora_r"] = args.lora_r
    cfg = preset(args.preset, **over)
    model, tok, _ = load_model(args.model, args.gguf_file)
    t0 = time.perf_counter()
    res = run_online(model, tok, args.data, out / "online", cfg, resume=not args.restart,
                     progress=not args.quiet)
    ext = Path(args.data).suffix.lower()
    write_subset(args.data, res.indices, out / f"subset{ext}")
    write_json(out / "timing.json", {"elapsed_s": time.perf_counter() - t0})
    from dataclasses import asdict

    write_json(out / "selection.json", {"mode": "online", "indices": res.indices,
                                        "pools": res.pools, "optimizer_steps": res.steps,
                                        "config": asdict(cfg), "preset": args.preset,
                                        "data": str(Path(args.data).resolve()),
                                        "model": args.model, "versions": versions()})
    print(f"spice online: {len(res.indices)} picks from {len(res.pools)} pools, "
          f"{res.steps} optimizer steps; outputs in {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    sel = Path(args.run_dir) / "selection.json"
    if sel.is_file() and json.loads(sel.read_text()).get("mode") == "online":
        raise RuntimeError("spice report reads offline runs (spice run / select / demo)")
    paths = make_report(args.run_dir)
    for p in paths.values():
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, overwrite=True)
    return 0


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="local model directory, Hugging Face id (offline cache), or the "
                        "directory holding --gguf-file")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")


def _add_feature_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (0: the model's own linears)")
    p.add_argument("--dim", type=int, default=8192, help="feature dimension d")
    p.add_argument("--projection", default="factorized", choices=["factorized", "dense", "none"])
    p.add_argument("--loss-on", default="response", choices=["response", "all"])
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/N: this process's part")
    p.add_argument("--quiet", action="store_true")


def _add_select_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fraction", type=float, default=0.1, help="budget as a fraction (0, 1]")
    g.add_argument("--k", type=int, default=None, help="budget as a count")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--penalty", type=float, default=0.1, help="conflict penalty λ")
    p.add_argument("--early-stop", type=float, default=None, help="SPICE+ ω in (0, 1)")
    p.add_argument("--method", default="lazy", choices=["lazy", "naive", "stochastic"])
    p.add_argument("--objective", default="logdet",
                   choices=["logdet", "diag-compat", "topk-compat"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing result")
    p.add_argument("--spill-dir", default=None,
                   help="keep the run's w rows (k x d float64) in a temporary file in this "
                        "directory instead of RAM (same results)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spice", description="SPICE data selection for LLM tuning")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("features", help="per-sample gradient features of a proxy model")
    _add_model(f)
    f.add_argument("--data", required=True, help="JSONL, JSON or Parquet records")
    f.add_argument("--out", required=True, help="feature store directory")
    f.add_argument("--seed", type=int, default=0)
    _add_feature_opts(f)
    f.set_defaults(func=cmd_features)

    s = sub.add_parser("select", help="select from a feature store and write the subset")
    s.add_argument("--features", required=True, help="feature store directory")
    s.add_argument("--data", required=True, help="the data file the features were made from")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--seed", type=int, default=0)
    _add_select_opts(s)
    s.set_defaults(func=cmd_select)

    r = sub.add_parser("run", help="features then selection (the offline mode)")
    _add_model(r)
    r.add_argument("--data", required=True)
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-report", action="store_true")
    _add_feature_opts(r)
    _add_select_opts(r)
    r.set_defaults(func=cmd_run)

    o = sub.add_parser("online", help="the paper's online schedule (pools + proxy updates)")
    _add_model(o)
    o.add_argument("--data", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--preset", default="paper", choices=["paper", "authors", "authors-conflict"])
    for name, typ in (("pool-size", int), ("picks-per-pool", int), ("update-every", int),
                      ("lr", float), ("early-stop", float), ("alpha", float), ("penalty", float),
                      ("dim", int), ("batch-size", int), ("max-length", int), ("seed", int),
                      ("lora-r", int)):
        o.add_argument(f"--{name}", type=typ, default=None)
    o.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    o.add_argument("--overwrite", action="store_true")
    o.add_argument("--quiet", action="store_true")
    o.set_defaults(func=cmd_online)

    rep = sub.add_parser("report", help="plots and a summary of a finished run")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="the embedded default: synthetic data, tiny model, 10%%")
    d.add_argument("--out", default="spice-demo")
    d.add_argument("--quick", action="store_true", help="a smaller run (seconds)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("spice: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line unless --debug
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"spice: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
