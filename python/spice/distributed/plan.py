"""Where each shard's rows come from and what each shard asks of its node: the source cut into
row blocks (an array, one store, or a list of part stores numbered by their chunks), paths as every
node reads them, the CPUs and threads per shard that fit the nodes, and the spill directories."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._inputs import as_features


def _open_rows(spec: tuple, lo: int, hi: int, bf16: bool) -> tuple[np.ndarray, int]:
    """This shard's rows [lo, hi) of the source, read in place where the source is a file."""
    kind, what = spec
    if kind == "array":
        arr = what  # already this shard's rows only
    else:
        from .. import stores

        arr = stores.open(what).features[lo:hi]
    return as_features(arr, bf16=bf16)


def _abs(p: str | os.PathLike[str]) -> str:
    """A path as every node must read it: absolute, resolved on the driver (a worker's working
    directory is not the driver's on a ``ray start`` cluster)."""
    return str(Path(os.fspath(p)).expanduser().resolve())


def _part_rows(store: Any) -> np.ndarray | None:
    """The global row of each of a part store's rows (chunks c with c mod N = i, in chunk
    order), from its manifest; None for a whole store or another format."""
    m = getattr(store, "manifest", None)
    if not isinstance(m, dict) or int((m.get("part") or [0, 1])[1]) <= 1:
        return None
    step = int(m["shard_rows"])
    rows = np.empty(int(store.features.shape[0]), dtype=np.int64)
    for ch in m["chunks"]:
        a, r = int(ch["offset"]), int(ch["rows"])
        rows[a : a + r] = int(ch["chunk"]) * step + np.arange(r, dtype=np.int64)
    return rows


def _plan(source: Any, shards: int | None, bf16: bool) -> tuple[list, int, int, int, str]:
    """(per-shard specs, n, d, dtype code, description). A spec is (source spec, lo, hi, rows):
    the shard reads local rows [lo, hi) of its source, and ``rows`` numbers them globally: an
    int offset (contiguous rows) or an int64 array (a part store's rows, ascending)."""
    if isinstance(source, (str, os.PathLike)):
        from .. import stores

        path = _abs(source)
        feats = stores.open(path).features
        arr, code = as_features(feats, bf16=bf16)
        n, d = arr.shape
        s = _check_shards(shards, n)
        cuts = [n * i // s for i in range(s + 1)]
        specs = [(("store", path), cuts[i], cuts[i + 1], 0) for i in range(s)]
        return specs, n, d, code, f"store {path}"
    if (
        isinstance(source, (list, tuple))
        and source
        and all(isinstance(p, (str, os.PathLike)) for p in source)
    ):
        from .. import stores

        if shards is not None and shards != len(source):
            raise ValueError(
                f"a list of store parts runs one shard per part: shards={shards}, "
                f"{len(source)} parts"
            )
        specs, n, d0, code0 = [], 0, None, None
        numbered = []
        for p in source:
            path = _abs(p)
            st = stores.open(path)
            arr, code = as_features(st.features, bf16=bf16)
            if d0 is None:
                d0, code0 = arr.shape[1], code
            elif arr.shape[1] != d0 or code != code0:
                raise ValueError(
                    f"store part {path} has {arr.shape[1]} columns of dtype code {code}; "
                    f"the first part has {d0} of code {code0}"
                )
            rows = _part_rows(st)
            numbered.append(rows is not None)
            # a part's rows are read whole by its shard: local rows [0, len)
            specs.append((("store", path), 0, arr.shape[0], rows if rows is not None else n))
            n += arr.shape[0]
        if any(numbered):
            if not all(numbered):
                raise ValueError(
                    "the list mixes part stores (written with --shard i/N, numbered by their "
                    "chunks) and whole stores (numbered in list order): pass one kind"
                )
            _check_parts_cover(specs, n, source)
        return specs, n, int(d0), int(code0), f"{len(source)} store parts"
    arr, code = as_features(source, bf16=bf16)
    n, d = arr.shape
    s = _check_shards(shards, n)
    cuts = [n * i // s for i in range(s + 1)]
    specs = [
        (
            ("array", np.ascontiguousarray(arr[cuts[i] : cuts[i + 1]])),
            0,
            cuts[i + 1] - cuts[i],
            cuts[i],
        )
        for i in range(s)
    ]
    return specs, n, d, code, "array"


def _check_parts_cover(specs: list, n: int, source: Sequence) -> None:
    """Part stores must hold rows 0..n-1 once each, each part in ascending order (the greedy's
    tie rule, lowest row first, needs a shard's local order to be the global one)."""
    seen = np.zeros(n, dtype=np.int64)
    for (_, _, _, rows), p in zip(specs, source):
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(
                f"store part {os.fspath(p)} holds row {int(rows.max())}, but the {len(specs)} "
                f"parts hold {n} rows: a part is missing (pass all N parts of the extraction)"
            )
        if np.any(np.diff(rows) <= 0):
            raise ValueError(f"store part {os.fspath(p)} does not hold its rows in ascending order")
        np.add.at(seen, rows, 1)
    if np.any(seen != 1):
        g = int(np.flatnonzero(seen != 1)[0])
        raise ValueError(
            f"the store parts hold row {g} {int(seen[g])} times: a part is given twice or "
            "parts of different extractions are mixed"
        )


def _check_shards(shards: int | None, n: int) -> int:
    if shards is None:
        raise TypeError("shards= is required: the number of Ray actors to spread the rows over")
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    if shards > n:
        raise ValueError(f"shards = {shards} exceeds the {n} rows")
    return int(shards)


def _node_cpus(ray: Any) -> list[float]:
    """The CPUs of each live node, largest first."""
    cpus = [float(nd["Resources"].get("CPU", 0.0)) for nd in ray.nodes() if nd.get("Alive")]
    return sorted((c for c in cpus if c > 0), reverse=True)


def _fit_cpus(nodes: list[float], s_count: int, threads: int | None) -> tuple[float, int, str]:
    """(CPUs each shard asks for, its threads, placement strategy): a request that fits on one
    node, with room for all shards on the nodes; STRICT_SPREAD (one shard per node) when there
    are enough nodes of that size, else SPREAD."""
    total = sum(nodes)

    def room(c: float) -> int:  # shards of c CPUs the nodes hold
        return sum(math.floor(x / c + 1e-9) for x in nodes)

    if not nodes:
        raise ValueError("the Ray cluster has no live node with CPUs")
    if threads is not None:
        c, nthreads = float(threads), int(threads)
        if c * s_count > total:
            raise ValueError(
                f"{s_count} shards of threads={threads} need {c * s_count:g} CPUs but the Ray "
                f"cluster has {total:g}: lower threads (or leave it None to divide the CPUs)"
            )
        if room(c) < s_count:
            raise ValueError(
                f"{s_count} shards of threads={threads} do not fit on the nodes (CPUs per node: "
                f"{', '.join(f'{x:g}' for x in nodes)}): a shard runs on one node; lower threads"
            )
    elif len(nodes) >= s_count and nodes[s_count - 1] >= 1:
        # one shard per node: as many whole CPUs as the smallest of the S largest nodes has
        c = float(math.floor(nodes[s_count - 1] + 1e-9))
        nthreads = int(c)
    else:
        c = 0.0
        for whole in range(int(min(nodes[0], total // s_count)), 0, -1):
            if room(whole) >= s_count:
                c = float(whole)
                break
        if c == 0.0:  # fewer CPUs than shards: shards share CPUs, in equal fractions of a node
            for x in nodes:
                for m in range(1, s_count + 1):
                    f = math.floor(x / m * 1e4) / 1e4  # Ray counts CPUs in 1/10^4
                    if f > 0 and room(f) >= s_count:
                        c = max(c, f)
                        break
        nthreads = max(1, int(c))
    big_enough = sum(1 for x in nodes if x + 1e-9 >= c)
    return c, nthreads, "STRICT_SPREAD" if big_enough >= s_count else "SPREAD"


def _spill_dirs(spill_dir: Any, s_count: int, mode: str) -> list[str]:
    """One spill directory per shard ("" for none), absolute as the driver resolves them."""
    if spill_dir is None:
        return [""] * s_count
    if isinstance(spill_dir, (str, os.PathLike)):
        return [_abs(spill_dir)] * s_count  # the same path on each node (node-local scratch)
    if not isinstance(spill_dir, (list, tuple)):
        raise TypeError(
            f"spill_dir must be a path, a list of one path per shard, or None; got "
            f"{type(spill_dir).__name__}"
        )
    if mode == "partition":
        raise ValueError(
            "mode='partition' takes one spill_dir path (its parts are Ray tasks placed anywhere, "
            "and the merge runs on the driver), not a list"
        )
    if len(spill_dir) != s_count:
        raise ValueError(
            f"spill_dir lists {len(spill_dir)} paths for {s_count} shards: give one per shard"
        )
    out = []
    for s, p in enumerate(spill_dir):
        if not isinstance(p, (str, os.PathLike)) or not os.fspath(p):
            raise TypeError(f"spill_dir[{s}] must be a non-empty path, got {p!r}")
        out.append(_abs(p))
    return out
