"""What ``spice`` says on Ctrl-C: what the interrupted command left on disk and the command line
that goes on from there."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _command_line(argv: Sequence[str], drop: tuple[str, ...] = ()) -> str:
    """The command as the user typed it (less the flags in ``drop``), quoted for a shell."""
    import shlex

    from .. import __file__ as package_init  # spice/__init__.py, wherever this module lives

    here = Path(package_init).with_name("__main__.py").resolve()
    prog = "python -m spice" if sys.argv and Path(sys.argv[0]).resolve() == here else "spice"
    return " ".join([prog, *(shlex.quote(a) for a in argv if a not in drop)])


def _features_saved(path: Path) -> str:
    from ..pipeline import store_progress

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
    from ..pipeline import store_progress

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
        from ..online import checkpoint_progress

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
