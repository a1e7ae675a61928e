"""The distributed exact greedy's cost per pick on a local Ray instance (spice.distributed).

    python bench/distributed_bench.py                       # n=2e5, d=256 float16, k=300, 2 shards
    python bench/distributed_bench.py --n 1000000 --shards 4 --k 1000
    python bench/distributed_bench.py --quick              # seconds (CI)
    python bench/distributed_bench.py --partition          # partition mode's quality vs exact


Runs spice.select(method="lazy") and spice.distributed.select(mode="exact") on the same float16
memmap (a spice-layout .npy opened in place), checks that the picks are identical, and reports
seconds per pick for both, the coordinator's overhead per pick (distributed minus one machine,
divided by k), and the bytes each pick moves: the picked row once from its owner and once to
every shard, (S + 1)·d·b, plus the numbers of each call (measured as pickled sizes).
Needs Ray (pip install "spice-select[ray]").

--partition instead compares mode="partition" (RandGreeDi) with the exact greedy at λ = 0, on
float32 clustered features of 20 000 × 64 and 50 000 × 128 (--sizes), k = 1, 5, 10 % of n
(--fractions), 2 and 4 shards (--shard-counts). The exact greedy is spice.select(method="lazy"),
which mode="exact" equals bit for bit (tests/test_distributed_select.py). Reported: the log det
ratio partition / exact, the share of rows both picked, and certificates f(S) / U of both, U
being the exact run's Minoux bound on the best k rows (§7 of docs/algorithm.md), valid for any
set of k rows, so for partition's too.
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
    ap.add_argument("--partition", action="store_true", help="partition's quality vs exact")
    ap.add_argument("--sizes", default="20000x64,50000x128", help="--partition: n x d, ...")
    ap.add_argument("--fractions", default="0.01,0.05,0.1", help="--partition: k / n, ...")
    ap.add_argument("--shard-counts", default="2,4", help="--partition: shard counts")
    a = ap.parse_args()
    if a.quick:
        a.n, a.d, a.k = 5000, 32, 60

    import ray

    if a.partition:
        partition_quality(a, ray)
        return

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


def partition_quality(a: argparse.Namespace, ray) -> None:
    """mode="partition" against the exact greedy: log det ratio and certificates, λ = 0."""
    import warnings

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = os.path.dirname(os.path.dirname(os.path.abspath(spice.__file__)))
    ray.init(
        num_cpus=a.cpus,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": "1"}},
    )
    print(
        "| n × d | k | exact f/U | exact s | shards | partition f/U | partition/exact "
        "| same rows | won by (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in a.sizes.split(","):
        n, d = (int(x) for x in size.split("x"))
        G = clustered_features(n, d, seed=0, dtype=np.float32)
        for frac in (float(x) for x in a.fractions.split(",")):
            k = max(1, round(frac * n))
            t0 = time.perf_counter()
            ex = spice.select(G, k, conflict_penalty=0.0, method="lazy", threads=1)
            t_ex = time.perf_counter() - t0
            for s in (int(x) for x in a.shard_counts.split(",")):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # k > n / (10 S): said in RESULTS.md
                    t0 = time.perf_counter()
                    pa = sd.select(G, k, shards=s, mode="partition", conflict_penalty=0.0, seed=0)
                    t_pa = time.perf_counter() - t0
                u = ex.opt_upper_bound
                print(
                    f"| {n} × {d} | {k} | {ex.logdet / u:.4f} | {t_ex:.1f} | {s} | "
                    f"{pa.logdet / u:.4f} | {pa.logdet / ex.logdet:.6f} | "
                    f"{np.intersect1d(pa.indices, ex.indices).size / k:.3f} | "
                    f"{pa.params['winner']} ({t_pa:.1f}) |",
                    flush=True,
                )
    ray.shutdown()


if __name__ == "__main__":
    main()
