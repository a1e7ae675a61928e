"""The ``spice`` command line: features, select, run, online, report, demo.

Failures print ``spice: error: ...`` (the whole message, however many lines) and exit with status
1; ``--debug`` shows the traceback instead. Bad option values are refused before any work, with
status 2. A missing optional dependency names the extra that brings it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# optional dependencies -> the extra of spice-select that installs them
_EXTRAS = {
    "torch": "hf",
    "transformers": "hf",
    "peft": "hf",
    "tqdm": "hf",
    "safetensors": "hf",
    "tokenizers": "hf",
    "matplotlib": "report",
    "pyarrow": "parquet",
    "datasets": "hf-datasets",
}
_INSTALL = "pip install 'spice-select["


def _number(
    kind: type,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    """An argparse type: a finite int/float within [lo, hi] (open ends where asked)."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite")
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        )
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            raise argparse.ArgumentTypeError(f"{text} is out of range {rng}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _shard(s: str) -> tuple[int, int] | str:
    if s == "auto":
        return s
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be auto or i/N, got {s!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard {s}: need 0 <= i < N")
    return i, n


def _budget(args: argparse.Namespace) -> int | float | None:
    """The row budget: --k, --fraction, none with --budget-tokens alone (the tokens decide), else
    the default fraction 0.1."""
    if args.k is not None:
        return int(args.k)
    if args.fraction is not None:
        return float(args.fraction)
    return None if getattr(args, "budget_tokens", None) is not None else 0.1


def _extract(args: argparse.Namespace, out: Path) -> Any:
    from .features import extract
    from .pipeline import load_model

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
    from ._flags import flagged
    from .features.config import ExtractConfig, LoraSpec

    lora = LoraSpec(r=args.lora_r) if args.lora_r > 0 else None
    flags = {name: getattr(args, name) for name in flagged(ExtractConfig)}
    return ExtractConfig(lora=lora, seed=args.seed, **flags)


def _device(name: str) -> Any:
    """None for the CPU; for "cuda", this rank's GPU: LOCAL_RANK (set by torchrun) modulo the
    GPUs visible, so ranks share GPUs when there are fewer GPUs than ranks."""
    if name == "cpu":
        return None
    import torch

    from .pipeline import PipelineError

    if not torch.cuda.is_available():
        raise PipelineError("--device cuda: torch sees no CUDA device (a CPU build, or no driver)")
    index = int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _check_data(args: argparse.Namespace) -> list:
    """The records of --data, checked (see :func:`spice.pipeline.check_data`)."""
    from .pipeline import check_data

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
    from .pipeline import require_extras

    require_extras("spice features", "hf", unused=_unused(args))
    _check_data(args)  # before the model loads (tens of seconds): a data error comes first
    store = _extract(args, Path(args.out))
    print(f"spice: wrote {store!r}")
    return 0


def _select_options(args: argparse.Namespace) -> Any:
    """The selection's settings from the flags :func:`_add_settings` made (and the shared
    --seed), checked again as a SelectOptions (the flags' own checks came first)."""
    from .options import SelectOptions

    return SelectOptions(seed=args.seed, **{f: getattr(args, f) for f in _flagged_settings()})


def _check_quota_flags(args: argparse.Namespace) -> None:
    """--quotas and --group-field go together; say so before any work."""
    if (args.quotas is None) != (args.group_field is None):
        from .pipeline import PipelineError

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
    from .pipeline import select_to_dir

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
    from .formats import open as open_store

    _check_quota_flags(args)
    store = open_store(args.features)
    note = getattr(store, "note", "")  # another tool's gradients: what cannot be checked
    if note:
        print(f"spice: note: {note}", file=sys.stderr)
    return _select_into(args, store, Path(args.out), {})


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import PipelineError, check_out_dir, removed_if_failed, require_extras

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
        from .pipeline import check_quotas

        check_quotas(args.data, args.group_field, args.quotas, split=args.split)
    with removed_if_failed(out):  # a failed first step leaves no empty folder behind
        store = _extract(args, out / "features")
    rc = _select_into(args, store, out, {"model": args.model, "gguf_file": args.gguf_file})
    if not args.no_report:
        from .report import make_report

        paths = make_report(out)
        print(f"spice: report at {paths['report']}")
    return rc


def cmd_online(args: argparse.Namespace) -> int:
    from .pipeline import check_out_dir, removed_if_failed, require_extras

    require_extras("spice online", "hf")
    out = check_out_dir(args.out, args.overwrite, "selection.json")
    with removed_if_failed(out):  # a run that fails before writing anything leaves no folder
        return _online(args, out)


def _online(args: argparse.Namespace, out: Path) -> int:
    from .hfdata import resolve_source, write_dataset_subset
    from .online import preset, run_online
    from .outputs import write_json, write_subset
    from .pipeline import load_model, versions

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

    run_demo(args.out, quick=args.quick, overwrite=args.overwrite)
    return 0


_INT1 = _number(int, 1)
_FINITE_POS = _number(float, 0, lo_open=True)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="local model directory, Hugging Face id (offline cache), or the "
        "directory holding --gguf-file",
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")


def _columns(text: str) -> dict[str, str]:
    from .hfdata import parse_columns

    try:
        return parse_columns(text)
    except ValueError as e:  # argparse says "argument --columns:" itself
        msg = str(e)
        for prefix in ("--columns: ", "columns: "):
            msg = msg[len(prefix) :] if msg.startswith(prefix) else msg
        raise argparse.ArgumentTypeError(msg) from None


_columns.__name__ = "columns"  # argparse names the type in its messages


def _add_hf_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split",
        default=None,
        help="the split to read when --data is a DatasetDict save_to_disk folder "
        "(one with dataset_dict.json)",
    )
    p.add_argument(
        "--columns",
        type=_columns,
        default=None,
        help="where the fields are in an unusual schema, e.g. "
        "prompt=question,response=answer or messages=dialog,system=sys "
        "(fields: prompt, response, messages, system)",
    )


_DATA_HELP = (
    "records: JSONL, JSON, Parquet or Arrow file, or a Hugging Face datasets save_to_disk folder"
)


def _add_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--data", required=True, help=what)
    _add_hf_data(p)
    p.add_argument(
        "--seed",
        type=_number(int, 0),
        default=0,
        help="seed of the projection, the stochastic method and random choices",
    )


def _add_feature_opts(p: argparse.ArgumentParser) -> None:
    from ._flags import add_flags
    from .features.config import ExtractConfig

    p.add_argument(
        "--lora-r",
        type=_number(int, 0),
        default=8,
        help="LoRA rank (0: the model's own linear layers)",
    )
    add_flags(p, ExtractConfig, _number)  # --dim ... --chunk-rows: default and help declared there
    p.add_argument(
        "--shard",
        type=_shard,
        default="auto",
        help="auto: under torchrun, every rank writes its rows into the one --out store; "
        "i/N: this process's part of the records, a part store (spice.merge_stores joins them)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="where the model runs; cuda: the GPU of this torchrun rank (LOCAL_RANK)",
    )
    p.add_argument(
        "--checkpoint-seconds",
        type=_FINITE_POS,
        default=60.0,
        help="save partial progress at least this often",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="keep malformed records as skipped zero rows instead of stopping",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _flagged_settings() -> list[str]:
    """The SelectOptions fields that have a command-line flag."""
    from dataclasses import fields

    from .options import SelectOptions

    return [f.name for f in fields(SelectOptions) if f.metadata["flag"]]


def _add_alias(p: argparse.ArgumentParser, flag: str, dest: str, **kw: Any) -> None:
    """An older flag for ``dest``: same value, not shown in --help, leaves the default alone."""
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


def _add_settings(p: argparse.ArgumentParser) -> None:
    """The selection's flags, one per SelectOptions field that names one: its default, help,
    choices and range come from the field (spice/options.py), so they are declared once."""
    from ._flags import add_flags
    from .options import SelectOptions

    add_flags(p, SelectOptions, _number)


def _quotas(text: str) -> dict[str, int | float]:
    """--quotas: group=quota,... with a quota an int count >= 0 or a share of k in (0, 1]."""
    out: dict[str, int | float] = {}
    for part in text.split(","):
        name, eq, value = part.strip().rpartition("=")
        name = name.strip()
        if not eq or not name:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not group=quota (e.g. wiki=0.5,code=1000)"
            )
        value = value.strip()
        try:
            q: int | float = int(value)
        except ValueError:
            try:
                q = float(value)
            except ValueError:
                q = math.nan
            if not (0.0 < q <= 1.0):
                raise argparse.ArgumentTypeError(
                    f"quota of {name!r} is {value!r}: a count (a whole number, e.g. 1000) or a "
                    "share of the budget in (0, 1] (e.g. 0.5)"
                ) from None
        if isinstance(q, int) and q < 0:
            raise argparse.ArgumentTypeError(f"quota of {name!r} is {q}: a count is >= 0")
        if name in out:
            raise argparse.ArgumentTypeError(f"group {name!r} is given twice")
        out[name] = q
    return out


_quotas.__name__ = "quotas"  # argparse names the type in its messages


def _add_select_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--fraction",
        type=_number(float, 0, 1, lo_open=True),
        default=None,
        help="budget as a fraction of the rows, in (0, 1] (default: 0.1 without --budget-tokens)",
    )
    g.add_argument(
        "--k",
        type=_INT1,
        default=None,
        help="budget as a count, 1 <= k <= the number of rows (instead of --fraction)",
    )
    p.add_argument(
        "--budget-tokens",
        type=_INT1,
        default=None,
        help="token budget: the picked records' token counts (from the feature store) sum to at "
        "most this; cost-benefit greedy (gain per token). --k/--fraction then cap the rows",
    )
    _add_settings(p)
    p.add_argument(
        "--group-field",
        default=None,
        help="the record field that names each record's group (e.g. source), for --quotas",
    )
    p.add_argument(
        "--quotas",
        type=_quotas,
        default=None,
        help="the most picks per group of --group-field: group=quota,... with a quota a count "
        "(1000) or a share of the budget in (0, 1] (0.5); groups not named have no cap, e.g. "
        "--group-field source --quotas wiki=0.5,code=1000",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing result")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking the store's rows against their checksums",
    )


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: …)" where there is a default to show (not for flags or required ones)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (
            action.required
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return action.help
        return super()._get_help_string(action)


def _sub(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    # argparse %-formats a command's help (the list in `spice --help`), not its description
    return sub.add_parser(
        name, help=help, description=help.replace("%%", "%"), formatter_class=_Help
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="spice", description="SPICE data selection for LLM tuning", formatter_class=_Help
    )
    p.add_argument("--version", action="version", version=f"spice-select {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = _sub(sub, "features", "per-sample gradient features of a proxy model")
    _add_model(f)
    _add_data(f, _DATA_HELP)
    f.add_argument("--out", required=True, help="feature store directory")
    _add_feature_opts(f)
    f.set_defaults(func=cmd_features)

    s = _sub(sub, "select", "select from a feature store and write the subset")
    s.add_argument(
        "--features",
        required=True,
        help="feature store: spice's, or LESS, Bergson or TRAK gradients (docs/data.md)",
    )
    _add_data(s, "the data the features were made from (read with the same --split and --columns)")
    s.add_argument("--out", required=True, help="output directory")
    _add_select_opts(s)
    s.set_defaults(func=cmd_select)

    r = _sub(sub, "run", "features then selection (the offline mode)")
    _add_model(r)
    _add_data(r, _DATA_HELP)
    r.add_argument("--out", required=True, help="run directory")
    r.add_argument("--no-report", action="store_true", help="skip the plots and report.md")
    _add_feature_opts(r)
    _add_select_opts(r)
    r.set_defaults(func=cmd_run)

    o = _sub(sub, "online", "the paper's online schedule (pools + proxy updates)")
    _add_model(o)
    o.add_argument("--data", required=True, help=_DATA_HELP)
    _add_hf_data(o)
    o.add_argument("--out", required=True, help="run directory (checkpoint and outputs)")
    o.add_argument(
        "--preset",
        default="paper",
        choices=["paper", "authors", "authors-conflict"],
        help="the schedule's settings; the options below override them",
    )
    unset = " (default: the preset's)"
    for name, typ, what in (
        ("pool-size", _INT1, "records per pool"),
        ("picks-per-pool", _INT1, "picks per pool"),
        ("update-every", _INT1, "pools per proxy update"),
        ("lr", _FINITE_POS, "proxy learning rate"),
        ("early-stop", _number(float, 0, 1, lo_open=True, hi_open=True), "SPICE+ ω"),
        ("alpha", _FINITE_POS, "α"),
        ("conflict-penalty", _number(float, 0), "conflict penalty λ"),
        ("dim", _INT1, "feature dimension d"),
        ("batch-size", _INT1, "records per batch"),
        ("max-length", _number(int, 2), "tokens per record"),
        ("seed", _number(int, 0), "seed"),
        ("lora-r", _INT1, "LoRA rank"),
    ):
        o.add_argument(f"--{name}", type=typ, default=None, help=what + unset)
    _add_alias(o, "--penalty", "conflict_penalty", type=_number(float, 0))
    o.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    o.add_argument("--overwrite", action="store_true", help="replace an existing result")
    o.add_argument("--quiet", action="store_true", help="no progress lines")
    o.set_defaults(func=cmd_online)

    rep = _sub(sub, "report", "plots and a summary of a finished run")
    rep.add_argument("run_dir", help="a directory written by spice run, select or demo")
    rep.set_defaults(func=cmd_report)

    d = _sub(sub, "demo", "the embedded default: synthetic data, tiny model, 10%%")
    d.add_argument(
        "--out", default="spice-demo", help="output folder (a previous demo there is replaced)"
    )
    d.add_argument("--quick", action="store_true", help="a smaller run (seconds)")
    d.add_argument(
        "--overwrite", action="store_true", help="also replace a folder that does not hold a demo"
    )
    d.set_defaults(func=cmd_demo)
    return p


def _error_text(e: BaseException) -> str:
    """The whole message; a missing optional module names the extra that brings it."""
    if isinstance(e, ModuleNotFoundError) and e.name and _INSTALL not in str(e):
        root = e.name.split(".")[0]
        if root in _EXTRAS:
            return (
                f"this needs {root}, which is not installed: "
                f"pip install 'spice-select[{_EXTRAS[root]}]'"
            )
    text = str(e).strip()
    return text if text else type(e).__name__


def _command_line(argv: Sequence[str], drop: tuple[str, ...] = ()) -> str:
    """The command as the user typed it (less the flags in ``drop``), quoted for a shell."""
    import shlex

    from . import __file__ as package_init  # spice/__init__.py, wherever this module lives

    here = Path(package_init).with_name("__main__.py").resolve()
    prog = "python -m spice" if sys.argv and Path(sys.argv[0]).resolve() == here else "spice"
    return " ".join([prog, *(shlex.quote(a) for a in argv if a not in drop)])


def _features_saved(path: Path) -> str:
    from .pipeline import store_progress

    p = store_progress(path)
    if p is None:
        return f"nothing saved yet (no feature rows were finished in {path})"
    if p["complete"]:
        return f"the features are complete in {path} ({p['rows']} rows)"
    if not p["done_rows"] and not p["partial_rows"]:
        return (
            f"no rows saved yet in {path} (rows are saved by chunks of --chunk-rows and at least "
            "every --checkpoint-seconds)"
        )
    partial = f" and {p['partial_rows']} rows of unfinished chunks" if p["partial_rows"] else ""
    return (
        f"{p['done_chunks']} of {p['chunks']} chunks finished ({p['done_rows']} of {p['rows']} "
        f"rows){partial} saved in {path}; rows computed since the last save (at most "
        "--checkpoint-seconds ago) are computed again"
    )


def _interrupted(args: argparse.Namespace, argv: Sequence[str], started: float) -> str:
    """What an interrupted command leaves on disk and the command that goes on from there
    (``started``: the command's start, time.time())."""
    from .pipeline import store_progress

    again = _command_line(argv)
    if args.cmd == "features":
        out = Path(args.out)
        if isinstance(args.shard, tuple) and args.shard[1] > 1 and "WORLD_SIZE" not in os.environ:
            i, n = args.shard
            out = out / "parts" / f"part-{i:04d}-of-{n:04d}"
        saved = _features_saved(out)
    elif args.cmd == "run":
        feats = Path(args.out) / "features"
        saved = _features_saved(feats)
        if (store_progress(feats) or {}).get("complete"):
            saved += "; the selection is written only when it finishes, so it starts over"
    elif args.cmd == "online":
        from .online import checkpoint_progress

        p = checkpoint_progress(Path(args.out) / "online")
        if p is not None and args.restart:  # an older run's checkpoint is what --restart ignores
            if (Path(args.out) / "online" / "checkpoint.json").stat().st_mtime < started:
                p = None
        if p is None:
            saved = (
                "nothing saved yet (the first checkpoint is written after the first proxy "
                "update, every --update-every pools)"
            )
        else:
            saved = (
                f"checkpoint after {p['next_pool']} of {p['pools']} pools ({p['picks']} picks, "
                f"{p['steps']} proxy updates) in {Path(args.out) / 'online'}; the pools after it "
                "are redone"
            )
            again = _command_line(argv, drop=("--restart",))  # --restart would discard it
    elif args.cmd == "select":
        saved = f"nothing saved (the selection writes {args.out} only when it finishes)"
    elif args.cmd == "demo":
        saved = "nothing kept (a demo starts over)"
    else:
        return "spice: interrupted"
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        again = "the same torchrun command"
    return f"spice: interrupted: {saved}.\nspice: to go on, run again: {again}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.time()
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(_interrupted(args, argv, started), file=sys.stderr)
        return 130
    except Exception as e:  # the whole message, no traceback unless --debug
        if args.debug:
            raise
        print(f"spice: error: {_error_text(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
