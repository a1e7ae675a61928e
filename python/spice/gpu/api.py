"""The GPU selector's entry points: ``select_gpu`` on a device, ``emulate`` on the host."""

from __future__ import annotations

from typing import Any

from .cupy_ops import _CupyOps
from .driver import ProgressFn, _run
from .load import (
    BACKEND,
    _describe_bad_row,
    _import_cupy,
    as_device_features,
    available,
    unit_rows_copy,
)
from .numpy_ops import _NumpyOps


def select_gpu(
    G: Any,
    k: int,
    alpha: float = 1.0,
    conflict_penalty: float = 0.0,
    early_stop: float | None = None,
    method: str = "lazy",
    seed: int = 0,
    stochastic_eps: float = 0.01,
    *,
    objective: str = "logdet",
    progress: ProgressFn | None = None,
    bf16: bool = False,
    code: int | None = None,
    normalize: str = "none",
) -> dict[str, Any]:
    """Run the selection on ``G``'s CUDA device; returns the keys of ``spice._core.select``.

    ``normalize="unit"`` selects on a float64 copy of the rows scaled to norm 1, made on the
    device (n × d × 8 bytes more GPU memory; the CPU core scales its products instead and makes
    no copy). Equal gains (every unit row's first gain is log(1 + α)) may then be ordered by the
    copy's round-off, so the GPU's first pick can differ from the CPU's.

    ``k`` is a count in [0, n] or a fraction, ``conflict_penalty`` >= 0, ``early_stop`` in
    (0, 1), or None or 0 (off); they are checked by the CPU path's own validation (same
    messages). ``code`` is the dtype code when ``G`` came from :func:`as_device_features` (it is
    derived otherwise).
    Adds ``"backend": "cuda:cupy"`` and ``"device"`` (the GPU's name) to the result.

    Raises
    ------
    RuntimeError
        CuPy missing, no CUDA device, or the kernels failed to compile.
    ValueError
        A compatibility objective (CPU only), an unknown method, or a row with NaN/Inf.
    """
    from ..options import check_normalize, check_options, resolve_k

    # Every setting but k (whose range needs n) is checked before CuPy is looked for.
    _, alpha, conflict_penalty, core_early_stop, stochastic_eps, seed = check_options(
        0,
        0,
        alpha=alpha,
        conflict_penalty=conflict_penalty,
        early_stop=early_stop or None,  # 0 is off here, as in the core
        method=method,
        objective=objective,
        stochastic_eps=stochastic_eps,
        seed=seed,
    )
    if objective != "logdet":
        raise ValueError(
            f"objective={objective!r} runs on the CPU only; the GPU selector implements the "
            "paper's objective (objective='logdet'). Pass a host array to use the compatibility "
            "modes."
        )
    unit = check_normalize(normalize, objective, alpha)
    cp = _import_cupy()
    ok, why = available()
    if not ok:
        raise RuntimeError(f"spice's GPU selection cannot run: {why}")
    if code is None or not isinstance(G, cp.ndarray):
        G, code = as_device_features(G, bf16=bf16)
    if unit:
        with cp.cuda.Device(G.device.id):
            G, code = unit_rows_copy(cp, G, code, float(alpha))
    k = resolve_k(k, int(G.shape[0]))
    with cp.cuda.Device(G.device.id):
        ops = _CupyOps(cp, G, code)
        raw = _run(
            ops,
            int(k),
            float(alpha),
            float(conflict_penalty),
            float(core_early_stop),
            method,
            int(seed) & 0xFFFFFFFFFFFFFFFF,
            float(stochastic_eps),
            progress,
        )
    if raw["bad_row"] >= 0:
        raise ValueError(_describe_bad_row(G, code, int(raw["bad_row"]), float(alpha)))
    raw["backend"] = BACKEND
    raw["device"] = ops.device_name
    return raw


def emulate(
    G: Any,
    k: int,
    alpha: float = 1.0,
    conflict_penalty: float = 0.0,
    early_stop: float | None = None,
    method: str = "lazy",
    seed: int = 0,
    stochastic_eps: float = 0.01,
    *,
    minv_factor: float = 1.5,
    lazy_batch: int = 0,
) -> dict[str, Any]:
    """The GPU driver's exact control flow on the host (numpy emulation of the kernels).

    For tests and debugging only: slow, float64, ``backend == "numpy-emulation"``. The settings
    are not checked; ``early_stop`` None or 0 is off.
    """
    from .._inputs import as_features

    arr, code = as_features(G)
    raw = _run(
        _NumpyOps(arr, code),
        int(k),
        float(alpha),
        float(conflict_penalty),
        0.0 if early_stop is None else float(early_stop),
        method,
        int(seed) & 0xFFFFFFFFFFFFFFFF,
        float(stochastic_eps),
        None,
        minv_factor,
        lazy_batch,
    )
    raw["backend"] = "numpy-emulation"
    return raw
