"""Compare two builds of spice on scale_bench's data: the same picks bit for bit, and the speed.

A refactor of the core must not change a single pick, gain or log det, nor slow the engine. This
script runs each build in its own process (``sys.path`` points at that tree's ``python/``, whose
``spice._core`` was built there by ``./dev-build.sh``) on the data and settings of
bench/scale_bench.py runs 1-6:

    git worktree add /tmp/before <old commit> && (cd /tmp/before && ./dev-build.sh)
    python bench/compare_builds.py picks /tmp/before .              # runs 1-6 + grid, bit for bit
    python bench/compare_builds.py speed /tmp/before . --rounds 3   # runs 2, 3, first minute of 5

``picks`` uses fixed pick counts (not time budgets, which are not reproducible): runs 1-3 as
recorded, runs 4-6 a prefix long enough to pass k > d where the run has it (4: 1,500 picks of
lazy and stochastic; 5: 200; 6: 100), plus "grid": small matrices of every dtype, method,
penalty and early stop (about a minute). ``speed`` alternates the two builds back to back, round
after round, and keeps each build's best time (this machine's memory bandwidth drifts within
minutes); run 5 counts picks in its first 60 s. The memmaps of runs 4-6 (2, 4.4 and 10 GB) are
generated once in ``--data``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = ("indices", "gains", "scores", "conflict", "align")


def _child(tree: str, mode: str, runs: list[str], data: str, out: str) -> None:
    """Run in a fresh process with ``tree``'s spice; writes arrays (picks) or times (speed)."""
    sys.path.insert(0, os.path.join(os.path.abspath(tree), "python"))
    sys.path.insert(0, HERE)
    from datagen import clustered_features
    from scale_bench import memmap_features

    import spice

    res: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}

    def keep(key: str, sel) -> None:
        for f in FIELDS:
            res[f"{key}/{f}"] = np.asarray(getattr(sel, f))
        res[f"{key}/logdet"] = np.array([sel.logdet, sel.opt_upper_bound])

    def timed(key: str, G, k: int, **kw) -> None:
        t = time.perf_counter()
        sel = spice.select(G, k, **kw)
        times[key] = time.perf_counter() - t
        keep(key, sel)

    os.makedirs(data, exist_ok=True)
    if mode == "picks":
        if "1" in runs:
            G = clustered_features(100_000, 1024, seed=2)
            for H, tag in ((G, "f32"), (G.astype(np.float16), "f16")):
                for lam in (0.0, 0.1):
                    timed(f"r1/{tag}/{lam}", H, 40, conflict_penalty=lam, method="naive")
        if "2" in runs:
            G = clustered_features(100_000, 1024, seed=1)
            timed("r2/lazy", G, 10_000, conflict_penalty=0.1, method="lazy")
            timed("r2/naive-prefix", G, 300, conflict_penalty=0.1, method="naive")
        if "3" in runs:
            G = clustered_features(20_000, 512, seed=3)
            timed("r3/lazy", G, 2_000, conflict_penalty=0.0, method="lazy")
            timed("r3/naive", G, 2_000, conflict_penalty=0.0, method="naive")
        if "4" in runs:
            G = memmap_features(f"{data}/feats_1000000x1024_f16.bin", 1_000_000, 1024, seed=4)
            for m in ("lazy", "stochastic"):
                timed(f"r4/{m}", G, 1_500, conflict_penalty=0.1, method=m)
        if "5" in runs:
            G = memmap_features(f"{data}/feats_270000x8192_f16.bin", 270_000, 8192, seed=4)
            timed("r5/lazy", G, 200, conflict_penalty=0.1, method="lazy")
        if "6" in runs:
            G = memmap_features(f"{data}/feats_5000000x1024_f16.bin", 5_000_000, 1024, seed=4)
            timed("r6/lazy", G, 100, conflict_penalty=0.1, method="lazy")
        if "grid" in runs:
            _grid(spice, keep)
    else:  # speed: one run per child, the run named in runs[0]
        run = runs[0]
        if run == "2":
            G = clustered_features(100_000, 1024, seed=1)
            spice.select(G[:2000], 10)  # thread pool, page-in
            timed("r2", G, 10_000, conflict_penalty=0.1, method="lazy")
        elif run == "3":
            G = clustered_features(20_000, 512, seed=3)
            spice.select(G[:2000], 10)
            best = float("inf")
            for _ in range(3):  # about a second each: best of three inside the child
                timed("r3", G, 2_000, conflict_penalty=0.0, method="lazy")
                best = min(best, times["r3"])
            times["r3"] = best
        elif run == "5":
            G = memmap_features(f"{data}/feats_270000x8192_f16.bin", 270_000, 8192, seed=4)
            spice.select(G[:2000], 10)

            def stop_at_60s(picks, budget, evals, elapsed):
                return elapsed < 60.0

            sel = spice.select(G, 27_000, conflict_penalty=0.1, method="lazy", progress=stop_at_60s)
            times["r5_picks_per_min"] = len(sel) / (sel.elapsed_s / 60.0)
            keep("r5", sel)
    np.savez(out, **res)
    with open(out + ".json", "w") as f:
        json.dump(times, f)


def _grid(spice, keep) -> None:
    """Small matrices of every dtype, d from 8 to 4096 (duplicated rows, k below and above d),
    every method x penalty x early stop, and both compatibility objectives: about a minute."""
    rng = np.random.default_rng(7)
    mats = [
        ("f32_small", rng.standard_normal((3000, 64)).astype(np.float32)),
        ("f64_low", (rng.standard_normal((2000, 8)) @ rng.standard_normal((8, 48)))),
        ("f16_kgtd", rng.standard_normal((4000, 40)).astype(np.float16)),
    ]
    A = rng.standard_normal((1500, 600)).astype(np.float32)
    A[100:200] = A[:100]  # duplicates
    mats += [
        ("f32_d600_dup", A),
        ("f32_d4096", rng.standard_normal((900, 4096)).astype(np.float32)),
    ]
    try:
        import ml_dtypes

        mats.append(("bf16", rng.standard_normal((2500, 96)).astype(ml_dtypes.bfloat16)))
    except ImportError:
        pass
    for name, G in mats:
        n, d = G.shape
        ks = sorted(
            {min(n, 50), min(n, 3 * d if d < 500 else 300), min(n, 2 * d + 7) if d < 700 else 700}
        )
        for k in ks:
            for method in ("naive", "lazy", "stochastic"):
                for lam in (0.0, 0.1, 1.0):
                    for es in (None, 0.5):
                        if method == "naive" and d >= 4096 and k > 300:
                            continue
                        sel = spice.select(G, k, method=method, conflict_penalty=lam, early_stop=es,
                                           seed=3)  # fmt: skip
                        keep(f"grid/{name}/{k}/{method}/{lam}/{es}", sel)
        for obj in ("diag-compat", "topk-compat"):
            for lam in (0.0, 0.1):
                sel = spice.select(G, min(n, 100), objective=obj, conflict_penalty=lam)
                keep(f"grid/{name}/{obj}/{lam}", sel)


def _run_child(tree: str, mode: str, runs: str, data: str, out: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "_child", tree, mode, runs, data, out]
    subprocess.run(cmd, check=True)
    with open(out + ".json") as f:
        return json.load(f)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))
    return bool(np.array_equal(a, b))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        _child(argv[1], argv[2], argv[3].split(","), argv[4], argv[5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["picks", "speed"])
    ap.add_argument("before", help="tree of the old build (its python/ holds spice._core)")
    ap.add_argument("after", help="tree of the new build")
    ap.add_argument("--runs", default=None, help="picks: 1,2,3,4,5,6,grid (default); speed: 2,3,5")
    ap.add_argument("--rounds", type=int, default=3, help="speed: alternating rounds")
    ap.add_argument("--data", default=os.path.join(HERE, "out"), help="runs 4-6 memmaps")
    args = ap.parse_args(argv)
    trees = {"before": args.before, "after": args.after}
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "picks":
            runs = args.runs or "1,2,3,4,5,6,grid"
            res = {}
            for name, tree in trees.items():
                out = os.path.join(tmp, f"{name}.npz")
                t = _run_child(tree, "picks", runs, args.data, out)
                res[name] = np.load(out)
                print(f"{name}: {len(res[name].files)} arrays, {sum(t.values()):.0f} s")
            a, b = res["before"], res["after"]
            keys = sorted(set(a.files) | set(b.files))
            bad = [k for k in keys if k not in a.files or k not in b.files or not _same(a[k], b[k])]
            runs_seen = sorted({k.split("/")[0] + "/" + k.split("/")[1] for k in keys})
            print(f"{len(keys)} arrays ({', '.join(runs_seen)}): {len(bad)} differ")
            for k in bad[:20]:
                print("  differs:", k)
            return 1 if bad else 0
        runs = (args.runs or "2,3,5").split(",")
        best: dict[tuple[str, str], float] = {}
        for r in range(args.rounds):
            for run in runs:
                order = list(trees.items()) if r % 2 == 0 else list(trees.items())[::-1]
                for name, tree in order:
                    out = os.path.join(tmp, f"{name}_{run}_{r}.npz")
                    t = _run_child(tree, "speed", run, args.data, out)
                    for key, v in t.items():
                        higher_better = key.endswith("per_min")
                        old = best.get((key, name))
                        if old is None or (v > old if higher_better else v < old):
                            best[(key, name)] = v
                    print(f"round {r + 1} run {run} {name}: {t}", flush=True)
        print("\n| measure | before | after | after / before |\n|---|---|---|---|")
        for key in sorted({k for k, _ in best}):
            x, y = best[(key, "before")], best[(key, "after")]
            unit = "picks/min" if key.endswith("per_min") else "s"
            print(f"| {key} ({unit}, best of {args.rounds}) | {x:.4g} | {y:.4g} | {y / x:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
