"""The shard: one block of rows and the C++ engine over it (``spice._core.Stepper``), run as a Ray
actor. Ray pickles the class by reference: a worker imports ``spice.distributed.shard`` itself."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _core
from .plan import _open_rows


class _Shard:
    """One block of rows and the C++ engine over it (wrapped by ``ray.remote`` at run time)."""

    def __init__(
        self, spec: tuple, lo: int, hi: int, bf16: bool, options: dict, fail_at: Any
    ) -> None:
        # nothing that can fail here: an error in open() reaches the driver as itself (type,
        # message, traceback), where one in the constructor only kills the actor
        self.args = (spec, lo, hi, bf16, options)
        self.fail_at = fail_at  # tests: (pick, "exit" or "stop") to crash or stall at that pick
        self.sent = -1  # local row of the candidate whose row the coordinator holds
        self.rows_sent = 0  # rows sent with candidates (bytes per pick, in params)

    def open(self) -> dict:
        """Map this shard's rows, check what this node must have, build the engine."""
        import socket

        spec, lo, hi, bf16, options = self.args
        host = socket.gethostname()
        spill = options.get("spill_dir") or ""
        if spill and not os.path.isdir(spill):
            raise FileNotFoundError(f"spill_dir {spill} is not a directory on node {host}")
        # the w rows' file is created (and unlinked) there: say so now, not after the mapping
        if spill and not os.access(spill, os.W_OK | os.X_OK):
            raise PermissionError(f"spill_dir {spill} is not writable on node {host}")
        if spec[0] == "store" and not os.path.exists(spec[1]):
            raise FileNotFoundError(
                f"store {spec[1]} does not exist on node {host} (is it mounted there?)"
            )
        self.arr, self.code = _open_rows(spec, lo, hi, bf16)
        try:
            self.eng = _core.Stepper(self.arr, self.code, _core.Options(**options))
        except RuntimeError as e:
            if not str(e).startswith("spill_dir"):
                raise
            # the core names the bytes and directory; the node and what they are for are ours
            raise RuntimeError(
                f"{e} (on node {host}: the w rows of k = {options['k']} picks, k x d x 8 bytes, "
                "which every shard keeps)"
            ) from e
        return self.info()

    def info(self) -> dict:
        import socket

        try:
            import ray  # type: ignore[import-not-found]

            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        except Exception:  # noqa: BLE001 (outside Ray: in-process use)
            node = ""
        return dict(
            rows=int(self.arr.shape[0]),
            d=int(self.arr.shape[1]),
            code=int(self.code),
            isa=_core.kernel_isa(),
            bad_row=int(self.eng.bad_row),
            host=socket.gethostname(),
            node=node,
            pid=os.getpid(),
        )

    def _maybe_fail(self) -> None:
        if self.fail_at is not None and self.eng.picks == self.fail_at[0]:
            if self.fail_at[1] == "stop":
                import signal

                os.kill(os.getpid(), signal.SIGSTOP)  # a test's stalled node: alive, silent
            else:
                os._exit(1)  # a test's simulated crash: the process dies without a word

    def ping(self) -> bool:
        return True

    def _with_row(self, cand: Any) -> tuple[Any, np.ndarray | None]:
        """A candidate and its row, so that the coordinator holds the winner's row when it
        broadcasts the pick (one hop, not a fetch from the owner and then a send). The row is
        left out when it is the one this shard sent last: the coordinator still holds it."""
        if cand is None:
            return None, None
        j = int(cand[0])
        if j == self.sent:
            return cand, None
        self.sent = j
        self.rows_sent += 1
        return cand, np.array(self.arr[j])

    def best(self) -> Any:
        return self.eng.best()

    def best_with_row(self) -> tuple[Any, np.ndarray | None]:
        self.sent = -1  # a fresh loop: the coordinator holds no row of ours
        return self._with_row(self.eng.best())

    def row(self, local: int) -> np.ndarray:
        return np.array(self.arr[local])

    def rows(self, locals_: Sequence[int]) -> np.ndarray:
        return np.ascontiguousarray(self.arr[np.asarray(locals_, dtype=np.int64)])

    def sample(self, m: int, seed: int) -> tuple[Any, np.ndarray | None]:
        """The best of this shard's part of a stochastic step's sample, with its row."""
        return self._with_row(self.eng.best_of_sample(int(m), int(seed)))

    def remaining(self) -> int:
        return int(self.eng.remaining())

    def apply(self, row: np.ndarray, q: float, local: int) -> int:
        """A stochastic step's pick: applied, then the rows left to sample from."""
        self._maybe_fail()
        self.eng.apply_pick(row, q, local)
        return int(self.eng.remaining())

    def step(
        self, row: np.ndarray, q: float, local: int, want_best: bool
    ) -> tuple[Any, np.ndarray | None]:
        """Apply a pick, then this shard's next best candidate with its row (see _with_row)."""
        self._maybe_fail()
        self.eng.apply_pick(row, q, local)
        return self._with_row(self.eng.best()) if want_best else (None, None)

    def replay(self, rows: np.ndarray, qs: Sequence[float], locals_: Sequence[int]) -> list:
        """Apply recorded picks without selecting; returns the base gains of this shard's own."""
        bases = []
        for t in range(len(qs)):
            j = int(locals_[t])
            if j >= 0:
                bases.append(self.eng.base(j))
            self.eng.apply_pick(rows[t], float(qs[t]), j)
        return bases

    def top_gains(self, m: int) -> np.ndarray:
        return self.eng.top_gains(m)

    def stats(self) -> tuple[int, int, int]:
        return int(self.eng.evaluations), int(self.eng.dot_products), self.rows_sent
