"""``spice report`` (plots and a summary of a finished run) and ``spice demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import make_report

    sel = Path(args.run_dir) / "selection.json"
    if sel.is_file() and json.loads(sel.read_text()).get("mode") == "online":
        raise RuntimeError("spice report reads offline runs (spice run / select / demo)")
    paths = make_report(args.run_dir)
    for p in paths.values():
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.out, quick=args.quick, overwrite=args.overwrite)
    return 0
