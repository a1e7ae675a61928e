"""Timings of spice's CUDA selection path against the memory-bandwidth floor (run by gpu_check.sh).

For each configuration (float16 features on the device):

- the device's copy bandwidth (device-to-device copy, bytes read + written per second);
- the fused naive step alone (r = G·w, q update, conflict dot, Δ, score, argmax), timed with CUDA
  events: its floor is the bytes of G it must read over the copy bandwidth;
- whole selections (naive and lazy), each stopped at a time cap through the progress callback;
  the table then gives the picks reached and a projection of the full run at the final pick rate.

Writes a Markdown table (default bench/RESULTS_gpu.md) and prints it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time

if importlib.util.find_spec("spice") is None:  # an installed spice (or PYTHONPATH) comes first
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

from spice import gpu  # noqa: E402

CONFIGS = {
    "1M x 1024": dict(n=1_000_000, d=1024, k=100_000),
    "270K x 8192": dict(n=270_000, d=8192, k=27_000),
}


def copy_bandwidth(cp, nbytes: int = 4 << 30, reps: int = 10) -> float:
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    for _ in range(3):
        cp.copyto(dst, src)
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        cp.copyto(dst, src)
    stop.record()
    stop.synchronize()
    ms = cp.cuda.get_elapsed_time(start, stop) / reps
    del src, dst
    cp.get_default_memory_pool().free_all_blocks()
    return 2 * nbytes / (ms * 1e-3)


def make_features(cp, n: int, d: int, seed: int = 0, rank: int = 256):
    """Gradient-like float16 rows: a decaying low-rank part plus noise, made on the device."""
    rs = cp.random.RandomState(seed)
    sig = cp.arange(1, rank + 1, dtype=cp.float32) ** -0.5
    Q = rs.standard_normal((rank, d), dtype=cp.float32) / math.sqrt(d)
    out = cp.empty((n, d), dtype=cp.float16)
    step = max(1, (1 << 28) // d)
    for a in range(0, n, step):
        b = min(n, a + step)
        Z = rs.standard_normal((b - a, rank), dtype=cp.float32) * sig
        block = Z @ Q + 0.05 * rs.standard_normal((b - a, d), dtype=cp.float32)
        out[a:b] = block.astype(cp.float16)
    return out


def time_naive_step(cp, G, alpha: float, conflict_penalty: float, reps: int = 20) -> float:
    """Seconds per fused naive step over all of G (w and, if conflict_penalty > 0, s dots)."""
    from spice import _inputs

    ops = gpu._CupyOps(cp, G, _inputs.F16)
    st = gpu._State(cp, ops.norms(), alpha)
    rs = cp.random.RandomState(1)
    w = ops.step_vec(rs.standard_normal(ops.d) * 1e-3)
    s = ops.step_vec(rs.standard_normal(ops.d))
    sn = cp.ones(1, dtype=cp.float64)
    q0 = st.q.copy()
    for _ in range(3):
        ops.step(
            st, None, w, s if conflict_penalty > 0 else None, sn, 5, alpha, conflict_penalty, False
        )
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    total = 0.0
    for _ in range(reps):
        cp.copyto(st.q, q0)
        st.state.fill(0)
        start.record()
        ops.step(
            st, None, w, s if conflict_penalty > 0 else None, sn, 5, alpha, conflict_penalty, False
        )
        stop.record()
        stop.synchronize()
        total += cp.cuda.get_elapsed_time(start, stop) * 1e-3
    return total / reps


def timed_run(
    cp, G, k: int, method: str, alpha: float, conflict_penalty: float, cap_s: float
) -> dict:
    marks: list[tuple[int, float]] = []

    def progress(picks, budget, evals, elapsed):
        marks.append((picks, elapsed))
        return elapsed < cap_s

    t0 = time.perf_counter()
    raw = gpu.select_gpu(G, k, alpha, conflict_penalty, 0.0, method, 0, 0.01, progress=progress)
    wall = time.perf_counter() - t0
    picks = len(raw["indices"])
    if raw["stop_reason"] == "cancelled" and len(marks) >= 2 and picks < k:
        (p0, e0), (p1, e1) = marks[-2], marks[-1]
        rate = (e1 - e0) / max(1, p1 - p0)  # seconds per pick at the end (the slowest so far)
        projected = wall + (k - picks) * rate
    else:
        projected = wall
    return dict(
        method=method,
        picks=picks,
        wall=wall,
        projected=projected,
        stop=raw["stop_reason"],
        evals=raw["evaluations"],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS_gpu.md"))
    ap.add_argument("--cap-naive", type=float, default=float(os.environ.get("CAP_NAIVE", 75)))
    ap.add_argument("--cap-lazy", type=float, default=float(os.environ.get("CAP_LAZY", 30)))
    ap.add_argument("--conflict-penalty", type=float, default=0.1)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = ap.parse_args()

    ok, why = gpu.available()
    print(why, flush=True)
    if not ok:
        return 2
    import cupy as cp

    configs = CONFIGS
    if args.quick:
        configs = {"20K x 512": dict(n=20_000, d=512, k=2_000)}
    bw = copy_bandwidth(cp)
    print(f"device copy bandwidth: {bw / 1e12:.3f} TB/s (read + written)", flush=True)
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    dev = dev.decode() if isinstance(dev, bytes) else str(dev)

    lines = [
        "# spice GPU selection: timings",
        "",
        f"Device: {dev}; CuPy {cp.__version__}; copy bandwidth {bw / 1e12:.3f} TB/s "
        "(device-to-device copy, bytes read + written). Features: float16, gradient-like "
        "(rank-256 decaying part + noise), alpha = 10 / median ||g||^2, "
        f"conflict_penalty = {args.conflict_penalty}. "
        "Floor of a naive step = bytes of G / copy bandwidth.",
        "",
        "| features | k | naive step | floor | % of bandwidth | method | picks | wall s | "
        "projected full run s | stop | evaluations |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, cfg in configs.items():
        n, d, k = cfg["n"], cfg["d"], cfg["k"]
        t = time.perf_counter()
        G = make_features(cp, n, d)
        cp.cuda.Device().synchronize()
        norm2 = cp.einsum("ij,ij->i", G[:4096].astype(cp.float32), G[:4096].astype(cp.float32))
        alpha = float(10.0 / float(cp.median(norm2)))
        print(
            f"{name}: features made in {time.perf_counter() - t:.1f} s; alpha = {alpha:.4g}",
            flush=True,
        )
        step = time_naive_step(cp, G, alpha, args.conflict_penalty)
        step0 = time_naive_step(cp, G, alpha, 0.0)
        floor = n * d * G.dtype.itemsize / bw
        print(
            f"{name}: naive step {step * 1e3:.3f} ms (lambda = 0: {step0 * 1e3:.3f} ms), "
            f"floor {floor * 1e3:.3f} ms -> {100 * floor / step:.1f}% "
            f"({100 * floor / step0:.1f}%) of bandwidth",
            flush=True,
        )
        for method, cap in (("naive", args.cap_naive), ("lazy", args.cap_lazy)):
            r = timed_run(cp, G, k, method, alpha, args.conflict_penalty, cap)
            print(f"{name} {method}: {r}", flush=True)
            lines.append(
                f"| {name} | {k} | {step * 1e3:.3f} ms (λ=0: {step0 * 1e3:.3f} ms) | "
                f"{floor * 1e3:.3f} ms | {100 * floor / step:.1f}% ({100 * floor / step0:.1f}%) | "
                f"{method} | {r['picks']} | {r['wall']:.1f} | {r['projected']:.1f} | {r['stop']} "
                f"| {r['evals']} |"
            )
        del G
        cp.get_default_memory_pool().free_all_blocks()
    lines += [
        "",
        "Runs stopped at the time cap show stop = cancelled; their projection assumes "
        "the remaining picks run at the final measured pick rate.",
        "",
    ]
    text = "\n".join(lines)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
