"""The whole NumPy GPT against the torch mirror (torch_impl.model.GPT) in float64.

Same parameters (the NumPy dict loaded into torch), same tokens: logits and loss must agree to
relative 1e-12 and every gradient to 1e-10 (DESIGN.md; gradients pass through more operations).
"""

import numpy as np
import pytest
import torch

from ref_numpy.gpt import GPTConfig, backward, forward, init_params, param_shapes
from tests.numerics import central_difference_grad, rel_error
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params

CONFIGS = {
    "small": (GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32), 32),
    "no_bias": (
        GPTConfig(block_size=16, vocab_size=20, n_layer=2, n_head=4, n_embd=16, bias=False),
        16,
    ),
    "short_sequence": (GPTConfig(block_size=32, vocab_size=30, n_layer=2, n_head=2, n_embd=16), 9),
    "odd_sizes": (GPTConfig(block_size=11, vocab_size=7, n_layer=3, n_head=3, n_embd=12), 11),
    "gelu_tanh": (
        GPTConfig(block_size=16, vocab_size=25, n_layer=1, n_head=2, n_embd=8, gelu="tanh"),
        13,
    ),
}


def torch_mirror(params, cfg, attention):
    model = GPT(cfg, attention=attention).double()
    load_numpy_params(model, params)
    return model


def random_tokens(cfg, T, rng, B=3):
    idx = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets[0, :2] = -1  # ignored positions, as nanoGPT's ignore_index
    return idx, targets


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("name", CONFIGS)
def test_forward_and_gradients_match_torch(name, attention, rng):
    cfg, T = CONFIGS[name]
    params = init_params(cfg, seed=7)
    for p in params.values():  # move off the init's zeros and ones: every path carries signal
        p += 0.05 * rng.standard_normal(p.shape)
    idx, targets = random_tokens(cfg, T, rng)

    logits, loss, cache = forward(params, cfg, idx, targets)
    grads = backward(cache)

    model = torch_mirror(params, cfg, attention)
    torch_logits, torch_loss = model(torch.tensor(idx), torch.tensor(targets))
    torch_loss.backward()
    torch_grads = {n: p.grad.numpy() for n, p in model.named_parameters()}

    assert logits.shape == (3, T, cfg.vocab_size)
    assert rel_error(logits, torch_logits.detach().numpy()) < 1e-12
    assert abs(loss - torch_loss.item()) / abs(torch_loss.item()) < 1e-12
    assert list(grads) == list(torch_grads)  # same names, same order
    for name_, grad in grads.items():
        assert grad.shape == params[name_].shape and np.all(np.isfinite(grad))
        assert rel_error(grad, torch_grads[name_]) < 1e-10, name_


def test_param_names_and_shapes_are_nanogpts():
    for cfg, _ in CONFIGS.values():
        model = GPT(cfg)
        expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
        assert param_shapes(cfg) == expected
        assert list(param_shapes(cfg)) == list(expected)


def test_init_follows_the_two_rules():
    cfg = GPTConfig(block_size=64, vocab_size=500, n_layer=6, n_head=4, n_embd=128)
    params = init_params(cfg, seed=0)
    # the sample std of n normal draws has relative standard error ~1/sqrt(2n) (< 0.5% here)
    assert abs(params["transformer.wte.weight"].std() / 0.02 - 1) < 0.03
    assert abs(params["transformer.h.3.mlp.c_fc.weight"].std() / 0.02 - 1) < 0.03
    residual_std = 0.02 / np.sqrt(2 * cfg.n_layer)
    for name in ("transformer.h.0.attn.c_proj.weight", "transformer.h.5.mlp.c_proj.weight"):
        assert abs(params[name].std() / residual_std - 1) < 0.03
    assert all(np.all(params[n] == 0) for n in params if n.endswith(".bias"))
    assert np.all(params["transformer.ln_f.weight"] == 1)
    same = init_params(cfg, seed=0)
    assert all(np.array_equal(params[n], same[n]) for n in params)  # seeded: reproducible


def test_gradient_matches_finite_differences_on_a_few_entries(rng):
    """The whole backward against central differences of the whole loss (spot checks)."""
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)
    params = init_params(cfg, seed=3)
    for p in params.values():
        p += 0.1 * rng.standard_normal(p.shape)
    idx, targets = random_tokens(cfg, 6, rng, B=2)
    grads = backward(forward(params, cfg, idx, targets)[2])
    for name in (
        "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.mlp.c_fc.bias",
        "transformer.wpe.weight",
    ):
        window = params[name].reshape(-1)[:40]  # a view: perturbing it perturbs the parameter
        numeric = central_difference_grad(
            lambda: float(forward(params, cfg, idx, targets)[1]), window
        )
        assert rel_error(grads[name].reshape(-1)[:40], numeric) < 1e-6, name


def test_float32_forward_stays_float32_and_close(rng):
    cfg, T = CONFIGS["small"]
    params64 = init_params(cfg, seed=1)
    params32 = {n: p.astype(np.float32) for n, p in params64.items()}
    idx, targets = random_tokens(cfg, T, rng)
    logits32, _, cache = forward(params32, cfg, idx, targets)
    grads32 = backward(cache)
    logits64, _, _ = forward(params64, cfg, idx, targets)
    assert logits32.dtype == np.float32 and all(g.dtype == np.float32 for g in grads32.values())
    assert rel_error(logits32, logits64) < 1e-5  # float32 rounding, ~1e-7 per operation


def test_bad_inputs_are_rejected():
    cfg, _ = CONFIGS["small"]
    params = init_params(cfg)
    with pytest.raises(ValueError, match="block_size"):
        forward(params, cfg, np.zeros((1, cfg.block_size + 1), dtype=np.int64))
    with pytest.raises(ValueError, match="token ids"):
        forward(params, cfg, np.full((1, 4), cfg.vocab_size))
    with pytest.raises(ValueError, match="dropout"):
        forward(
            params,
            GPTConfig(block_size=8, vocab_size=5, n_layer=1, n_head=1, n_embd=4, dropout=0.1),
            np.zeros((1, 4), dtype=np.int64),
        )
    _, loss, cache = forward(params, cfg, np.zeros((1, 4), dtype=np.int64))
    assert loss is None
    with pytest.raises(ValueError, match="targets"):
        backward(cache)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)


def test_plain_residual_init_is_0_02_everywhere():
    cfg = GPTConfig(block_size=64, vocab_size=500, n_layer=8, n_head=4, n_embd=128)
    params = init_params(cfg, seed=0, scaled_residual_init=False)
    assert abs(params["transformer.h.7.mlp.c_proj.weight"].std() / 0.02 - 1) < 0.03
