"""Type stub for the compiled module spice._core (csrc/bindings.cpp)."""

from typing import Any, Callable

import numpy as np
import numpy.typing as npt

openmp: bool

def select(
    G: np.ndarray,
    dtype_code: int,
    k: int,
    alpha: float,
    lam: float,
    omega: float,
    method: int,
    objective: int,
    seed: int,
    stochastic_eps: float,
    threads: int,
    batch: int,
    progress: Callable[[int, int, int, float], bool | None] | None,
    interval_s: float,
    chunk: int = 0,
    base_out: np.ndarray | None = None,
    spill_dir: str = "",
) -> dict[str, Any]: ...
def row_norms2(G: np.ndarray, dtype_code: int, threads: int = 0) -> npt.NDArray[np.float64]: ...
def kernel_isa() -> str: ...
