"""Type stub for the compiled module spice._core (csrc/bindings.cpp)."""

from typing import Any, Callable

import numpy as np
import numpy.typing as npt

openmp: bool

class Options:
    """The settings of one selection run (spice/core.hpp's Options), by keyword.

    method: "naive" | "lazy" | "stochastic"; objective: "logdet" | "diag-compat" |
    "topk-compat". batch/chunk 0: the lazy driver's own sizing. spill_dir "": w rows in RAM.
    budget: the cost budget, used when select() gets a cost array. unit_rows: select on
    g_i / ||g_i|| (zero rows stay zero and are never picked), G read in place, each dot product
    scaled in float64; log-det objective only, refused by Stepper. conflict_penalty: the
    penalty λ >= 0; early_stop: SPICE+'s ω in (0, 1), 0 for off.
    """

    k: int
    alpha: float
    conflict_penalty: float
    early_stop: float
    method: str
    objective: str
    seed: int
    stochastic_eps: float
    threads: int
    batch: int
    chunk: int
    spill_dir: str
    budget: float
    unit_rows: bool
    def __init__(
        self,
        *,
        k: int = 0,
        alpha: float = 1.0,
        conflict_penalty: float = 0.0,
        early_stop: float = 0.0,
        method: str = "lazy",
        objective: str = "logdet",
        seed: int = 0,
        stochastic_eps: float = 0.01,
        threads: int = 0,
        batch: int = 0,
        chunk: int = 0,
        spill_dir: str = "",
        budget: float = 0.0,
        unit_rows: bool = False,
    ) -> None: ...

def select(
    G: np.ndarray,
    dtype_code: int,
    options: Options,
    *,
    progress: Callable[[int, int, int, float], bool | None] | None = None,
    interval_s: float = 0.25,
    base_out: np.ndarray | None = None,
    norm2_out: npt.NDArray[np.float64] | None = None,
    cost: npt.NDArray[np.float64] | None = None,
    groups: npt.NDArray[np.int32] | None = None,
    quotas: npt.NDArray[np.int64] | None = None,
) -> dict[str, Any]: ...
def row_norms2(G: np.ndarray, dtype_code: int, threads: int = 0) -> npt.NDArray[np.float64]: ...
def kernel_isa() -> str: ...
def auto_threads() -> int: ...

class Stepper:
    """One shard of the distributed exact greedy (csrc/spice/stepper.hpp): the lazy engine over
    this shard's rows, one pick at a time, the picks decided by a coordinator. ``G`` is read in
    place and kept referenced; ``options.k`` counts the picks of the whole run. Log-det objective
    only, no budget or quotas. One caller at a time.
    """

    bad_row: int
    picks: int
    evaluations: int
    dot_products: int
    def __init__(self, G: np.ndarray, dtype_code: int, options: Options) -> None: ...
    def best(self) -> tuple[int, float, float, float, float, float, float] | None:
        """(local index, score, delta, base, align, conflict, q) of this step's best row, or
        None when every row left is picked or in span(S). Repeats until apply_pick."""
    def best_of_sample(
        self, m: int, seed: int
    ) -> tuple[int, float, float, float, float, float, float] | None:
        """Stochastic greedy's step: the best of m rows drawn (seeded) from those left."""
    def remaining(self) -> int:
        """Rows not picked nor found in span(S), before this step's draw."""
    def apply_pick(self, row: np.ndarray, q: float, local: int = -1) -> None:
        """Apply the step's pick: its row (d items of G's dtype), its residual q, and its row
        here (local) or -1 when another shard holds it."""
    def top_gains(self, m: int) -> npt.NDArray[np.float64]:
        """The m largest log1p(alpha q) over the rows not picked, descending."""
    def base(self, local: int) -> float: ...
