"""The report's plots: gains, ε, conflict, picks against the pool and the norm percentiles, each
drawn on the ``matplotlib.pyplot`` passed in (matplotlib is imported only by
:func:`require_matplotlib`, so that importing spice never needs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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


def _bins(*arrays: np.ndarray, count: int = 30) -> np.ndarray:
    """Histogram edges spanning the finite values of all the arrays (one shared axis)."""
    vals = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return np.linspace(0.0, 1.0, count + 1)
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        pad = max(abs(lo) * 0.05, 0.5)
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, count + 1)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gains_plot(plt: Any, path: Path, gains, lam, fisher, same: str, early: bool) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    t = np.arange(1, gains.size + 1)
    ax.plot(t, gains, lw=2.2, label=rf"SPICE ($\lambda$ = {lam:g})")
    if fisher is not None:
        ax.plot(
            np.arange(1, len(fisher) + 1),
            fisher.gains,
            "--",
            lw=1.4,
            color="k",
            label=r"Fisher greedy ($\lambda$ = 0)" + (f": {same}" if same else ""),
        )
    if early:
        ax.axvline(gains.size, color="k", lw=0.8, ls=":", label="early stop")
    ax.set_xlabel("pick number t")
    ax.set_ylabel(r"marginal gain $\Delta_t$ (nats)")
    if np.all(gains > 0):
        ax.set_yscale("log")
    ax.legend()
    ax.set_title("Information each pick added, in pick order")
    _save(plt, fig, path)


def _epsilon_plot(plt: Any, path: Path, eps: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(np.arange(1, eps.size + 1), eps)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("pick number t")
    ax.set_ylabel(r"$\varepsilon_t = \Delta_t - \mathrm{base}_t$ (nats)")
    ax.set_title("Gain lost to overlap with earlier picks (0 = none)")
    _save(plt, fig, path)


def _conflict_plot(plt: Any, path: Path, pool_conf, picks, conflict) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if pool_conf is not None:
        sets = [("whole pool", pool_conf), ("picks", pool_conf[picks])]
        ax.set_xlabel("conflict with the mean of the picks, max(0, −cos)")
    else:
        sets = [("picks, at pick time", conflict[1:])]
        ax.set_xlabel("conflict with the earlier picks' mean at pick time, max(0, −cos)")
    pos = [(name, v[v > 0]) for name, v in sets]
    bins = _bins(*[v for _, v in pos])
    drawn = False
    for (name, v), (_, full) in zip(pos, sets):
        zero = 1.0 - v.size / max(full.size, 1)
        if v.size:
            ax.hist(v, bins=bins, alpha=0.55, label=f"{name} ({zero:.0%} of them at 0)")
            drawn = True
    if drawn:
        ax.set_ylabel("rows with conflict > 0")
        ax.legend()
    else:
        ax.text(
            0.5,
            0.5,
            "conflict is 0 everywhere:\nno row points against the picks' mean",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_yticks([])
    ax.set_title("Gradient conflict (rows at 0 are left out of the bars)")
    _save(plt, fig, path)


def _pool_plot(plt: Any, path: Path, panels: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (label, pool, mine) in zip(axes[0], panels):
        pool = pool[np.isfinite(pool)]
        mine = mine[np.isfinite(mine)]
        bins = _bins(pool, mine)
        ax.hist(pool, bins=bins, density=True, alpha=0.5, label=f"pool ({pool.size})")
        ax.hist(mine, bins=bins, density=True, alpha=0.5, label=f"picks ({mine.size})")
        for v, c in ((pool.mean(), "C0"), (mine.mean(), "C1")):
            ax.axvline(v, color=c, lw=1.2, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("share of rows (density)")
        ax.legend(title="dashed: means")
    fig.suptitle("Picks against the pool")
    _save(plt, fig, path)


def _norms_plot(plt: Any, path: Path, pct: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = np.sort(pct)
    y = np.arange(1, x.size + 1) / x.size
    ax.step(
        np.concatenate([[0.0], x, [100.0]]),
        np.concatenate([[0.0], y, [1.0]]),
        where="post",
        lw=2,
        label="picks",
    )
    ax.plot([0, 100], [0, 1], "k--", lw=1, label="uniform (picks blind to the norm)")
    med = float(np.median(pct))
    ax.axvline(med, color="C3", lw=1, ls=":", label=f"picks' median: {med:.1f}%")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("percentile of the pick's gradient norm among the pool's (%)")
    ax.set_ylabel("share of picks at or below")
    ax.set_title("Where the picks sit among the pool's gradient norms")
    ax.legend(loc="upper left")
    _save(plt, fig, path)
