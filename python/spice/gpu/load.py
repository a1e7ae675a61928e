"""Finding CuPy and a device, compiling the kernels, and bringing ``G`` onto the device."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .._inputs import BF16, F64, describe_bad_row

BACKEND = "cuda:cupy"
INSTALL_HINT = (
    "install CuPy for your CUDA version: pip install cupy-cuda12x (CUDA 12) or "
    "pip install cupy-cuda13x (CUDA 13)"
)


# ------------------------------------------------------------------------------------------------
# Detection and loading
# ------------------------------------------------------------------------------------------------


def is_cuda_array(obj: Any) -> bool:
    """True for a CuPy array, a torch CUDA tensor, or a DLPack producer on a CUDA device.

    Cheap and import-free: CuPy and torch are only consulted when already imported.
    """
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(obj, cp.ndarray):
        return True
    th = sys.modules.get("torch")
    if th is not None and isinstance(obj, th.Tensor):
        return bool(obj.is_cuda)
    if isinstance(obj, np.ndarray):
        return False
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None or not callable(dev):
        return False
    try:
        kind = int(dev()[0])
    except Exception:
        return False
    return kind in (2, 13)  # kDLCUDA, kDLCUDAManaged


def _import_cupy() -> Any:
    try:
        import cupy  # type: ignore[import-not-found]
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        raise RuntimeError(
            f"spice's GPU selection needs CuPy, which could not be imported ({e}); {INSTALL_HINT}"
        ) from e
    return cupy


def available() -> tuple[bool, str]:
    """Whether the CUDA backend can run here, and a one-line reason or description."""
    try:
        cp = _import_cupy()
    except RuntimeError as e:
        return False, str(e)
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as e:
        return False, f"CuPy {cp.__version__} is installed but no CUDA driver/device answered: {e}"
    if count < 1:
        return False, f"CuPy {cp.__version__} is installed but there is no CUDA device"
    try:
        name = cp.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        name = "?"
    return True, f"{BACKEND} (CuPy {cp.__version__}, {count} device(s); device 0: {name})"


def kernel_source_path() -> Path:
    """Where the CUDA source is read from (``$SPICE_CUDA_KERNELS``, the package, the checkout)."""
    here = Path(__file__).resolve().parents[1]  # the spice package (this file is in spice/gpu/)
    candidates = []
    env = os.environ.get("SPICE_CUDA_KERNELS")
    if env:
        candidates.append(Path(env))
    candidates += [
        here / "cuda" / "spice_kernels.cu",
        here.parent.parent / "csrc" / "cuda" / "spice_kernels.cu",
    ]
    for p in candidates:
        if p.is_file():
            return p
    raise RuntimeError(
        "spice's CUDA kernel source spice_kernels.cu was not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); set SPICE_CUDA_KERNELS to its path"
    )


_MODULES: dict[int, Any] = {}


def _module(cp: Any) -> Any:
    # The cache is read through the package, so replacing ``spice.gpu._MODULES`` (as the tests do
    # to compile their fake kernels afresh) replaces the one used here.
    from . import _MODULES as modules

    dev = int(cp.cuda.Device().id)
    mod = modules.get(dev)
    if mod is None:
        src = kernel_source_path().read_text()
        try:
            mod = cp.RawModule(code=src, options=("--std=c++17",))
            mod.get_function("spice_argmax_final")  # compile now: errors surface here
        except Exception as e:
            raise RuntimeError(f"compiling spice's CUDA kernels with NVRTC failed: {e}") from e
        modules[dev] = mod
    return mod


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def as_device_features(G: Any, *, bf16: bool = False, name: str = "G") -> tuple[Any, int]:
    """Return ``(cupy array, dtype_code)`` on the device, sharing memory with ``G``.

    CuPy arrays and torch CUDA tensors (float32/float64/float16/bfloat16) are used in place
    (torch through DLPack; bfloat16 as its uint16 bit patterns). Host arrays are copied to the
    current device (only when the caller asked for the GPU). Integer arrays are cast to float32
    on the device (a copy). Rows must be contiguous; otherwise a contiguous device copy is made.
    """
    cp = _import_cupy()
    code = -1
    th = sys.modules.get("torch")
    if th is not None and isinstance(G, th.Tensor):
        x = G.detach() if G.requires_grad else G
        if not x.is_cuda:
            raise TypeError(f"{name} is a CPU torch tensor; the GPU selector needs a CUDA tensor")
        if x.dtype == th.bfloat16:
            arr = cp.from_dlpack(x.view(th.int16)).view(cp.uint16)
            code = BF16
        else:
            arr = cp.from_dlpack(x)
    elif isinstance(G, cp.ndarray):
        arr = G
    elif is_cuda_array(G):
        arr = cp.from_dlpack(G)
    else:  # a host array, and the caller asked for the GPU: one explicit copy to the device
        from .._inputs import as_features

        host, code = as_features(G, bf16=bf16, name=name)
        arr = cp.asarray(host)
    from .._inputs import check_shape, native_code, rows_contiguous

    check_shape(arr.shape, name)
    if code < 0:
        code, cast = native_code(arr.dtype, bf16, name)
        if cast is not None:
            arr = arr.astype(cast)
    if not rows_contiguous(arr):
        arr = cp.ascontiguousarray(arr)
    return arr, code


def _describe_bad_row(G: Any, code: int, row: int, alpha: float) -> str:
    xp_row = G[row]
    host = xp_row.get() if hasattr(xp_row, "get") else np.asarray(xp_row)
    return describe_bad_row(host.reshape(1, -1), code, 0, alpha, row_name=row)


def unit_rows_copy(xp: Any, G: Any, code: int, alpha: float) -> tuple[Any, int]:
    """``(G_unit, F64)``: a float64 copy of ``G`` (dtype code ``code``; bfloat16 as uint16
    bits) with each row times 1/‖g‖ (zero rows stay zero), made with ``xp`` (CuPy on the device,
    or numpy). The GPU path of ``normalize="unit"``.

    Raises ValueError for a row whose squared norm is not finite (as the selection would) or
    underflows float64 while the row is nonzero (it cannot be scaled exactly).
    """
    if code == BF16:
        x = (G.astype(xp.uint32) << 16).view(xp.float32).astype(xp.float64)
    else:
        x = G.astype(xp.float64)
    n2 = xp.sum(x * x, axis=1)
    bad = ~xp.isfinite(n2) | ((n2 == 0) & xp.any(x != 0, axis=1))
    if bool(bad.any()):
        row = int(xp.flatnonzero(bad)[0])
        if not bool(xp.isfinite(n2[row])):
            raise ValueError(_describe_bad_row(G, code, row, alpha))
        raise ValueError(
            f"row {row} of G is too small to normalise (normalize='unit'): ||g||^2 underflows "
            "float64; rescale the features (e.g. divide by their largest absolute value)"
        )
    pos = n2 > 0
    x *= xp.where(pos, 1.0 / xp.sqrt(xp.where(pos, n2, 1.0)), 0.0)[:, None]
    return x, F64
