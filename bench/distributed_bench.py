"""The distributed exact greedy's cost per pick on a local Ray instance (spice.distributed).

    python bench/distributed_bench.py                       # n=2e5, d=256 float16, k=300, 2 shards
    python bench/distributed_bench.py --n 1000000 --shards 4 --k 1000
    python bench/distributed_bench.py --quick              # seconds (CI)

Runs spice.select(method="lazy") and spice.distributed.select(mode="exact") on the same float16
memmap (a spice-layout .npy opened in place), checks that the picks are identical, and reports
seconds per pick for both, the coordinator's overhead per pick (distributed minus one machine,
divided by k), and the bytes each pick moves: the picked row once from its owner and once to
every shard, (S + 1)·d·b, plus the numbers of each call (measured as pickled sizes).
Needs Ray (pip install "spice-select[ray]").
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from datagen import clustered_features  # noqa: E402

import spice  # noqa: E402
import spice.distributed as sd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=300)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--penalty", type=float, default=0.1)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--quick", action="store_true", help="n=5000, d=32, k=60: seconds")
    a = ap.parse_args()
    if a.quick:
        a.n, a.d, a.k = 5000, 32, 60

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = os.path.dirname(os.path.dirname(os.path.abspath(spice.__file__)))  # this spice
    ray.init(
        num_cpus=a.cpus,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": src}},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "G.npy")
        G = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(a.n, a.d))
        G[:] = clustered_features(a.n, a.d, seed=0).astype(np.float16)
        G.flush()
        G = np.load(path, mmap_mode="r")
        threads = max(1, a.cpus // a.shards)  # one machine gets a shard's share of the CPUs
        dthreads = threads if a.cpus >= a.shards else None  # None: fractional CPUs per actor
        t0 = time.perf_counter()
        one = spice.select(G, a.k, conflict_penalty=a.penalty, method="lazy", threads=threads)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        dist = sd.select(G, a.k, shards=a.shards, conflict_penalty=a.penalty, threads=dthreads)
        t_dist = time.perf_counter() - t0
    ray.shutdown()
    same = np.array_equal(one.indices, dist.indices) and one.gains.tobytes() == dist.gains.tobytes()
    row = a.d * 2
    cand = len(pickle.dumps((0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)))
    down = len(pickle.dumps((0.1, 0, True)))
    print(f"n={a.n} d={a.d} float16 k={a.k} shards={a.shards} threads/shard={threads}")
    print(f"identical picks and gains: {same}")
    print(f"one machine (lazy, {threads} threads): {t_one:.2f} s, {1e3 * t_one / a.k:.2f} ms/pick")
    loop = dist.params["picks_s"]
    print(
        f"distributed: {t_dist:.2f} s in all, {dist.params['start_s']:.2f} s to start the actors; "
        f"greedy loop {loop:.2f} s, {1e3 * loop / a.k:.2f} ms/pick; "
        f"overhead vs one machine {1e3 * (loop - t_one) / a.k:.2f} ms/pick"
    )
    print(
        f"payload per pick: row {(a.shards + 1) * row} B ((S+1)·d·2), "
        f"q/index/flag {a.shards * down} B down, candidates {a.shards * cand} B up "
        "(pickled; Ray adds its own framing per call)"
    )


if __name__ == "__main__":
    main()
