"""Settings declared once: a dataclass field carries its default, its domain and one help line
(with units) in its metadata; :func:`checked` validates a value against them, and
:func:`add_flags` makes the command-line flags from the same fields, so a setting's name, default,
range and help live in one place.

Standard library only: the command line builds its parser from these fields in a numpy-only
install too.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import MISSING, field, fields
from typing import Any


def setting(
    default: Any,
    help: str,
    *,
    kind: type | None = None,
    lo: float | None = None,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
    choices: Sequence[str] | None = None,
    flag: str | None = None,
    aliases: Sequence[str] = (),
) -> Any:
    """A dataclass field: its default and help, and for numbers ``kind`` (int or float) in the
    interval lo..hi (open ends where asked; None allowed when ``optional``), for strings the
    ``choices``. ``flag``: its command-line flag (None: not on the command line); ``aliases``:
    older flags that set it too (hidden from --help)."""
    meta = dict(
        help=help,
        kind=kind,
        lo=lo,
        hi=hi,
        lo_open=lo_open,
        hi_open=hi_open,
        optional=optional,
        choices=tuple(choices) if choices is not None else None,
        flag=flag,
        aliases=tuple(aliases),
    )
    return field(default=default, metadata=meta)


def one_of(choices: Sequence[str]) -> str:
    """``'a', 'b' or 'c'``: the choices as the error messages list them."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def checked(name: str, v: Any, meta: Any) -> Any:
    """The value ``v`` of setting ``name`` checked against its metadata (see :func:`setting`), as
    it is to be stored (numpy integers become int). Raises ValueError or TypeError naming the
    setting and what it must be; a setting with neither ``kind`` nor ``choices`` is returned as
    given (its class checks it)."""
    if v is None and meta["optional"]:
        return None
    kind, choices, lo, hi = meta["kind"], meta["choices"], meta["lo"], meta["hi"]
    opt = " or None" if meta["optional"] else ""
    if kind is int:
        is_int = isinstance(v, numbers.Integral) and not isinstance(v, bool)
        if lo is None:
            if not is_int:
                raise TypeError(f"{name} must be an integer{opt}, got {v!r}")
        elif not (is_int and v >= lo):
            raise ValueError(f"{name} must be an integer >= {lo:g}{opt}, got {v!r}")
        return int(v)
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name} must be a number{opt}, got {v!r}")
        x = float(v)
        ok = math.isfinite(x)
        if lo is not None:
            ok = ok and (x > lo if meta["lo_open"] else x >= lo)
        ok = ok and (x < hi if meta["hi_open"] else x <= hi)
        if not ok:
            low = "" if lo is None else f"{'>' if meta['lo_open'] else '>='} {lo:g}"
            high = "" if math.isinf(hi) else f"{'<' if meta['hi_open'] else '<='} {hi:g}"
            bounds = " and ".join(b for b in (low, high) if b)
            raise ValueError(f"{name} must be a finite number{' ' + bounds if bounds else ''}"
                             f"{opt}, got {v!r}")  # fmt: skip
        return x
    if choices is not None:
        if not isinstance(v, str) or v not in choices:
            raise ValueError(f"{name} must be {one_of(choices)}{opt}, got {v!r}")
        return v
    return v


def check_fields(obj: Any) -> None:
    """Check every field of the frozen dataclass ``obj`` (in ``__post_init__``), storing the
    checked values."""
    for f in fields(obj):
        object.__setattr__(obj, f.name, checked(f.name, getattr(obj, f.name), f.metadata))


def flagged(cls: type) -> list[str]:
    """The names of the fields of ``cls`` that have a command-line flag, in field order."""
    return [f.name for f in fields(cls) if f.metadata.get("flag")]


def add_flags(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    number: Callable[..., Callable[[str], Any]],
) -> list[str]:
    """Add a flag for every field of ``cls`` that names one, with the field's default, help and
    choices; a number's flag parses with ``number(kind, lo, hi, lo_open, hi_open)`` (an argparse
    type). The value lands under the field's name. Returns those names."""
    names = []
    for f in fields(cls):
        m = f.metadata
        if not m.get("flag"):
            continue
        kw: dict[str, Any] = {}
        if m["choices"] is not None:
            kw["choices"] = list(m["choices"])
        elif m["kind"] is not None:
            hi = None if math.isinf(m["hi"]) else m["hi"]
            kw["type"] = number(m["kind"], m["lo"], hi, m["lo_open"], m["hi_open"])
        parser.add_argument(m["flag"], dest=f.name, default=f.default, help=m["help"], **kw)
        for alias in m["aliases"]:  # same value; hidden, and leaves the default alone
            parser.add_argument(
                alias, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kw
            )
        names.append(f.name)
    return names


def field_doc(cls: type) -> str:
    """A "Fields" section for the docstring of ``cls``: each field, its default and its help."""
    lines = ["", "    Fields", "    ------"]
    for f in fields(cls):
        default = f.default if f.default is not MISSING else None
        flag = f" (--{f.metadata['flag'].lstrip('-')})" if f.metadata.get("flag") else ""
        lines.append(f"    {f.name} [{default!r}]{flag}")
        lines.append(f"        {f.metadata['help']}.")
    return "\n".join(lines) + "\n"
