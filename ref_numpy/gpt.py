"""The GPT of nanoGPT (GPT-2's architecture) in NumPy: forward pass and hand-written backward.

Tokens and positions are embedded and added; n_layer pre-LayerNorm blocks each add causal
multi-head self-attention and a GELU MLP to the residual stream; a final LayerNorm and the
transposed token embedding (weight tying) give the logits; cross-entropy gives the loss.
Parameters are a dict named exactly as `dict(torch_model.named_parameters())` of nanoGPT.
The backward pass runs the layers of `ref_numpy.layers` in reverse, in the order of the forward.
With `autocast` (a `ref_numpy.precision.Autocast`), float32 parameters and inputs, the matmuls,
attention and GELU round to a low format where torch.autocast does (see `ref_numpy.precision`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ref_numpy.config import GPTConfig
from ref_numpy.layers import (
    NAIVE_ATTENTION,
    Attention,
    GeluCache,
    LayerNormCache,
    LinearCache,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_backward,
    embedding_forward,
    gelu_backward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)
from ref_numpy.precision import Autocast

__all__ = ["GPTConfig", "backward", "forward", "init_params", "param_shapes"]

INIT_STD = 0.02


def param_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in nanoGPT's `named_parameters()` order."""
    C = cfg.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (cfg.vocab_size, C),  # also the lm_head (tied)
        "transformer.wpe.weight": (cfg.block_size, C),
    }

    def add(prefix: str, out_features: int, in_features: int | None = None) -> None:
        if in_features is None:  # LayerNorm
            shapes[f"{prefix}.weight"] = (out_features,)
        else:  # Linear, weight [out, in]
            shapes[f"{prefix}.weight"] = (out_features, in_features)
        if cfg.bias:
            shapes[f"{prefix}.bias"] = (out_features,)

    for layer in range(cfg.n_layer):
        h = f"transformer.h.{layer}"
        add(f"{h}.ln_1", C)
        add(f"{h}.attn.c_attn", 3 * C, C)
        add(f"{h}.attn.c_proj", C, C)
        add(f"{h}.ln_2", C)
        add(f"{h}.mlp.c_fc", 4 * C, C)
        add(f"{h}.mlp.c_proj", C, 4 * C)
    add("transformer.ln_f", C)
    return shapes


def init_params(
    cfg: GPTConfig, seed: int = 0, dtype=np.float64, scaled_residual_init: bool = True
) -> dict[str, np.ndarray]:
    """nanoGPT's initialisation, drawn from one seeded generator in parameter order.

    Weights of Linear and Embedding layers ~ N(0, 0.02^2); biases 0; LayerNorm weights 1.
    The two projections that write into the residual stream in each block (`attn.c_proj`,
    `mlp.c_proj`) get std 0.02 / sqrt(2 * n_layer): the stream is a sum of 2 * n_layer such
    contributions, and scaling each by 1/sqrt(2 * n_layer) keeps the variance of the sum
    independent of depth (GPT-2 paper, section 2.3; measured in residual_variance).
    `scaled_residual_init=False` gives them plain 0.02, the comparison the experiments draw.
    """
    rng = np.random.default_rng(seed)
    residual_std = INIT_STD / math.sqrt(2 * cfg.n_layer) if scaled_residual_init else INIT_STD
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith(".bias"):
            value = np.zeros(shape)
        elif len(shape) == 1:  # LayerNorm weight
            value = np.ones(shape)
        elif name.endswith("c_proj.weight"):
            value = rng.normal(0.0, residual_std, size=shape)
        else:
            value = rng.normal(0.0, INIT_STD, size=shape)
        params[name] = value.astype(dtype)
    return params


def _layer(params: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray | None]:
    return params[f"{prefix}.weight"], params.get(f"{prefix}.bias")


# Under autocast a matmul rounds its operands to the low format, accumulates in float32 and
# rounds its result once; its backward does the same for dx, dW and db (each gradient in its
# forward tensor's format). Without autocast these are the plain layers.
def _linear(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, autocast: Autocast | None
) -> tuple[np.ndarray, LinearCache]:
    if autocast is None:
        return linear_forward(x, weight, bias)
    out, cache = linear_forward(autocast.round(x), autocast.round(weight), autocast.round(bias))
    return autocast.round(out), cache


def _linear_backward(
    dout: np.ndarray, cache: LinearCache, autocast: Autocast | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if autocast is None:
        return linear_backward(dout, cache)
    return tuple(autocast.round(d) for d in linear_backward(autocast.round(dout), cache))


def _low(x: np.ndarray, autocast: Autocast | None) -> np.ndarray:
    """The output of an operation on low-format inputs, rounded to that format as torch stores
    it (unchanged without autocast)."""
    return x if autocast is None else autocast.round(x)


# ----------------------------------------------------------------------------- attention layer
class SelfAttentionCache(NamedTuple):
    c_attn: LinearCache
    attention: tuple  # the attention core's own cache
    c_proj: LinearCache
    attention_backward: Callable  # the core's backward, which reads its cache
    n_head: int
    autocast: Autocast | None = None


def self_attention_forward(
    x: np.ndarray,
    params: dict,
    prefix: str,
    n_head: int,
    attention: Attention,
    autocast: Autocast | None = None,
) -> tuple[np.ndarray, SelfAttentionCache]:
    B, T, C = x.shape
    D = C // n_head
    qkv, c_attn_cache = _linear(x, *_layer(params, f"{prefix}.c_attn"), autocast)  # [B, T, 3C]
    # [B, T, 3C] -> 3 x [B, T, H, D] -> 3 x [B, H, T, D]: each head attends in its own D dims
    q, k, v = (
        part.reshape(B, T, n_head, D).transpose(0, 2, 1, 3) for part in np.split(qkv, 3, axis=-1)
    )
    heads, attention_cache = attention.forward(q, k, v)  # [B, H, T, D]
    merged = _low(heads, autocast).transpose(0, 2, 1, 3).reshape(B, T, C)  # -> [B, T, C]
    out, c_proj_cache = _linear(merged, *_layer(params, f"{prefix}.c_proj"), autocast)  # [B, T, C]
    return out, SelfAttentionCache(
        c_attn_cache, attention_cache, c_proj_cache, attention.backward, n_head, autocast
    )


# The reshapes and transposes only move numbers, so their backward moves the gradients back.
def self_attention_backward(
    dout: np.ndarray, cache: SelfAttentionCache, grads: dict, prefix: str
) -> np.ndarray:
    B, T, C = dout.shape
    H, autocast = cache.n_head, cache.autocast
    dmerged = _linear_backward_into(dout, cache.c_proj, grads, f"{prefix}.c_proj", autocast)
    dheads = dmerged.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)  # [B, H, T, D]
    dq, dk, dv = cache.attention_backward(dheads, cache.attention)  # 3 x [B, H, T, D]
    dqkv = np.concatenate(
        [_low(d, autocast).transpose(0, 2, 1, 3).reshape(B, T, C) for d in (dq, dk, dv)], axis=-1
    )  # [B, T, 3C]
    return _linear_backward_into(dqkv, cache.c_attn, grads, f"{prefix}.c_attn", autocast)


# ----------------------------------------------------------------------------- MLP
class MLPCache(NamedTuple):
    c_fc: LinearCache
    gelu: GeluCache
    c_proj: LinearCache
    autocast: Autocast | None = None


def mlp_forward(
    x: np.ndarray, params: dict, prefix: str, gelu: str, autocast: Autocast | None = None
) -> tuple[np.ndarray, MLPCache]:
    hidden, c_fc_cache = _linear(x, *_layer(params, f"{prefix}.c_fc"), autocast)  # [B, T, 4C]
    activated, gelu_cache = gelu_forward(hidden, gelu)  # [B, T, 4C]
    activated = _low(activated, autocast)  # GELU of a low-format input is low-format
    out, c_proj_cache = _linear(activated, *_layer(params, f"{prefix}.c_proj"), autocast)
    return out, MLPCache(c_fc_cache, gelu_cache, c_proj_cache, autocast)


def mlp_backward(dout: np.ndarray, cache: MLPCache, grads: dict, prefix: str) -> np.ndarray:
    autocast = cache.autocast
    dactivated = _linear_backward_into(dout, cache.c_proj, grads, f"{prefix}.c_proj", autocast)
    dhidden = _low(gelu_backward(dactivated, cache.gelu), autocast)
    return _linear_backward_into(dhidden, cache.c_fc, grads, f"{prefix}.c_fc", autocast)


# ----------------------------------------------------------------------------- block
class BlockCache(NamedTuple):
    ln_1: LayerNormCache
    attn: SelfAttentionCache
    ln_2: LayerNormCache
    mlp: MLPCache


def block_forward(
    x: np.ndarray,
    params: dict,
    prefix: str,
    cfg: GPTConfig,
    attention: Attention,
    autocast: Autocast | None = None,
) -> tuple[np.ndarray, BlockCache]:
    h1, ln_1_cache = layernorm_forward(x, *_layer(params, f"{prefix}.ln_1"))
    a, attn_cache = self_attention_forward(
        h1, params, f"{prefix}.attn", cfg.n_head, attention, autocast
    )
    x = x + a  # residual: attention adds to the stream
    h2, ln_2_cache = layernorm_forward(x, *_layer(params, f"{prefix}.ln_2"))
    m, mlp_cache = mlp_forward(h2, params, f"{prefix}.mlp", cfg.gelu, autocast)
    x = x + m  # residual: the MLP adds to the stream
    return x, BlockCache(ln_1_cache, attn_cache, ln_2_cache, mlp_cache)


# A residual add y = x + f(x) passes dy to x unchanged and adds f's backward: dx = dy + f'(dy).
def block_backward(dout: np.ndarray, cache: BlockCache, grads: dict, prefix: str) -> np.ndarray:
    dh2 = mlp_backward(dout, cache.mlp, grads, f"{prefix}.mlp")
    dx = dout + _layernorm_backward_into(dh2, cache.ln_2, grads, f"{prefix}.ln_2")
    dh1 = self_attention_backward(dx, cache.attn, grads, f"{prefix}.attn")
    return dx + _layernorm_backward_into(dh1, cache.ln_1, grads, f"{prefix}.ln_1")


def _store(grads: dict, prefix: str, dweight: np.ndarray, dbias: np.ndarray | None) -> None:
    grads[f"{prefix}.weight"] = dweight
    if dbias is not None:
        grads[f"{prefix}.bias"] = dbias


def _linear_backward_into(
    dout: np.ndarray,
    cache: LinearCache,
    grads: dict,
    prefix: str,
    autocast: Autocast | None = None,
) -> np.ndarray:
    dx, dweight, dbias = _linear_backward(dout, cache, autocast)
    _store(grads, prefix, dweight, dbias)
    return dx


def _layernorm_backward_into(
    dout: np.ndarray, cache: LayerNormCache, grads: dict, prefix: str
) -> np.ndarray:
    dx, dweight, dbias = layernorm_backward(dout, cache)
    _store(grads, prefix, dweight, dbias)
    return dx


# ----------------------------------------------------------------------------- the model
def forward(
    params: dict[str, np.ndarray],
    cfg: GPTConfig,
    idx: np.ndarray,
    targets: np.ndarray | None = None,
    attention: Attention = NAIVE_ATTENTION,
    autocast: Autocast | None = None,
) -> tuple[np.ndarray, float | None, dict]:
    """Logits [B, T, V] for every position, the loss (None without targets), and the cache.
    With `autocast`, the low-format rounding of `ref_numpy.precision` (float32 parameters)."""
    if cfg.dropout != 0.0:
        raise ValueError("the NumPy GPT implements dropout=0.0 only; set dropout to 0")
    idx = np.asarray(idx)
    if idx.ndim != 2:
        raise ValueError(f"idx must have shape (B, T), got {idx.shape}")
    T = idx.shape[1]
    if T > cfg.block_size:
        raise ValueError(f"cannot forward a sequence of length {T}: block_size is {cfg.block_size}")
    if idx.min() < 0 or idx.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must lie in [0, {cfg.vocab_size})")
    wte = params["transformer.wte.weight"]  # [V, C]
    tok, tok_cache = embedding_forward(wte, idx)  # [B, T, C]
    pos = params["transformer.wpe.weight"][:T]  # [T, C]
    x = tok + pos  # [B, T, C] the residual stream
    block_caches = []
    for layer in range(cfg.n_layer):
        x, block_cache = block_forward(
            x, params, f"transformer.h.{layer}", cfg, attention, autocast
        )
        block_caches.append(block_cache)
    xf, ln_f_cache = layernorm_forward(x, *_layer(params, "transformer.ln_f"))  # [B, T, C]
    logits, lm_head_cache = _linear(xf, wte, None, autocast)  # tied lm_head: [B, T, V]
    # cross-entropy is on autocast's float32 list: it reads the (rounded) logits in float32
    loss, loss_cache = (None, None) if targets is None else cross_entropy_forward(logits, targets)
    cache = dict(
        cfg=cfg,
        T=T,
        tok_cache=tok_cache,
        block_caches=block_caches,
        ln_f_cache=ln_f_cache,
        lm_head_cache=lm_head_cache,
        loss_cache=loss_cache,
        autocast=autocast,
    )
    return logits, loss, cache


def backward(cache: dict) -> dict[str, np.ndarray]:
    """Gradients of the mean loss with respect to every parameter (same keys as params)."""
    if cache["loss_cache"] is None:
        raise ValueError("backward needs a loss: call forward with targets")
    cfg = cache["cfg"]
    grads: dict[str, np.ndarray] = {}
    dlogits = cross_entropy_backward(1.0, cache["loss_cache"])  # [B, T, V]
    dxf, dwte_head, _ = _linear_backward(dlogits, cache["lm_head_cache"], cache.get("autocast"))
    dx = _layernorm_backward_into(dxf, cache["ln_f_cache"], grads, "transformer.ln_f")
    for layer in reversed(range(cfg.n_layer)):
        dx = block_backward(dx, cache["block_caches"][layer], grads, f"transformer.h.{layer}")
    # x = wte[idx] + wpe[:T]: the position table gets the gradient summed over the batch, and
    # the tied token table the sum of its two uses, as embedding and as lm_head.
    dwpe = np.zeros((cfg.block_size, cfg.n_embd), dtype=dx.dtype)
    dwpe[: cache["T"]] = dx.sum(axis=0)
    grads["transformer.wpe.weight"] = dwpe
    grads["transformer.wte.weight"] = embedding_backward(dx, cache["tok_cache"]) + dwte_head
    return {name: grads[name] for name in param_shapes(cfg)}  # in parameter order
