"""Why GPT-2 initialises the residual projections with std 0.02 / sqrt(2 * n_layer), at init.

Every block of a pre-LayerNorm GPT adds two updates to the residual stream, attention's and the
MLP's, each through a projection `c_proj`. GPT-2 (Radford et al. 2019, section 2.3) scales the
init of the residual layers by 1/sqrt(N), N "the number of residual layers"; nanoGPT reads N as
2 * n_layer, two residual additions per block. LayerNorm gives every sublayer a unit-variance input
whatever the stream's size, so the updates have a fixed variance, proportional to their
`c_proj`'s init variance, and variances add: Var(stream after L blocks) ~ Var(embedding) +
L * (Var(attn update) + Var(MLP update)) (`idealised_std`). Under the plain init the std grows like
sqrt(L), not exponentially; under the scaled one it does not grow with the depth.

`init_statistics` runs one forward and one backward of the model's own layers at init and
records what notebook 02 plots and prints (at n_embd 128): the stream's std block by block, the
embedding's share of its variance, the updates' variances, and the gradient on its way back from
the final LayerNorm to the first block's `c_attn`. tests/test_residual_variance.py checks the
relations at n_embd 32; the numbers themselves live in the notebook's outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ref_numpy.gpt import (
    INIT_STD,
    BlockCache,
    GPTConfig,
    block_backward,
    init_params,
    mlp_backward,
    mlp_forward,
    self_attention_backward,
    self_attention_forward,
)
from ref_numpy.layers import (
    NAIVE_ATTENTION,
    cross_entropy_backward,
    cross_entropy_forward,
    embedding_forward,
    gelu_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
)

GAUSS_HERMITE_POINTS = 64


def _model(
    n_layer: int,
    scaled_residual_init: bool,
    seed: int,
    n_embd: int,
    n_head: int,
    block_size: int,
    vocab_size: int,
    dtype,
) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    cfg = GPTConfig(
        block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    return cfg, init_params(cfg, seed, dtype, scaled_residual_init=scaled_residual_init)


def random_tokens(cfg: GPTConfig, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens and their next tokens as targets, (idx, targets), both [B, T].

    A generator of its own (seed + 1), so the tokens do not depend on how many weights were drawn.
    """
    rng = np.random.default_rng(seed + 1)
    idx = rng.integers(0, cfg.vocab_size, size=(batch_size, cfg.block_size))  # [B, T]
    return idx, np.roll(idx, -1, axis=1)  # targets as random as idx


def _block_forward_with_updates(
    x: np.ndarray, params: dict, prefix: str, cfg: GPTConfig
) -> tuple[np.ndarray, BlockCache, np.ndarray, np.ndarray]:
    """`gpt.block_forward`'s steps, returning the two updates it adds as well: (x, cache, a, m)."""
    h1, ln_1_cache = layernorm_forward(
        x, params[f"{prefix}.ln_1.weight"], params.get(f"{prefix}.ln_1.bias")
    )
    a, attn_cache = self_attention_forward(
        h1, params, f"{prefix}.attn", cfg.n_head, NAIVE_ATTENTION
    )
    x = x + a  # [B, T, C]
    h2, ln_2_cache = layernorm_forward(
        x, params[f"{prefix}.ln_2.weight"], params.get(f"{prefix}.ln_2.bias")
    )
    m, mlp_cache = mlp_forward(h2, params, f"{prefix}.mlp", cfg.gelu)
    return x + m, BlockCache(ln_1_cache, attn_cache, ln_2_cache, mlp_cache), a, m


def _forward(
    params: dict, cfg: GPTConfig, idx: np.ndarray, targets: np.ndarray
) -> tuple[dict, tuple]:
    """`gpt.forward`, recording the stream's std after every block and the updates' variances;
    returns the statistics and the caches the backward reads."""
    tok, _ = embedding_forward(params["transformer.wte.weight"], idx)  # [B, T, C]
    x = tok + params["transformer.wpe.weight"][: idx.shape[1]]  # [B, T, C]
    embedding_var = x.var()
    std, attn_vars, mlp_vars, value_vars, kept, caches = [x.std()], [], [], [], [], []
    for layer in range(cfg.n_layer):
        x, cache, a, m = _block_forward_with_updates(x, params, f"transformer.h.{layer}", cfg)
        caches.append(cache)
        std.append(x.std())
        attn_vars.append(a.var())
        mlp_vars.append(m.var())
        values, averaged = cache.attn.attention.v, cache.attn.attention.out  # [B, H, T, D] each
        value_vars.append(values.var())
        kept.append(averaged.var() / values.var())
    stream_var = x.var()
    xf, ln_f_cache = layernorm_forward(
        x, params["transformer.ln_f.weight"], params.get("transformer.ln_f.bias")
    )
    logits, lm_head_cache = linear_forward(xf, params["transformer.wte.weight"], None)  # [B, T, V]
    _, loss_cache = cross_entropy_forward(logits, targets)
    # what the variances of embedding and updates leave unexplained: the covariances between them
    unexplained = stream_var - embedding_var - sum(attn_vars) - sum(mlp_vars)
    statistics = {
        "std": np.array(std),
        "embedding_share": embedding_var / stream_var,
        "attn_update_var": np.mean(attn_vars),
        "mlp_update_var": np.mean(mlp_vars),
        "value_var": np.mean(value_vars),
        "attention_kept_var": np.mean(kept),
        "covariance_share": unexplained / stream_var,
    }
    return statistics, (caches, ln_f_cache, lm_head_cache, loss_cache)


def _backward(caches: tuple) -> dict:
    """`gpt.backward` down to block 0's c_attn, recording the gradient's norm on the way."""
    block_caches, ln_f_cache, lm_head_cache, loss_cache = caches
    grads: dict[str, np.ndarray] = {}  # scratch: the backward stores the weights' gradients here
    dxf, _, _ = linear_backward(cross_entropy_backward(1.0, loss_cache), lm_head_cache)
    dx_top, _, _ = layernorm_backward(dxf, ln_f_cache)  # [B, T, C] the stream after block L
    dx, stream_grad = dx_top, [np.linalg.norm(dx_top)]
    for layer in reversed(range(1, len(block_caches))):
        dx = block_backward(dx, block_caches[layer], grads, f"transformer.h.{layer}")
        stream_grad.append(np.linalg.norm(dx))
    # block 0 step by step, as gpt.block_backward: dx is the gradient of block 0's output
    first = block_caches[0]
    dh2 = mlp_backward(dx, first.mlp, grads, "transformer.h.0.mlp")
    d_attn_out = dx + layernorm_backward(dh2, first.ln_2)[0]  # [B, T, C] at a_0 (and x + a_0)
    d_heads, _, _ = linear_backward(d_attn_out, first.attn.c_proj)  # [B, T, C] c_proj's input
    dh1 = self_attention_backward(d_attn_out, first.attn, grads, "transformer.h.0.attn")
    dx = d_attn_out + layernorm_backward(dh1, first.ln_1)[0]  # [B, T, C] at the embedding output
    stream_grad.append(np.linalg.norm(dx))
    statistics = {
        "ln_f_output_grad": np.linalg.norm(dxf),
        "stream_grad": np.array(stream_grad[::-1]),  # index l: the stream after block l
        "attn_output_grad": np.linalg.norm(d_attn_out),
        "c_proj_input_grad": np.linalg.norm(d_heads),
        "c_attn_grad": np.linalg.norm(grads["transformer.h.0.attn.c_attn.weight"]),
    }
    # The residual adds pass the gradient that enters at the top straight down to a_0; the
    # sublayers above a_0 add their backward to it. The backward is linear in the gradient, so
    # each part's contribution to the c_attn gradient is its own backward through the attention.
    for name, part in (("straight", dx_top), ("added", d_attn_out - dx_top)):
        part_grads: dict[str, np.ndarray] = {}
        self_attention_backward(part, first.attn, part_grads, "part")
        statistics[f"attn_output_grad_{name}"] = np.linalg.norm(part)
        statistics[f"c_attn_grad_{name}"] = np.linalg.norm(part_grads["part.c_attn.weight"])
    return statistics


def init_statistics(
    n_layer: int,
    scaled_residual_init: bool,
    seeds: Sequence[int] = (0, 1, 2),
    n_embd: int = 128,
    n_head: int = 4,
    block_size: int = 64,
    batch_size: int = 4,
    vocab_size: int = 65,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """At init, one forward and backward of the model's own layers on random tokens with random
    targets, per seed; every value an array over seeds [n_seeds, ...].

    Forward: `std` [S, L + 1], the std of the stream (over B, T, C) after the embedding (0) and
    each block; `embedding_share`, Var(embedding output) / Var(stream after block L);
    `attn_update_var`, `mlp_update_var`, the variance of each block's two updates, averaged over
    blocks; `value_var`, the variance of the attention's values, and `attention_kept_var`, the
    fraction of it that the attention's weighted average keeps, both averaged over blocks;
    `covariance_share`, the part of the final variance that the embedding and update variances
    leave unexplained (their covariances), as a fraction of it.
    Backward (norms over B, T, C): `ln_f_output_grad` at the final LayerNorm's output;
    `stream_grad` [S, L + 1] at the stream after block l (index L: the final LayerNorm's input,
    0: the embedding output); `attn_output_grad` at block 0's attention output; `c_proj_input_grad`
    at the input of its `c_proj` (the heads); `c_attn_grad`, the gradient of its `c_attn.weight`.
    The gradient at block 0's attention output is the sum of the one that entered the stream at
    the top, passed straight down by the residual adds, and the one the sublayers above it added:
    `attn_output_grad_straight` and `attn_output_grad_added` are their norms, `c_attn_grad_straight`
    and `c_attn_grad_added` the norms of the c_attn gradients each alone would give (they add up
    as vectors to `c_attn_grad`). Also `layer` (0 .. L).
    """
    rows = []
    for seed in seeds:
        cfg, params = _model(
            n_layer, scaled_residual_init, seed, n_embd, n_head, block_size, vocab_size, dtype
        )
        idx, targets = random_tokens(cfg, batch_size, seed)
        forward_statistics, caches = _forward(params, cfg, idx, targets)
        rows.append(forward_statistics | _backward(caches))
        del params, caches  # free this model before the next seed draws its own
    result = {key: np.array([row[key] for row in rows], dtype=np.float64) for key in rows[0]}
    result["layer"] = np.arange(n_layer + 1)
    return result


def gelu_second_moment(variance: float) -> float:
    """E[GELU(z)^2] for z ~ N(0, variance), by Gauss-Hermite quadrature (exact for polynomials
    of degree < 2 * GAUSS_HERMITE_POINTS, and GELU(z)^2 is smooth)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(GAUSS_HERMITE_POINTS)  # weight e^(-z^2/2)
    values, _ = gelu_forward(math.sqrt(variance) * nodes)
    return float((weights * values**2).sum() / math.sqrt(2 * math.pi))


def idealised_std(
    n_layer: int, scaled_residual_init: bool, n_embd: int = 128, block_size: int = 64
) -> dict[str, np.ndarray | float]:
    """The sum-of-independent-updates model of `init_statistics`' `std`, from the init stds alone.

    Assumptions: every LayerNorm output has entries of variance 1 (weight 1, bias 0, eps
    ignored); weights are independent of their inputs, so a Linear layer with n_in inputs of
    second moment m and weights of std s gives outputs of variance n_in * s^2 * m; attention
    at init is uniform over the t + 1 visible positions (the scores are ~0) and the values
    there are independent, so its output has the values' variance times mean_t 1/(t + 1);
    updates are uncorrelated with the stream and with each other, so variances add.
    Returns `layer`, `std` (per layer, like one row of `init_statistics`' `std`), the variances
    `embedding_var`, `value_var`, `attn_update_var`, `mlp_update_var` (per block), and
    `attention_kept_var`, the fraction of the values' variance the uniform average keeps.
    """
    C = n_embd
    residual_std = INIT_STD / math.sqrt(2 * n_layer) if scaled_residual_init else INIT_STD
    embedding_var = 2 * INIT_STD**2  # token + position embeddings, each N(0, 0.02^2)
    value_var = C * INIT_STD**2  # v = W_v LN(x)
    uniform_average = np.mean(1.0 / np.arange(1, block_size + 1))  # mean_t 1 / (t + 1)
    attn_update_var = C * residual_std**2 * value_var * uniform_average  # c_proj of the heads
    hidden_var = C * INIT_STD**2  # c_fc output, before GELU
    mlp_update_var = 4 * C * residual_std**2 * gelu_second_moment(hidden_var)  # c_proj of GELU
    layers = np.arange(n_layer + 1)
    std = np.sqrt(embedding_var + layers * (attn_update_var + mlp_update_var))
    return {
        "layer": layers,
        "std": std,
        "embedding_var": embedding_var,
        "value_var": value_var,
        "attention_kept_var": float(uniform_average),
        "attn_update_var": float(attn_update_var),
        "mlp_update_var": mlp_update_var,
    }
