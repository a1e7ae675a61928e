"""Optional CUDA backend: the exact SPICE greedy on gradient features that live on a GPU.

Nothing here is imported by ``import spice`` and nothing here needs CuPy or a driver until a GPU
selection is actually asked for::

    from spice import gpu
    gpu.available()                  # (True, "cuda:cupy (...)") or (False, why)
    raw = gpu.select_gpu(G_cuda, k)  # same keys as spice._core.select, plus "backend"

``G`` may be a CuPy array or a torch CUDA tensor (float32, float64, float16, bfloat16; torch
tensors are shared through DLPack, never copied); the per-pick results come back as numpy arrays.
The kernels (``csrc/cuda/spice_kernels.cu``) are compiled at run time by CuPy's RawModule (NVRTC),
so the wheel needs no CUDA at build time. There is no silent fallback: without CuPy or a device the
GPU path raises ``RuntimeError`` saying what to install, and every result names its backend.

Methods (docs/algorithm.md §2-§4, §8):

- ``naive``: one fused pass over G per pick (custom kernel: r = G·w, q -= r², conflict dot, Δ,
  score and a two-stage argmax with ties to the lowest index); u_t by two cuBLAS GEMVs over the W
  rows, or, once t > 1.5·d, one GEMV with an explicit d×d M⁻¹ kept by rank-1 updates.
- ``lazy``: exact lazy greedy without a heap (``run_threshold_rounds``): each step refreshes
  every live row whose stale bound (the last Δ computed for it) is >= a threshold, first one
  estimated to take ~B rows, then the best fresh score found; two rounds always suffice.
  Catch-ups run as cuBLAS GEMMs of the gathered rows against the missing W rows.
- ``stochastic``: the CPU's seeded sampling (SplitMix64 + partial Fisher-Yates, replicated on the
  host), so the same seed draws the same candidates; refreshes as in ``lazy``.

Only ``objective="logdet"`` runs on the GPU; the compatibility objectives are CPU-only.

The driver is written against an array module plus a small "ops" object; ``_NumpyOps`` runs the
same control flow on numpy (float64 emulation of the kernels) so the driver is tested without a GPU.

Modules: ``load`` (CuPy, the device, the kernels' source and compilation, device input),
``state`` (per-candidate arrays), ``cupy_ops`` (kernel launches), ``numpy_ops`` (their numpy
emulation), ``driver`` (the greedy) and ``api`` (``select_gpu``, ``emulate``).
"""

from __future__ import annotations

# Re-exports: the public names (__all__) and the internals tests and bench/gpu_bench.py reach as
# ``spice.gpu.<name>``. ``_MODULES`` is the kernel cache, which load._module reads through this
# package, so a test that replaces ``spice.gpu._MODULES`` replaces the cache actually used.
# ruff: noqa: F401
from .api import emulate, select_gpu
from .cupy_ops import _MB, _SB, _SUFFIX, _VEC, _CupyOps, _perm_index
from .driver import ProgressFn, _better, _Driver, _host, _rowdots, _run, _SplitMix64
from .load import (
    _MODULES,
    BACKEND,
    INSTALL_HINT,
    _describe_bad_row,
    _import_cupy,
    _module,
    as_device_features,
    available,
    is_cuda_array,
    kernel_source_path,
    unit_rows_copy,
)
from .numpy_ops import _NumpyOps
from .state import ALIVE, DEAD, PICKED, _State

__all__ = [
    "BACKEND",
    "as_device_features",
    "available",
    "is_cuda_array",
    "kernel_source_path",
    "select_gpu",
]
