"""Why GPT-2 initialises the residual projections with std 0.02 / sqrt(2 * n_layer).

Each of the 2 * n_layer sublayers adds an update to the residual stream; LayerNorm feeds every
sublayer a unit-variance input, so the updates are uncorrelated with the stream and each other,
and Var(stream after L blocks) = Var(embedding) + L * (Var(attn update) + Var(MLP update)), each
update's variance proportional to its projection's init variance (GPT-2 paper, section 2.3).
A common explanation says that without the scaling activations explode exponentially with depth;
in a pre-LayerNorm GPT they grow like sqrt(L): at n_embd 768 (`residual_stream_std`, seed 0) the
plain init ends at std 1.07, 1.54, 2.16, 3.09 after 6, 12, 24, 48 blocks (x1.4 ~ sqrt 2 per
doubling), the scaled init at 0.299, 0.302, 0.296, 0.297 (48 blocks, seeds 0-2: 3.14 +- 0.05
against 0.302 +- 0.005, a ratio near sqrt(2 * 48) = 9.8). `idealised_std` predicts 2.57 and
0.264 there: the model ignores the correlation between positions that attention creates, and
undershoots by 14-22% at n_embd 768, by up to 6.5% at n_embd 32. The gradient of the first
block's c_attn (`first_layer_grad_norm`, n_embd 128, 1 to 48 blocks) grows 0.27 -> 0.56 under
the plain init and falls 0.21 -> 0.06 under the scaled one, because it passes back through that
block's own c_proj, whose std the scaled init divides by sqrt(2 * n_layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ref_numpy.gpt import INIT_STD, GPTConfig, backward, block_forward, forward, init_params
from ref_numpy.layers import NAIVE_ATTENTION, embedding_forward, gelu_forward

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


def _random_tokens(cfg: GPTConfig, batch_size: int, seed: int) -> np.ndarray:
    # a generator of its own (seed + 1), so the tokens do not depend on how many weights were drawn
    rng = np.random.default_rng(seed + 1)
    return rng.integers(0, cfg.vocab_size, size=(batch_size, cfg.block_size))  # [B, T]


def _mean_and_spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spread = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), spread


def residual_stream_std(
    n_layer: int,
    scaled_residual_init: bool,
    seeds: Sequence[int] = (0, 1, 2),
    n_embd: int = 768,
    n_head: int = 12,
    block_size: int = 64,
    batch_size: int = 4,
    vocab_size: int = 65,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """At init, the std of the residual stream (over B, T, C) after the embedding and each block.

    Runs the model's own `block_forward` on random tokens. Returns `layer` (0 is the embedding,
    l the output of block l), `std` [n_seeds, n_layer + 1], its `mean` and `spread` (the sample
    std over seeds, 0 for one seed).
    """
    stds = np.empty((len(seeds), n_layer + 1))
    for row, seed in enumerate(seeds):
        cfg, params = _model(
            n_layer, scaled_residual_init, seed, n_embd, n_head, block_size, vocab_size, dtype
        )
        idx = _random_tokens(cfg, batch_size, seed)
        tok, _ = embedding_forward(params["transformer.wte.weight"], idx)  # [B, T, C]
        x = tok + params["transformer.wpe.weight"][: cfg.block_size]  # [B, T, C]
        stds[row, 0] = x.std()
        for layer in range(n_layer):
            x, _ = block_forward(x, params, f"transformer.h.{layer}", cfg, NAIVE_ATTENTION)
            stds[row, layer + 1] = x.std()
        del params  # free this model before the next seed draws its own
    mean, spread = _mean_and_spread(stds)
    return {"layer": np.arange(n_layer + 1), "std": stds, "mean": mean, "spread": spread}


def gelu_second_moment(variance: float) -> float:
    """E[GELU(z)^2] for z ~ N(0, variance), by Gauss-Hermite quadrature (exact for polynomials
    of degree < 2 * GAUSS_HERMITE_POINTS, and GELU(z)^2 is smooth)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(GAUSS_HERMITE_POINTS)  # weight e^(-z^2/2)
    values, _ = gelu_forward(math.sqrt(variance) * nodes)
    return float((weights * values**2).sum() / math.sqrt(2 * math.pi))


def idealised_std(
    n_layer: int, scaled_residual_init: bool, n_embd: int = 768, block_size: int = 64
) -> dict[str, np.ndarray | float]:
    """The sum-of-independent-updates model of `residual_stream_std`, from the init stds alone.

    Assumptions: every LayerNorm output has entries of variance 1 (weight 1, bias 0, eps
    ignored); weights are independent of their inputs, so a Linear layer with n_in inputs of
    second moment m and weights of std s gives outputs of variance n_in * s^2 * m; attention
    at init is uniform over the t + 1 visible positions (the scores are ~0) and the values
    there are independent, so its output has the values' variance times mean_t 1/(t + 1);
    updates are uncorrelated with the stream and with each other, so variances add.
    Returns `layer`, `std` (per layer, like `residual_stream_std`'s `mean`), and the three
    variances `embedding_var`, `attn_update_var`, `mlp_update_var`.
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
        "attn_update_var": float(attn_update_var),
        "mlp_update_var": mlp_update_var,
    }


def first_layer_grad_norm(
    depths: Sequence[int],
    scaled_residual_init: bool,
    seeds: Sequence[int] = (0,),
    param_name: str = "transformer.h.0.attn.c_attn.weight",
    n_embd: int = 128,
    n_head: int = 4,
    block_size: int = 64,
    batch_size: int = 4,
    vocab_size: int = 65,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """At init, the gradient norm of the loss (random tokens, random targets) with respect to
    one parameter of the first block, for each depth. Returns `depths`, `grad_norm`
    [n_seeds, n_depths], its `mean` and `spread`."""
    norms = np.empty((len(seeds), len(depths)))
    for row, seed in enumerate(seeds):
        for column, n_layer in enumerate(depths):
            cfg, params = _model(
                n_layer, scaled_residual_init, seed, n_embd, n_head, block_size, vocab_size, dtype
            )
            idx = _random_tokens(cfg, batch_size, seed)
            targets = np.roll(idx, -1, axis=1)  # [B, T] random, as idx is
            _, _, cache = forward(params, cfg, idx, targets)
            norms[row, column] = np.linalg.norm(backward(cache)[param_name])
    mean, spread = _mean_and_spread(norms)
    return {"depths": np.array(depths), "grad_norm": norms, "mean": mean, "spread": spread}
