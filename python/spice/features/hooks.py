"""Per-sample projected gradients from one batched forward and backward (docs/algorithm.md §9).

For each featurised linear layer y = W x, a forward hook sees the input x (B, T, a) and registers a
hook on the output y that receives δ = ∂L/∂y (B, T, b) during the backward pass. The loss that is
back-propagated is L = Σ_i ℓ_i with ℓ_i the mean cross-entropy over sample i's loss tokens, so δ of
sample i is exactly the gradient of ℓ_i; sample i's weight gradient is Σ_t δ_{i,t} x_{i,t}ᵀ.

- factorized: the forward hook keeps P_in x (B, T, r_in); the backward hook forms P_out δ and
  Σ_t (P_out δ_t)(P_in x_t)ᵀ with one batched matmul. The b×a gradient is never formed.
- dense / none: the backward hook forms the per-sample gradients (B, b, a) of that layer only (meant
  for small layers such as LoRA's A and B) and hands them to the projector.

Padded positions are masked out of x explicitly (their δ is already zero since they carry no loss).
No parameter needs ``requires_grad``: gradients flow from the input embeddings' output, so the
backward pass computes activation gradients only and never touches ``.grad``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .projection import FactorizedProjector, Projector

__all__ = [
    "GradientCollector",
    "forward_logits",
    "per_sample_losses",
    "batch_features",
    "sample_targets",
    "slow_per_sample_gradients",
]


class GradientCollector:
    """Hooks on ``modules`` that accumulate per-sample projected gradients into ``self.out``.

    Args:
        modules: (name, nn.Linear) pairs, in the projector's layer order.
        projector: maps layer gradients to feature columns.
        max_grad_elems: in dense/none mode, per-sample gradients of a layer are formed for at most
            this many (sample × b × a) float32 entries at a time.
    """

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        projector: Projector,
        *,
        max_grad_elems: int = 1 << 26,
    ):
        self.modules = list(modules)
        self.projector = projector
        self.max_grad_elems = int(max_grad_elems)
        self.out: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self._handles: list[Any] = []
        self.calls = 0

    @contextmanager
    def attached(self):
        """Register the forward hooks for the duration of the ``with`` block."""
        for i, (_, m) in enumerate(self.modules):
            self._handles.append(m.register_forward_hook(self._forward_hook(i)))
        try:
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()

    def begin(self, token_mask: torch.Tensor) -> torch.Tensor:
        """Start a batch; token_mask (B, T) is 1 at real tokens. Returns the zeroed (B, dim) out."""
        b = token_mask.shape[0]
        self.mask = token_mask.to(torch.float32)
        self.out = torch.zeros(b, self.projector.dim, dtype=torch.float32, device=token_mask.device)
        self.calls = 0
        return self.out

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        x = x.reshape(mask.shape[0], -1, x.shape[-1]).to(torch.float32)
        return x * mask[:, : x.shape[1], None]

    def _forward_hook(self, layer: int) -> Callable:
        proj = self.projector

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self.out is None or not torch.is_grad_enabled():
                return
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            self.calls += 1
            x = inputs[0]
            if isinstance(proj, FactorizedProjector):
                if proj.layer_dims[layer] == 0:
                    return
                xp = self._masked(x.detach()) @ proj.matrix(layer, "in", x.device).T
                output.register_hook(lambda g: self._backward_factorized(layer, g, xp))
            else:
                xd = x.detach()
                output.register_hook(lambda g: self._backward_full(layer, g, xd))

        return hook

    def _backward_factorized(self, layer: int, g: torch.Tensor, xp: torch.Tensor) -> None:
        proj = self.projector
        assert isinstance(proj, FactorizedProjector)
        g = g.reshape(xp.shape[0], xp.shape[1], -1).to(torch.float32)
        dp = g @ proj.matrix(layer, "out", g.device).T
        proj.combine(layer, dp, xp, self.out)

    def _backward_full(self, layer: int, g: torch.Tensor, x: torch.Tensor) -> None:
        xm = self._masked(x)
        B, T, a = xm.shape
        g = g.reshape(B, T, -1).to(torch.float32)
        b = g.shape[-1]
        step = max(1, self.max_grad_elems // max(1, a * b))
        for s in range(0, B, step):
            G = torch.bmm(g[s : s + step].transpose(1, 2), xm[s : s + step])  # (n, b, a)
            self.projector.add_full(layer, G.reshape(G.shape[0], -1), self.out[s : s + step])


def _forward_params(model: nn.Module) -> set[str] | None:
    """Names the model's forward accepts; None when it takes **kwargs or cannot be inspected."""
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return set(sig.parameters)


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (base) model's forward computes logits only at given positions (Hugging Face
    causal LMs: ``logits_to_keep`` as a 1-D tensor of positions)."""
    base = model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor | None = None,
):
    """Run ``model`` and return logits (B, T, V); accepts HF outputs or a bare tensor.

    With ``positions`` (K,) int64 (ascending) and a model that supports it, the vocabulary
    projection runs only there and the logits are (B, K, V): the LM head's memory and time go with
    the positions that carry loss, not the sequence. Callers check :func:`_takes_logits_to_keep`.
    """
    params = _forward_params(model)
    if params is None or "attention_mask" in params:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if getattr(getattr(model, "config", None), "use_cache", None) is not None:
            kwargs["use_cache"] = False
        if positions is not None:
            kwargs["logits_to_keep"] = positions
        out = model(**kwargs)
    else:
        out = model(input_ids)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"cannot find logits in the model output ({type(out).__name__})")


def per_sample_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean next-token cross-entropy over loss tokens.

    Args:
        logits: (B, T, V); position t predicts the label at t + 1. With ``positions``, (B, K, V)
            holding only the logits at those positions.
        labels: (B, T) int64 targets, aligned with the inputs (normally the input ids);
            only positions where ``loss_mask`` is True are read.
        loss_mask: (B, T) bool, True where the token is a loss target (never at t = 0).
        positions: (K,) ascending positions the logits were computed at; they must include every
            t with ``loss_mask[:, t + 1]`` True.

    Returns:
        (losses (B,) float32 with 0 where a sample has no loss tokens, counts (B,) int64).
    """
    B = labels.shape[0]
    m = loss_mask[:, 1:]
    counts = m.sum(1)
    bi, ti = m.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return logits.new_zeros(B, dtype=torch.float32), counts
    col = ti if positions is None else torch.searchsorted(positions.to(ti.device), ti)
    tok = F.cross_entropy(logits[bi, col].to(torch.float32), labels[bi, ti + 1], reduction="none")
    w = 1.0 / counts.clamp(min=1).to(torch.float32)
    losses = torch.zeros(B, dtype=torch.float32, device=logits.device).index_add(0, bi, tok * w[bi])
    return losses, counts


def batch_features(
    model: nn.Module,
    collector: GradientCollector,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batched forward + backward: (features (B, dim) float32, losses (B,), counts (B,)).

    Rows of samples without loss tokens are zero. The collector must be attached. ``labels``
    (B, T) default to ``input_ids``; labels at positions outside ``loss_mask`` are never read.

    ``uniforms`` (B, T) float64 in [0, 1): sampled targets. The target at each loss position is
    drawn from the model's own next-token distribution there (inverse CDF at the uniform), so the
    feature is a sample of the model's Fisher score instead of the given label's gradient; the
    given tokens stay the context. The returned losses are still those of the given labels.
    """
    out = collector.begin(attention_mask)
    positions = None
    if _takes_logits_to_keep(model):  # the LM head only where a next token is a target
        keep = loss_mask[:, 1:].any(0).nonzero(as_tuple=True)[0]
        if 0 < keep.numel() < input_ids.shape[1]:
            positions = keep
    with torch.enable_grad():
        logits = forward_logits(model, input_ids, attention_mask, positions)
        targets = input_ids if labels is None else labels
        given = None
        if uniforms is not None:
            with torch.no_grad():
                given, _ = per_sample_losses(logits.detach(), targets, loss_mask, positions)
            targets = sample_targets(logits.detach(), targets, loss_mask, uniforms, positions)
        losses, counts = per_sample_losses(logits, targets, loss_mask, positions)
        total = losses.sum()
        if bool((counts > 0).any()) and total.requires_grad:
            total.backward()
    if collector.calls == 0:
        raise RuntimeError(
            "no featurised layer saw a gradient-carrying forward pass; check target_modules and "
            "that the model's forward runs with gradients enabled"
        )
    collector.out = None
    return out, (losses if given is None else given).detach(), counts


def sample_targets(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    uniforms: torch.Tensor,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Labels with every loss position's token drawn from softmax(logits) there.

    Args:
        logits, labels, loss_mask, positions: as in :func:`per_sample_losses`.
        uniforms: (B, T) float64 in [0, 1), one per label position; the token at label
            position t + 1 is the first whose cumulative probability (float64) exceeds
            ``uniforms[:, t + 1]``.
            Drawing by inverse CDF from per-record uniforms keeps a record's draw independent of
            the batch it is in.

    Returns:
        (B, T) int64: ``labels`` with the loss positions replaced.
    """
    out = labels.clone()
    m = loss_mask[:, 1:]
    bi, ti = m.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return out
    col = ti if positions is None else torch.searchsorted(positions.to(ti.device), ti)
    cdf = torch.softmax(logits[bi, col].to(torch.float64), dim=-1).cumsum(-1)
    u = uniforms.to(device=cdf.device, dtype=torch.float64)[bi, ti + 1]
    # scale by the last cumulative value so that round-off never leaves u past the end
    tok = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    out[bi, ti + 1] = tok.clamp_(max=cdf.shape[1] - 1).to(out.dtype)
    return out


def slow_per_sample_gradients(
    model: nn.Module,
    weights: Sequence[torch.nn.Parameter],
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
) -> list[torch.Tensor]:
    """Reference: one unpadded sample, ``torch.autograd.grad`` of its mean loss-token CE.

    Args:
        weights: the featurised weights (each (b, a)); they must require grad.
        input_ids: (T,) int64; loss_mask: (T,) bool.

    Returns:
        list of per-layer gradients (b, a) float32 (zeros when the sample has no loss tokens).
    """
    ids = input_ids[None]
    logits = forward_logits(model, ids, torch.ones_like(ids))
    loss, counts = per_sample_losses(logits, ids, loss_mask[None])
    if int(counts[0]) == 0:
        return [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    grads = torch.autograd.grad(loss.sum(), list(weights), allow_unused=True)
    return [
        torch.zeros_like(w, dtype=torch.float32) if g is None else g.to(torch.float32)
        for g, w in zip(grads, weights)
    ]
