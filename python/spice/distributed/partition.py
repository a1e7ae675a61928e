"""``mode="partition"`` (RandGreeDi): a random partition of the rows, one greedy per part as a Ray
task, one greedy over the union of their picks."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from .._inputs import as_features
from ..selection import Selection
from .connect import _connect
from .plan import _abs

# RandGreeDi's factor (Barbosa, Ene, Nguyen and Ward, 2015): in expectation over the random
# partition, for a monotone submodular objective under a cardinality constraint.
PARTITION_FACTOR = (1.0 - 1.0 / math.e) / 2.0


def _local_greedy(spec: tuple, idx: np.ndarray, bf16: bool, k: int, kw: dict) -> tuple:
    """One part's greedy: its k picks (global rows), their rows and the part's Selection."""
    from ..selection import select as one_select

    kind, what = spec
    if kind == "array":
        rows = what
    else:
        from .. import stores

        rows = np.ascontiguousarray(stores.open(what).features[idx])  # this part's rows only
    arr, code = as_features(rows, bf16=bf16)
    sel = one_select(arr, min(k, arr.shape[0]), **kw)
    return idx[sel.indices], np.ascontiguousarray(arr[sel.indices]), code, sel


def _partition(
    source: Any,
    specs: list,
    n: int,
    d: int,
    code: int,
    kk: int,
    kw: dict,
    address: str | None,
    threads: int | None,
    t_start: float,
    what: str,
) -> Selection:
    """RandGreeDi: a seeded random partition of the rows into S parts, k picks on each part
    alone (one Ray task per part), then one greedy of k over the union of those picks; the
    better of that and the best part's own picks is returned."""
    import dataclasses
    import warnings

    if isinstance(source, (list, tuple)) and source and not hasattr(source, "shape"):
        raise ValueError("mode='partition' takes an array or one feature store, not store parts")
    s_count = len(specs)
    if kk * s_count * 10 > n:
        warnings.warn(
            f"mode='partition' with k = {kk} on {s_count} parts of about {n // s_count} rows: "
            "k is not much smaller than n / shards (below a tenth), so each part selects a "
            "large share of its rows and the merge round is nearly a one-machine greedy over "
            "them; the guarantee is unchanged, the saving is lost",
            stacklevel=3,
        )
    # each row to a part independently and uniformly at random, as the guarantee's proof
    # assumes (equal-size parts would make the rows' parts dependent); an empty part is dropped
    rng = np.random.default_rng(int(kw["seed"]) & 0xFFFFFFFFFFFFFFFF)
    assign = rng.integers(0, s_count, size=n)
    parts = [p for p in (np.flatnonzero(assign == s) for s in range(s_count)) if p.size]
    s_count = len(parts)
    if isinstance(source, (str, os.PathLike)):
        part_specs = [("store", _abs(source))] * s_count
    else:
        arr, _ = as_features(source, bf16=kw["bf16"])
        part_specs = [("array", np.ascontiguousarray(arr[p])) for p in parts]
    ray, _ = _connect(address)
    nthreads = int(threads) if threads is not None else 1
    local_kw = dict(
        kw, threads=nthreads, method="lazy" if kw["method"] == "naive" else kw["method"]
    )
    task = ray.remote(num_cpus=nthreads, max_retries=0)(_local_greedy)
    refs = [task.remote(part_specs[s], parts[s], kw["bf16"], kk, local_kw) for s in range(s_count)]
    try:
        outs = ray.get(refs)
    except ray.exceptions.RayError as e:
        raise RuntimeError(f"a part of the partition run failed: {e}") from e
    picked = np.concatenate([o[0] for o in outs])
    rows = np.concatenate([o[1] for o in outs])
    order = np.argsort(picked, kind="stable")  # ties in the merge go to the lowest global row
    union, urows = picked[order], np.ascontiguousarray(rows[order])
    from ..selection import select as one_select

    merge = one_select(urows, min(kk, union.size), **dict(local_kw, bf16=code == 3))
    value = [float(np.sum(o[3].scores)) for o in outs]
    b = int(np.argmax(value))
    if float(np.sum(merge.scores)) >= value[b]:
        won, idx, src = merge, union[merge.indices], "merge"
    else:
        won, idx, src = outs[b][3], outs[b][0], f"part {b}"
    conflict_penalty, early_stop = float(kw["conflict_penalty"]), kw["early_stop"]
    if conflict_penalty > 0 or early_stop is not None or kw["method"] == "stochastic":
        factor = float("nan")
        note = "partition (RandGreeDi) with a penalty, early stop or stochastic parts: no factor"
    else:
        factor = PARTITION_FACTOR
        note = (
            "partition (RandGreeDi): (1 - 1/e)/2 of the best set of size k in expectation over "
            "the random partition, for any k (monotone submodular: lambda = 0, no early stop)"
        )
    params = dict(
        won.params, backend="ray", mode="partition", shards=len(specs), source=what, winner=src
    )
    return dataclasses.replace(
        won,
        indices=np.asarray(idx, dtype=np.int64),
        n=n,
        k=kk,
        opt_upper_bound=float("nan"),
        certified_ratio=float("nan"),
        evaluations=int(sum(o[3].evaluations for o in outs) + merge.evaluations),
        dot_products=int(sum(o[3].dot_products for o in outs) + merge.dot_products),
        params=params,
        elapsed_s=time.perf_counter() - t_start,
        guarantee=factor,
        guarantee_note=note,
    )
