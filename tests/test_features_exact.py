"""Batched hook features equal the same projection of slow per-sample autograd gradients."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from spice.features import LoraSpec, extract, make_projector, tokenize_record
from spice.features.driver import prepared_model
from spice.features.hooks import slow_per_sample_gradients
from spice.features.projection import (
    FactorizedProjector,
    LayerSpec,
    allocate_dims,
    derive_seed,
    rademacher,
)
from spice.features.records import load_records

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def reference_features(model, tok, recs, *, lora, target_modules, projection, dim, seed=0,
                       loss_on="response", max_length=512):  # fmt: skip
    """Slow path: one unpadded forward + autograd.grad per record, then the same projector."""
    out = []
    with prepared_model(model, lora, target_modules) as (run, modules, _):
        layers = [LayerSpec(n, m.in_features, m.out_features) for n, m in modules]
        proj = make_projector(projection, layers, dim, seed)
        weights = [m.weight for _, m in modules]
        for w in weights:
            w.requires_grad_(True)
        try:
            for r in load_records(recs):
                t = tokenize_record(r, tok, max_length=max_length, loss_on=loss_on)
                g = slow_per_sample_gradients(
                    run, weights, torch.from_numpy(t.input_ids), torch.from_numpy(t.loss_mask)
                )
                out.append(proj.project_full(g).numpy())
        finally:
            for w in weights:
                w.requires_grad_(False)
    return np.stack(out)


def assert_rows_close(got, want, rtol=1e-4):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = np.abs(want).max(axis=1, keepdims=True) + 1e-30
    err = np.abs(got - want) / scale
    assert err.max() <= rtol, f"max relative error {err.max():.2e}"
    # and elementwise where entries are not tiny relative to the row
    big = np.abs(want) > 1e-2 * scale
    np.testing.assert_allclose(got[big], want[big], rtol=rtol * 10)


CASES = [
    ("factorized", "lora"),
    ("dense", "lora"),
    ("factorized", "modules"),
    ("dense", "modules"),
    ("none", "lora"),
]


@pytest.mark.parametrize("projection,mode", CASES)
def test_batched_equals_slow_loop(tmp_path, tiny_llama, tokenizer, records, projection, mode):
    recs = records[:12]
    lora = LoraSpec(r=4, init="random", seed=3) if mode == "lora" else None
    targets = None if mode == "lora" else ["q_proj", "v_proj", "down_proj"]
    dim = 256
    store = extract(
        tiny_llama, tokenizer, recs, tmp_path / "s", dim=dim, projection=projection, lora=lora,
        target_modules=targets, batch_size=5, dtype="float32", progress=False, chunk_rows=7,
    )  # fmt: skip
    want = reference_features(
        tiny_llama, tokenizer, recs, lora=lora, target_modules=targets, projection=projection,
        dim=dim,
    )  # fmt: skip
    assert store.features.shape == want.shape
    assert np.abs(want).max() > 0
    assert_rows_close(store.features, want)


def test_qwen2_chat_lora_default_init(tmp_path, tiny_qwen2, chat_tokenizer, records):
    """Qwen2 (q/k/v biases), chat template, fresh adapter (B = 0: only B's gradient is used)."""
    recs = records[:8]
    store = extract(
        tiny_qwen2, chat_tokenizer, recs, tmp_path / "s", dim=128, batch_size=3,
        dtype="float32", progress=False,
    )  # fmt: skip
    assert store.config["gradients"]["featurised"].startswith("lora_B only")
    want = reference_features(
        tiny_qwen2, chat_tokenizer, recs, lora=LoraSpec(), target_modules=None,
        projection="factorized", dim=128,
    )  # fmt: skip
    assert_rows_close(store.features, want)


def test_loss_on_all_matches_slow_loop(tmp_path, tiny_llama, tokenizer, records):
    recs = records[:6]
    lora = LoraSpec(r=4, init="random")
    store = extract(
        tiny_llama, tokenizer, recs, tmp_path / "s", dim=96, lora=lora, loss_on="all",
        batch_size=4, dtype="float32", progress=False,
    )  # fmt: skip
    want = reference_features(
        tiny_llama, tokenizer, recs, lora=lora, target_modules=None, projection="factorized",
        dim=96, loss_on="all",
    )  # fmt: skip
    assert_rows_close(store.features, want)


def test_model_left_unchanged(tmp_path, tiny_llama, tokenizer, records):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    names = [n for n, _ in tiny_llama.named_modules()]
    rg = [p.requires_grad for p in tiny_llama.parameters()]
    tiny_llama.train()
    extract(tiny_llama, tokenizer, records[:4], tmp_path / "s", dim=64, progress=False)
    assert tiny_llama.training
    tiny_llama.eval()
    assert [n for n, _ in tiny_llama.named_modules()] == names
    assert [p.requires_grad for p in tiny_llama.parameters()] == rg
    after = tiny_llama.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_factorized_is_kronecker_projection():
    """vec(P_out G P_inᵀ) (row-major) == (P_out ⊗ P_in) vec(G), trimmed to d_l and scaled."""
    layers = [LayerSpec("a", 7, 5), LayerSpec("b", 3, 11), LayerSpec("c", 2, 2)]
    proj = FactorizedProjector(layers, dim=40, seed=9)
    assert proj.dim == 40
    g = [torch.randn(ly.d_out, ly.d_in, dtype=torch.float64) for ly in layers]
    got = proj.project_full([x.float() for x in g]).double()
    for i in range(len(layers)):
        po = proj.matrix(i, "out", torch.device("cpu")).double()
        pi = proj.matrix(i, "in", torch.device("cpu")).double()
        d = proj.layer_dims[i]
        want = (torch.kron(po, pi) @ g[i].reshape(-1))[:d] / np.sqrt(d)
        a = proj.offsets[i]
        torch.testing.assert_close(got[a : a + d], want, rtol=1e-5, atol=1e-5)


def test_allocate_dims():
    assert allocate_dims([10, 1000, 1000], 100) == [10, 45, 45]
    assert allocate_dims([4, 4], 100) == [4, 4]
    assert sum(allocate_dims([50] * 7, 100)) == 100
    assert allocate_dims([5, 5, 5], 2) == [1, 1, 0]


def test_projection_preserves_inner_products_on_average():
    layers = [LayerSpec("x", 64, 64)]
    g1, g2 = torch.randn(64, 64), torch.randn(64, 64)
    g2 = 0.6 * g1 + 0.8 * g2
    dots = []
    for s in range(20):
        p = FactorizedProjector(layers, dim=1024, seed=s)
        dots.append(float(p.project_full([g1]) @ p.project_full([g2])))
    true = float((g1 * g2).sum())
    assert abs(np.mean(dots) - true) < 0.1 * abs(true)


_RADEMACHER_SNIPPET = (
    "import hashlib; from spice.features.projection import rademacher, derive_seed; "
    "print(hashlib.sha256(rademacher(13, 77, derive_seed(5, 'layer.q', 'in')).tobytes())"
    ".hexdigest())"
)


def test_projection_identical_across_processes():
    here = hashlib.sha256(rademacher(13, 77, derive_seed(5, "layer.q", "in")).tobytes()).hexdigest()
    env = {**__import__("os").environ, "PYTHONHASHSEED": "123"}
    there = subprocess.run(
        [sys.executable, "-c", _RADEMACHER_SNIPPET], capture_output=True, text=True, env=env,
        check=True,
    ).stdout.strip()  # fmt: skip
    assert here == there
    m = rademacher(13, 77, derive_seed(5, "layer.q", "in"))
    assert set(np.unique(m)) == {-1.0, 1.0}
    assert abs(m.mean()) < 0.1


def test_record_factory_roundtrip(record_factory):
    assert len(load_records(record_factory(8))) == 8
