"""Helpers shared by the test files (comparing selections, spice command lines, a store's
files), imported as ``from helpers import ...`` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from spice.reference import ReferenceSelection

# The environment of a spice subprocess: no model hub here (a hub lookup would hang ~50 s).
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

# Per-pick float64 fields of spice.Selection that two runs of the same greedy must agree on.
PER_PICK = ("gains", "base", "epsilon", "align", "conflict", "penalty", "scores")


def assert_same(got: Any, want: Any, *, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """``got`` (a ``spice.Selection``) made the same picks as ``want`` (a ``Selection`` or an
    oracle's :class:`~spice.reference.ReferenceSelection`).

    Indices and stop reason exactly; the per-pick numbers and ``logdet`` within ``rtol``
    relative plus ``atol`` absolute, except ``epsilon`` = gain − base (a difference of two such
    numbers) within 10·rtol; ``safeguard`` and ``tokens`` (a float64 sum in pick order) exactly.
    With ``rtol=0, atol=0`` every number must be bit-identical. Only the fields ``want``
    defines are compared (an oracle leaves out what it does not compute, e.g. the bounds).
    """
    if isinstance(want, ReferenceSelection):
        fields = want.defined()
    else:
        fields = {f: getattr(want, f) for f in ("indices", "stop_reason", "logdet", *PER_PICK)}
        fields.update(tokens=want.tokens, safeguard=want.safeguard)
    np.testing.assert_array_equal(got.indices, fields.pop("indices"), err_msg="indices")
    for name, w in fields.items():
        g = getattr(got, name)
        if name in ("stop_reason", "safeguard", "tokens") or w is None:
            assert g == w, f"{name}: {g!r} != {w!r}"
        elif rtol == 0 and atol == 0:
            g, w = np.asarray(g), np.asarray(w)
            assert g.dtype == w.dtype == np.float64, f"{name}: {g.dtype} vs {w.dtype}"
            assert g.tobytes() == w.tobytes(), f"{name} differs in its bits: {g} vs {w}"
        elif name == "epsilon":
            np.testing.assert_allclose(g, w, rtol=10 * rtol, atol=atol, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def spice_cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m spice *args`` in a subprocess (offline, text output captured). With ``check``
    a non-zero exit fails the test, showing the command's output."""
    out = subprocess.run(
        [sys.executable, "-m", "spice", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and out.returncode != 0:
        raise AssertionError(f"spice {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def argv(command: str, *flags: str, **options: Any) -> list[str]:
    """A spice command line: ``argv("select", "--quiet", k=6, out=path)`` is
    ``["select", "--quiet", "--k", "6", "--out", str(path)]`` (underscores become dashes)."""
    out = [command, *flags]
    for name, value in options.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return out


# What a finished feature store holds (skipped.jsonl too when rows were skipped).
STORE_FILES = ("features.npy", "index.jsonl", "manifest.json")


def store_files(path: Path | str, names: tuple[str, ...] = STORE_FILES) -> dict[str, bytes]:
    """A store's files (name -> bytes), to compare two stores byte for byte; a missing one
    raises."""
    return {n: (Path(path) / n).read_bytes() for n in names}
