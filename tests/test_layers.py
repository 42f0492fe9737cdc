"""Each layer's hand-written backward against central finite differences and torch autograd.

Every case draws fresh float64 inputs and a random upstream gradient `dout`; the scalar whose
gradient is checked is sum(out * dout), so the backward under test receives exactly `dout`.
Finite differences: relative error < 1e-6 (DESIGN.md). Torch autograd: < 1e-12.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ref_numpy import layers
from tests.numerics import central_difference_grad, rel_error, to_torch

B, T, C, H, V = 2, 5, 6, 2, 7


def check_against_finite_differences(forward, backward, inputs, rng):
    """forward(*inputs) -> (out, cache); backward(dout, cache) -> grads in input order."""
    out, cache = forward(*inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    for x, grad in zip(inputs, grads):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float64):
            continue  # integer indices have no gradient
        numeric = central_difference_grad(lambda: float(np.sum(forward(*inputs)[0] * dout)), x)
        assert grad.shape == x.shape and np.all(np.isfinite(grad))
        assert rel_error(grad, numeric) < 1e-6


def check_against_torch(forward, backward, inputs, torch_forward, rng):
    out, cache = forward(*inputs)
    dout = rng.standard_normal(np.shape(out))
    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    tensors = [
        to_torch(x, requires_grad=True) if x.dtype == np.float64 else torch.tensor(x)
        for x in inputs
    ]
    torch_out = torch_forward(*tensors)
    assert rel_error(out, torch_out.detach().numpy()) < 1e-12
    torch_out.backward(to_torch(dout))
    for tensor, grad in zip(tensors, grads):
        if tensor.requires_grad:
            assert rel_error(grad, tensor.grad.numpy()) < 1e-12


def embedding_case(rng):
    idx = rng.integers(0, V, size=(B, T))
    idx[0, :2] = 3  # a repeated token: its gradient rows must accumulate
    weight = rng.standard_normal((V, C))
    return (
        (lambda w, i: layers.embedding_forward(w, i)),
        layers.embedding_backward,
        (weight, idx),
        (lambda w, i: F.embedding(i, w)),
    )


def layernorm_case(rng):
    x = rng.standard_normal((B, T, C)) * 3 + 1
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    return (
        layers.layernorm_forward,
        layers.layernorm_backward,
        (x, w, b),
        (lambda x, w, b: F.layer_norm(x, (C,), w, b, eps=layers.LAYER_NORM_EPS)),
    )


def layernorm_no_bias_case(rng):
    x = rng.standard_normal((B, T, C))
    w = rng.standard_normal(C)
    return (
        (lambda x, w: layers.layernorm_forward(x, w, None)),
        (lambda d, c: layers.layernorm_backward(d, c)[:2]),
        (x, w),
        (lambda x, w: F.layer_norm(x, (C,), w, None, eps=layers.LAYER_NORM_EPS)),
    )


def linear_case(rng):
    x = rng.standard_normal((B, T, C))
    w, b = rng.standard_normal((3 * C, C)), rng.standard_normal(3 * C)
    return layers.linear_forward, layers.linear_backward, (x, w, b), F.linear


def gelu_case(form):
    def case(rng):
        x = rng.standard_normal((B, T, 4 * C)) * 2
        approximate = "none" if form == "erf" else "tanh"
        return (
            (lambda x: layers.gelu_forward(x, form)),
            layers.gelu_backward,
            (x,),
            (lambda x: F.gelu(x, approximate=approximate)),
        )

    return case


def attention_case(rng):
    q, k, v = (rng.standard_normal((B, H, T, C // H)) for _ in range(3))
    return (
        layers.attention_forward,
        layers.attention_backward,
        (q, k, v),
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    )


def cross_entropy_case(rng):
    logits = rng.standard_normal((B, T, V)) * 2
    targets = rng.integers(0, V, size=(B, T))
    targets[1, 3] = layers.IGNORE_INDEX  # an ignored position gets no gradient and no loss

    def forward(logits, targets):
        loss, cache = layers.cross_entropy_forward(logits, targets)
        return np.asarray(loss), cache

    def backward(dloss, cache):
        return layers.cross_entropy_backward(float(dloss), cache)

    def torch_forward(logits, targets):
        return F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)

    return forward, backward, (logits, targets), torch_forward


CASES = {
    "embedding": embedding_case,
    "layernorm": layernorm_case,
    "layernorm_no_bias": layernorm_no_bias_case,
    "linear": linear_case,
    "gelu_erf": gelu_case("erf"),
    "gelu_tanh": gelu_case("tanh"),
    "attention": attention_case,
    "cross_entropy": cross_entropy_case,
}


@pytest.mark.parametrize("name", CASES)
def test_backward_matches_finite_differences(name, rng):
    forward, backward, inputs, _ = CASES[name](rng)
    check_against_finite_differences(forward, backward, inputs, rng)


@pytest.mark.parametrize("name", CASES)
def test_forward_and_backward_match_torch(name, rng):
    forward, backward, inputs, torch_forward = CASES[name](rng)
    check_against_torch(forward, backward, inputs, torch_forward, rng)


def test_attention_is_causal(rng):
    """Changing a later token must not change any earlier output."""
    q, k, v = (rng.standard_normal((1, 1, T, 4)) for _ in range(3))
    out, _ = layers.attention_forward(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[..., -1, :] += 5.0
    v2[..., -1, :] -= 5.0
    out2, _ = layers.attention_forward(q, k2, v2)
    np.testing.assert_array_equal(out[..., :-1, :], out2[..., :-1, :])
    assert not np.allclose(out[..., -1, :], out2[..., -1, :])


def test_cross_entropy_all_ignored_is_nan_like_torch():
    logits = np.zeros((1, 2, 3)) + 0.5
    targets = np.full((1, 2), layers.IGNORE_INDEX)
    loss, cache = layers.cross_entropy_forward(logits, targets)
    assert np.isnan(loss)
    assert np.all(layers.cross_entropy_backward(1.0, cache) == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_keep_the_dtype(dtype, rng):
    x = rng.standard_normal((B, T, C)).astype(dtype)
    w, b = np.ones(C, dtype), np.zeros(C, dtype)
    for out in (
        layers.layernorm_forward(x, w, b)[0],
        layers.gelu_forward(x, "erf")[0],
        layers.gelu_forward(x, "tanh")[0],
        layers.linear_forward(x, np.eye(C, dtype=dtype), b)[0],
    ):
        assert out.dtype == dtype


def test_unscaled_attention_matches_torch_with_scale_one(rng):
    q, k, v = (rng.standard_normal((B, H, T, 8)) for _ in range(3))
    out, cache = layers.UNSCALED_ATTENTION.forward(q, k, v)
    dout = rng.standard_normal(out.shape)
    grads = layers.UNSCALED_ATTENTION.backward(dout, cache)
    tq, tk, tv = (to_torch(a, requires_grad=True) for a in (q, k, v))
    torch_out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True, scale=1.0)
    torch_out.backward(to_torch(dout))
    assert rel_error(out, torch_out.detach().numpy()) < 1e-12
    for grad, tensor in zip(grads, (tq, tk, tv)):
        assert rel_error(grad, tensor.grad.numpy()) < 1e-12
