"""``spice report RUN_DIR``: plots and a Markdown summary of a finished selection run.

Reads ``RUN_DIR/selection.json`` (written by ``spice select``, ``spice run`` or ``spice demo``);
when the feature store it names is still there, also compares against plain Fisher greedy (λ = 0) on
the same features and plots the conflict of the picks against the whole pool.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import atomic_write

__all__ = ["make_report", "require_matplotlib"]


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or an error naming the extra that installs it (called before a
    run that ends with a report, so that it fails before the work, not after)."""
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "spice report needs matplotlib, which is not installed: pip "
            "install 'spice-select[report]'",
            name="matplotlib",
        ) from e
    return matplotlib


def _pool_conflict(G: Any, picks: np.ndarray) -> np.ndarray:
    """max(0, −cos(g_x, mean of the picks)) for every row, streamed in blocks."""
    from ._inputs import as_features, row_as_float64
    from ._numerics import ETA

    arr, code = as_features(G)
    mean = row_as_float64(arr, code, picks).mean(axis=0)
    mn = np.linalg.norm(mean)
    out = np.empty(arr.shape[0])
    for s in range(0, arr.shape[0], 8192):
        B = row_as_float64(arr, code, slice(s, s + 8192))
        cos = (B @ mean) / (np.linalg.norm(B, axis=1) * mn + ETA)
        out[s : s + B.shape[0]] = np.maximum(0.0, -cos)
    return out


def make_report(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write gains.png, epsilon.png, conflict.png and report.md into ``run_dir``.

    Returns the paths written. Needs matplotlib (extra ``[report]``).
    """
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    sel_path = run / "selection.json"
    if not sel_path.is_file():
        raise FileNotFoundError(f"{run} has no selection.json (is it a spice run directory?)")
    sel = json.loads(sel_path.read_text(encoding="utf-8"))
    cfg = sel.get("config", {})
    gains = np.asarray(sel["gains"], dtype=float)
    eps = np.asarray(sel["epsilon"], dtype=float)
    conflict = np.asarray(sel["conflict"], dtype=float)
    picks = np.asarray(sel["indices"], dtype=np.int64)
    out: dict[str, Path] = {}

    fisher = None
    pool_conf = None
    store = None
    store_path = cfg.get("features")
    if store_path and Path(store_path).exists() and picks.size:
        from . import select
        from .stores import open as open_store

        store = open_store(store_path)
        p = sel.get("params", {})
        fisher = select(
            store,
            max(1, int(sel["k"])),
            alpha=p.get("alpha", 1.0),
            conflict_penalty=0.0,
            method="lazy",
        )
        pool_conf = _pool_conflict(store, picks)

    fig, ax = plt.subplots(figsize=(6, 4))
    lam = sel["params"].get("conflict_penalty")
    ax.plot(np.arange(1, gains.size + 1), gains, label=f"SPICE (λ = {lam})")
    if fisher is not None:
        ax.plot(np.arange(1, len(fisher) + 1), fisher.gains, "--", label="Fisher greedy (λ = 0)")
    if sel["stop_reason"] == "early_stop":
        ax.axvline(gains.size, color="k", lw=0.8, ls=":", label="early stop")
    ax.set_xlabel("pick t")
    ax.set_ylabel("marginal gain Δ_t")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Marginal-gain decay")
    fig.tight_layout()
    out["gains"] = run / "gains.png"
    fig.savefig(out["gains"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.arange(1, eps.size + 1), eps)
    ax.set_xlabel("pick t")
    ax.set_ylabel("ε_t = Δ_t − base_t")
    ax.set_title("Diminishing returns (ε trace)")
    fig.tight_layout()
    out["epsilon"] = run / "epsilon.png"
    fig.savefig(out["epsilon"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    if pool_conf is not None:
        ax.hist(pool_conf, bins=bins, density=True, alpha=0.5, label="whole pool")
        ax.hist(pool_conf[picks], bins=bins, density=True, alpha=0.5, label="picks")
        ax.set_xlabel("conflict with the mean of the picks")
    else:
        ax.hist(conflict[1:], bins=bins, density=True, alpha=0.6, label="picks (at pick time)")
        ax.set_xlabel("conflict at pick time")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("Gradient conflict")
    fig.tight_layout()
    out["conflict"] = run / "conflict.png"
    fig.savefig(out["conflict"], dpi=110)
    plt.close(fig)

    m = picks.size
    timing_path = run / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    elapsed = float(timing.get("elapsed_s") or sel.get("elapsed_s") or 0.0)
    ratio = sel.get("certified_ratio")
    ub = sel.get("opt_upper_bound")
    lines = [
        f"# spice run report: {run.name}",
        "",
        f"- selected **{m}** of {sel['n']} records (budget {sel['k']}); stop reason: "
        f"**{sel['stop_reason']}**",
        f"- log det F(S) = {sel['logdet']:.6g}"
        + (f"; optimum ≤ {ub:.6g}; certified ratio ≥ **{ratio:.4f}**" if ub is not None else ""),
        f"- gains: first {gains[0]:.4g}, last {gains[-1]:.4g}" if m else "- no picks",
        f"- conflict among picks: mean {float(np.mean(conflict[1:])) if m > 1 else 0.0:.4g}, "
        f"max {float(np.max(conflict)) if m else 0.0:.4g}, negative-aligned "
        f"{float(np.mean(np.asarray(sel['align'])[1:] < 0)) if m > 1 else 0.0:.1%}",
        f"- selection time {elapsed:.3f} s ({m / elapsed if elapsed > 0 else math.inf:.1f} "
        f"picks/s), {sel['evaluations']} candidate evaluations",
    ]
    cons = sel.get("constraints") or {}
    if cons.get("budget") is not None:
        lines.append(
            f"- tokens: **{cons['tokens']:.10g}** of a budget of {cons['budget']:.10g} "
            f"({cons['tokens'] / m if m else 0.0:.1f} per record)"
            + ("; the best single record beat the greedy set" if cons.get("safeguard") else "")
        )
    if cons.get("group_counts") is not None:
        lines.append(
            "- picks per group: " + ", ".join(f"{g}: {c}" for g, c in cons["group_counts"].items())
        )
    if cons:
        g = sel.get("guarantee")
        lines.append(
            f"- guarantee: {g:.4f} of the best feasible set ({sel.get('guarantee_note', '')})"
            if g is not None
            else f"- guarantee: none stated ({sel.get('guarantee_note', '')})"
        )
    if sel["stop_reason"] == "early_stop":
        lines.append(
            f"- SPICE+ stopped at pick {m + 1}: Δ fell to ω = "
            f"{sel['params'].get('early_stop')} of the first gain"
        )
    if fisher is not None:
        overlap = len(set(picks.tolist()) & set(fisher.indices.tolist()))
        union = len(set(picks.tolist()) | set(fisher.indices.tolist()))
        lines.append(
            f"- Fisher greedy (λ = 0) on the same features: log det {fisher.logdet:.6g}; "
            f"Jaccard overlap with this selection {overlap / max(union, 1):.3f}"
        )
    if pool_conf is not None:
        lines.append(
            f"- conflict with the picks' mean: pool mean {pool_conf.mean():.4g}, "
            f"picks mean {pool_conf[picks].mean():.4g}"
        )
    manifest = getattr(store, "manifest", None) or {}  # other tools' stores have none
    if manifest.get("skipped", {}).get("rows"):
        sk = manifest["skipped"]
        why = ", ".join(f"{n} {r}" for r, n in sorted(sk["reasons"].items(), key=lambda x: -x[1]))
        lines.append(
            f"- {sk['rows']} of the {len(store)} records had nothing to learn from and "
            f"got zero rows, never picked ({why}; listed in "
            f"{Path(store.path) / sk.get('list', 'skipped.jsonl')})"
        )
    lines += ["", "![gains](gains.png)", "![epsilon](epsilon.png)", "![conflict](conflict.png)", ""]
    out["report"] = atomic_write(run / "report.md", "\n".join(lines))
    return out
