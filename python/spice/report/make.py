"""``make_report``: reads the run's selection.json and what is still there, draws the plots and
writes report.md."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..outputs import atomic_write
from .plots import (
    _conflict_plot,
    _epsilon_plot,
    _gains_plot,
    _norms_plot,
    _pool_plot,
    require_matplotlib,
)
from .records import _load_text, _prompt_reply, _snippet
from .stats import _pool_conflict, distribution, high_norm_warning, norm_percentiles

TABLE_ROWS = 20


def _fmt(x: float, spec: str = ".4g") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def make_report(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.md and its plots (gains.png, epsilon.png, conflict.png, and where the store is
    still there pool.png and norms.png) into ``run_dir``.

    Returns the paths written, by name. Needs matplotlib (extra ``[report]``).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``selection.json``.
    """
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    sel_path = run / "selection.json"
    if not sel_path.is_file():
        raise FileNotFoundError(f"{run} has no selection.json (is it a spice run directory?)")
    sel = json.loads(sel_path.read_text(encoding="utf-8"))
    cfg = sel.get("config", {})
    p = sel.get("params", {})
    gains = np.asarray(sel["gains"], dtype=float)
    eps = np.asarray(sel["epsilon"], dtype=float)
    conflict = np.asarray(sel["conflict"], dtype=float)
    align = np.asarray(sel["align"], dtype=float)
    picks = np.asarray(sel["indices"], dtype=np.int64)
    m, n = picks.size, int(sel["n"])
    lam = float(p.get("conflict_penalty") or 0.0)
    out: dict[str, Path] = {}

    # What is still there: the store (features, tokens, losses) and the data (text, sources).
    fisher = pool_conf = store = index = None
    store_note = ""
    store_path = cfg.get("features")
    if not store_path:
        store_note = "selection.json names no feature store"
    elif not Path(store_path).exists():
        store_note = f"the feature store {store_path} is gone (moved or deleted)"
    elif m:
        from .. import select
        from ..formats import open as open_store

        store = open_store(store_path)
        if len(store) != n:
            store_note = f"the feature store {store_path} has {len(store)} rows, the run {n}"
            store = None
    if store is not None:
        index = getattr(store, "index", None)  # other tools' stores record no tokens or losses
        extra: dict[str, Any] = {}
        if cfg.get("budget_tokens") is not None and index is not None:
            from ..pipeline import store_tokens

            extra = dict(budget=cfg["budget_tokens"], cost=store_tokens(store))
        fisher = select(
            store,
            max(1, int(sel["k"])),
            alpha=p.get("alpha", 1.0),
            conflict_penalty=0.0,
            method="lazy",
            **extra,
        )
        pool_conf = _pool_conflict(store, picks)

    pct = sel.get("norm_percentile")
    pct_note = "recorded by the run"
    if pct is not None:
        pct = np.asarray(pct, dtype=float)
    elif store is not None:
        pct = norm_percentiles(store, picks)
        pct_note = "computed from the feature store"
    if store is not None and (store.config or {}).get("normalize", "none") != "none":
        pct, pct_note = None, "the store's rows were normalised when extracted: no raw norms"

    rows_of = np.asarray(index.rows) if index is not None else np.arange(n)
    text = _load_text(
        cfg, run, n, list(store.ids) if store is not None else None, rows_of[picks[:TABLE_ROWS]]
    )

    # ---- plots
    same = ""  # how Fisher's picks compare, for the plot's legend
    if fisher is not None and np.array_equal(fisher.indices, picks):
        same = "the same picks"
    elif fisher is not None and sorted(fisher.indices.tolist()) == sorted(picks.tolist()):
        same = "the same rows, reordered"
    out["gains"] = run / "gains.png"
    _gains_plot(plt, out["gains"], gains, lam, fisher, same, sel["stop_reason"] == "early_stop")
    out["epsilon"] = run / "epsilon.png"
    _epsilon_plot(plt, out["epsilon"], eps)
    out["conflict"] = run / "conflict.png"
    _conflict_plot(plt, out["conflict"], pool_conf, picks, conflict)
    tokens = loss = None
    if index is not None and m:
        tokens = np.asarray(index.tokens, dtype=float)
        loss = np.asarray(index.loss, dtype=float)
        skipped = np.zeros(n, dtype=bool)
        skipped[index.skipped()] = True
        tokens[skipped] = np.nan  # zero rows that can never be picked are no part of the pool
        out["pool"] = run / "pool.png"
        _pool_plot(
            plt,
            out["pool"],
            [
                ("proxy loss (nats/token)", loss, loss[picks]),
                ("length (tokens)", tokens, tokens[picks]),
            ],
        )
    if pct is not None and pct.size:
        out["norms"] = run / "norms.png"
        _norms_plot(plt, out["norms"], pct)

    # ---- text
    timing_path = run / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    elapsed = float(timing.get("elapsed_s") or sel.get("elapsed_s") or 0.0)
    ratio = sel.get("certified_ratio")
    ub = sel.get("opt_upper_bound")
    L = [f"# spice run report: {run.name}", ""]
    warn = high_norm_warning(pct)
    if warn:
        L += [f"> **{warn}**", ""]
    L += [
        "## The selection",
        "",
        f"- selected **{m}** of {n} records (budget {sel['k']}); stop reason: "
        f"**{sel['stop_reason']}** (budget: all k picks made; early_stop: the gain fell below "
        "the SPICE+ threshold; exhausted: nothing left adds information)",
        f"- log det F(S) = {sel['logdet']:.6g}: how much the picks' gradients span together, "
        "log det(I + α Σ g gᵀ) over the picks (more varied picks, larger value)"
        + (
            f"; optimum ≤ {ub:.6g}, so this set is at least **{ratio:.4f}** of the best possible "
            "(certified ratio)"
            if ub is not None and ratio is not None
            else ""
        ),
        f"- α = {p.get('alpha', 1.0):g}: the scale of the Fisher information; λ = {lam:g}: the "
        "weight of the conflict penalty (λ = 0 is plain Fisher greedy)",
    ]
    if m:
        L += [
            f"- Δ_t, the marginal gain: information pick t added given the earlier picks, "
            f"log(1 + α gᵀM⁻¹g) in nats: first {gains[0]:.4g}, last {gains[-1]:.4g} "
            "(gains.png)",
            "- base_t: the gain pick t would have had alone, log(1 + α‖g‖²); it grows with the "
            "gradient's norm",
            f"- ε_t = Δ_t − base_t ≤ 0: the gain lost because earlier picks already covered "
            f"part of this one's direction; mean {eps.mean():.4g}, smallest {eps.min():.4g} "
            "(epsilon.png)",
        ]
    if m > 1:
        L += [
            f"- alignment: cosine between a pick's gradient and the mean gradient of the picks "
            f"before it; **negative-aligned** = share of picks (after the first) with cosine < 0, "
            f"i.e. pointing against the earlier picks: {float(np.mean(align[1:] < 0)):.1%}",
            f"- conflict = max(0, −alignment), 0 when not opposed, 1 when exactly opposite; "
            f"among the picks: mean {float(np.mean(conflict[1:])):.4g}, max "
            f"{float(np.max(conflict)):.4g}; the penalty subtracted λ·conflict from the score",
        ]
    L.append(
        f"- selection time {elapsed:.3f} s ({m / elapsed if elapsed > 0 else math.inf:.1f} "
        f"picks/s), {sel['evaluations']} candidate evaluations (gains recomputed)"
    )
    cons = sel.get("constraints") or {}
    if cons.get("budget") is not None:
        L.append(
            f"- tokens: **{cons['tokens']:.10g}** of a budget of {cons['budget']:.10g} "
            f"({cons['tokens'] / m if m else 0.0:.1f} per record)"
            + ("; the best single record beat the greedy set" if cons.get("safeguard") else "")
        )
    if cons.get("group_counts") is not None:
        L.append(
            "- picks per group (the groups= labels of the run): "
            + ", ".join(f"{g}: {c}" for g, c in cons["group_counts"].items())
        )
    if cons:
        g = sel.get("guarantee")
        L.append(
            f"- guarantee: {g:.4f} of the best feasible set ({sel.get('guarantee_note', '')})"
            if g is not None
            else f"- guarantee: none stated ({sel.get('guarantee_note', '')})"
        )
    if sel["stop_reason"] == "early_stop":
        L.append(
            f"- SPICE+ stopped at pick {m + 1}: Δ fell to ω = "
            f"{p.get('early_stop')} of the first gain"
        )
    manifest = getattr(store, "manifest", None) or {}
    if manifest.get("skipped", {}).get("rows"):
        sk = manifest["skipped"]
        why = ", ".join(f"{c} {r}" for r, c in sorted(sk["reasons"].items(), key=lambda x: -x[1]))
        L.append(
            f"- {sk['rows']} of the {len(store)} records had nothing to learn from and "
            f"got zero rows, never picked ({why}; listed in "
            f"{Path(store.path) / sk.get('list', 'skipped.jsonl')})"
        )
    if store is None:
        L += ["", f"Not shown: {store_note or 'no picks'}; the comparisons with the pool need it."]

    # -- the picks
    L += ["", "## The first picks", ""]
    recs, prec = text["records"], text["pick_records"]
    if m == 0:
        L.append("No picks.")
    else:
        if recs is None:
            L.append(
                f"The records' text is not available here: {text['note']}"
                + ("; the text below comes from the run's own subset file." if prec else ".")
            )
            L.append("")
        shown = min(m, TABLE_ROWS)
        L += [
            f"The first {shown} of the {m} picks, in pick order (loss: the proxy model's mean "
            "cross-entropy on the reply, nats/token; tokens: length after truncation):",
            "",
            "| t | id | tokens | loss | Δ_t | prompt | reply |",
            "|---:|---|---:|---:|---:|---|---|",
        ]
        ids = list(store.ids) if store is not None else None
        for t in range(shown):
            i = int(picks[t])
            rec = None
            if recs is not None:
                rec = recs.get(int(rows_of[i]))
            elif prec is not None and t < len(prec):
                rec = prec[t]
            rid = ids[i] if ids is not None else (rec.id if rec is not None else str(i))
            prompt, reply = _prompt_reply(rec) if rec is not None else ("", "")
            L.append(
                f"| {t + 1} | {_snippet(rid, 30)} | "
                f"{_fmt(tokens[i], '.0f') if tokens is not None else 'n/a'} | "
                f"{_fmt(loss[i], '.3f') if loss is not None else 'n/a'} | {gains[t]:.4g} | "
                + (
                    f"{_snippet(prompt)} | {_snippet(reply)} |"
                    if rec is not None
                    else "(text not available) | |"
                )
            )

    # -- picks against the pool
    if tokens is not None and loss is not None:
        dl, dt = distribution(loss, picks), distribution(tokens, picks)
        L += [
            "",
            "## Picks against the pool",
            "",
            "Pool: every record that got features (rows with no loss or no features left out); "
            "mean, median and 10th–90th percentile.",
            "",
            "| | picks | pool |",
            "|---|---:|---:|",
        ]
        for name, d, spec in (("loss (nats/token)", dl, ".3f"), ("length (tokens)", dt, ".1f")):
            for stat in ("mean", "median"):
                L.append(
                    f"| {name}, {stat} | {_fmt(d['picks'][stat], spec)} | "
                    f"{_fmt(d['pool'][stat], spec)} |"
                )
            L.append(
                f"| {name}, 10th–90th percentile | {_fmt(d['picks']['p10'], spec)}–"
                f"{_fmt(d['picks']['p90'], spec)} | {_fmt(d['pool']['p10'], spec)}–"
                f"{_fmt(d['pool']['p90'], spec)} |"
            )
        L += [
            "",
            f"The picks' mean loss is {_fmt(dl['picks']['mean'], '.3f')} against the pool's "
            f"{_fmt(dl['pool']['mean'], '.3f')}, their mean length "
            f"{_fmt(dt['picks']['mean'], '.1f')} against {_fmt(dt['pool']['mean'], '.1f')} "
            "tokens (pool.png). A higher loss means the proxy model found the picks more "
            "surprising.",
            "",
            "![picks against the pool](pool.png)",
        ]
    elif store is not None:
        L += ["", "The feature store records no tokens or losses (another tool's gradients)."]

    # -- sources
    if text["groups"] is not None:
        field_name, names, codes = text["groups"]
        pool_counts = np.bincount(codes, minlength=len(names))
        pick_counts = np.bincount(codes[rows_of[picks]], minlength=len(names))
        L += [
            "",
            f"## Picks per {field_name}",
            "",
            f"Each record's `{field_name}` field: picks' share against the pool's share.",
            "",
            f"| {field_name} | picks | share of picks | share of pool |",
            "|---|---:|---:|---:|",
        ]
        for g in np.argsort(-pool_counts, kind="stable"):
            c = int(pick_counts[g])
            L.append(
                f"| {_snippet(names[g], 40)} | {c} | {c / max(m, 1):.1%} | "
                f"{pool_counts[g] / codes.size:.1%} |"
            )

    # -- gradient norms
    L += ["", "## Where the picks sit among the gradient norms", ""]
    if pct is not None and pct.size:
        med = float(np.median(pct))
        L += [
            "A pick's norm percentile: the share of the pool's records whose raw gradient norm "
            "‖g‖ is below the pick's (ties count half). Picks blind to the norm would have a "
            f"median near 50%; these picks: median **{med:.1f}%**, "
            f"{float(np.mean(pct > 90)):.0%} of them above the 90th percentile ({pct_note}).",
            "",
            "The log-det gain starts from log(1 + α‖g‖²), and ‖g‖ grows with how surprised the "
            "proxy model is, so greedy selection on raw gradients leans towards the largest "
            "norms: wrong answers, junk, short replies.",
        ]
        if warn:
            L += ["", f"**{warn}**"]
        L += ["", "![gradient norms](norms.png)"]
    else:
        L.append(f"Not available: {pct_note if store is not None else store_note}.")

    # -- SPICE against Fisher
    L += ["", "## The conflict penalty", ""]
    if fisher is not None:
        fi = fisher.indices
        common = len(set(picks.tolist()) & set(fi.tolist()))
        if lam == 0:
            L.append(
                "This run had λ = 0: it is plain Fisher greedy, and the dashed Fisher line "
                "repeats it."
            )
        elif same == "the same picks":
            L.append(
                f"The penalty (λ = {lam:g}) changed nothing: SPICE and Fisher greedy (λ = 0) on "
                f"the same features picked the same {m} records in the same order, so their two "
                "gain curves lie on top of each other in gains.png."
            )
        elif common == m == len(fi):
            diff = [t for t in range(m) if picks[t] != fi[t]]
            L.append(
                f"The penalty (λ = {lam:g}) did not change which records were picked: SPICE and "
                f"Fisher greedy (λ = 0) on the same features picked the same {m} records, only in "
                f"another order from pick {diff[0] + 1} on, so the two gain curves in gains.png "
                "nearly coincide (same log det)."
            )
        else:
            diff = [t for t in range(min(m, len(fi))) if picks[t] != fi[t]]
            first = f"; the sequences first differ at pick {diff[0] + 1}" if diff else ""
            L.append(
                f"With λ = {lam:g}, {m - common} of the {m} picks are not among Fisher greedy's "
                f"(λ = 0) {len(fi)} picks{first}."
            )
        union = len(set(picks.tolist()) | set(fi.tolist()))
        L += [
            "",
            f"- Fisher greedy (λ = 0) on the same features: log det {fisher.logdet:.6g} against "
            f"this run's {sel['logdet']:.6g}; Jaccard overlap of the two sets "
            f"{common / max(union, 1):.3f} (shared picks / picks in either)",
        ]
    if pool_conf is not None:
        L.append(
            "- conflict with the picks' mean: max(0, −cos) between a record's gradient and the "
            f"mean of all picks: pool mean {pool_conf.mean():.4g} "
            f"({float(np.mean(pool_conf > 0)):.1%} of the pool above 0), picks mean "
            f"{pool_conf[picks].mean():.4g} (conflict.png)."
        )
    else:
        L.append("- conflict.png shows each pick's conflict at the time it was picked.")
    L += [
        "",
        "![gains](gains.png)",
        "![epsilon](epsilon.png)",
        "![conflict](conflict.png)",
        "",
    ]
    out["report"] = atomic_write(run / "report.md", "\n".join(L))
    return out
