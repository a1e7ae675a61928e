"""SPICE evidence harness: a small-scale replication of the paper's claims, with baselines.

    PYTHONPATH=python python bench/quality/run.py              # full run (CPU, tens of minutes)
    PYTHONPATH=python python bench/quality/run.py --quick      # CI smoke run (harness works)

Writes ``results.json``, ``results.md`` and ``budget.png`` to ``--out`` (default
bench/quality/out/). See bench/quality/RESULTS.md for a recorded run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models as M  # noqa: E402
import numpy as np  # noqa: E402
import pickers as S  # noqa: E402
import torch  # noqa: E402
from tasks import FAMILIES, make_mixture  # noqa: E402

from spice.selection import resolve_k  # noqa: E402

warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")

MAIN = ["random", "full", "topk-compat", "diag-compat", "fisher", "spice", "spice+", "online",
        "less", "ifd"]  # fmt: skip
CURVE = ["random", "fisher", "spice"]

FULL = dict(
    n_pool=2000,
    n_test=40,
    n_val=8,
    warm_frac=0.05,
    warm_steps=150,
    dim=512,
    steps=300,
    batch=32,
    lr=2e-3,
    seeds=[0, 1, 2],
    budgets=[0.01, 0.05, 0.10, 0.25],
)
QUICK = dict(
    n_pool=160,
    n_test=6,
    n_val=3,
    warm_frac=0.1,
    warm_steps=4,
    dim=64,
    steps=3,
    batch=8,
    lr=3e-3,
    seeds=[0],
    budgets=[0.05, 0.10],
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def features(proxy, tok, records, out: Path, dim: int):
    from spice.features import LoraSpec, extract

    if out.exists():
        shutil.rmtree(out)
    st = extract(proxy, tok, records, out=out, dim=dim, projection="factorized",
                 lora=LoraSpec(r=8), loss_on="response", max_length=M.MAX_LEN, batch_size=32,
                 max_batch_tokens=None,  # rows-only batches, as the recorded run used
                 dtype="float32", progress=False)  # fmt: skip
    return np.ascontiguousarray(np.asarray(st.features, dtype=np.float32))


def try_online(
    proxy, tok, records, out: Path, k: int, alpha: float, dim: int
) -> tuple[S.Pick | None, str]:
    """SPICE with the paper's online schedule (pools of 120, 12 picks, proxy step every 10
    pools), when ``spice.online`` exists; same α, feature dimension and LoRA rank as offline."""
    try:
        import spice.online as on
        from spice.online import run_online
    except Exception as e:  # noqa: BLE001
        return None, f"skipped: spice.online not available ({type(e).__name__})"
    try:
        cfg_cls = next((getattr(on, n) for n in ("OnlineConfig", "Config") if hasattr(on, n)),
                       None)  # fmt: skip
        cfg = None
        if cfg_cls is not None:
            import dataclasses

            names = {f.name for f in dataclasses.fields(cfg_cls)}
            want = {"alpha": alpha, "dim": dim, "max_length": M.MAX_LEN, "batch_size": 32,
                    "conflict_penalty": 0.1, "objective": "logdet", "projection": "factorized",
                    "lora_r": 8, "loss_on": "response", "seed": 0}  # fmt: skip
            cfg = cfg_cls(**{key: v for key, v in want.items() if key in names})
        res = run_online(proxy, tok, records, str(out), cfg)
        idx = np.asarray(res.indices, dtype=np.int64)[:k]
        return S.Pick(idx, extra={"online_picks": int(len(res.indices))}), (
            f"spice.online.run_online ({len(res.indices)} picks, first {len(idx)} used)"
        )
    except Exception as e:  # noqa: BLE001
        return None, f"skipped: run_online failed ({type(e).__name__}: {str(e)[:120]})"


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CI run: checks the harness works")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"))
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    ap.add_argument("--budgets", type=float, nargs="+", help="fractions for the budget curve")
    ap.add_argument("--steps", type=int, help="training steps per subset")
    ap.add_argument("--pool", type=int, help="pool size")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a shared 2-core machine)",
    )
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train and evaluate the proxy and targets",
    )
    ap.add_argument("--target-hidden", type=int, help="target hidden size (default 128)")
    ap.add_argument("--target-layers", type=int, help="target layers (default 4)")
    ap.add_argument("--only", nargs="+", choices=MAIN, help="train only these selectors")
    ap.add_argument("--no-curve", action="store_true", help="skip the accuracy-vs-budget runs")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.budgets:
        cfg["budgets"] = args.budgets
    if args.steps:
        cfg["steps"] = args.steps
    if args.pool:
        cfg["n_pool"] = args.pool
    torch.set_num_threads(args.threads)
    if args.target_hidden:
        M.TARGET.update(hidden_size=args.target_hidden, intermediate_size=2 * args.target_hidden)
    if args.target_layers:
        M.TARGET.update(num_hidden_layers=args.target_layers)
    dev = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    main_budget = 0.10

    # ---- data, tokenizer, proxy warm-up, features -------------------------------------------
    mix = make_mixture(cfg["n_pool"], cfg["n_test"], cfg["n_val"], seed=0)
    tok = M.make_tokenizer()
    pad = tok.pad_token_id
    records = mix.records()
    T = M.tokenize(records, tok)
    n = len(records)
    defects = [ex.defect for ex in mix.pool]
    fams = [ex.family for ex in mix.pool]
    log(f"pool {n} records, defects {mix.defect_rates()}")

    t0 = time.perf_counter()
    proxy = M.build(M.PROXY, len(tok), seed=1234, device=dev)
    rng = np.random.default_rng(0)
    warm = rng.choice(n, size=max(8, int(cfg["warm_frac"] * n)), replace=False)
    M.train(proxy, T, warm, cfg["warm_steps"], cfg["batch"], cfg["lr"], 0, pad)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    G = features(proxy, tok, records, out / "feat_pool", cfg["dim"])
    val_recs = [ex.record(f"v{f}{i}") for f in FAMILIES for i, ex in enumerate(mix.val[f])]
    val_fam = [f for f in FAMILIES for _ in mix.val[f]]
    Gval = features(proxy, tok, val_recs, out / "feat_val", cfg["dim"])
    feat_s = time.perf_counter() - t0
    sq = np.einsum("ij,ij->i", G.astype(np.float64), G.astype(np.float64))
    alpha = float(1.0 / np.median(sq[sq > 0]))
    log(
        f"proxy warm-up {warm_s:.1f}s on {len(warm)} rows; features {G.shape} in {feat_s:.1f}s; "
        f"alpha = 1/median|g|^2 = {alpha:.4g}"
    )

    # ---- selections ---------------------------------------------------------------------------
    def gradient_picks(k: int) -> dict[str, tuple[S.Pick, object]]:
        res = {}
        res["topk-compat"] = S.spice_pick(
            G, k, alpha, conflict_penalty=0.0, objective="topk-compat"
        )
        res["diag-compat"] = S.spice_pick(
            G, k, alpha, conflict_penalty=0.1, objective="diag-compat"
        )
        res["fisher"] = S.spice_pick(G, k, alpha, conflict_penalty=0.0)
        res["spice"] = S.spice_pick(G, k, alpha, conflict_penalty=0.1)
        res["spice+"] = S.spice_pick(G, k, alpha, conflict_penalty=0.1, early_stop=0.5)
        return res

    k10 = resolve_k(main_budget, n)
    t0 = time.perf_counter()
    gp = gradient_picks(k10)
    picks: dict[str, S.Pick] = {name: p for name, (p, _) in gp.items()}
    spice_sel = gp["spice"][1]
    picks["full"] = S.Pick(np.arange(n))
    picks["random"] = S.random_pick(n, k10, 0)  # stats for seed 0; each seed redraws below
    picks["less"] = S.less_pick(G, Gval, val_fam, k10)
    lc = M.response_losses(proxy, T, pad)
    unc = M.tokenize(
        [{"id": r["id"], "prompt": "", "response": r["response"]} for r in records], tok
    )
    lu = M.response_losses(proxy, unc, pad)
    picks["ifd"] = S.ifd_pick(lc, lu, k10)
    # a copy: the online schedule trains its proxy as it goes
    online, online_note = try_online(
        copy.deepcopy(proxy), tok, records, out / "online", k10, alpha, cfg["dim"]
    )
    if online is not None:
        picks["online"] = online
    sel_s = time.perf_counter() - t0
    log(f"selections at k = {k10} in {sel_s:.1f}s; online: {online_note}")

    stats = {}
    for name in MAIN:
        if name in picks:
            st = S.subset_stats(G, picks[name].indices, alpha, defects, fams)
            st["jaccard_spice"] = S.jaccard(picks[name].indices, picks["spice"].indices)
            st.update(picks[name].extra)
            stats[name] = st
    theory = S.theory_checks(G, spice_sel, alpha)
    log(f"theory checks: {theory}")

    # budget-curve subsets (random uses the seed; gradient ones are deterministic)
    curve_jobs: dict[tuple[str, float], np.ndarray | None] = {}
    if not args.no_curve:
        for b in cfg["budgets"]:
            kb = max(1, int(round(b * n)))
            if abs(b - main_budget) < 1e-9:
                continue
            g = {nm: p for nm, (p, _) in [
                ("fisher", S.spice_pick(G, kb, alpha, conflict_penalty=0.0)),
                ("spice", S.spice_pick(G, kb, alpha, conflict_penalty=0.1))]}  # fmt: skip
            curve_jobs[("fisher", b)] = g["fisher"].indices
            curve_jobs[("spice", b)] = g["spice"].indices
            curve_jobs[("random", b)] = None

    # ---- training runs ------------------------------------------------------------------------
    runs: list[dict] = []

    def train_eval(name: str, budget: float, idx: np.ndarray, seed: int) -> dict:
        model = M.build(M.TARGET, len(tok), seed=seed, device=dev)
        ts = M.train(model, T, idx, cfg["steps"], cfg["batch"], cfg["lr"], seed, pad)
        acc = M.evaluate(model, tok, mix.test)
        r = {"selector": name, "budget": budget, "seed": seed, "size": int(len(idx)),
             "acc": acc, "train_s": ts.wall_s, "steps": ts.steps, "examples": ts.examples,
             "loss_tokens": ts.tokens, "final_loss": ts.final_loss}  # fmt: skip
        log(
            f"{name:12s} b={budget:<5} seed={seed} n={len(idx):5d} overall={acc['overall']:.3f} "
            f"({ts.wall_s:.1f}s)"
        )
        return r

    # ---- aggregate + write --------------------------------------------------------------------
    def write(final: bool) -> None:
        table = {}
        for name in MAIN:
            want = 1.0 if name == "full" else main_budget
            rs = [r for r in runs if r["selector"] == name and abs(r["budget"] - want) < 1e-9]
            if not rs:
                continue
            row = {}
            for col in list(FAMILIES) + ["overall"]:
                row[col] = mean_std([r["acc"][col] for r in rs])
            row["train_s"] = mean_std([r["train_s"] for r in rs])
            row["examples_seen"] = rs[0]["examples"]
            row["loss_tokens"] = mean_std([r["loss_tokens"] for r in rs])
            table[name] = row
        curve = {}
        for name in CURVE:
            curve[name] = {}
            for b in sorted(set(cfg["budgets"]) | {main_budget}):
                rs = [r for r in runs if r["selector"] == name and abs(r["budget"] - b) < 1e-9]
                if rs:
                    curve[name][str(b)] = mean_std([r["acc"]["overall"] for r in rs])
        wall = time.perf_counter() - t_start
        machine = {"platform": platform.platform(), "python": platform.python_version(),
                   "torch": torch.__version__, "cpus": os.cpu_count(), "threads": args.threads,
                   "processor": platform.processor(), "device": dev,
                   "target": dict(M.TARGET), "proxy": dict(M.PROXY)}  # fmt: skip
        cmd = "PYTHONPATH=python python bench/quality/run.py " + " ".join(sys.argv[1:])
        result = {"config": cfg, "quick": args.quick, "command": cmd.strip(), "machine": machine,
                  "alpha": alpha, "k": k10, "n": n, "defect_rates": mix.defect_rates(),
                  "proxy_params": M.n_params(proxy),
                  "target_params": M.n_params(M.build(M.TARGET, len(tok), 0)),
                  "cost_s": {"proxy_warmup": warm_s, "features": feat_s, "selection": sel_s},
                  "online_note": online_note, "selectors": MAIN, "table": table,
                  "subset_stats": stats, "theory": theory, "curve": curve, "runs": runs,
                  "wall_s": wall, "complete": final}  # fmt: skip
        (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
        (out / "results.md").write_text(render_md(result))
        if final and (not args.quick or os.environ.get("SPICE_QUALITY_PLOT")):
            plot(curve, out / "budget.png")

    for seed in cfg["seeds"]:
        for name in MAIN:
            if name not in picks or (args.only and name not in args.only):
                continue
            idx = picks[name].indices
            if name == "random":
                idx = S.random_pick(n, k10, seed).indices
            runs.append(train_eval(name, 1.0 if name == "full" else main_budget, idx, seed))
            write(False)
    for seed in cfg["seeds"]:
        for (name, b), idx in curve_jobs.items():
            if idx is None:
                idx = S.random_pick(n, max(1, int(round(b * n))), seed).indices
            runs.append(train_eval(name, b, idx, seed))
            write(False)
    write(True)
    log(f"done in {time.perf_counter() - t_start:.0f}s -> {out}")
    return 0


def _f(ms, pct: bool = True) -> str:
    m, s = ms
    if isinstance(m, float) and math.isnan(m):
        return "n/a"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.1f} ± {s:.1f}"


def render_md(r: dict) -> str:
    L = []
    if not r.get("complete"):
        L.append(f"**PARTIAL** (in progress or cut short: {len(r['runs'])} training runs so far)")
        L.append("")
    L.append(f"Command: `{r['command']}`  ")
    L.append(
        f"Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs, "
        f"{r['machine']['threads']} torch threads, torch {r['machine']['torch']}  "
    )
    L.append(
        f"Seeds: {r['config']['seeds']}; pool n = {r['n']}, budget k = {r['k']} (10%); "
        f"{r['config']['steps']} steps × batch {r['config']['batch']} for every subset; "
        f"wall time {r['wall_s'] / 60:.1f} min  "
    )
    L.append(
        f"Proxy {r['proxy_params']:,} params, target {r['target_params']:,} params; "
        f"α = {r['alpha']:.4g} (1/median‖g‖²); pool defects {r['defect_rates']}  "
    )
    L.append(f"Online selector: {r['online_note']}")
    L.append("")
    L.append("Exact-match accuracy (%) on clean held-out test sets, mean ± std over seeds:")
    L.append("")
    cols = list(FAMILIES) + ["overall"]
    L.append("| selector | " + " | ".join(cols) + " | train s |")
    L.append("|---|" + "---|" * (len(cols) + 1))
    for name, row in r["table"].items():
        L.append(
            f"| {name} | "
            + " | ".join(_f(row[c]) for c in cols)
            + f" | {_f(row['train_s'], pct=False)} |"
        )
    L.append("")
    L.append("Subset diagnostics (same features for every selector):")
    L.append("")
    L.append(
        "| selector | size | log-det | Jaccard vs SPICE | neg-aligned | mean conflict | "
        "wrong | dup | filler |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name, st in r["subset_stats"].items():
        L.append(
            f"| {name} | {st['size']} | {st.get('logdet', math.nan):.2f} | "
            f"{st['jaccard_spice']:.2f} | {st['neg_aligned_frac']:.1%} | "
            f"{st['mean_conflict']:.3f} | {st['frac_wrong']:.1%} | {st['frac_dup']:.1%} | "
            f"{st['frac_filler']:.1%} |"
        )
    sp = r["subset_stats"].get("spice+", {})
    if sp:
        L.append("")
        L.append(
            f"SPICE+ (ω = 0.5) kept {sp.get('kept')} of the budget {r['k']} "
            f"({sp.get('kept_frac_of_budget', 0):.0%}); stop reason {sp.get('stop_reason')}."
        )
    th = r["theory"]
    L.append("")
    L.append(
        "Theory checks on the SPICE (λ = 0.1) run: "
        f"Spearman(conflict, Δ) = {th['spearman_conflict_gain']:.3f}, "
        f"Spearman(conflict, |ε|) = {th['spearman_conflict_abs_eps']:.3f}, "
        f"half-life step of Δ = {th['half_life_step']} of {th['picks']}, "
        f"curvature c = {th['curvature_c']:.4f} (greedy factor {th['greedy_factor']:.4f}), "
        f"certified ratio {th['certified_ratio']:.4f}."
    )
    L.append("")
    L.append("Accuracy (overall, %) vs budget:")
    L.append("")
    bs = sorted({b for c in r["curve"].values() for b in c}, key=float)
    L.append("| selector | " + " | ".join(f"{float(b):.0%}" for b in bs) + " |")
    L.append("|---|" + "---|" * len(bs))
    for name, c in r["curve"].items():
        L.append(f"| {name} | " + " | ".join(_f(c[b]) if b in c else "" for b in bs) + " |")
    cs = r["cost_s"]
    L.append("")
    L.append(
        f"Selection cost: proxy warm-up {cs['proxy_warmup']:.1f}s, features "
        f"{cs['features']:.1f}s, all selections {cs['selection']:.1f}s."
    )
    return "\n".join(L) + "\n"


def plot(curve: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001
        return
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=90)
    for name, c in curve.items():
        bs = sorted(c, key=float)
        if not bs:
            continue
        x = [100 * float(b) for b in bs]
        m = [100 * c[b][0] for b in bs]
        s = [100 * c[b][1] for b in bs]
        ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("budget (% of pool)")
    ax.set_ylabel("exact match, overall (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
