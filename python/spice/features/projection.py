"""Seeded random projections of per-layer weight gradients (docs/algorithm.md §9).

Every random matrix is made of Rademacher signs (±1) drawn from numpy's PCG64 bit generator, whose
raw output stream is fixed by NEP 19, seeded with a hash of (base seed, layer name, role, block):
the same seed gives the same matrices in every process, on every machine, with any torch version.

Three projections of a per-sample gradient g = (∇W_1, …, ∇W_L) (∇W_l is b_l × a_l):

- ``factorized`` (default): layer l gets d_l of the d output dimensions (water-filled so that no
  layer gets more than b_l·a_l); with Rademacher P_out (r_out × b_l), P_in (r_in × a_l) and
  r_out·r_in ≥ d_l, its block is the first d_l entries of vec(P_out ∇W_l P_inᵀ) (row-major),
  divided by sqrt(d_l). Each entry is (p_i ⊗ q_j)·vec(∇W_l), so E‖f‖² = ‖g‖² and
  E⟨f, f'⟩ = ⟨g, g'⟩.
- ``dense``: f = R g / sqrt(d), R ∈ {±1}^{d×p} generated in column blocks per layer, never whole.
- ``none``: f = g (the concatenated row-major gradients), for tiny models and tests.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "LayerSpec",
    "Projector",
    "FactorizedProjector",
    "DenseProjector",
    "IdentityProjector",
    "make_projector",
    "rademacher",
    "derive_seed",
    "allocate_dims",
]

log = logging.getLogger("spice.features")


def derive_seed(seed: int, *parts: object) -> int:
    """A 128-bit seed from a base seed and names (sha256; no Python ``hash``, so process-stable)."""
    h = hashlib.sha256(str(int(seed)).encode())
    for p in parts:
        h.update(b"\x1f" + str(p).encode("utf-8"))
    return int.from_bytes(h.digest()[:16], "little")


_SIGNS = np.array([1.0, -1.0], dtype=np.float32)


def rademacher(rows: int, cols: int, seed: int) -> np.ndarray:
    """A (rows, cols) float32 matrix of ±1 from PCG64(seed)'s raw bits.

    Bit k (little-endian) of raw word w is entry 64·w + k in row-major order; bit 1 means -1.
    """
    n = rows * cols
    words = np.random.PCG64(seed).random_raw((n + 63) // 64)
    bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:n]
    return _SIGNS[bits].reshape(rows, cols)


@dataclass(frozen=True)
class LayerSpec:
    """A linear map y = W x whose weight gradient is featurised: W is (d_out, d_in)."""

    name: str
    d_in: int
    d_out: int

    @property
    def size(self) -> int:
        return self.d_in * self.d_out


def allocate_dims(capacities: Sequence[int], dim: int) -> list[int]:
    """Split ``dim`` over layers as evenly as possible, no layer above its capacity (b·a)."""
    n = len(capacities)
    out = [0] * n
    left = min(dim, sum(capacities))
    open_ = sorted(range(n), key=lambda i: (capacities[i], i))
    while open_ and left > 0:
        share = left // len(open_)
        i = open_[0]
        if capacities[i] <= share:
            out[i] = capacities[i]
            left -= capacities[i]
            open_.pop(0)
            continue
        extra = left - share * len(open_)
        for k, j in enumerate(sorted(open_)):
            out[j] = share + (1 if k < extra else 0)
        left = 0
    return out


def _factor(d: int, a: int, b: int) -> tuple[int, int]:
    """(r_out, r_in) with r_out ≤ b, r_in ≤ a, r_out·r_in ≥ d, close to square in the dims."""
    r_out = min(b, max(1, math.isqrt(d)))
    r_in = min(a, -(-d // r_out))
    if r_out * r_in < d:
        r_out = min(b, -(-d // r_in))
    return r_out, r_in


class Projector:
    """Maps per-sample per-layer gradients to rows of a d-dimensional feature."""

    kind = "base"
    needs_full_grad = True

    def __init__(self, layers: Sequence[LayerSpec], seed: int = 0):
        self.layers = list(layers)
        self.seed = int(seed)
        self.dim = 0

    def describe(self) -> dict:
        """JSON-able description recorded in the store manifest."""
        return {"kind": self.kind, "seed": self.seed, "dim": self.dim}

    def project_full(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Reference path: project one sample's full gradients [(b_l, a_l) per layer] to (dim,)."""
        out = torch.zeros(1, self.dim, dtype=torch.float32, device=grads[0].device)
        for i, g in enumerate(grads):
            self.add_full(i, g.reshape(1, -1).float(), out)
        return out[0]

    def add_full(self, layer: int, g: torch.Tensor, out: torch.Tensor) -> None:
        """out (B, dim) += projection of layer's flattened per-sample gradients g (B, b·a)."""
        raise NotImplementedError


class IdentityProjector(Projector):
    """``projection="none"``: the feature is the concatenated row-major gradient."""

    kind = "none"

    def __init__(self, layers: Sequence[LayerSpec], seed: int = 0):
        super().__init__(layers, seed)
        self.offsets = np.cumsum([0] + [ly.size for ly in self.layers]).tolist()
        self.dim = int(self.offsets[-1])

    def add_full(self, layer: int, g: torch.Tensor, out: torch.Tensor) -> None:
        out[:, self.offsets[layer] : self.offsets[layer + 1]] += g


class DenseProjector(Projector):
    """``projection="dense"``: f = R g / sqrt(d) with R's column blocks generated on the fly.

    Layer l's columns are cut into blocks of at most ``block_entries // d`` columns; block k is
    ``rademacher(d, cols, derive_seed(seed, "dense", name, k))``. Blocks are cached (float32, on
    the compute device) up to ``cache_bytes``; beyond that they are regenerated for every batch,
    which costs d·p random signs per batch (a warning says so).
    """

    kind = "dense"

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        dim: int,
        seed: int = 0,
        *,
        block_entries: int = 1 << 24,
        cache_bytes: int = 1 << 30,
    ):
        super().__init__(layers, seed)
        self.dim = int(dim)
        self.block_cols = max(1, block_entries // self.dim)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached = 0
        self._warned = False
        self.scale = 1.0 / math.sqrt(self.dim)
        total = sum(ly.size for ly in self.layers) * self.dim * 4
        if total > self.cache_bytes:
            log.warning(
                "dense projection: the %d x %d sign matrix (%.1f GiB as float32) exceeds the "
                "cache (%.1f GiB), so its blocks are regenerated for every batch; this is slow. "
                "Use projection='factorized' for large models.",
                self.dim,
                sum(ly.size for ly in self.layers),
                total / 2**30,
                self.cache_bytes / 2**30,
            )

    def block(self, layer: int, k: int, cols: int, device: torch.device) -> torch.Tensor:
        key = (layer, k)
        blk = self._cache.get(key)
        if blk is None:
            seed = derive_seed(self.seed, "dense", self.layers[layer].name, k)
            blk = torch.from_numpy(rademacher(self.dim, cols, seed)).to(device)
            if self._cached + blk.numel() * 4 <= self.cache_bytes:
                self._cache[key] = blk
                self._cached += blk.numel() * 4
        return blk

    def add_full(self, layer: int, g: torch.Tensor, out: torch.Tensor) -> None:
        p = g.shape[1]
        for k, a in enumerate(range(0, p, self.block_cols)):
            b = min(p, a + self.block_cols)
            blk = self.block(layer, k, b - a, g.device)
            out.addmm_(g[:, a:b], blk.T, alpha=self.scale)


class FactorizedProjector(Projector):
    """``projection="factorized"``: per-layer Kronecker projection, computable from activations.

    For layer l: ``P_in[l]`` (r_in × a) and ``P_out[l]`` (r_out × b) are
    ``rademacher(r, n, derive_seed(seed, "factorized", name, "in"|"out"))``; the layer's d_l
    features are the first d_l entries of vec(P_out ∇W P_inᵀ) / sqrt(d_l), placed at columns
    ``offsets[l]:offsets[l+1]``.
    """

    kind = "factorized"
    needs_full_grad = False

    def __init__(self, layers: Sequence[LayerSpec], dim: int, seed: int = 0):
        super().__init__(layers, seed)
        dims = allocate_dims([ly.size for ly in self.layers], int(dim))
        self.layer_dims = dims
        self.ranks = [_factor(d, ly.d_in, ly.d_out) if d else (0, 0) for d, ly in zip(dims, layers)]
        self.offsets = np.cumsum([0] + dims).tolist()
        self.dim = int(self.offsets[-1])
        if self.dim < dim:
            log.warning(
                "factorized projection: the gradient has only %d entries; using d=%d instead of %d",
                self.dim,
                self.dim,
                dim,
            )
        self.scales = [1.0 / math.sqrt(d) if d else 0.0 for d in dims]
        self._mats: dict[tuple[int, str, torch.device], torch.Tensor] = {}

    def describe(self) -> dict:
        d = super().describe()
        d["layers"] = [
            [ly.name, ly.d_out, ly.d_in, dl, ro, ri]
            for ly, dl, (ro, ri) in zip(self.layers, self.layer_dims, self.ranks)
        ]
        d["layer_columns"] = "name, d_out, d_in, d_l, r_out, r_in"
        return d

    def matrix(self, layer: int, side: str, device: torch.device) -> torch.Tensor:
        """P_in (side="in", r_in × a) or P_out (side="out", r_out × b), float32 on ``device``."""
        key = (layer, side, device)
        m = self._mats.get(key)
        if m is None:
            ly = self.layers[layer]
            r_out, r_in = self.ranks[layer]
            rows, cols = (r_in, ly.d_in) if side == "in" else (r_out, ly.d_out)
            seed = derive_seed(self.seed, "factorized", ly.name, side)
            m = torch.from_numpy(rademacher(rows, cols, seed)).to(device)
            self._mats[key] = m
        return m

    def combine(self, layer: int, dp: torch.Tensor, xp: torch.Tensor, out: torch.Tensor) -> None:
        """out[:, layer block] += Σ_t (P_out δ_t)(P_in x_t)ᵀ, trimmed and scaled.

        dp: (B, T, r_out) projected output grads; xp: (B, T, r_in) projected inputs; out: (B, dim).
        """
        d = self.layer_dims[layer]
        if d == 0:
            return
        s = torch.bmm(dp.transpose(1, 2), xp)  # (B, r_out, r_in)
        a = self.offsets[layer]
        out[:, a : a + d] += s.reshape(s.shape[0], -1)[:, :d] * self.scales[layer]

    def add_full(self, layer: int, g: torch.Tensor, out: torch.Tensor) -> None:
        ly = self.layers[layer]
        d = self.layer_dims[layer]
        if d == 0:
            return
        G = g.reshape(g.shape[0], ly.d_out, ly.d_in)
        po = self.matrix(layer, "out", g.device)
        pi = self.matrix(layer, "in", g.device)
        s = po @ G @ pi.T
        a = self.offsets[layer]
        out[:, a : a + d] += s.reshape(s.shape[0], -1)[:, :d] * self.scales[layer]


def make_projector(
    kind: str, layers: Sequence[LayerSpec], dim: int, seed: int = 0, **kw: int
) -> Projector:
    """Build the projector named ``kind`` ("factorized" | "dense" | "none")."""
    if not layers:
        raise ValueError("no layers to project")
    if kind == "factorized":
        return FactorizedProjector(layers, dim, seed)
    if kind == "dense":
        return DenseProjector(layers, dim, seed, **kw)
    if kind == "none":
        return IdentityProjector(layers, seed)
    raise ValueError(f"projection must be 'factorized', 'dense' or 'none', got {kind!r}")
