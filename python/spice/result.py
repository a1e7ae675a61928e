"""``Selection``: the result of one selection (:func:`spice.select`, ``spice.distributed``).

Its own module: the CPU path, the GPU path and ``spice.distributed`` all return it, and
``selection`` keeps to the run itself. ``spice.selection`` re-exports it, so
``spice.selection.Selection`` still works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .report import high_norm_warning

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    """The result of :func:`select`; every per-pick array is in pick order, length ``len(self)``.

    Attributes
    ----------
    indices : int64 array
        Row indices of the picks, in the order they were picked.
    gains : float64 array
        Δ_t, the information gain log(1 + α g_jᵀ M⁻¹ g_j) of each pick when it was picked (for the
        compatibility objectives: that objective's own gain).
    base : float64 array
        log(1 + α‖g_j‖²), the gain the pick would have had alone.
    epsilon : float64 array
        ε_t = Δ_t − base_t ≤ 0: the diminishing-returns part of the gain.
    align, conflict, penalty, scores : float64 arrays
        Cosine of the pick to the mean of earlier picks, max(0, −align), λ·conflict and
        Δ_t − λ·conflict (the score that was maximised).
    logdet : float
        F(S) = log det(I + α G_Sᵀ G_S) of the chosen set, exact, float64.
    stop_reason : str
        "budget" (k picks), "early_stop" (SPICE+ rule), "exhausted" (every candidate left is a
        zero row or in span(S): residual q <= 1e-10·‖g‖² and gain α·q <= 1e-10), "filled" (with a
        token budget or quotas: no row left fits them) or "cancelled" (the progress callback
        returned False).
    opt_upper_bound : float
        Upper bound on the largest log-det of any set of ``len(self)`` rows (Minoux bound); with a
        budget or quotas, of any set that satisfies them (and has at most k rows). NaN for the
        compatibility objectives.
    certified_ratio : float
        ``logdet / opt_upper_bound``: the selection is at least this fraction of optimal.
    guarantee : float
        The a-priori factor of this run (NaN when none is stated; ``guarantee_note`` says why):
        1 − 1/e for plain greedy at λ = 0 (against the best set of the same size), (1 − 1/e)/2 for
        the token budget, 1/2 for quotas (docs/algorithm.md §11).
    tokens : float or None
        With ``cost``: the summed cost of the picks (tokens when cost is token counts), at most
        ``budget``. None otherwise.
    budget : float or None
        The cost budget the run had, if any.
    group_counts : dict or None
        With ``groups``: {label: picks} for every label of ``groups``.
    safeguard : bool
        The best single row that fits the budget scored more than the cost-benefit greedy's
        whole set and replaced it (the "modified greedy").
    evaluations : int
        Candidate refreshes performed (naive: every live candidate at every step; lazy: the
        queue's pops, a stale candidate being caught up at most 256 steps per pop).
    norm_percentile : float64 array or None
        Per pick, where its raw gradient norm sits among the n rows' norms, in percent (mid-rank:
        ties count half; :func:`spice.report.norm_percentiles`). None from the GPU and the
        distributed backends (G is not on this host).
    dot_products : int
        Catch-up dot products g_i·w_s performed (naive: about n·k; what laziness saves), plus
        the M⁻¹ bounds that lazy and stochastic greedy take once k > d, each counted as d/2
        length-d dot products (d of them when d < 512).
    """

    indices: np.ndarray
    gains: np.ndarray
    base: np.ndarray
    epsilon: np.ndarray
    align: np.ndarray
    conflict: np.ndarray
    penalty: np.ndarray
    scores: np.ndarray
    logdet: float
    stop_reason: str
    opt_upper_bound: float
    certified_ratio: float
    evaluations: int
    n: int
    k: int
    params: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    dot_products: int = 0
    guarantee: float = float("nan")
    guarantee_note: str = ""
    tokens: float | None = None
    budget: float | None = None
    group_counts: dict | None = None
    safeguard: bool = False
    norm_percentile: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (lists of Python floats and ints)."""
        out: dict[str, Any] = {}
        for name in (
            "indices",
            "gains",
            "base",
            "epsilon",
            "align",
            "conflict",
            "penalty",
            "scores",
        ):
            out[name] = getattr(self, name).tolist()
        for name in ("logdet", "opt_upper_bound", "certified_ratio", "guarantee"):
            v = float(getattr(self, name))
            out[name] = v if math.isfinite(v) else None
        out.update(
            stop_reason=self.stop_reason,
            evaluations=self.evaluations,
            dot_products=self.dot_products,
            n=self.n,
            k=self.k,
            params=dict(self.params),
            elapsed_s=self.elapsed_s,
            guarantee_note=self.guarantee_note,
        )
        if self.budget is not None or self.group_counts is not None:
            out["constraints"] = dict(
                tokens=self.tokens,
                budget=self.budget,
                group_counts=None
                if self.group_counts is None
                else {str(g): c for g, c in self.group_counts.items()},
                safeguard=self.safeguard,
            )
        if self.norm_percentile is not None:
            out["norm_percentile"] = self.norm_percentile.tolist()
        return out

    def subset(self, dataset: Any, *, keep_in_memory: bool = True) -> Any:
        """The picked rows of ``dataset`` (a ``datasets.Dataset`` of the ``n`` rows the selection
        was made from), in pick order: ``dataset.select(self.indices)`` flattened
        (``flatten_indices``), so nothing refers back to the full data. ``keep_in_memory=False``
        lets ``datasets`` write its cache file next to the dataset's own files instead.

        Raises:
            ValueError: the dataset does not have ``n`` rows.
            TypeError: a ``DatasetDict`` (pass one split) or anything but a Dataset.
        """
        from .hfdata import subset_of

        return subset_of(dataset, self.indices, self.n, keep_in_memory)

    def summary(self) -> str:
        """A few human-readable lines about the run; the last warns when the picks' median
        gradient-norm percentile is above 80% (picks mostly among the pool's largest gradients)."""
        m = len(self)
        conf = self.conflict[1:] if m > 1 else self.conflict
        cap = f"at most {self.k} rows" if self.budget is not None else f"budget {self.k}"
        lines = [f"selected {m} of {self.n} rows ({cap}, stop: {self.stop_reason})"]
        lines[0] += f", rows: {'unit' if self.params.get('normalize') == 'unit' else 'raw'}"
        if self.budget is not None:
            lines.append(
                f"tokens: {self.tokens:.10g} of a budget of {self.budget:.10g}"
                + (" (the best single row beat the greedy set)" if self.safeguard else "")
            )
        if self.group_counts is not None:
            lines.append(
                "picks per group: " + ", ".join(f"{g}: {c}" for g, c in self.group_counts.items())
            )
        lines += [
            f"log det F(S) = {self.logdet:.6g}"
            + (
                f"; OPT <= {self.opt_upper_bound:.6g} (certified ratio {self.certified_ratio:.4f})"
                if math.isfinite(self.opt_upper_bound)
                else ""
            ),
        ]
        if self.budget is not None or self.group_counts is not None:
            g = self.guarantee
            lines.append(
                f"guarantee: {g:.4f} ({self.guarantee_note})"
                if math.isfinite(g)
                else f"guarantee: none stated ({self.guarantee_note})"
            )
        if m:
            lines.append(
                f"gain Δ: first {self.gains[0]:.4g}, last {self.gains[-1]:.4g}; "
                f"conflict among picks: mean {float(np.mean(conf)) if conf.size else 0.0:.4g}, "
                f"negative-aligned {float(np.mean(self.align[1:] < 0)) if m > 1 else 0.0:.1%}"
            )
        lines.append(f"{self.evaluations} candidate evaluations, {self.elapsed_s:.3f} s")
        warn = high_norm_warning(self.norm_percentile)
        if warn:
            lines.append(warn)
        return "\n".join(lines)
