"""The ``spice`` argument parser: one subcommand per command, its flags grouped as the commands
share them (model, data, extraction, selection); the extraction and selection flags are made from
ExtractConfig's and SelectOptions' fields (spice/_flags.py)."""

from __future__ import annotations

import argparse
from typing import Any

from .argtypes import _FINITE_POS, _INT1, _columns, _number, _quotas, _shard
from .offline import cmd_features, cmd_run, cmd_select
from .online import cmd_online
from .report_demo import cmd_demo, cmd_report


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="local model directory, Hugging Face id (offline cache), or the "
        "directory holding --gguf-file",
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")


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
    from .._flags import add_flags
    from ..features.config import ExtractConfig

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


def _add_alias(p: argparse.ArgumentParser, flag: str, dest: str, **kw: Any) -> None:
    """An older flag for ``dest``: same value, not shown in --help, leaves the default alone."""
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw)


def _add_settings(p: argparse.ArgumentParser) -> None:
    """The selection's flags, one per SelectOptions field that names one: its default, help,
    choices and range come from the field (spice/options.py), so they are declared once."""
    from .._flags import add_flags
    from ..options import SelectOptions

    add_flags(p, SelectOptions, _number)


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
    from .. import __version__

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
