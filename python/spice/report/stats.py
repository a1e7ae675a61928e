"""The report's numbers: where the picks sit among the pool's gradient norms, the warning when
they crowd the largest, distributions of per-record values, each row's conflict with the picks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Above this median percentile the picks are mostly the pool's largest gradients.
HIGH_NORM_PERCENTILE = 80.0
HIGH_NORM_WARNING = (
    "picks concentrate among the largest gradients: often wrong answers and short replies; "
    'consider unit-normalised features (normalize="unit")'
)


def percentiles_of(norm2: np.ndarray, picks: np.ndarray, block: int = 0) -> np.ndarray:
    """Mid-rank percentiles of ``norm2[picks]`` among all of ``norm2`` ((n,) float64 squared
    norms), counted against the sorted picks ``block`` rows at a time (0: 2^16; each count costs
    O(m))."""
    n = norm2.size
    picks = np.asarray(picks, dtype=np.int64)
    if picks.size == 0:
        return np.empty(0)
    if picks.min() < 0 or picks.max() >= n:
        raise ValueError(f"picks must be row indices in [0, {n}), got {picks.min()}..{picks.max()}")
    pq = norm2[picks]
    order = np.argsort(pq, kind="stable")
    ps = pq[order]
    le = np.zeros(picks.size + 1, dtype=np.int64)  # bin j: rows with ps[j-1] < norm <= ps[j]
    lt = np.zeros(picks.size + 1, dtype=np.int64)  # bin j: rows with ps[j-1] <= norm < ps[j]
    step = block if block > 0 else 1 << 16
    for s in range(0, n, step):
        q = norm2[s : s + step]
        le += np.bincount(np.searchsorted(ps, q, side="left"), minlength=picks.size + 1)
        lt += np.bincount(np.searchsorted(ps, q, side="right"), minlength=picks.size + 1)
    n_le = np.cumsum(le)[: picks.size]
    n_lt = np.cumsum(lt)[: picks.size]
    out = np.empty(picks.size)
    out[order] = 100.0 * (n_lt + n_le) / (2.0 * n)
    return out


def norm_percentiles(G: Any, picks: Any, *, bf16: bool = False, chunk_rows: int = 0) -> np.ndarray:
    """Where each pick's gradient norm sits among the whole pool's, in percent.

    The mid-rank percentile of row p among the n rows of ``G``:
    100 · (#{i: ‖g_i‖ < ‖g_p‖} + #{i: ‖g_i‖ ≤ ‖g_p‖}) / (2n), so a pick with the pool's largest
    norm scores 100 − 50/n, picks drawn uniformly at random have a median near 50, and rows that
    all share one norm (unit-normalised features) sit at 50.

    Args:
        G: (n, d) features as :func:`spice.select` takes them (numpy arrays and memmaps of
            float16/32/64 or bfloat16, stores); read once by the core's norms pass, never
            copied. Norms are those of these raw rows, in float64. (:func:`spice.select` takes
            them from its own norms pass instead.)
        picks: (m,) row indices into G.
        bf16: ``uint16`` G holds raw bfloat16 bit patterns.
        chunk_rows: norms counted against the picks per block (0: 2^16).

    Returns:
        (m,) float64 array in (0, 100), one per pick, in the order of ``picks``.

    Raises:
        ValueError: an index outside [0, n).
    """
    from .. import _core
    from .._inputs import as_features

    arr, code = as_features(G, bf16=bf16)
    return percentiles_of(_core.row_norms2(arr, code), np.asarray(picks), int(chunk_rows))


def high_norm_warning(percentiles: Any) -> str | None:
    """The warning line when the picks' median norm percentile is above
    :data:`HIGH_NORM_PERCENTILE`, else None (also for no picks)."""
    p = np.asarray(percentiles, dtype=float) if percentiles is not None else np.empty(0)
    if p.size == 0:
        return None
    med = float(np.median(p))
    if med > HIGH_NORM_PERCENTILE:
        return f"warning: the picks' median gradient-norm percentile is {med:.1f}%: " + (
            HIGH_NORM_WARNING
        )
    return None


def distribution(values: Any, picks: Any) -> dict[str, dict[str, float]]:
    """Mean, median, 10th and 90th percentile and count of ``values`` over the pool and over the
    picks; NaN entries (records with no loss, skipped records) are left out of both.

    Args:
        values: (n,) per-record numbers (e.g. tokens, loss in nats/token).
        picks: (m,) row indices.

    Returns:
        ``{"pool": stats, "picks": stats}``, each ``{"mean", "median", "p10", "p90", "count"}``
        (NaN statistics for an empty set).
    """
    v = np.asarray(values, dtype=np.float64)
    out = {}
    for name, sub in (("pool", v), ("picks", v[np.asarray(picks, dtype=np.int64)])):
        f = sub[np.isfinite(sub)]
        if f.size:
            out[name] = dict(
                mean=float(f.mean()),
                median=float(np.median(f)),
                p10=float(np.percentile(f, 10)),
                p90=float(np.percentile(f, 90)),
                count=float(f.size),
            )
        else:
            out[name] = dict(mean=math.nan, median=math.nan, p10=math.nan, p90=math.nan, count=0.0)
    return out


def _pool_conflict(G: Any, picks: np.ndarray) -> np.ndarray:
    """max(0, −cos(g_x, mean of the picks)) for every row, streamed in blocks."""
    from .._inputs import as_features, row_as_float64
    from .._numerics import ETA

    arr, code = as_features(G)
    mean = row_as_float64(arr, code, picks).mean(axis=0)
    mn = np.linalg.norm(mean)
    out = np.empty(arr.shape[0])
    for s in range(0, arr.shape[0], 8192):
        B = row_as_float64(arr, code, slice(s, s + 8192))
        cos = (B @ mean) / (np.linalg.norm(B, axis=1) * mn + ETA)
        out[s : s + B.shape[0]] = np.maximum(0.0, -cos)
    return out
