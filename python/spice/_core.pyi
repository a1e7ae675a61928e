"""Type stub for the compiled module spice._core (csrc/bindings.cpp)."""

from typing import Any, Callable

import numpy as np
import numpy.typing as npt

openmp: bool

class Options:
    """The settings of one selection run (spice/core.hpp's Options), by keyword.

    method: "naive" | "lazy" | "stochastic"; objective: "logdet" | "diag-compat" |
    "topk-compat". batch/chunk 0: the lazy driver's own sizing. spill_dir "": w rows in RAM.
    budget: the cost budget, used when select() gets a cost array.
    """

    k: int
    alpha: float
    lam: float
    omega: float
    method: str
    objective: str
    seed: int
    stochastic_eps: float
    threads: int
    batch: int
    chunk: int
    spill_dir: str
    budget: float
    def __init__(
        self,
        *,
        k: int = 0,
        alpha: float = 1.0,
        lam: float = 0.0,
        omega: float = 0.0,
        method: str = "lazy",
        objective: str = "logdet",
        seed: int = 0,
        stochastic_eps: float = 0.01,
        threads: int = 0,
        batch: int = 0,
        chunk: int = 0,
        spill_dir: str = "",
        budget: float = 0.0,
    ) -> None: ...

def select(
    G: np.ndarray,
    dtype_code: int,
    options: Options,
    *,
    progress: Callable[[int, int, int, float], bool | None] | None = None,
    interval_s: float = 0.25,
    base_out: np.ndarray | None = None,
    cost: npt.NDArray[np.float64] | None = None,
    groups: npt.NDArray[np.int32] | None = None,
    quotas: npt.NDArray[np.int64] | None = None,
) -> dict[str, Any]: ...
def row_norms2(G: np.ndarray, dtype_code: int, threads: int = 0) -> npt.NDArray[np.float64]: ...
def kernel_isa() -> str: ...
