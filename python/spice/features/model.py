"""Preparing the model to featurise: LoRA adapters (or the model's own linear layers) to take
gradients of, undone afterwards; and the identities of the weights and the tokenizer."""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .config import DEFAULT_TARGETS, LoraSpec
from .projection import derive_seed

# ----------------------------------------------------------------------------------------------
# model preparation


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and any(
        hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict) for m in model.modules()
    )


def _lora_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if hasattr(m, "lora_A") and isinstance(m.lora_A, nn.ModuleDict):
            active = getattr(m, "active_adapters", None) or list(m.lora_A.keys())
            for ad in active:
                if ad in m.lora_A and isinstance(m.lora_A[ad], nn.Linear):
                    out.append((f"{name}.lora_A.{ad}", m.lora_A[ad]))
                    out.append((f"{name}.lora_B.{ad}", m.lora_B[ad]))
    return out


def _match_linear(model: nn.Module, targets: Sequence[str]) -> list[tuple[str, nn.Module]]:
    targets = list(targets)
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            out.append((name, m))
    return out


def _uniform_(w: torch.Tensor, bound: float, seed: int) -> None:
    g = torch.Generator(device="cpu").manual_seed(seed % (2**63))
    vals = (torch.rand(w.shape, generator=g, dtype=torch.float32) * 2 - 1) * bound
    with torch.no_grad():
        w.copy_(vals.to(dtype=w.dtype, device=w.device))


def param_fingerprint(model: nn.Module, samples: int = 4096) -> str:
    """sha256 over every parameter's name, shape, dtype and up to ``samples`` evenly spaced values
    (a cheap identity of the weights: different checkpoints differ here)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}\n".encode())
        flat = p.detach().reshape(-1)
        n = flat.numel()
        if n > samples:  # evenly spaced, in exact integer arithmetic
            idx = torch.arange(samples, dtype=torch.int64) * (n - 1) // (samples - 1)
            flat = flat[idx.to(flat.device)]
        h.update(flat.to(torch.float32).cpu().numpy().astype("<f4").tobytes())
    return h.hexdigest()


@contextmanager
def prepared_model(
    model: nn.Module,
    lora: LoraSpec | None,
    target_modules: Sequence[str] | None = None,
) -> Iterator[tuple[nn.Module, list[tuple[str, nn.Module]], dict]]:
    """Yield (model to run, featurised (name, nn.Linear) modules, description) and undo everything
    afterwards: added LoRA adapters are removed, ``requires_grad`` and train/eval mode restored.

    A model that already carries peft LoRA adapters is used as is (its active adapters).
    """
    training = model.training
    params = list(model.parameters())
    saved_rg = [p.requires_grad for p in params]
    peft_model = None
    run: nn.Module = model
    handles: list[Any] = []
    grad_weights: list[nn.Parameter] = []
    try:
        if _is_peft(model):
            modules = _lora_modules(model)
            desc: dict = {"kind": "existing_lora"}
            cfg = getattr(model, "peft_config", {})
            desc["peft_config"] = {
                k: {kk: str(vv) for kk, vv in sorted(v.to_dict().items())} for k, v in cfg.items()
            }
        elif lora is not None:
            if lora.init not in ("default", "random"):
                raise ValueError(f"LoraSpec.init must be 'default' or 'random', got {lora.init!r}")
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as e:  # pragma: no cover
                raise ImportError("LoRA features need peft (pip install 'spice-select[hf]')") from e
            if not _match_linear(model, lora.target_modules):
                raise ValueError(
                    f"none of the LoRA target modules {list(lora.target_modules)} is an nn.Linear "
                    "in this model; pass LoraSpec(target_modules=...) or lora=None with "
                    "target_modules=..."
                )
            cfg = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=0.0,
                target_modules=list(lora.target_modules),
                bias="none",
            )
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # peft calls a deprecated transformers helper; not the user's concern
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                torch.manual_seed(lora.seed)
                peft_model = get_peft_model(model, cfg)
            run = peft_model
            modules = _lora_modules(peft_model)
            for name, m in modules:
                kind = "A" if ".lora_A." in name else "B"
                if kind == "A" or lora.init == "random":
                    fan_in = m.weight.shape[1]
                    bound = 1.0 / math.sqrt(fan_in)
                    _uniform_(m.weight, bound, derive_seed(lora.seed, "lora", name))
                else:
                    with torch.no_grad():
                        m.weight.zero_()
            desc = {"kind": "lora", **lora.describe()}
        else:
            targets = DEFAULT_TARGETS if target_modules is None else tuple(target_modules)
            modules = _match_linear(model, targets)
            if not modules:
                raise ValueError(
                    f"no nn.Linear module matches target_modules={list(targets)}; name them "
                    "(suffixes of module names such as 'q_proj')"
                )
            desc = {"kind": "modules", "target_modules": list(targets)}
        if not modules:
            raise ValueError("found no layers to take gradients of")
        if desc["kind"] != "modules":
            b_zero = all(
                float(m.weight.detach().abs().max()) == 0.0 for n, m in modules if ".lora_B." in n
            )
            if b_zero:  # fresh adapter: dL/dA = B^T (...) = 0 exactly, so drop A's zero columns
                modules = [(n, m) for n, m in modules if ".lora_B." in n]
                desc["featurised"] = "lora_B only (B = 0, so the gradient of A is zero)"
            else:
                desc["featurised"] = "lora_A and lora_B"
        for p in run.parameters():
            p.requires_grad_(False)
        run.eval()
        emb = None
        get_emb = getattr(run, "get_input_embeddings", None)
        if callable(get_emb):
            try:
                emb = get_emb()
            except (NotImplementedError, AttributeError):
                emb = None
        if isinstance(emb, nn.Module):

            def _req(mod: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
                return out.requires_grad_(True) if torch.is_grad_enabled() else out

            handles.append(emb.register_forward_hook(_req))
        else:  # no embedding to start the backward from: let the featurised weights require grad
            grad_weights = [m.weight for _, m in modules]
            for w in grad_weights:
                w.requires_grad_(True)
        desc["layers"] = len(modules)
        yield run, modules, desc
    finally:
        for h in handles:
            h.remove()
        for w in grad_weights:
            w.grad = None
        if peft_model is not None:
            peft_model.unload()
        for p, rg in zip(params, saved_rg):
            p.requires_grad_(rg)
        model.train(training)


def describe_tokenizer(tokenizer: Any) -> dict:
    """Identity of a tokenizer: class, vocabulary size, sha256 of its definition and template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:
        vocab = tokenizer.get_vocab()
        for k in sorted(vocab):
            h.update(f"{k}\t{vocab[k]}\n".encode())
    tmpl = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(tmpl, dict):
        tmpl = repr(sorted(tmpl.items()))
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "") or ""),
        "vocab_size": len(tokenizer),
        "sha256": h.hexdigest(),
        "chat_template_sha256": hashlib.sha256(tmpl.encode("utf-8")).hexdigest() if tmpl else None,
        "bos_token": getattr(tokenizer, "bos_token", None),
        "eos_token": getattr(tokenizer, "eos_token", None),
    }
