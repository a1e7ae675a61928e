"""The distributed exact greedy's cost per pick on a local Ray instance (spice.distributed).

    python bench/distributed_bench.py                       # n=2e5, d=256 float16, k=300, 2 shards
    python bench/distributed_bench.py --n 1000000 --shards 4 --k 1000
    python bench/distributed_bench.py --quick              # seconds (CI)
    python bench/distributed_bench.py --partition          # partition mode's quality vs exact
    python bench/distributed_bench.py --per-pick           # time and bytes per pick, S = 2, 3


Runs spice.select(method="lazy") and spice.distributed.select(mode="exact") on the same float16
memmap (a spice-layout .npy opened in place), checks that the picks are identical, and reports
seconds per pick for both, the coordinator's overhead per pick (distributed minus one machine,
divided by k), and the bytes each pick moves: the picked row to every shard and the U rows
that came up with the shards' candidates (sel.params["rows_sent"] / k), (S + U)·d·b, plus the
numbers of each call (measured as pickled sizes).
Needs Ray (pip install "spice-select[ray]").

--partition instead compares mode="partition" (RandGreeDi) with the exact greedy at λ = 0, on
float32 clustered features of 20 000 × 64 and 50 000 × 128 (--sizes), k = 1, 5, 10 % of n
(--fractions), 2 and 4 shards (--shard-counts). The exact greedy is spice.select(method="lazy"),
which mode="exact" equals bit for bit (tests/test_distributed_select.py). Reported: the log det
ratio partition / exact, the share of rows both picked, and certificates f(S) / U of both, U
being the exact run's Minoux bound on the best k rows (§7 of docs/algorithm.md), valid for any
set of k rows, so for partition's too.

--per-pick measures mode="exact"'s greedy loop on float32 memmaps of 20 000 × 64 and 50 000 × 128
(--sizes), k = --k, 2 and 3 shards (--shard-counts), --repeat times each, in one Ray instance:
seconds per pick (the loop's, sel.params["picks_s"] / k) and bytes per pick through the driver,
measured as the growth of the bytes sent and received on its TCP connections (``ss -tinp``, the
kernel's counters: Ray's gRPC framing included) between the first and the last progress call,
less the driver's idle traffic at the same rate, over the picks in between (the two ``ss`` calls'
time is taken out of the loop's);
plus the rows' payload alone (row bytes: S down, and up as sel.params["rows_sent"] says, or once
from the owner where that key is missing, as before the one-hop reply). Run it with PYTHONPATH
naming the tree to measure, the same command for each.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
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
    ap.add_argument("--shard-counts", default=None, help="shard counts (2,4; --per-pick: 2,3)")
    ap.add_argument("--per-pick", action="store_true", help="time and bytes per pick")
    ap.add_argument("--repeat", type=int, default=2, help="--per-pick: runs per size")
    a = ap.parse_args()
    if a.shard_counts is None:
        a.shard_counts = "2,3" if a.per_pick else "2,4"
    if a.quick:
        a.n, a.d, a.k = 5000, 32, 60

    import ray

    if a.partition:
        partition_quality(a, ray)
        return
    if a.per_pick:
        per_pick(a, ray)
        return

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = os.path.dirname(os.path.dirname(os.path.abspath(spice.__file__)))  # this spice
    ray.init(
        address="local",  # a new instance, not one another process recorded in /tmp/ray
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
    up = dist.params.get("rows_sent", a.k) / a.k  # rows sent up a pick (once, before one hop)
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
        f"payload per pick: rows {(a.shards + up) * row:.0f} B ((S+U)·d·2, U = {up:.2f}), "
        f"q/index/flag {a.shards * down} B down, candidates {a.shards * cand} B up "
        "(pickled; Ray adds its own framing per call)"
    )


def _io() -> int:
    """Bytes sent and received on this process's TCP connections (``ss -tinp``: the kernel's
    per-socket counters, so everything Ray's gRPC puts on the wire, framing included)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
    tag, total, mine = f"pid={os.getpid()},", 0, False
    for line in out.splitlines():
        if not line[:1].isspace():  # a socket's line; its counters follow on the next
            mine = tag in line
        elif mine:
            for f in line.split():
                if f.startswith(("bytes_sent:", "bytes_received:")):
                    total += int(f.split(":")[1])
    return total


def per_pick(a: argparse.Namespace, ray) -> None:
    """mode="exact"'s seconds and driver bytes per pick, S shards, float32 memmaps."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = os.path.dirname(os.path.dirname(os.path.abspath(spice.__file__)))
    ray.init(
        address="local",
        num_cpus=a.cpus,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": "1"}},
    )
    time.sleep(2.0)
    t0, b0 = time.monotonic(), _io()
    time.sleep(3.0)
    idle = (_io() - b0) / (time.monotonic() - t0)  # the driver's background traffic, B/s
    print(f"spice from {src}; driver idle traffic {idle:.0f} B/s (subtracted)")
    print("| n × d | shards | k | ms/pick | driver bytes/pick | row payload bytes/pick |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes.split(","):
            n, d = (int(x) for x in size.split("x"))
            path = os.path.join(tmp, f"G{n}x{d}.npy")
            G = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
            G[:] = clustered_features(n, d, seed=0, dtype=np.float32)
            G.flush()
            G = np.load(path, mmap_mode="r")
            one = spice.select(G, a.k, conflict_penalty=a.penalty, method="lazy", threads=1)
            for s in (int(x) for x in a.shard_counts.split(",")):
                for _ in range(a.repeat):
                    marks: list = []

                    def mark(t, k, ev, el, marks=marks):
                        if not marks or t == k:  # the first call and the last
                            c = time.monotonic()
                            marks.append((t, c, _io(), time.monotonic() - c))

                    dist = sd.select(G, a.k, shards=s, conflict_penalty=a.penalty, progress=mark)
                    if not np.array_equal(dist.indices, one.indices):
                        raise SystemExit("the picks differ from spice.select(method='lazy')")
                    (t1, c1, b1, e1), (t2, c2, b2, e2) = marks[0], marks[-1]
                    per = (b2 - b1 - idle * (c2 - c1)) / (t2 - t1)
                    loop = dist.params["picks_s"] - e1 - e2
                    up = dist.params.get("rows_sent")
                    rows = (s * a.k + (up if up is not None else a.k)) / a.k
                    print(
                        f"| {n} × {d} | {s} | {a.k} | "
                        f"{1e3 * loop / a.k:.2f} | {per:.0f} | "
                        f"{rows * d * 4:.0f} ({rows:.2f} rows) |",
                        flush=True,
                    )
    ray.shutdown()


def partition_quality(a: argparse.Namespace, ray) -> None:
    """mode="partition" against the exact greedy: log det ratio and certificates, λ = 0."""
    import warnings

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = os.path.dirname(os.path.dirname(os.path.abspath(spice.__file__)))
    ray.init(
        address="local",  # a new instance, not one another process recorded in /tmp/ray
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
