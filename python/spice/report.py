"""``spice report RUN_DIR``: plots and a Markdown summary of a finished selection run.

Reads ``RUN_DIR/selection.json`` (written by ``spice select``, ``spice run`` or ``spice demo``).
What it can show depends on what is still there:

- always: the run's numbers, each with a one-line definition, and the gain, ε and conflict traces;
- the feature store it names (``config.features``): the comparison with plain Fisher greedy
  (λ = 0) on the same features, the conflict of the whole pool, each record's tokens and proxy
  loss (picks against the pool), and where the picks sit among the pool's gradient norms;
- the data (``config.data``, else the run's own ``subset`` file for the picks alone): the first
  picks' text and, when the records carry a source field (``source``, ``family``, ...), the
  picks per source against the pool's shares.

Whatever is missing is said in the report, never silently left out.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import atomic_write

__all__ = [
    "HIGH_NORM_PERCENTILE",
    "HIGH_NORM_WARNING",
    "distribution",
    "high_norm_warning",
    "make_report",
    "norm_percentiles",
    "require_matplotlib",
]

# Above this median percentile the picks are mostly the pool's largest gradients.
HIGH_NORM_PERCENTILE = 80.0
HIGH_NORM_WARNING = (
    "picks concentrate among the largest gradients: often wrong answers and short replies; "
    'consider unit-normalised features (normalize="unit")'
)
# Fields that name where a record came from, in the order they are looked for.
GROUP_FIELDS = ("source", "family", "group", "dataset", "category", "task", "domain")
TABLE_ROWS = 20
_SNIPPET = 60


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or an error naming the extra that installs it (called before a
    run that ends with a report, so that it fails before the work, not after)."""
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "spice report needs matplotlib, which is not installed: pip "
            "install 'spice-select[report]'",
            name="matplotlib",
        ) from e
    return matplotlib


# ----------------------------------------------------------------------------------------------
# numbers


def percentiles_of(norm2: np.ndarray, picks: np.ndarray, block: int = 0) -> np.ndarray:
    """Mid-rank percentiles of ``norm2[picks]`` among all of ``norm2`` ((n,) float64 squared
    norms), counted against the sorted picks ``block`` rows at a time (0: 2^16; each count costs
    O(m))."""
    n = norm2.size
    picks = np.asarray(picks, dtype=np.int64)
    if picks.size == 0:
        return np.empty(0)
    if picks.min() < 0 or picks.max() >= n:
        raise ValueError(f"picks must be row indices in [0, {n}), got {picks.min()}..{picks.max()}")
    pq = norm2[picks]
    order = np.argsort(pq, kind="stable")
    ps = pq[order]
    le = np.zeros(picks.size + 1, dtype=np.int64)  # bin j: rows with ps[j-1] < norm <= ps[j]
    lt = np.zeros(picks.size + 1, dtype=np.int64)  # bin j: rows with ps[j-1] <= norm < ps[j]
    step = block if block > 0 else 1 << 16
    for s in range(0, n, step):
        q = norm2[s : s + step]
        le += np.bincount(np.searchsorted(ps, q, side="left"), minlength=picks.size + 1)
        lt += np.bincount(np.searchsorted(ps, q, side="right"), minlength=picks.size + 1)
    n_le = np.cumsum(le)[: picks.size]
    n_lt = np.cumsum(lt)[: picks.size]
    out = np.empty(picks.size)
    out[order] = 100.0 * (n_lt + n_le) / (2.0 * n)
    return out


def norm_percentiles(G: Any, picks: Any, *, bf16: bool = False, chunk_rows: int = 0) -> np.ndarray:
    """Where each pick's gradient norm sits among the whole pool's, in percent.

    The mid-rank percentile of row p among the n rows of ``G``:
    100 · (#{i: ‖g_i‖ < ‖g_p‖} + #{i: ‖g_i‖ ≤ ‖g_p‖}) / (2n), so a pick with the pool's largest
    norm scores 100 − 50/n, picks drawn uniformly at random have a median near 50, and rows that
    all share one norm (unit-normalised features) sit at 50.

    Args:
        G: (n, d) features as :func:`spice.select` takes them (numpy arrays and memmaps of
            float16/32/64 or bfloat16, stores); read once by the core's norms pass, never
            copied. Norms are those of these raw rows, in float64. (:func:`spice.select` takes
            them from its own norms pass instead.)
        picks: (m,) row indices into G.
        bf16: ``uint16`` G holds raw bfloat16 bit patterns.
        chunk_rows: norms counted against the picks per block (0: 2^16).

    Returns:
        (m,) float64 array in (0, 100), one per pick, in the order of ``picks``.

    Raises:
        ValueError: an index outside [0, n).
    """
    from . import _core
    from ._inputs import as_features

    arr, code = as_features(G, bf16=bf16)
    return percentiles_of(_core.row_norms2(arr, code), np.asarray(picks), int(chunk_rows))


def high_norm_warning(percentiles: Any) -> str | None:
    """The warning line when the picks' median norm percentile is above
    :data:`HIGH_NORM_PERCENTILE`, else None (also for no picks)."""
    p = np.asarray(percentiles, dtype=float) if percentiles is not None else np.empty(0)
    if p.size == 0:
        return None
    med = float(np.median(p))
    if med > HIGH_NORM_PERCENTILE:
        return f"warning: the picks' median gradient-norm percentile is {med:.1f}%: " + (
            HIGH_NORM_WARNING
        )
    return None


def distribution(values: Any, picks: Any) -> dict[str, dict[str, float]]:
    """Mean, median, 10th and 90th percentile and count of ``values`` over the pool and over the
    picks; NaN entries (records with no loss, skipped records) are left out of both.

    Args:
        values: (n,) per-record numbers (e.g. tokens, loss in nats/token).
        picks: (m,) row indices.

    Returns:
        ``{"pool": stats, "picks": stats}``, each ``{"mean", "median", "p10", "p90", "count"}``
        (NaN statistics for an empty set).
    """
    v = np.asarray(values, dtype=np.float64)
    out = {}
    for name, sub in (("pool", v), ("picks", v[np.asarray(picks, dtype=np.int64)])):
        f = sub[np.isfinite(sub)]
        if f.size:
            out[name] = dict(
                mean=float(f.mean()),
                median=float(np.median(f)),
                p10=float(np.percentile(f, 10)),
                p90=float(np.percentile(f, 90)),
                count=float(f.size),
            )
        else:
            out[name] = dict(mean=math.nan, median=math.nan, p10=math.nan, p90=math.nan, count=0.0)
    return out


def _pool_conflict(G: Any, picks: np.ndarray) -> np.ndarray:
    """max(0, −cos(g_x, mean of the picks)) for every row, streamed in blocks."""
    from ._inputs import as_features, row_as_float64
    from ._numerics import ETA

    arr, code = as_features(G)
    mean = row_as_float64(arr, code, picks).mean(axis=0)
    mn = np.linalg.norm(mean)
    out = np.empty(arr.shape[0])
    for s in range(0, arr.shape[0], 8192):
        B = row_as_float64(arr, code, slice(s, s + 8192))
        cos = (B @ mean) / (np.linalg.norm(B, axis=1) * mn + ETA)
        out[s : s + B.shape[0]] = np.maximum(0.0, -cos)
    return out


# ----------------------------------------------------------------------------------------------
# records


def _snippet(text: str | None, limit: int = _SNIPPET) -> str:
    """The first words of a text on one line, safe inside a Markdown table cell."""
    t = " ".join((text or "").split())
    if len(t) > limit:
        t = t[: limit - 1].rstrip() + "…"
    return t.replace("|", "\\|") or "(empty)"


def _prompt_reply(rec: Any) -> tuple[str, str]:
    """A record's prompt and reply: the first user and assistant turns of a conversation."""
    if getattr(rec, "kind", "text") == "chat":
        msgs = getattr(rec, "messages", ()) or ()
        user = next((m.get("content", "") for m in msgs if m.get("role") == "user"), "")
        reply = next((m.get("content", "") for m in msgs if m.get("role") == "assistant"), "")
        return user, reply
    return getattr(rec, "prompt", "") or "", getattr(rec, "response", "") or ""


def _json_items(path: Path) -> Any:
    """The objects of a JSON Lines file (or a JSON array), one per record, counted as
    :func:`spice.features.load_records` counts them (blank lines skipped; an unreadable line stays
    a record, as None); None for other formats."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json"):
        return None
    with open(path, "rb") as f:
        if suffix == ".json" and f.read(4096).lstrip().startswith(b"["):
            f.seek(0)
            return iter(json.load(f))

    def lines() -> Any:
        with open(path, "rb") as f:
            for raw in f:
                if raw.strip():
                    try:
                        yield json.loads(raw)
                    except (ValueError, RecursionError):
                        yield None

    return lines()


def _scan(items: Any, ids: list[str] | None, wanted: set[int], path: Path) -> dict:
    """One pass over the raw records: whether their ids match the store's, the parsed records at
    ``wanted`` positions, and for the first of :data:`GROUP_FIELDS` that every record carries as
    a label with 2 to 50 values, each record's label as a small int code. Keeps O(n) ints, not
    the records."""
    from .features.records import RecordError, parse_record

    codes: dict[str, Any] = {f: ({}, []) for f in GROUP_FIELDS}
    got: dict[int, Any] = {}
    n = 0
    same = True
    for pos, obj in enumerate(items):
        obj = obj if isinstance(obj, dict) else {}
        rid = obj.get("id")
        rid = str(pos) if rid is None else str(rid)
        if ids is not None and (pos >= len(ids) or ids[pos] != rid):
            same = False
        for name in [f for f in codes if codes[f] is not None]:
            v = obj.get(name)
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                codes[name] = None
                continue
            table, col = codes[name]
            col.append(table.setdefault(str(v), len(table)))
            if len(table) > 50:
                codes[name] = None
        if pos in wanted:
            try:
                got[pos] = parse_record(obj, str(pos), f"{path} record {pos}")
            except RecordError:
                pass  # an unreadable record shows as "text not available"
        n = pos + 1
    groups = None
    for name in GROUP_FIELDS:
        if codes[name] is not None and len(codes[name][0]) >= 2:
            table, col = codes[name]
            groups = (name, list(table), np.asarray(col, dtype=np.int64))
            break
    return dict(n=n, same=same, records=got, groups=groups)


def _load_text(
    cfg: dict, run: Path, n_store: int, ids: list[str] | None, wanted: np.ndarray
) -> dict:
    """What the report can read of the records: ``records`` ({record position: Record} for the
    ``wanted`` positions, when the data is reachable and matches the store's ids),
    ``pick_records`` (the picks in pick order, from the run's subset file, when the data is not
    readable), ``groups`` ((field, label names, per-record label codes)) and ``note`` (why
    something could not be read). JSON and JSONL data are streamed; other formats are read with
    :func:`spice.features.load_records`."""
    from .features import load_records

    out: dict[str, Any] = dict(records=None, pick_records=None, groups=None, note="")
    data = cfg.get("data")
    split, columns = cfg.get("split"), cfg.get("columns")
    path = Path(data) if isinstance(data, str) and not data.lstrip().startswith("{") else None
    want = {int(i) for i in wanted}
    if path is None:
        out["note"] = "the data was a Python object, not a file; its text is not recorded"
    elif not path.exists():
        out["note"] = f"the data file {path} is gone (moved or deleted)"
    else:
        try:
            items = _json_items(path) if columns is None else None
            if items is not None:
                scan = _scan(items, ids, want, path)
            else:
                recs = load_records(path, invalid="skip", split=split, columns=columns)
                scan = dict(
                    n=len(recs),
                    same=ids is None or [r.id for r in recs] == list(ids),
                    records={i: recs[i] for i in want if i < len(recs)},
                    groups=None,
                )
        except Exception as e:  # a report must still come out; the reason goes into it
            out["note"] = f"{path} could not be read ({type(e).__name__}: {e})"
        else:
            if scan["n"] != n_store or not scan["same"]:
                out["note"] = (
                    f"{path} no longer matches the feature store ({scan['n']} records, the store "
                    f"{n_store} rows, or other ids): it changed since the run"
                )
            else:
                out["records"], out["groups"] = scan["records"], scan["groups"]
    if out["records"] is None and cfg.get("subset"):
        sub = run / cfg["subset"]
        if sub.exists():
            try:
                out["pick_records"] = load_records(sub, invalid="skip", columns=columns)
            except Exception:  # the note above already says the pool's text is unavailable
                out["pick_records"] = None
    return out


# ----------------------------------------------------------------------------------------------
# plots


def _bins(*arrays: np.ndarray, count: int = 30) -> np.ndarray:
    """Histogram edges spanning the finite values of all the arrays (one shared axis)."""
    vals = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return np.linspace(0.0, 1.0, count + 1)
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        pad = max(abs(lo) * 0.05, 0.5)
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, count + 1)


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gains_plot(plt: Any, path: Path, gains, lam, fisher, same: str, early: bool) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    t = np.arange(1, gains.size + 1)
    ax.plot(t, gains, lw=2.2, label=rf"SPICE ($\lambda$ = {lam:g})")
    if fisher is not None:
        ax.plot(
            np.arange(1, len(fisher) + 1),
            fisher.gains,
            "--",
            lw=1.4,
            color="k",
            label=r"Fisher greedy ($\lambda$ = 0)" + (f": {same}" if same else ""),
        )
    if early:
        ax.axvline(gains.size, color="k", lw=0.8, ls=":", label="early stop")
    ax.set_xlabel("pick number t")
    ax.set_ylabel(r"marginal gain $\Delta_t$ (nats)")
    if np.all(gains > 0):
        ax.set_yscale("log")
    ax.legend()
    ax.set_title("Information each pick added, in pick order")
    _save(plt, fig, path)


def _epsilon_plot(plt: Any, path: Path, eps: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(np.arange(1, eps.size + 1), eps)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("pick number t")
    ax.set_ylabel(r"$\varepsilon_t = \Delta_t - \mathrm{base}_t$ (nats)")
    ax.set_title("Gain lost to overlap with earlier picks (0 = none)")
    _save(plt, fig, path)


def _conflict_plot(plt: Any, path: Path, pool_conf, picks, conflict) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if pool_conf is not None:
        sets = [("whole pool", pool_conf), ("picks", pool_conf[picks])]
        ax.set_xlabel("conflict with the mean of the picks, max(0, −cos)")
    else:
        sets = [("picks, at pick time", conflict[1:])]
        ax.set_xlabel("conflict with the earlier picks' mean at pick time, max(0, −cos)")
    pos = [(name, v[v > 0]) for name, v in sets]
    bins = _bins(*[v for _, v in pos])
    drawn = False
    for (name, v), (_, full) in zip(pos, sets):
        zero = 1.0 - v.size / max(full.size, 1)
        if v.size:
            ax.hist(v, bins=bins, alpha=0.55, label=f"{name} ({zero:.0%} of them at 0)")
            drawn = True
    if drawn:
        ax.set_ylabel("rows with conflict > 0")
        ax.legend()
    else:
        ax.text(
            0.5,
            0.5,
            "conflict is 0 everywhere:\nno row points against the picks' mean",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_yticks([])
    ax.set_title("Gradient conflict (rows at 0 are left out of the bars)")
    _save(plt, fig, path)


def _pool_plot(plt: Any, path: Path, panels: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (label, pool, mine) in zip(axes[0], panels):
        pool = pool[np.isfinite(pool)]
        mine = mine[np.isfinite(mine)]
        bins = _bins(pool, mine)
        ax.hist(pool, bins=bins, density=True, alpha=0.5, label=f"pool ({pool.size})")
        ax.hist(mine, bins=bins, density=True, alpha=0.5, label=f"picks ({mine.size})")
        for v, c in ((pool.mean(), "C0"), (mine.mean(), "C1")):
            ax.axvline(v, color=c, lw=1.2, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel("share of rows (density)")
        ax.legend(title="dashed: means")
    fig.suptitle("Picks against the pool")
    _save(plt, fig, path)


def _norms_plot(plt: Any, path: Path, pct: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    x = np.sort(pct)
    y = np.arange(1, x.size + 1) / x.size
    ax.step(
        np.concatenate([[0.0], x, [100.0]]),
        np.concatenate([[0.0], y, [1.0]]),
        where="post",
        lw=2,
        label="picks",
    )
    ax.plot([0, 100], [0, 1], "k--", lw=1, label="uniform (picks blind to the norm)")
    med = float(np.median(pct))
    ax.axvline(med, color="C3", lw=1, ls=":", label=f"picks' median: {med:.1f}%")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("percentile of the pick's gradient norm among the pool's (%)")
    ax.set_ylabel("share of picks at or below")
    ax.set_title("Where the picks sit among the pool's gradient norms")
    ax.legend(loc="upper left")
    _save(plt, fig, path)


# ----------------------------------------------------------------------------------------------
# the report


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
        from . import select
        from .formats import open as open_store

        store = open_store(store_path)
        if len(store) != n:
            store_note = f"the feature store {store_path} has {len(store)} rows, the run {n}"
            store = None
    if store is not None:
        index = getattr(store, "index", None)  # other tools' stores record no tokens or losses
        extra: dict[str, Any] = {}
        if cfg.get("budget_tokens") is not None and index is not None:
            from .pipeline import store_tokens

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
