"""Selection at scale (issue: near-roofline kernels, half precision, memory maps, a million rows).

    python bench/scale_bench.py --quick            # seconds; CI runs this so it cannot rot
    python bench/scale_bench.py --only 1,2,3       # the comparisons recorded in bench/RESULTS.md
    python bench/scale_bench.py --only 4,5 --budget 900
    python bench/scale_bench.py --only 4 --methods lazy --spill /tmp   # w rows in a file
    python bench/scale_bench.py --only 6 --methods lazy --spill bench/out   # the 10 GB file

1. roofline: one naive step vs one numpy GEMV over the same G (float32, float16)
2. n=1e5, d=1024, k=1e4, λ=0.1: lazy vs vectorised numpy non-lazy (prefix, extrapolated)
3. n=2e4, d=512, k=2e3: lazy vs greedy DPP MAP over an explicit n×n kernel (fast-map-dpp way)
4. n=1e6, d=1024, float16 memmap (2 GB), k=1e5: lazy and stochastic
5. n=2.7e5, d=8192, float16 (4.4 GB memmap), k=2.7e4: lazy
6. n=5e6, d=1024, float16 memmap (10 GB), k=1e4: lazy (anonymous memory against the file's size)
Runs 4-6 stop at --budget seconds (through the progress callback) and report how far they got.
Every comparison runs in one process on the same data. Data are generated deterministically.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from datagen import clustered_features  # noqa: E402
from memwatch import peak_extra  # noqa: E402

import spice  # noqa: E402
from spice.reference import dpp_map_greedy, greedy_numpy  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "out")


def _status_mb(field: str) -> float:
    """One memory line of /proc/self/status in MiB (NaN where there is none)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Peak resident memory (MiB), the mapped file's pages included."""
    return _status_mb("VmHWM")


def step_time(G: np.ndarray, lam: float, k: int = 40, threads: int | None = None) -> float:
    """Seconds per naive step (difference of a k-pick and a 1-pick run)."""
    spice.select(G, 1, conflict_penalty=lam, method="naive", threads=threads)
    t = time.perf_counter()
    spice.select(G, 1, conflict_penalty=lam, method="naive", threads=threads)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    spice.select(G, k, conflict_penalty=lam, method="naive", threads=threads)
    tk = time.perf_counter() - t
    return max(1e-9, (tk - t1) / (k - 1))


def gemv_time(G: np.ndarray, w: np.ndarray, reps: int = 20) -> float:
    """Seconds per numpy GEMV G @ w (mean of reps, after one warm-up)."""
    G @ w
    t = time.perf_counter()
    for _ in range(reps):
        G @ w
    return (time.perf_counter() - t) / reps


def bench_roofline(n: int, d: int, rounds: int = 3) -> None:
    """Naive step time against one numpy GEMV over the same G, and 1 vs 2 threads. This
    machine's memory bandwidth drifts within minutes, so each comparison alternates its two
    sides for a few rounds and keeps the best time of each (numpy's BLAS threads get a moment
    to go idle before spice runs: they spin after a call)."""
    G = clustered_features(n, d, seed=2)
    w = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    halves = {np.float32: G, np.float16: G.astype(np.float16)}
    gemv = float("inf")
    steps: dict[tuple, float] = {}
    for _ in range(rounds):
        gemv = min(gemv, gemv_time(G, w))
        time.sleep(0.2)
        for dt, H in halves.items():
            for lam in (0.0, 0.1):
                st = step_time(H, lam)
                steps[dt, lam] = min(steps.get((dt, lam), float("inf")), st)
    print(
        f"\n## 1. Roofline, n={n}, d={d} (best of {rounds} alternating rounds)\n"
        f"numpy float32 GEMV: {gemv * 1e3:.2f} ms ({G.nbytes / gemv / 1e9:.1f} GB/s)\n"
    )
    print("| G dtype | λ | naive step (ms) | GB/s | vs numpy float32 GEMV time |")
    print("|---|---|---|---|---|")
    for (dt, lam), st in steps.items():
        H = halves[dt]
        print(
            f"| {np.dtype(dt).name} | {lam} | {st * 1e3:.2f} | {H.nbytes / st / 1e9:.1f} "
            f"| {gemv / st:.2f}× |",
            flush=True,
        )
    del halves
    per: dict[int, float] = {}
    for _ in range(rounds):
        for th in (1, 2):
            per[th] = min(per.get(th, float("inf")), step_time(G, 0.1, k=30, threads=th))
    print(
        f"naive step (float32, λ=0.1), threads=1: {per[1] * 1e3:.2f} ms, threads=2: "
        f"{per[2] * 1e3:.2f} ms -> {per[1] / per[2]:.2f}× (best of {rounds} alternating rounds)",
        flush=True,
    )
    try:  # the machine's own scaling for a memory-bound pass: numpy's GEMV on 1 and 2 threads
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("(threadpoolctl not installed: numpy's GEMV thread scaling not measured)")
        return
    ref: dict[int, float] = {}
    for _ in range(rounds):
        for th in (1, 2):
            with threadpool_limits(th):
                ref[th] = min(ref.get(th, float("inf")), gemv_time(G, w))
            time.sleep(0.2)
    print(
        f"numpy float32 GEMV, threads=1: {ref[1] * 1e3:.2f} ms, threads=2: {ref[2] * 1e3:.2f} ms "
        f"-> {ref[1] / ref[2]:.2f}× (the bus's own scaling)",
        flush=True,
    )


def gemm_fma_rate(m: int = 2048, reps: int = 3) -> float:
    """numpy's float64 GEMM rate on this machine, in FMAs per second (all its threads).

    A @ B of two m x m matrices is m^3 multiply-adds (two distinct matrices: numpy's bundled
    OpenBLAS crashes here on the symmetric A @ A.T product).
    """
    rng = np.random.default_rng(0)
    A, B = rng.random((m, m)), rng.random((m, m))
    A @ B
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        A @ B
        best = min(best, time.perf_counter() - t)
    return m**3 / best


def bench_vs_numpy(n: int, d: int, k: int, prefix: int, gemm_m: int = 2048) -> None:
    G = clustered_features(n, d, seed=1)
    print(f"\n## 2. Lazy vs vectorised numpy non-lazy, n={n}, d={d}, k={k}, λ=0.1")
    with peak_extra() as m:
        lazy = spice.select(G, k, conflict_penalty=0.1, method="lazy")
    pk = min(prefix, k)
    t = time.perf_counter()
    ref = greedy_numpy(G, pk, conflict_penalty=0.1)
    tn = (time.perf_counter() - t) * k / pk
    same = int(np.sum(ref["indices"] == lazy.indices[:pk]))
    print(
        f"lazy {m['s']:.2f} s (extra memory {m['extra_bytes'] / G.nbytes:.3f}× G, "
        f"{lazy.evaluations:.3g} evaluations, {lazy.dot_products:.3g} dot products); "
        f"numpy {tn:.1f} s (extrapolated from {pk} steps) -> {tn / m['s']:.1f}× ; "
        f"first {pk} picks equal: {same}/{pk}",
        flush=True,
    )
    # The arithmetic floor: exact lazy greedy's catch-ups are float64 multiply-adds (one dot of
    # length d per dot product). At numpy's own float64 GEMM rate, the best this machine's BLAS
    # does with the same arithmetic, they alone would take this long.
    rate = gemm_fma_rate(gemm_m)
    floor = lazy.dot_products * d / rate
    print(
        f"ceiling: {lazy.dot_products:.3g} dots x {d} = {lazy.dot_products * d:.3g} float64 "
        f"FMAs take {floor:.2f} s at numpy's float64 GEMM rate ({rate / 1e9:.1f} GFMA/s); "
        f"30× the numpy time needs {tn / 30:.2f} s",
        flush=True,
    )


def dpp_map_explicit(G: np.ndarray, k: int, alpha: float = 1.0) -> list[int]:
    """The fast-map-dpp way: build L = I + α G Gᵀ (n×n, float64), then Chen et al.'s greedy."""
    X = G.astype(np.float64)
    L = alpha * (X @ X.T.copy())
    L[np.diag_indices_from(L)] += 1.0
    return dpp_map_greedy(L, k)


def bench_vs_dpp(n: int, d: int, k: int) -> None:
    G = clustered_features(n, d, seed=3)
    print(f"\n## 3. Lazy vs explicit-kernel DPP MAP, n={n}, d={d}, k={k}, λ=0")
    spice.select(G[:200], 10, conflict_penalty=0.0, method="lazy")  # imports, thread pool
    times = []
    for _ in range(3):  # a fraction of a second each: best of three, the first shown too
        t = time.perf_counter()
        lazy = spice.select(G, k, conflict_penalty=0.0, method="lazy")
        times.append(time.perf_counter() - t)
    tl = min(times)
    t = time.perf_counter()
    ref = dpp_map_explicit(G, k)
    td = time.perf_counter() - t
    print(
        f"spice lazy {tl:.3f} s (best of 3; first {times[0]:.3f} s); numpy DPP MAP (kernel "
        f"build included) {td:.2f} s -> "
        f"{td / tl:.1f}×; identical picks: {lazy.indices.tolist() == ref}",
        flush=True,
    )


def memmap_features(path: str, n: int, d: int, seed: int) -> np.memmap:
    if os.path.exists(path) and os.path.getsize(path) == n * d * 2:
        return np.memmap(path, dtype=np.float16, mode="r", shape=(n, d))
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=(n, d))
    clustered_features(n, d, seed=seed, dtype=np.float16, out=mm, dup=0.0)
    mm.flush()
    del mm
    return np.memmap(path, dtype=np.float16, mode="r", shape=(n, d))


def rss_anon_mb() -> float:
    """Resident anonymous memory now (MiB): what the run allocated, not the mapped file's pages."""
    return _status_mb("RssAnon")


def run_budgeted(G, k: int, method: str, budget: float, **kw):
    """Run until k picks or `budget` seconds; returns (selection, seconds, peak anonymous MiB
    sampled at each progress callback)."""
    peak = [rss_anon_mb()]

    def cb(picks, _budget, _evals, elapsed):
        peak[0] = max(peak[0], rss_anon_mb())
        return elapsed < budget

    t = time.perf_counter()
    sel = spice.select(G, k, method=method, progress=cb, **kw)
    return sel, time.perf_counter() - t, peak[0]


def bench_big(
    tag: str,
    n: int,
    d: int,
    k: int,
    budget: float,
    methods: list[str],
    out: str = OUT,
    spill: str | None = None,
) -> None:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"feats_{n}x{d}_f16.bin")
    t = time.perf_counter()
    G = memmap_features(path, n, d, seed=4)
    print(
        f"\n## {tag}. n={n}, d={d}, float16 memmap ({G.nbytes / 2**30:.2f} GiB), k={k}, "
        f"λ=0.1 (data ready in {time.perf_counter() - t:.0f} s)"
    )
    print(
        "| method | picks | time (s) | stop | logdet | evaluations | peak RSS (MiB) "
        "| peak anonymous (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        kw = {"spill_dir": spill} if spill else {}
        sel, el, anon = run_budgeted(G, k, m, budget, conflict_penalty=0.1, **kw)
        name = f"{m}, w rows spilled" if spill else m
        print(
            f"| {name} | {len(sel)} | {el:.1f} | {sel.stop_reason} | {sel.logdet:.6g} "
            f"| {sel.evaluations:.3g} | {rss_mb():.0f} | {anon:.0f} |",
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for spice and numpy's OpenBLAS alike (default: all cores)",
    )
    ap.add_argument("--only", default="1,2,3")
    ap.add_argument("--budget", type=float, default=900.0)
    ap.add_argument("--prefix", type=int, default=500)
    ap.add_argument("--methods", default=None, help="runs 4-6: comma list of methods")
    ap.add_argument("--out", default=OUT, help="runs 4-6: folder of the generated memmaps")
    ap.add_argument(
        "--spill",
        default=None,
        help="runs 4-6: keep the w rows in a temporary file in this folder "
        "(spice.select's spill_dir) instead of RAM",
    )
    args = ap.parse_args()
    print(f"# spice {spice.__version__}, kernels {spice.kernel_isa()}, {os.cpu_count()} CPUs")
    if args.quick:
        bench_roofline(4000, 128)
        bench_vs_numpy(3000, 64, 300, 100, gemm_m=256)
        bench_vs_dpp(1500, 32, 150)
        bench_big("4 (quick)", 20_000, 64, 2_000, args.budget, ["stochastic", "lazy"], args.out)
        bench_big(
            "4 (quick)",
            20_000,
            64,
            2_000,
            args.budget,
            ["lazy"],
            args.out,
            spill=args.spill or args.out,
        )
        return 0
    only = {int(x) for x in args.only.split(",")}
    if 1 in only:
        bench_roofline(100_000, 1024)
    if 2 in only:
        bench_vs_numpy(100_000, 1024, 10_000, args.prefix)
    if 3 in only:
        bench_vs_dpp(20_000, 512, 2_000)
    if 4 in only:
        m4 = args.methods.split(",") if args.methods else ["stochastic", "lazy"]
        bench_big("4", 1_000_000, 1024, 100_000, args.budget, m4, args.out, args.spill)
    if 5 in only:
        bench_big(
            "5",
            270_000,
            8192,
            27_000,
            args.budget,
            args.methods.split(",") if args.methods else ["lazy"],
            args.out,
            args.spill,
        )
    if 6 in only:
        bench_big(
            "6",
            5_000_000,
            1024,
            10_000,
            args.budget,
            args.methods.split(",") if args.methods else ["lazy"],
            args.out,
            args.spill,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
