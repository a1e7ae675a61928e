"""Peak resident memory of a block of code, measured by the kernel (Linux VmHWM reset)."""

from __future__ import annotations

import contextlib
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def peak_extra():
    """Yields a dict; after the block it holds 'extra_bytes' (peak RSS − RSS before) and 's'."""
    out = {"extra_bytes": 0, "s": 0.0}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    before = _status("VmRSS")
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0
        out["extra_bytes"] = max(0, _status("VmHWM") - before)
