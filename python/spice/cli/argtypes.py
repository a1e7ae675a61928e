"""The argparse types of the ``spice`` flags: checked numbers, ``--shard``, ``--columns`` and
``--quotas``; each refuses a bad value with a message argparse prints before any work."""

from __future__ import annotations

import argparse
import math
from typing import Any


def _number(
    kind: type,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Any:
    """An argparse type: a finite int/float within [lo, hi] (open ends where asked)."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite")
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        )
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            raise argparse.ArgumentTypeError(f"{text} is out of range {rng}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _shard(s: str) -> tuple[int, int] | str:
    if s == "auto":
        return s
    try:
        i, n = (int(x) for x in s.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be auto or i/N, got {s!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard {s}: need 0 <= i < N")
    return i, n


_INT1 = _number(int, 1)
_FINITE_POS = _number(float, 0, lo_open=True)


def _columns(text: str) -> dict[str, str]:
    from ..hfdata import parse_columns

    try:
        return parse_columns(text)
    except ValueError as e:  # argparse says "argument --columns:" itself
        msg = str(e)
        for prefix in ("--columns: ", "columns: "):
            msg = msg[len(prefix) :] if msg.startswith(prefix) else msg
        raise argparse.ArgumentTypeError(msg) from None


_columns.__name__ = "columns"  # argparse names the type in its messages


def _quotas(text: str) -> dict[str, int | float]:
    """--quotas: group=quota,... with a quota an int count >= 0 or a share of k in (0, 1]."""
    out: dict[str, int | float] = {}
    for part in text.split(","):
        name, eq, value = part.strip().rpartition("=")
        name = name.strip()
        if not eq or not name:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not group=quota (e.g. wiki=0.5,code=1000)"
            )
        value = value.strip()
        try:
            q: int | float = int(value)
        except ValueError:
            try:
                q = float(value)
            except ValueError:
                q = math.nan
            if not (0.0 < q <= 1.0):
                raise argparse.ArgumentTypeError(
                    f"quota of {name!r} is {value!r}: a count (a whole number, e.g. 1000) or a "
                    "share of the budget in (0, 1] (e.g. 0.5)"
                ) from None
        if isinstance(q, int) and q < 0:
            raise argparse.ArgumentTypeError(f"quota of {name!r} is {q}: a count is >= 0")
        if name in out:
            raise argparse.ArgumentTypeError(f"group {name!r} is given twice")
        out[name] = q
    return out


_quotas.__name__ = "quotas"  # argparse names the type in its messages
