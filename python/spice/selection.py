"""``spice.select``: the exact SPICE greedy (penalised log-det) over gradient features."""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from . import _core
from ._inputs import as_features, describe_bad_row, progress_says_continue, row_as_float64
from .constraints import Constraints, CoreConstraints, guarantee
from .options import (
    DEFAULT,
    METHODS,
    NORMALIZE,
    OBJECTIVES,
    SelectOptions,
    check_normalize,
    check_options,
    resolve_k,
)
from .report import percentiles_of
from .result import Selection
from .store import FeatureStore

__all__ = [
    "METHODS",
    "NORMALIZE",
    "OBJECTIVES",
    "Selection",
    "check_normalize",
    "check_options",
    "resolve_k",
    "select",
]

ProgressFn = Callable[[int, int, int, float], Optional[bool]]


def _bad_row_message(arr: np.ndarray, code: int, row: int, alpha: float, unit: bool) -> str:
    """The refusal of a row, including the one unit rows add: a nonzero row whose squared
    norm underflows float64 (float64 entries below about 1e-162), which cannot be scaled
    exactly."""
    if unit:
        vals = row_as_float64(arr, code, row)
        with np.errstate(over="ignore"):  # an overflowing row is described below
            n2 = float(np.sum(vals * vals))
        if np.all(np.isfinite(vals)) and n2 == 0.0:
            return (
                f"row {row} of G is too small to normalise (normalize='unit'): ||g||^2 underflows "
                f"float64 (largest |entry| {float(np.max(np.abs(vals))):.3g}); rescale the "
                "features (e.g. divide by their largest absolute value)"
            )
    return describe_bad_row(arr, code, row, alpha)


class _Bar:
    """Minimal progress line on stderr (picks, picks/s, ETA); used when progress=True."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, picks: int, budget: int, evals: int, elapsed: float) -> None:
        rate = picks / elapsed if elapsed > 0 else 0.0
        eta = (budget - picks) / rate if rate > 0 else float("inf")
        sys.stderr.write(f"\rspice: {picks}/{budget} picks  {rate:.1f} picks/s  ETA {eta:.1f} s ")
        if picks >= budget:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _checked_progress(user_cb: Callable[..., Any]) -> Callable[[int, int, int, float], bool]:
    """The user's progress callable with its return value held to the documented rule."""

    def hook(picks: int, budget: int, evals: int, elapsed: float) -> bool:
        return progress_says_continue(user_cb, user_cb(picks, budget, evals, elapsed))

    return hook


def select(
    G: Any,
    k: int | float | None = None,
    *,
    alpha: float = DEFAULT,
    conflict_penalty: float = DEFAULT,
    early_stop: float | None = DEFAULT,
    method: str = DEFAULT,
    seed: int = DEFAULT,
    threads: int | None = DEFAULT,
    objective: str = DEFAULT,
    stochastic_eps: float = DEFAULT,
    progress: bool | ProgressFn | None = None,
    bf16: bool = DEFAULT,
    device: str | None = None,
    base_out: np.ndarray | None = None,
    spill_dir: str | os.PathLike[str] | None = DEFAULT,
    budget: float | None = None,
    cost: Any = None,
    groups: Any = None,
    quotas: Any = None,
    verify: bool = True,
    normalize: str = DEFAULT,
    options: SelectOptions | None = None,
    constraints: Constraints | None = None,
) -> Selection:
    """Greedily pick rows of ``G`` maximising the SPICE score.

    score(x | S) = Δ_x(S) − λ·max(0, −cos(g_x, mean of g_S)), with the information gain
    Δ_x(S) = log(1 + α g_xᵀ (I + α Σ_{s∈S} g_s g_sᵀ)⁻¹ g_x), computed exactly (float64) in the
    feature space: no n×n kernel is ever built.

    The settings (``alpha`` … ``normalize``, ``bf16``, ``spill_dir``) are the fields of
    :class:`~spice.SelectOptions`, with its defaults: alpha 1.0, conflict_penalty 0.1,
    early_stop None, method "lazy", seed 0, threads None, objective "logdet", stochastic_eps 0.01,
    normalize "none", bf16 False, spill_dir None. ``options=SelectOptions(...)`` passes them as
    one checked object, ``constraints=Constraints(...)`` the budget, cost, groups and quotas;
    either together with the keywords it holds is a TypeError.

    Parameters
    ----------
    G : array-like, shape (n, d)
        Gradient features, one row per example: float32 / float64 / float16 / bfloat16 numpy
        arrays or ``np.memmap`` (read in place, never copied whole; float32 C-contiguous input is
        never copied), CPU torch tensors (via DLPack), or anything with ``__array__`` (integer
        arrays are converted to float32, a copy). ``uint16`` with ``bf16=True`` is raw bfloat16.
    k : int or float or None
        Budget: a count ``0 <= k <= n``, or a fraction in (0, 1] of n (rounded, at least 1).
        With ``budget`` it is optional and caps the number of rows (None: no cap). Every parameter
        after ``k`` is keyword-only.
    alpha : float
        Fisher scale α > 0, finite; default 1.0 (with or without ``normalize``). The log-det
        objective refuses (ValueError naming the row) a row with α‖g‖² > 1e12, or whose ‖g‖²
        overflows float64: beyond that float64 round-off in the residual q turns the gain of a row
        near span(S) into noise. Up to it a gain's round-off is about α‖g‖²·1e-16. With
        ``normalize="unit"`` every nonzero row has ‖g‖ = 1: α sets the first gain log(1 + α)
        and must be <= 1e12.
    conflict_penalty : float
        λ >= 0; 0 gives plain Fisher (log-det) greedy.
    early_stop : float or None
        ω in (0, 1): SPICE+ stops before a pick whose Δ <= ω·Δ of the first pick.
    method : {"lazy", "naive", "stochastic"}
        ``lazy`` (priority queue of stale upper bounds, exact) and ``naive`` (every candidate every
        step) give the identical pick sequence; ``stochastic`` scores a seeded random sample of
        ⌈(n/k)·ln(1/stochastic_eps)⌉ candidates per step.
    seed : int
        Seed of the stochastic method (results repeat exactly for a given seed).
    threads : int or None
        OpenMP threads. None: the usable CPUs less those other processes keep busy, at least 1
        (``OMP_NUM_THREADS`` when set), looked at again every 0.25 s during the run: more
        threads than free cores wait at every parallel region for a descheduled one. Results do
        not depend on it.
    objective : {"logdet", "diag-compat", "topk-compat"}
        ``logdet`` is the paper's objective. The other two reproduce the authors' released code and
        are NOT the paper's mathematics: ``diag-compat`` is a diagonal surrogate greedy
        (den += α·(|g|·g)², fourth powers) with the same conflict penalty; ``topk-compat`` ranks by
        log(1 + α‖g‖²), no interaction between picks.
    progress : bool or callable
        True draws a progress line on stderr; a callable ``f(picks, budget, evaluations,
        elapsed_s)`` is called a few times a second and may return False to stop the run
        (``stop_reason == "cancelled"``): ``None`` or ``True`` (numpy booleans too) continue,
        ``False`` cancels, any other return value is a TypeError naming the callback. Ctrl-C
        interrupts a run in any case.
    device : {None, "cpu", "cuda"}
        None runs where G lives: CuPy arrays and torch CUDA tensors run on their GPU (through
        CuPy, no host copy of G), everything else on the CPU. "cuda" copies a host G to the GPU;
        asking for the GPU without CuPy and a driver is an error, never a silent CPU fallback.
        ``params["backend"]`` records which ran.
    base_out : (n,) float64 array, optional
        Filled with log(1 + α‖g_i‖²) of every row, from the norms the run computes anyway (saves
        a second pass over G, e.g. for per-record scores). CPU backend only.
    spill_dir : path or None
        Keep the run's w rows (k × d float64, the state exact greedy needs: 800 MB at k = 10⁵,
        d = 1024) in a temporary file in this directory, mapped into memory, instead of in RAM:
        the operating system can page them out, so resident anonymous memory stays about
        n × 90 bytes + d² × 8 bytes however large k is. The file is unlinked as soon as it is
        created (nothing is left behind); on Linux its disk space is reserved up front (a full
        disk is an error at the start, not a crash later). Results are identical either way.
        CPU backend only.
    budget, cost : float, array of n floats
        A cost budget: the picks' summed ``cost`` (positive finite per-row numbers, e.g. tokens)
        never exceeds ``budget``. Candidates are ranked by score per unit cost (cost-benefit
        greedy), and the best single row that fits replaces the set when it scores more (the
        modified greedy: (1 − 1/e)/2 of the optimum at λ = 0). SPICE+'s early stop then compares
        gains per unit cost. Lazy and naive greedy stay identical. ``sel.tokens`` is the cost
        spent. CPU backend, log-det objective only.
    groups, quotas : array of n labels (any integer dtype, or strings), dict or array
        Source quotas: ``groups`` labels each row (e.g. its source data set), ``quotas`` caps the
        picks per label: a dict ``{label: cap}`` (labels not in it: no cap) or an array indexed by
        label. A cap is an int count, or a float share in (0, 1] of k (at most floor(share·k)
        rows; needs k). Greedy over the partition matroid (a full group's rows are skipped):
        1/2 of the optimum at λ = 0. Combines with ``budget``. CPU backend, log-det only.
    verify : bool
        When ``G`` is a :class:`~spice.store.FeatureStore`, first re-hash its rows against the
        manifest's checksums (streamed, bounded memory; once per opened store while its file is
        unchanged) and raise ``StoreError`` naming a damaged chunk, as ``spice select`` does.
        ``verify=False`` skips it. Other inputs have no checksums and are not checked.
    normalize : {"none", "unit"}
        ``"unit"`` selects on the rows scaled to norm 1, g_i / ‖g_i‖ (zero rows stay zero and are
        never picked): raw log det prefers the largest rows (often the proxy's noise: wrong
        answers, junk), whatever α; on unit rows only the directions count (docs/algorithm.md
        §13). Exact and without a copy of ``G`` on the CPU: each dot product is scaled in float64,
        and the picks are those of selection on a float64 normalised copy (``gains``, ``base``,
        ``logdet`` are those of the unit rows). The GPU backend selects on a normalised float64
        copy on the device. Log-det objective only; every method, budgets and quotas.
        ``spice.distributed`` does not take it.
    options : SelectOptions, optional
        All the settings at once, instead of their keywords.
    constraints : Constraints, optional
        ``budget``, ``cost``, ``groups`` and ``quotas`` at once, instead of their keywords.

    Returns
    -------
    Selection
    """
    # 1. validate the settings and constraints given (nothing touches G yet)
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
    opts = _options_of(
        options,
        alpha=alpha,
        conflict_penalty=conflict_penalty,
        early_stop=early_stop,
        method=method,
        seed=seed,
        threads=threads,
        objective=objective,
        stochastic_eps=stochastic_eps,
        normalize=normalize,
        bf16=bf16,
        spill_dir=spill_dir,
    )
    wanted = _constraints_of(constraints, budget=budget, cost=cost, groups=groups, quotas=quotas)
    if k is None and wanted.budget is None:
        raise TypeError("select() needs k (a row count or fraction) unless budget= is given")
    # 2. the rows as the backend reads them, k and the constraints checked against them
    inp = _prepare_input(G, k, device, opts, wanted, verify)
    cb = _progress_hook(progress)
    # 3. the greedy, on the GPU or in the C++ core
    t0 = time.perf_counter()
    raw, norms2 = _run_core(inp, opts, cb, base_out)
    elapsed = time.perf_counter() - t0
    # 4. the result
    return _assemble(inp, opts, raw, norms2, elapsed)


@dataclass(frozen=True, eq=False)
class _Input:
    """One call's rows as its backend reads them, with the sizes and constraints checked
    against them."""

    arr: Any  # numpy array or memmap (CPU), CuPy array (GPU)
    code: int  # dtype code of arr (spice._inputs)
    on_gpu: bool
    n: int
    k: int  # the cap on picks, resolved to a count
    cons: CoreConstraints


def _prepare_input(
    G: Any,
    k: int | float | None,
    device: str | None,
    opts: SelectOptions,
    wanted: Constraints,
    verify: bool,
) -> _Input:
    """Verify a FeatureStore, read G where it is to run (no copy where none is needed),
    resolve k and check the constraints for its n rows and that the backend takes them."""
    from . import gpu as _gpu  # imports neither CuPy nor torch

    if verify and isinstance(G, FeatureStore):
        G.verify_for_selection()
    on_gpu = device == "cuda" or (device is None and _gpu.is_cuda_array(G))
    if on_gpu:
        arr, code = _gpu.as_device_features(G, bf16=opts.bf16)  # CuPy/torch CUDA: no copy
    else:
        arr, code = as_features(G, bf16=opts.bf16)
    n, _ = arr.shape
    kk = resolve_k(n if k is None else k, n)
    cons = wanted.for_rows(n, kk, k is not None)
    if cons.active and (on_gpu or opts.objective != "logdet"):
        raise ValueError(
            "budget and quotas run in the CPU core with the log-det objective "
            f"(here: {'the GPU' if on_gpu else opts.objective!r})"
        )
    return _Input(arr, code, on_gpu, n, kk, cons)


def _progress_hook(progress: bool | ProgressFn | None) -> Any:
    """The callable the backend calls with its progress, or None."""
    cb: Any = _Bar() if progress is True else (progress or None)
    if cb is not None and not callable(cb):
        raise TypeError("progress must be True, False/None or a callable")
    if cb is not None:
        cb = _checked_progress(cb)
    return cb


def _run_core(
    inp: _Input, opts: SelectOptions, cb: Any, base_out: np.ndarray | None
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Run the greedy on ``inp``'s backend. Returns the backend's raw result and, on the CPU,
    the n rows' raw squared norms (from the core's own norms pass, for the picks'
    percentiles; None on the GPU). A refused row is a ValueError naming it."""
    from . import gpu as _gpu  # imports neither CuPy nor torch

    arr, code, n = inp.arr, inp.code, inp.n
    if base_out is not None and inp.on_gpu:
        raise ValueError("base_out is filled by the CPU backend only")
    spill = ""
    if opts.spill_dir is not None:
        if inp.on_gpu:
            raise ValueError("spill_dir is for the CPU backend only")
        spill = opts.spill_dir
        if not os.path.isdir(spill):
            raise ValueError(f"spill_dir {spill!r} is not an existing directory")
    norms2 = None if inp.on_gpu else np.empty(n)
    if inp.on_gpu:
        raw = _gpu.select_gpu(
            arr,
            inp.k,
            opts.alpha,
            opts.conflict_penalty,
            opts.core_early_stop,
            opts.method,
            opts.seed64,
            opts.stochastic_eps,
            objective=opts.objective,
            progress=cb,
            code=code,
            normalize=opts.normalize,
        )
    else:
        core_opts = _core.Options(
            k=inp.k,
            alpha=opts.alpha,
            conflict_penalty=opts.conflict_penalty,
            early_stop=opts.core_early_stop,
            method=opts.method,
            objective=opts.objective,
            seed=opts.seed64,
            stochastic_eps=opts.stochastic_eps,
            threads=opts.threads or 0,
            spill_dir=spill,
            budget=inp.cons.budget or 0.0,
            unit_rows=opts.normalize == "unit",
        )
        raw = _core.select(
            arr,
            code,
            core_opts,
            progress=cb,
            interval_s=0.2,
            base_out=base_out,
            norm2_out=norms2,
            cost=inp.cons.cost,
            groups=inp.cons.groups,
            quotas=inp.cons.quotas,
        )
    if raw["bad_row"] >= 0:
        unit = opts.normalize == "unit"
        raise ValueError(_bad_row_message(arr, code, int(raw["bad_row"]), opts.alpha, unit))
    return raw, norms2


def _assemble(
    inp: _Input,
    opts: SelectOptions,
    raw: dict[str, Any],
    norms2: np.ndarray | None,
    elapsed: float,
) -> Selection:
    """The Selection of a run: the backend's per-pick arrays, the set's log det and its
    certificate, the settings, the a-priori guarantee and the constraints' accounting."""
    cons, a, objective = inp.cons, opts.alpha, opts.objective
    gains = raw["gains"]
    base = raw["base"]
    conflict = raw["conflict"]
    idx = raw["indices"]
    if objective == "logdet":
        ld = float(raw["objective_sum"])
    else:
        from .analysis import logdet as _logdet

        ld = _logdet(inp.arr, idx, a, bf16=(inp.code == 3))
    ub = float(raw["opt_upper_bound"])
    if math.isfinite(ub):
        ratio = ld / ub if ub > 0 else 1.0
    else:
        ratio = float("nan")
    params = dict(
        alpha=a,
        conflict_penalty=opts.conflict_penalty,
        early_stop=opts.early_stop,
        method=opts.method,
        objective=objective,
        seed=opts.seed,
        stochastic_eps=opts.stochastic_eps,
        backend=raw.get("backend", "cpu"),
        normalize=opts.normalize,
    )
    stop = str(raw["stop_reason"])
    factor, note = guarantee(
        cons,
        conflict_penalty=opts.conflict_penalty,
        early_stop=opts.core_early_stop,
        objective=objective,
        method=opts.method,
        stop=stop,
        capped=inp.k < inp.n,
    )
    return Selection(
        indices=idx,
        gains=gains,
        base=base,
        epsilon=gains - base,
        align=raw["align"],
        conflict=conflict,
        penalty=opts.conflict_penalty * conflict,
        scores=raw["scores"],
        logdet=ld,
        stop_reason=stop,
        opt_upper_bound=ub,
        certified_ratio=ratio,
        evaluations=int(raw["evaluations"]),
        n=inp.n,
        k=inp.k,
        params=params,
        elapsed_s=elapsed,
        dot_products=int(raw.get("dot_products", 0)),
        guarantee=factor,
        guarantee_note=note,
        tokens=float(raw["spent"]) * cons.cost_scale if cons.cost is not None else None,
        budget=cons.budget_given,
        group_counts=_group_counts(cons, idx),
        safeguard=bool(raw.get("safeguard", False)),
        norm_percentile=None if norms2 is None else percentiles_of(norms2, idx),
    )


def _group_counts(cons: CoreConstraints, idx: np.ndarray) -> dict | None:
    if cons.groups is None or cons.labels is None:
        return None
    counts = np.bincount(cons.groups[idx], minlength=cons.labels.size)
    return {lab: int(c) for lab, c in zip(cons.labels.tolist(), counts)}


def _options_of(options: SelectOptions | None, **given: Any) -> SelectOptions:
    """The run's settings: ``options``, or the keywords given (the rest: SelectOptions'
    defaults). Both at once is refused: which should win would be a guess."""
    given = {name: v for name, v in given.items() if v is not DEFAULT}
    if options is None:
        return SelectOptions(**given)
    if not isinstance(options, SelectOptions):
        raise TypeError(f"options must be a spice.SelectOptions, got {type(options).__name__}")
    if given:
        raise TypeError(
            f"select() got options= and the setting(s) {', '.join(given)} as keywords: pass "
            "them in the SelectOptions (dataclasses.replace(options, name=value) changes one)"
        )
    return options


def _constraints_of(constraints: Constraints | None, **given: Any) -> Constraints:
    """The run's side constraints: ``constraints``, or the keywords given. Both at once is
    refused."""
    given = {name: v for name, v in given.items() if v is not None}
    if constraints is None:
        return Constraints(**given)
    if not isinstance(constraints, Constraints):
        raise TypeError(
            f"constraints must be a spice.Constraints, got {type(constraints).__name__}"
        )
    if given:
        raise TypeError(
            f"select() got constraints= and {', '.join(given)} as keywords: pass them in the "
            "Constraints"
        )
    return constraints
