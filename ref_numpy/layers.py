"""The layers of a GPT as pure NumPy functions, each `*_forward` beside its `*_backward`.

A `*_forward` returns its output and a cache: exactly what its backward needs, as a small named
tuple where the backward needs more than two things. A `*_backward`
takes the gradient of the loss with respect to the output (`d<name>` is dLoss/d<name>) and the
cache, and returns the gradients of the inputs and parameters. The derivation of each backward
sits in the comment above it. Every function works in the dtype of its inputs (float64 or
float32): Python-float constants do not promote NumPy arrays (NEP 50).
Shapes: B batch, T time, C channels (n_embd), H heads, D = C / H, V vocabulary.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ref_numpy.erf import erf

LAYER_NORM_EPS = 1e-5


# ----------------------------------------------------------------------------- embedding
def embedding_forward(weight: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, tuple]:
    out = weight[idx]  # [V, C], [B, T] -> [B, T, C]
    return out, (idx, weight.shape)


# out[b, t] = weight[idx[b, t]]: each output row is a copy of one weight row, so the gradient of
# a weight row is the sum of the output gradients of every position that looked it up.
# np.add.at accumulates repeated indices (plain fancy-index assignment would keep only one).
def embedding_backward(dout: np.ndarray, cache: tuple) -> np.ndarray:
    idx, weight_shape = cache
    dweight = np.zeros(weight_shape, dtype=dout.dtype)
    np.add.at(dweight, idx, dout)  # [B, T, C] scattered into [V, C]
    return dweight


# ----------------------------------------------------------------------------- layer norm
class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # [B, T, C] the normalised input
    rstd: np.ndarray  # [B, T, 1] 1 / sqrt(var + eps)
    weight: np.ndarray  # [C]
    has_bias: bool


def layernorm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, LayerNormCache]:
    mean = x.mean(axis=-1, keepdims=True)  # [B, T, 1]
    xc = x - mean  # [B, T, C]
    var = (xc * xc).mean(axis=-1, keepdims=True)  # [B, T, 1], biased, as torch
    rstd = 1.0 / np.sqrt(var + LAYER_NORM_EPS)  # [B, T, 1]
    xhat = xc * rstd  # [B, T, C]
    out = xhat * weight  # [B, T, C]
    if bias is not None:
        out += bias
    return out, LayerNormCache(xhat, rstd, weight, bias is not None)


# y = w * xhat + b with xhat = (x - mean) * rstd. The parameter gradients are sums over B, T:
# dw = sum(dy * xhat), db = sum(dy). For the input, with g = dy * w, differentiating through
# mean and rstd (both depend on every x in the row) gives
#   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
# where the two means run over C: the first removes the part of g that only shifts the row, the
# second the part that only rescales it, since normalisation undoes both.
def layernorm_backward(
    dout: np.ndarray, cache: LayerNormCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    xhat, rstd = cache.xhat, cache.rstd
    g = dout * cache.weight  # [B, T, C]
    dx = rstd * (
        g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)
    )  # [B, T, C]
    dweight = (dout * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)  # [C]
    dbias = dout.reshape(-1, dout.shape[-1]).sum(axis=0) if cache.has_bias else None  # [C]
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- linear
class LinearCache(NamedTuple):
    x: np.ndarray  # [..., in] the input
    weight: np.ndarray  # [out, in]
    has_bias: bool


def linear_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, LinearCache]:
    # one 2-D matmul over all positions: a single large BLAS call, not one per batch row
    out = x.reshape(-1, x.shape[-1]) @ weight.T  # [N, in] @ [in, out] -> [N, out]; weight [out, in]
    out = out.reshape(*x.shape[:-1], weight.shape[0])  # [..., out]
    if bias is not None:
        out += bias
    return out, LinearCache(x, weight, bias is not None)


# y = x W^T + b, so dx = dy W, dW = dy^T x summed over every position, db = sum(dy)
# (None when the layer has no bias).
def linear_backward(
    dout: np.ndarray, cache: LinearCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x, weight = cache.x, cache.weight
    dout_2d = dout.reshape(-1, dout.shape[-1])  # [N, out]
    dx = (dout_2d @ weight).reshape(x.shape)  # [N, out] @ [out, in] -> [N, in] -> [..., in]
    dweight = dout_2d.T @ x.reshape(-1, x.shape[-1])  # [out, N] @ [N, in] -> [out, in]
    dbias = dout_2d.sum(axis=0) if cache.has_bias else None  # [out]
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- GELU
# GELU(x) = x * Phi(x), Phi the standard normal CDF. "erf" computes Phi exactly,
# Phi(x) = (1 + erf(x / sqrt 2)) / 2 (torch's nn.GELU()); "tanh" is GPT-2's approximation
# Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2.
SQRT_HALF = math.sqrt(0.5)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_COEFF = 0.044715


class GeluCache(NamedTuple):
    x: np.ndarray  # [B, T, 4C] the input
    form: str  # "erf" or "tanh"
    saved: np.ndarray  # [B, T, 4C] Phi(x) for "erf", tanh(u) for "tanh"


def gelu_forward(x: np.ndarray, form: str = "erf") -> tuple[np.ndarray, GeluCache]:
    if form == "erf":
        cdf = erf(x * SQRT_HALF)  # [B, T, 4C], then in place to Phi(x) = (1 + erf) / 2
        cdf += 1.0
        cdf *= 0.5
        return x * cdf, GeluCache(x, form, cdf)
    if form == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_COEFF * x * x * x))  # [B, T, 4C]
        return 0.5 * x * (1.0 + t), GeluCache(x, form, t)
    raise ValueError(f"unknown GELU form {form!r}; use 'erf' or 'tanh'")


# erf form: d/dx [x Phi(x)] = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi) the density.
# tanh form: with u = sqrt(2/pi) (x + a x^3), y = x (1 + tanh u) / 2, so
#   dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 a x^2) / 2.
def gelu_backward(dout: np.ndarray, cache: GeluCache) -> np.ndarray:
    x = cache.x
    if cache.form == "erf":
        dx = x * x  # built in place, one buffer: dout * (Phi(x) + x phi(x))
        dx *= -0.5
        np.exp(dx, out=dx)
        dx *= INV_SQRT_2PI  # phi(x)
        dx *= x
        dx += cache.saved  # Phi(x)
        dx *= dout
        return dx
    t = cache.saved
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEFF * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


# ----------------------------------------------------------------------------- attention
@functools.cache
def causal_mask(T: int, dtype: np.dtype) -> np.ndarray:
    """[T, T]: 0 on and below the diagonal, -inf above, added to the scores (read-only)."""
    mask = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, 0.0).astype(dtype)
    mask.flags.writeable = False
    return mask


class AttentionCache(NamedTuple):
    q: np.ndarray  # [B, H, T_q, D]
    k: np.ndarray  # [B, H, T_k, D]
    v: np.ndarray  # [B, H, T_k, D]
    probs: np.ndarray  # [B, H, T_q, T_k] P = softmax(S), materialised
    out: np.ndarray  # [B, H, T_q, D] O = P V
    scale: float


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float | None = None,
    causal: bool = True,
) -> tuple[np.ndarray, AttentionCache]:
    """Scaled dot-product attention, materialising the T_q x T_k matrix of probabilities.

    `scale` defaults to 1/sqrt(D), which keeps the scores' variance ~1 whatever the head size D
    (see `experiments.attention_scaling`); scale=1.0 is the unscaled variant the experiments
    compare with. Causal (the GPT's): query t sees keys 0..t only, which needs T_q == T_k.
    """
    T, D = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = (
        q @ np.swapaxes(k, -1, -2)
    ) * scale  # [B, H, T_q, D] @ [B, H, D, T_k] -> [.., T_q, T_k]
    if causal:
        if k.shape[-2] != T:
            raise ValueError(f"causal attention needs T_q == T_k, got {T} and {k.shape[-2]}")
        scores += causal_mask(T, scores.dtype)  # position t sees keys 0..t only
    scores -= scores.max(axis=-1, keepdims=True)  # softmax is shift-invariant; avoids overflow
    probs = np.exp(scores, out=scores)
    probs /= probs.sum(axis=-1, keepdims=True)  # [B, H, T_q, T_k]
    out = probs @ v  # [B, H, T_q, T_k] @ [B, H, T_k, D] -> [B, H, T_q, D]
    return out, AttentionCache(q, k, v, probs, out, scale)


# With S = scale * Q K^T, P = softmax(S) row-wise, O = P V:
#   dV = P^T dO,  dP = dO V^T,
#   dS = P * (dP - rowsum(dP * P))      (the softmax Jacobian diag(p) - p p^T applied per row),
# where rowsum(dP * P)_i = sum_j (dO_i . V_j) P_ij = dO_i . O_i: the row sum is
# delta = rowsum(dO * O), a sum over D head dims instead of T keys (FlashAttention-2's D_i),
#   dQ = scale * dS K,  dK = scale * dS^T Q.
# Masked entries have P = 0, so they receive no gradient without any extra masking.
def attention_backward(
    dout: np.ndarray, cache: AttentionCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q, k, v, probs, out, scale = cache
    dv = np.swapaxes(probs, -1, -2) @ dout  # [B, H, T, T] @ [B, H, T, D] -> [B, H, T, D]
    dprobs = dout @ np.swapaxes(v, -1, -2)  # [B, H, T, D] @ [B, H, D, T] -> [B, H, T, T]
    delta = (dout * out).sum(axis=-1, keepdims=True)  # [B, H, T, 1]
    dscores = probs * (dprobs - delta)  # [B, H, T, T]
    dq = (dscores @ k) * scale  # [B, H, T, D]
    dk = (np.swapaxes(dscores, -1, -2) @ q) * scale  # [B, H, T, D]
    return dq, dk, dv


class Attention(NamedTuple):
    """A pluggable attention core: forward(q, k, v) -> (out, cache), backward(dout, cache)."""

    forward: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, tuple]]
    backward: Callable[[np.ndarray, tuple], tuple[np.ndarray, np.ndarray, np.ndarray]]


NAIVE_ATTENTION = Attention(attention_forward, attention_backward)
UNSCALED_ATTENTION = Attention(functools.partial(attention_forward, scale=1.0), attention_backward)


# ----------------------------------------------------------------------------- cross-entropy
IGNORE_INDEX = -1


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # [N, V] softmax of the logits, N = B * T
    safe_targets: np.ndarray  # [N] the targets, ignored positions set to 0
    valid: np.ndarray  # [N] bool: the target is not IGNORE_INDEX
    n_valid: int
    logits_shape: tuple[int, ...]


def cross_entropy_forward(
    logits: np.ndarray, targets: np.ndarray
) -> tuple[float, CrossEntropyCache]:
    """Mean of -log softmax(logits)[target] over positions whose target is not IGNORE_INDEX."""
    V = logits.shape[-1]
    logits_2d = logits.reshape(-1, V)  # [N, V]
    targets_1d = targets.reshape(-1)  # [N]
    valid = targets_1d != IGNORE_INDEX  # [N]
    if np.any((targets_1d < IGNORE_INDEX) | (targets_1d >= V)):
        raise ValueError(f"targets must lie in [0, {V}) or equal {IGNORE_INDEX}")
    shifted = logits_2d - logits_2d.max(axis=-1, keepdims=True)  # [N, V]
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=-1, keepdims=True)  # [N, 1]
    probs = exp / sum_exp  # [N, V]
    safe_targets = np.where(valid, targets_1d, 0)
    log_probs = shifted[np.arange(len(targets_1d)), safe_targets] - np.log(sum_exp[:, 0])  # [N]
    n_valid = int(valid.sum())
    loss = -(log_probs * valid).sum() / n_valid if n_valid else float("nan")
    return loss, CrossEntropyCache(probs, safe_targets, valid, n_valid, logits.shape)


# loss = -(1/n) sum_valid log softmax(z)[y], and d(-log softmax(z)[y])/dz = softmax(z) - onehot(y),
# so dlogits = (probs - onehot) / n on valid rows and 0 on ignored ones.
def cross_entropy_backward(dloss: float, cache: CrossEntropyCache) -> np.ndarray:
    dlogits = cache.probs.copy()  # [N, V]
    dlogits[np.arange(len(cache.safe_targets)), cache.safe_targets] -= 1.0
    dlogits *= (dloss / max(cache.n_valid, 1)) * cache.valid[:, None]
    return dlogits.reshape(cache.logits_shape)
