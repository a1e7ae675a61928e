"""The ``spice`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import spice

    rng = np.random.default_rng(args.seed)
    n, d, clusters = args.n, args.dim, 8
    centers = rng.standard_normal((clusters, d))
    lab = rng.integers(0, clusters, n)
    G = (centers[lab] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    G[rng.integers(0, n, n // 10)] *= -1.0  # conflicting gradients
    sel = spice.select(G, args.fraction, conflict_penalty=0.1)
    print(f"spice demo: {n} synthetic gradient features of dimension {d}")
    print(sel.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spice", description="SPICE data selection for LLM tuning")
    sub = p.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help="run selection on an embedded synthetic data set")
    demo.add_argument("--n", type=int, default=20000)
    demo.add_argument("--dim", type=int, default=256)
    demo.add_argument("--fraction", type=float, default=0.1)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
