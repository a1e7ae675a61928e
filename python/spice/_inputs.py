"""Turning what users pass as gradient features into an (n, d) array the core can read in place.

Accepted without a copy: numpy arrays and ``np.memmap`` of float32, float64, float16 or bfloat16
(``ml_dtypes.bfloat16``) whose rows are contiguous (any row stride), and CPU torch tensors of the
same dtypes (via DLPack / ``.numpy()``). Anything else exposing ``__array__`` or ``__dlpack__`` is
converted with ``np.asarray`` and, if it is not one of those dtypes, cast to float32 (a copy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# The log-det greedy refuses rows with alpha * ||g||^2 above this (csrc/spice/numerics.hpp,
# kMaxAlphaNorm2, says why).
from ._numerics import MAX_ALPHA_NORM2

# dtype codes shared with csrc/spice/core.hpp (enum DType)
F32, F64, F16, BF16 = 0, 1, 2, 3


def _bf16_dtype() -> np.dtype | None:
    try:
        import ml_dtypes  # type: ignore[import-not-found]

        return np.dtype(ml_dtypes.bfloat16)
    except Exception:
        return None


def _from_torch(x: Any) -> tuple[np.ndarray, int] | None:
    mod = type(x).__module__
    if not mod.startswith("torch"):
        return None
    import torch  # only reached when a torch tensor was passed

    if not isinstance(x, torch.Tensor):
        return None
    if x.device.type != "cpu":
        raise TypeError(
            f"G is a torch tensor on {x.device}; the CPU selector needs a CPU tensor "
            "(the GPU backend is spice.select(..., device='cuda') when available)"
        )
    if x.requires_grad:
        x = x.detach()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(np.uint16), BF16
    return x.numpy(), -1


def check_shape(shape: tuple, name: str = "G") -> None:
    """A feature matrix must be 2-D and non-empty."""
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (n examples x d features), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {shape}); need n >= 1 and d >= 1")


def native_code(dt: Any, bf16: bool, name: str = "G") -> tuple[int, Any]:
    """(dtype code, None) for dtypes the kernels read in place; (code, cast dtype) for numeric
    dtypes that must be converted (integers to float32, wider floats to float64)."""
    dt = np.dtype(dt)
    if dt == np.float32:
        return F32, None
    if dt == np.float64:
        return F64, None
    if dt == np.float16:
        return F16, None
    if dt == np.uint16 and bf16:
        return BF16, None
    if dt.kind == "b":
        raise TypeError(f"{name} has boolean dtype; gradient features must be floating")
    if dt.kind in "iu":
        return F32, np.float32
    if dt.kind == "f":  # float128 and friends
        return F64, np.float64
    raise TypeError(
        f"{name} has non-numeric dtype {dt}; expected float32, float64, float16 or bfloat16"
    )


def rows_contiguous(arr: Any) -> bool:
    """Elements inside a row are adjacent and rows are a positive whole number of items apart."""
    isz = arr.dtype.itemsize
    return not (
        (arr.shape[1] > 1 and arr.strides[1] != isz)
        or (arr.shape[0] > 1 and (arr.strides[0] <= 0 or arr.strides[0] % isz))
    )


def as_features(G: Any, *, name: str = "G", bf16: bool = False) -> tuple[np.ndarray, int]:
    """Return ``(array, dtype_code)`` for the core, copying only when unavoidable.

    Parameters
    ----------
    G : array-like, shape (n, d)
        Gradient features, one row per example.
    bf16 : bool
        Treat a ``uint16`` array as raw bfloat16 bit patterns.

    Raises
    ------
    TypeError
        For non-numeric dtypes or objects that are not arrays.
    ValueError
        For arrays that are not 2-D or are empty.
    """
    code = -1
    t = _from_torch(G)
    if t is not None:
        arr, code = t
    elif isinstance(G, np.ndarray):
        arr = G
    elif hasattr(G, "__array__") or hasattr(G, "__array_interface__"):
        arr = np.asarray(G)
    elif hasattr(G, "__dlpack__"):
        arr = np.from_dlpack(G)
    else:
        raise TypeError(
            f"{name} must be a 2-D numeric array (numpy, np.memmap or a CPU torch tensor), "
            f"got {type(G).__name__}"
        )
    check_shape(arr.shape, name)
    if code < 0:
        bf = _bf16_dtype()
        if bf is not None and arr.dtype == bf:
            arr, code = arr.view(np.uint16), BF16
        else:
            code, cast = native_code(arr.dtype, bf16, name)
            if cast is not None:
                arr = arr.astype(cast)
    if not rows_contiguous(arr):
        arr = np.ascontiguousarray(arr)
    return arr, code


def row_as_float64(arr: np.ndarray, code: int, rows: Any) -> np.ndarray:
    """Rows of a feature array widened to float64 (bfloat16 bit patterns decoded)."""
    sub = arr[rows]
    if code == BF16:
        return (sub.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.asarray(sub, dtype=np.float64)


def describe_bad_row(
    arr: np.ndarray, code: int, row: int, alpha: float, *, row_name: int | None = None
) -> str:
    """The error message for a row the core refused: a non-finite entry, a squared norm that
    overflows float64, or alpha * ||g||^2 above MAX_ALPHA_NORM2. ``row`` indexes ``arr``;
    ``row_name`` is the number the message gives (default ``row``)."""
    name = row if row_name is None else row_name
    vals = row_as_float64(arr, code, row)
    nonfinite = np.flatnonzero(~np.isfinite(vals))
    if nonfinite.size:
        j = int(nonfinite[0])
        return f"G contains NaN or Inf: first bad row {name} (column {j} is {vals[j]})"
    hint = "rescale the features (e.g. divide by their largest absolute value) or lower alpha"
    mx = float(np.max(np.abs(vals)))
    e = math.frexp(mx)[1]  # ||g||^2 = 4**e * ||g / 2**e||^2, without overflow
    lg_n2 = (math.log(float(np.sum(np.ldexp(vals, -e) ** 2))) + 2 * e * math.log(2)) / math.log(10)
    lg_an2 = lg_n2 + math.log10(alpha)
    big = math.log10(np.finfo(np.float64).max)
    if lg_n2 > big:
        return f"row {name} of G is too large: ||g||^2 = 1e{lg_n2:.1f} overflows float64; {hint}"
    if lg_an2 > big:
        return (
            f"row {name} of G is too large: alpha * ||g||^2 = 1e{lg_an2:.1f} overflows "
            f"float64 (alpha = {alpha}); {hint}"
        )
    return (
        f"row {name} of G is too large: alpha * ||g||^2 = 1e{lg_an2:.1f} (alpha = {alpha}) "
        f"exceeds {MAX_ALPHA_NORM2:.0e}, beyond which float64 round-off turns the gain of a row "
        f"near the span of earlier picks into noise; {hint}"
    )


def progress_says_continue(callback: Any, result: Any) -> bool:
    """What a progress callback's return value means: ``None`` or ``True`` continue the run,
    ``False`` cancels it (numpy booleans count as booleans). Anything else is a TypeError that
    names the callback and the type, rather than a guess from its truthiness (``0``, ``""`` and
    a forgotten ``return x`` of some other value are bugs more often than requests to stop)."""
    if result is None or result is True:
        return True
    if result is False:
        return False
    if isinstance(result, np.bool_):
        return bool(result)
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    raise TypeError(
        f"progress callback {name} returned {type(result).__name__} ({result!r:.60}); it must "
        "return None or True to continue, or False to cancel the run"
    )
