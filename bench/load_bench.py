"""Selection time with other processes busy on the cores: threads = 1, 2 and the default, and the
OpenMP wait policies, each in a fresh process (libgomp reads its environment once, at load).

    python bench/load_bench.py --busy 0            # quiet (as quiet as the machine is)
    python bench/load_bench.py --busy 3            # three busy-loop processes of our own
    python bench/load_bench.py --busy 3 --busy-after 1   # the load arrives one second in
    python bench/load_bench.py --quick             # seconds; checks the script still runs

Each row is the best of --repeat runs; every setting's picks must equal threads=1's bit for bit.
Ratios are against threads=1 in the same command. /proc/loadavg before and after is printed:
busy processes not started here (other users) are not controlled, so say what it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SETTINGS = {
    "threads=1": ({}, 1),
    "threads=2": ({}, 2),
    "default": ({}, None),
    "threads=2, OMP_WAIT_POLICY=passive": ({"OMP_WAIT_POLICY": "passive"}, 2),
    "threads=2, GOMP_SPINCOUNT=0": ({"GOMP_SPINCOUNT": "0"}, 2),
    "default, OMP_WAIT_POLICY=passive": ({"OMP_WAIT_POLICY": "passive"}, None),
}


def child(path: str, k: int, threads: int | None, repeat: int) -> None:
    import spice

    G = np.load(path, mmap_mode="r")
    used = threads or spice._core.auto_threads()  # what the default resolves to, just before
    best, idx = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        sel = spice.select(G, k, threads=threads)
        best = min(best, time.perf_counter() - t)
        idx = sel.indices
    digest = hashlib.sha256(np.ascontiguousarray(idx).tobytes()).hexdigest()[:12]
    print(json.dumps({"s": best, "picks": digest, "threads_used": used}))


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--busy", type=int, default=0)
    ap.add_argument(
        "--busy-after",
        type=float,
        default=0.0,
        help="start the busy processes this many seconds into each run (load arriving mid-run)",
    )
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--settings", default=";".join(SETTINGS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        path, k, th, rep = a.child
        child(path, int(k), None if th == "None" else int(th), int(rep))
        return
    if a.quick:
        a.n, a.d, a.k = 2000, 64, 100
    names = [s for s in a.settings.split(";") if s]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "G.npy")
        rng = np.random.default_rng(0)
        np.save(path, rng.standard_normal((a.n, a.d), dtype=np.float32))
        late = a.busy_after > 0
        procs = [] if late else [busy_loop() for _ in range(a.busy)]
        try:
            time.sleep(0.5 if procs else 0.0)
            load0 = open("/proc/loadavg").read().split()[:4]
            rows = []
            for name in names:
                env_extra, th = SETTINGS[name]
                env = {**os.environ, **env_extra}
                cmd = [sys.executable, __file__, "--child", path, str(a.k), str(th), str(a.repeat)]
                child_p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
                if late:  # the child's start-up (imports, np.load) is well under a second
                    time.sleep(a.busy_after)
                    procs += [busy_loop() for _ in range(a.busy)]
                out, _ = child_p.communicate()
                if child_p.returncode:
                    raise SystemExit(f"{name}: child failed")
                if late:
                    for p in procs:
                        p.kill()
                        p.wait()
                    procs = []
                rows.append((name, json.loads(out.strip().splitlines()[-1])))
            load1 = open("/proc/loadavg").read().split()[:4]
        finally:
            for p in procs:
                p.kill()
                p.wait()
    base = dict(rows).get("threads=1")
    when = f" (from {a.busy_after:g} s into each run)" if late else ""
    print(
        f"n={a.n} d={a.d} k={a.k} busy={a.busy}{when} cpus={os.cpu_count()} "
        f"loadavg {load0} -> {load1}"
    )
    print("| setting | s | vs threads=1 | threads at start | picks |")
    print("|---|---:|---:|---:|---|")
    for name, r in rows:
        ratio = r["s"] / base["s"] if base else float("nan")
        print(f"| {name} | {r['s']:.2f} | {ratio:.2f} | {r['threads_used']} | {r['picks']} |")
    picks = {r["picks"] for _, r in rows}
    if len(picks) != 1:
        raise SystemExit(f"picks differ between settings: {picks}")


if __name__ == "__main__":
    main()
