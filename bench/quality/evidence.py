"""Does the selection help? The pre-registered experiment (decision rule: bench/quality/RESULTS.md,
"The pre-registered experiment", written before the run).

    PYTHONPATH=python python bench/quality/evidence.py            # the run (SmolLM2-135M)
    PYTHONPATH=python python bench/quality/evidence.py --quick    # CI: tiny config model

A 320-row universe (evidence_data.py: five verifiable families and ShareGPT chat, 25% realistic
defects, 5% near-duplicates) is featurised once with SmolLM2-135M-Instruct after a short warm-up
of a proxy adapter on a random 5%, with given-label and with sampled-target gradients. Eight pools
of 160 rows are drawn from it; in each, every arm picks k = 16 rows and a fresh LoRA adapter on the
untuned model is trained on them for a fixed number of epochs (batch 4). The primary metric is the
teacher-forced NLL per token of the gold answers of a fixed held-out set, macro-averaged over the
six groups, as Δ against the untuned model (lower is better).

Every stage writes a JSON file under ``--out`` when it finishes and is skipped when rerun with the
same configuration (another configuration in the same folder is refused); feature extraction
resumes inside its stage. ``results.md`` and ``results.json`` are rebuilt after every run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evidence_data as E  # noqa: E402
import numpy as np  # noqa: E402
import real_model as R  # noqa: E402
import torch  # noqa: E402

import spice  # noqa: E402
from spice.features import LoraSpec, extract  # noqa: E402

warnings.filterwarnings("ignore", message=".*torch_dtype.*")

FULL = dict(
    n=320,
    pools=8,
    pool_size=160,
    k=16,
    epochs=6,
    batch=4,
    lr=1e-3,
    max_length=96,
    warmup_steps=20,
    warmup_frac=0.05,
    dim=8192,
    full_epochs=1,
    full_pools=2,
    penalty=0.1,
    n_test=15,
    n_wrong_test=8,
    n_chat_test=10,
    seed=0,
)
QUICK = dict(
    FULL,
    n=80,
    pools=2,
    pool_size=40,
    k=6,
    epochs=2,
    warmup_steps=2,
    dim=256,
    n_test=3,
    n_wrong_test=3,
    n_chat_test=3,
    max_length=64,
    full_pools=1,
)
# arms in the order they run in a pool; "spice" (given, raw, λ > 0) is trained only when its
# picks differ from Fisher's (λ = 0) in that pool, otherwise it is Fisher's run. "full" (the
# whole pool, one epoch) is a reference in the first ``full_pools`` pools only: it costs ten
# subset runs' tokens. Sampled targets on unit rows are picked and described, not trained.
ARMS = ("random_a", "random_b", "clean", "fisher", "spice", "unit", "sampled")
CANDIDATES = ("spice", "unit", "sampled")
LABEL = {
    "random_a": "random (draw a)",
    "random_b": "random (draw b)",
    "random": "random (mean of a, b)",
    "clean": "oracle-clean random (positive control)",
    "fisher": "Fisher (given labels, raw, λ = 0)",
    "spice": "SPICE (given labels, raw, λ = 0.1)",
    "unit": "SPICE, unit rows (given labels)",
    "sampled": "SPICE, sampled targets (raw)",
    "sampled_unit": "SPICE, sampled targets, unit rows",
    "full": "full pool (160 rows, 1 epoch)",
}


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- training and evaluation ------------------------------------------------------------------


def train(
    base, T: R.Tok, rows: list[int], *, epochs: int, batch: int, lr: float, seed: int, pad: int
):
    """A fresh LoRA adapter (seeded) on ``base`` trained on ``rows``: ``epochs`` passes, each a
    seeded shuffle cut into batches of ``batch`` examples; AdamW, token-mean response loss per
    batch, 10% linear warm-up then cosine decay, gradient norm clipped to 1."""
    rows = [int(r) for r in rows if T.mask[int(r)].any()]
    model = R.add_lora(base, seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(rows) / batch)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(
            (s + 1) / warm,
            0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm)))),
        ),
    )
    rng = np.random.default_rng(seed)
    tokens = 0
    losses = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = rng.permutation(rows)
        for s in range(0, len(perm), batch):
            mb = [int(r) for r in perm[s : s + batch]]
            x, att, y = R._batch(T, mb, pad)
            ce, m = R._token_ce(model, x, att, y)
            loss = (ce * m).sum() / m.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            tokens += int(att.sum())
            losses.append(float(loss.detach()))
    model.eval()
    stats = {
        "steps": steps,
        "examples": epochs * len(rows),
        "tokens": tokens,
        "train_s": time.perf_counter() - t0,
        "final_loss": float(np.mean(losses[-4:])),
    }
    return model, stats


@torch.no_grad()
def nll(model, T: R.Tok, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Per record: mean NLL per response token (nats) and the number of response tokens."""
    per = R.response_losses(model, T, pad)
    n = np.asarray([int(m[1:].sum()) for m in T.mask], dtype=np.int64)
    return per, n


def evaluate(model, ev: dict, pad: int) -> dict:
    """Token-weighted NLL of the gold answers per group, of the wrong answers per family, and
    (``gold_w``) of the gold answers of the prompts that have a wrong answer evaluated."""
    out: dict[str, Any] = {"gold": {}, "wrong": {}, "gold_w": {}}
    for what in ("gold", "wrong"):
        for g, T in ev[what].items():
            per, n = nll(model, T, pad)
            ok = n > 0
            out[what][g] = float((per[ok] * n[ok]).sum() / n[ok].sum())
            if what == "gold" and g in ev["wrong"]:
                m = len(ev["wrong"][g].ids)
                okm = ok[:m]
                out["gold_w"][g] = float((per[:m][okm] * n[:m][okm]).sum() / n[:m][okm].sum())
    return out


# ---- selection --------------------------------------------------------------------------------


def unit_rows(G: np.ndarray) -> np.ndarray:
    nrm = np.linalg.norm(G, axis=1, keepdims=True)
    return np.divide(G, nrm, out=np.zeros_like(G), where=nrm > 0)


def pick_arms(
    pool: np.ndarray,
    Gg: np.ndarray,
    Gs: np.ndarray,
    uni: list[E.Item],
    cfg: dict,
    p: int,
    alpha_g: float,
    alpha_s: float,
) -> dict[str, list[int]]:
    """Universe rows each arm picks from ``pool`` (the universe rows of pool ``p``)."""
    k = cfg["k"]
    rng = np.random.default_rng([cfg["seed"], p, 17])
    clean = [int(i) for i in pool if uni[i].defect == "clean"]
    lam = cfg["penalty"]

    def sel(G: np.ndarray, alpha: float, lam: float) -> list[int]:
        s = spice.select(
            np.ascontiguousarray(G[pool]), k, alpha=alpha, conflict_penalty=lam, method="lazy"
        )
        return [int(pool[i]) for i in s.indices]

    return {
        "random_a": [int(i) for i in rng.choice(pool, k, replace=False)],
        "random_b": [int(i) for i in rng.choice(pool, k, replace=False)],
        "clean": [int(i) for i in rng.choice(clean, k, replace=False)],
        "fisher": sel(Gg, alpha_g, 0.0),
        "spice": sel(Gg, alpha_g, lam),
        "unit": sel(unit_rows(Gg), 1.0, lam),
        "sampled": sel(Gs, alpha_s, lam),
        "sampled_unit": sel(unit_rows(Gs), 1.0, lam),
        "full": [int(i) for i in pool],
    }


def composition(rows: list[int], pool: np.ndarray, uni: list[E.Item], norms: np.ndarray) -> dict:
    """Defect and group shares of ``rows``, and their median percentile of the pool's raw
    given-label gradient norms."""
    out: dict[str, Any] = {}
    for d in E.DEFECTS:
        out[d] = sum(uni[i].defect == d for i in rows) / len(rows)
    ver = [i for i in rows if uni[i].group in E.FAMILIES]
    out["wrong_among_verifiable"] = (
        sum(uni[i].defect == "wrong" for i in ver) / len(ver) if ver else float("nan")
    )
    for g in E.GROUPS:
        out["group_" + g] = sum(uni[i].group == g for i in rows) / len(rows)
    pn = norms[pool]
    pct = [100.0 * float((pn < norms[i]).mean() + 0.5 * (pn == norms[i]).mean()) for i in rows]
    out["norm_percentile_median"] = float(np.median(pct))
    return out


# ---- analysis ---------------------------------------------------------------------------------


def macro(ev: dict, base: dict) -> float:
    return float(np.mean([ev["gold"][g] - base["gold"][g] for g in base["gold"]]))


def uptake(ev: dict, base: dict) -> float:
    """Mean over families of the change in NLL(gold) − NLL(wrong): > 0 moved toward the wrong
    answers."""
    fams = list(base["wrong"])
    return float(
        np.mean(
            [
                (ev["gold_w"][f] - ev["wrong"][f]) - (base["gold_w"][f] - base["wrong"][f])
                for f in fams
            ]
        )
    )


def holm(ps: dict[str, float]) -> dict[str, float]:
    names = sorted(ps, key=lambda n: ps[n])
    m = len(names)
    out: dict[str, float] = {}
    running = 0.0
    for j, n in enumerate(names):
        running = max(running, min(1.0, (m - j) * ps[n]))
        out[n] = running
    return out


def analyse(runs: dict, base: dict, cfg: dict, epochs_note: str) -> dict:
    from scipy import stats

    pools = sorted({p for p, _ in runs})
    done = [p for p in pools if all((p, a) in runs for a in ARMS)]
    res: dict[str, Any] = {"pools_done": len(done), "epochs_note": epochs_note}
    if not done:
        return res
    arms = list(ARMS)
    M = {a: np.array([macro(runs[(p, a)]["eval"], base) for p in done]) for a in arms}
    M["random"] = (M["random_a"] + M["random_b"]) / 2
    U = {a: np.array([uptake(runs[(p, a)]["eval"], base) for p in done]) for a in arms}
    U["random"] = (U["random_a"] + U["random_b"]) / 2
    groups = list(base["gold"])
    FAM = {
        a: {
            g: np.array([runs[(p, a)]["eval"]["gold"][g] - base["gold"][g] for p in done])
            for g in groups
        }
        for a in arms
    }
    FAM["random"] = {g: (FAM["random_a"][g] + FAM["random_b"][g]) / 2 for g in groups}
    fp = [p for p in pools if (p, "full") in runs]
    if fp:
        M["full"] = np.array([macro(runs[(p, "full")]["eval"], base) for p in fp])
        U["full"] = np.array([uptake(runs[(p, "full")]["eval"], base) for p in fp])
        FAM["full"] = {
            g: np.array([runs[(p, "full")]["eval"]["gold"][g] - base["gold"][g] for p in fp])
            for g in groups
        }
    res["macro"] = {
        a: {
            "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "per_pool": v.tolist(),
        }
        for a, v in M.items()
    }
    res["uptake"] = {a: float(v.mean()) for a, v in U.items()}
    res["per_group"] = {a: {g: float(v.mean()) for g, v in fg.items()} for a, fg in FAM.items()}
    n = len(done)
    # seed noise: two random draws of the same arm differ by this much per pool
    sd_ab = float(np.std(M["random_a"] - M["random_b"], ddof=1)) if n > 1 else float("nan")
    sigma = sd_ab / math.sqrt(2)
    t = stats.t.ppf(0.975, max(1, n - 1)) + stats.t.ppf(0.80, max(1, n - 1))
    mde = float(t * math.sqrt(1.5) * sigma / math.sqrt(n)) if n > 1 else float("nan")
    res["noise"] = {"sd_random_a_minus_b": sd_ab, "sigma_arm": sigma, "mde_macro": mde}
    mde_f = {}
    for g in groups:
        sdg = float(np.std(FAM["random_a"][g] - FAM["random_b"][g], ddof=1)) if n > 1 else 0.0
        mde_f[g] = float(t * math.sqrt(1.5) * sdg / math.sqrt(2) / math.sqrt(n)) if n > 1 else 0.0
    res["noise"]["mde_group"] = mde_f
    if n < 2:
        return res

    def paired(a: np.ndarray, b: np.ndarray) -> dict:
        d = a - b
        p = (
            float(stats.ttest_rel(a, b).pvalue)
            if np.any(d != d[0])
            else (0.0 if d[0] != 0 else 1.0)
        )
        return {
            "mean_diff": float(d.mean()),
            "p": p,
            "pools_lower": int((d < 0).sum()),
            "pools": int(len(d)),
        }

    ctrl = paired(M["clean"], M["random"])
    ctrl["passes"] = bool(ctrl["mean_diff"] < 0 and ctrl["p"] < 0.05)
    res["positive_control"] = ctrl
    tests = {}
    for a in CANDIDATES:
        tests[f"{a}<random"] = paired(M[a], M["random"])
        tests[f"{a}<fisher"] = paired(M[a], M["fisher"])
    adj = holm({k: v["p"] for k, v in tests.items()})
    for k_, v in tests.items():
        v["p_holm"] = adj[k_]
    res["tests"] = tests
    verdict = {}
    for a in CANDIDATES:
        ok = True
        why = []
        for ref in ("random", "fisher"):
            tt = tests[f"{a}<{ref}"]
            if not (tt["mean_diff"] < 0 and tt["p_holm"] < 0.05):
                ok = False
                why.append(f"vs {ref}: Δ {tt['mean_diff']:+.4f}, Holm p {tt['p_holm']:.3g}")
            if tt["pools_lower"] < n - 1:
                ok = False
                why.append(f"vs {ref}: lower in {tt['pools_lower']} of {n} pools")
        worse = [
            g for g in groups if float((FAM[a][g] - FAM["random"][g]).mean()) > max(mde_f[g], 0.0)
        ]
        if worse:
            ok = False
            why.append("worse than random beyond the detectable effect on " + ", ".join(worse))
        if not ctrl["passes"]:
            ok = False
            why.append("the positive control did not pass")
        verdict[a] = {"helps": ok, "why_not": why}
    res["verdict"] = verdict
    return res


def fmt_table(res: dict, comp: dict, runs: dict, base: dict) -> str:
    lines = [
        "| arm | macro ΔNLL (mean ± sd over pools) | noise uptake | "
        + " | ".join(f"Δ {g}" for g in base["gold"])
        + " |",
        "|---|---|---|" + "---|" * len(base["gold"]),
    ]
    for a in ("random", "random_a", "random_b") + ARMS[2:] + ("full",):
        if a not in res.get("macro", {}):
            continue
        m = res["macro"][a]
        cells = " | ".join(f"{res['per_group'][a][g]:+.3f}" for g in base["gold"])
        lines.append(
            f"| {LABEL[a]} | {m['mean']:+.4f} ± {m['sd']:.4f} | {res['uptake'][a]:+.3f} | {cells} |"
        )
    lines += [
        "",
        "Composition of the picks (mean over pools; the pool's own shares in the last row):",
        "",
        "| arm | wrong | wrong among verifiable | misaligned | truncated | offlang | dup | "
        "chat | median norm pct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for a in list(ARMS) + ["sampled_unit", "full", "pool"]:
        if a not in comp:
            continue
        c = comp[a]
        lines.append(
            f"| {LABEL.get(a, 'the pools themselves')} | {c['wrong']:.1%} | "
            f"{c['wrong_among_verifiable']:.1%} | {c['misaligned']:.1%} | "
            f"{c['truncated']:.1%} | {c['offlang']:.1%} | {c['dup']:.1%} | "
            f"{c['group_chat']:.1%} | {c['norm_percentile_median']:.0f} |"
        )
    return "\n".join(lines)


def report(
    out: Path,
    runs: dict,
    base: dict,
    cfg: dict,
    picks: dict,
    comp_all: dict,
    epochs_note: str,
    walls: dict,
) -> dict:
    res = analyse(runs, base, cfg, epochs_note)
    comp = {
        a: {
            k_: float(np.nanmean([comp_all[p][a][k_] for p in comp_all]))
            for k_ in next(iter(comp_all.values()))[a]
        }
        for a in next(iter(comp_all.values()))
    }
    res["composition"] = comp
    res["config"] = cfg
    res["walls"] = walls
    res["tokens_seen"] = {
        a: float(np.mean([runs[k_]["train"]["tokens"] for k_ in runs if k_[1] == a]))
        for a in ARMS + ("full",)
        if any(k_[1] == a for k_ in runs)
    }
    res["examples_seen"] = {
        a: float(np.mean([runs[k_]["train"]["examples"] for k_ in runs if k_[1] == a]))
        for a in ARMS + ("full",)
        if any(k_[1] == a for k_ in runs)
    }
    res["same_picks_spice_fisher"] = {
        str(p): picks[p]["spice"] == picks[p]["fisher"] for p in picks
    }
    write_json(out / "results.json", res)
    md = [
        f"# Evidence run: {res['pools_done']} of {cfg['pools']} pools done",
        "",
        "Untuned model NLL per group: "
        + ", ".join(f"{g} {v:.3f}" for g, v in base["gold"].items()),
        "",
        epochs_note,
        "",
    ]
    if "macro" in res:
        md.append(fmt_table(res, comp, runs, base))
    for key in ("noise", "positive_control", "tests", "verdict"):
        if key in res:
            md += ["", f"## {key}", "", "```", json.dumps(res[key], indent=1), "```"]
    (out / "results.md").write_text("\n".join(md) + "\n")
    return res


# ---- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny config model: checks the harness")
    ap.add_argument("--out", help="output folder (default bench/quality/out/evidence[-quick])")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: steadiest on a shared 2-core machine)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    here = Path(__file__).resolve().parent
    out = Path(args.out or here / "out" / ("evidence-quick" if args.quick else "evidence"))
    st = out / "stages"
    st.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(
        json.dumps({**cfg, "quick": args.quick}, sort_keys=True).encode()
    ).hexdigest()[:16]
    kf = read_json(out / "config.json")
    if kf is not None and kf["key"] != key:
        raise SystemExit(f"{out} holds a run with another configuration; use another --out")
    write_json(out / "config.json", {"key": key, "config": cfg})
    walls: dict[str, float] = read_json(st / "walls.json") or {}

    def timed(name: str, t0: float) -> None:
        walls[name] = walls.get(name, 0.0) + time.perf_counter() - t0
        write_json(st / "walls.json", walls)

    # the universe
    if args.quick:
        import real

        chat = real.quick_chat()
        other = [
            (
                f"o{i}_0",
                f"Bonjour, peux-tu m'aider avec la question {i} ?",
                f"Bien sûr, voici une réponse en français numéro {i}.",
            )
            for i in range(8)
        ]
        uni_obj = E.make_universe(
            cfg["n"],
            n_test=cfg["n_test"],
            n_chat_test=cfg["n_chat_test"],
            seed=cfg["seed"],
            sharegpt=(chat, other),
        )
        base_model, tok = R.tiny_model(cfg["seed"])
    else:
        uni_obj = E.make_universe(
            cfg["n"], n_test=cfg["n_test"], n_chat_test=cfg["n_chat_test"], seed=cfg["seed"]
        )
        base_model, tok = R.load_smollm(log=log)
    uni = uni_obj.rows
    records = uni_obj.records()
    with open(out / "universe.jsonl", "w") as f:
        for i, r in enumerate(uni):
            f.write(
                json.dumps(
                    {
                        "row": i,
                        "group": r.group,
                        "defect": r.defect,
                        "key": r.key,
                        "user": r.user,
                        "answer": r.answer,
                    }
                )
                + "\n"
            )
    pad = tok.pad_token_id
    T = R.tokenize_all(records, tok, cfg["max_length"])
    ev = {
        "gold": {
            g: R.tokenize_all(
                [r.record(f"t{g}{i}") for i, r in enumerate(rows)], tok, cfg["max_length"]
            )
            for g, rows in uni_obj.test.items()
        },
        "wrong": {
            g: R.tokenize_all(
                [r.record(f"w{g}{i}") for i, r in enumerate(rows[: cfg["n_wrong_test"]])],
                tok,
                cfg["max_length"],
            )
            for g, rows in uni_obj.test_wrong.items()
        },
    }

    # the warmed proxy and its features (given and sampled targets)
    feats = {}
    proxy = None
    for kind in ("given", "sampled"):
        store_dir = out / f"features-{kind}"
        if (
            not (store_dir / "manifest.json").is_file()
            or read_json(st / f"features-{kind}.json") is None
        ):
            if proxy is None:
                t0 = time.perf_counter()
                rng = np.random.default_rng([cfg["seed"], 99])
                nw = max(cfg["batch"], round(cfg["warmup_frac"] * cfg["n"]))
                wrows = [int(i) for i in rng.choice(cfg["n"], nw, replace=False)]
                ep = max(1, math.ceil(cfg["warmup_steps"] / math.ceil(nw / cfg["batch"])))
                wm, wst = train(
                    base_model,
                    T,
                    wrows,
                    epochs=ep,
                    batch=cfg["batch"],
                    lr=cfg["lr"],
                    seed=1000,
                    pad=pad,
                )
                proxy = wm.merge_and_unload()
                proxy.eval()
                write_json(st / "warmup.json", {"rows": wrows, **wst})
                timed("warmup", t0)
                log(
                    f"proxy warm-up: {wst['steps']} steps on {nw} random rows, "
                    f"{wst['train_s']:.0f} s"
                )
            t0 = time.perf_counter()
            log(f"features ({kind} targets) of {len(records)} rows")
            extract(
                proxy,
                tok,
                records,
                store_dir,
                dim=cfg["dim"],
                lora=LoraSpec(),
                max_length=cfg["max_length"],
                dtype="float32",
                targets=kind,
                seed=cfg["seed"],
                progress=False,
                checkpoint_seconds=30.0,
            )
            write_json(st / f"features-{kind}.json", {"rows": len(records)})
            timed(f"features-{kind}", t0)
            log(f"features ({kind}) done in {walls[f'features-{kind}']:.0f} s")
        feats[kind] = np.asarray(spice.FeatureStore.open(store_dir).features, dtype=np.float64)
    Gg, Gs = feats["given"], feats["sampled"]
    norms = np.linalg.norm(Gg, axis=1)
    med = lambda G: float(np.median(np.einsum("ij,ij->i", G, G)[np.any(G != 0, axis=1)]))  # noqa: E731
    alpha_g, alpha_s = 1.0 / med(Gg), 1.0 / med(Gs)

    # the untuned model
    base = read_json(st / "baseline.json")
    if base is None:
        t0 = time.perf_counter()
        base = evaluate(base_model, ev, pad)
        write_json(st / "baseline.json", base)
        timed("baseline", t0)

    # pools and picks
    rngp = np.random.default_rng([cfg["seed"], 7])
    pools = [
        np.sort(rngp.choice(cfg["n"], cfg["pool_size"], replace=False)) for _ in range(cfg["pools"])
    ]
    picks = {}
    comp_all = {}
    for p, pool in enumerate(pools):
        f = st / f"picks-{p}.json"
        got = read_json(f)
        if got is None:
            got = pick_arms(pool, Gg, Gs, uni, cfg, p, alpha_g, alpha_s)
            write_json(f, got)
        picks[p] = got
        comp_all[p] = {a: composition(rows, pool, uni, norms) for a, rows in got.items()}
        comp_all[p]["pool"] = composition([int(i) for i in pool], pool, uni, norms)

    # go / no-go on the first pool decides the epochs for every pool
    gonogo = read_json(st / "gonogo.json")
    epochs = cfg["epochs"] if gonogo is None else gonogo["epochs"]
    runs: dict[tuple[int, str], dict] = {}

    def run_pool(p: int, epochs: int) -> None:
        for a in ARMS + (("full",) if p < cfg["full_pools"] else ()):
            f = st / f"run-e{epochs}-{p}-{a}.json"
            got = read_json(f)
            if got is None:
                t0 = time.perf_counter()
                if a == "spice" and picks[p]["spice"] == picks[p]["fisher"]:
                    got = dict(runs[(p, "fisher")], same_as="fisher")
                else:
                    ep = cfg["full_epochs"] if a == "full" else epochs
                    model, tr = train(
                        base_model,
                        T,
                        picks[p][a],
                        epochs=ep,
                        batch=cfg["batch"],
                        lr=cfg["lr"],
                        seed=p,
                        pad=pad,
                    )
                    got = {"train": tr, "eval": evaluate(model, ev, pad)}
                    del model
                write_json(f, got)
                timed("training", t0)
                log(
                    f"pool {p} {a}: macro Δ {macro(got['eval'], base):+.4f} "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
            runs[(p, a)] = got

    run_pool(0, epochs)
    note = f"Training: {epochs} epochs of the k = {cfg['k']} picks at batch {cfg['batch']}."
    if gonogo is None:
        r = {a: macro(runs[(0, a)]["eval"], base) for a in ARMS}
        rnd = (r["random_a"] + r["random_b"]) / 2
        noise = abs(r["random_a"] - r["random_b"])
        ok = r["clean"] < rnd - noise
        gonogo = {
            "pool0": r,
            "random_mean": rnd,
            "seed_gap": noise,
            "passes": ok,
            "epochs": epochs if ok else epochs + 4,
        }
        write_json(st / "gonogo.json", gonogo)
        log(
            f"go/no-go: clean {r['clean']:+.4f} vs random {rnd:+.4f} ± {noise:.4f}: "
            f"{'go' if ok else 'no-go, training gets 4 more epochs'}"
        )
        if not ok:
            epochs = gonogo["epochs"]
            runs.clear()
            run_pool(0, epochs)
    if not gonogo["passes"]:
        note = (
            f"The go/no-go check failed on pool 0 at {cfg['epochs']} epochs (positive control "
            f"{gonogo['pool0']['clean']:+.4f} vs random {gonogo['random_mean']:+.4f} ± "
            f"{gonogo['seed_gap']:.4f}); every pool was trained for {epochs} epochs instead."
        )
    for p in range(1, cfg["pools"]):
        run_pool(p, epochs)
        report(out, runs, base, cfg, picks, comp_all, note, walls)
    res = report(out, runs, base, cfg, picks, comp_all, note, walls)
    log(f"done: {out / 'results.md'}")
    if "verdict" in res:
        for a, v in res["verdict"].items():
            log(f"{LABEL[a]}: {'HELPS' if v['helps'] else 'no: ' + '; '.join(v['why_not'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
