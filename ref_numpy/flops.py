"""How much arithmetic a GPT does per token, and how much of the device's peak a run achieves.

Training costs about 6N + 12*L*H*Q*T floating-point operations per token (PaLM, Chowdhery et al.
2022, appendix B). Every parameter of a matmul meets every token once in the forward pass (a
multiply and an add: 2 FLOPs) and twice in the backward pass (the gradient with respect to the
input and with respect to the weight: 4 FLOPs), hence 6N. Attention adds matmuls with no
parameters: the scores q @ k^T and the mix scores @ v each cost 2*Q FLOPs per head, per query, per
key, so 4*H*Q*T per layer forward and three times that forward plus backward: 12*L*H*Q*T.
(L layers, H heads, Q = head size, T = context length; like PaLM and nanoGPT the estimate lets every
query see all T keys, ignoring the causal mask.)

Model FLOPs utilisation (MFU) is the FLOP/s this estimate implies for a measured throughput,
divided by the device's peak FLOP/s.
"""

from __future__ import annotations

from ref_numpy.config import GPTConfig


def count_params(cfg: GPTConfig, non_embedding: bool = True) -> int:
    """Number of parameters of the GPT that `cfg` describes, counting the tied wte/lm_head once.

    With `non_embedding` the position embeddings are left out: looking them up is no matmul. The
    token embeddings stay in, because the same matrix is the lm_head matmul.
    """
    C = cfg.n_embd
    with_bias = 1 if cfg.bias else 0
    layer_norm = C + with_bias * C  # weight [C] (+ bias [C])
    attention = (3 * C * C + with_bias * 3 * C) + (C * C + with_bias * C)  # c_attn, c_proj
    mlp = (4 * C * C + with_bias * 4 * C) + (4 * C * C + with_bias * C)  # c_fc, c_proj
    block = 2 * layer_norm + attention + mlp  # ln_1, attn, ln_2, mlp
    n_params = cfg.vocab_size * C + cfg.n_layer * block + layer_norm  # wte, h, ln_f
    if not non_embedding:
        n_params += cfg.block_size * C  # wpe
    return n_params


def flops_per_token(cfg: GPTConfig, n_params: int | None = None) -> float:
    """Training FLOPs (forward + backward) per token: 6N + 12*L*H*Q*T, with T = block_size.

    `n_params` defaults to the non-embedding count of `cfg`, as in nanoGPT's `estimate_mfu`.
    """
    N = count_params(cfg) if n_params is None else n_params
    L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.head_size, cfg.block_size
    return float(6 * N + 12 * L * H * Q * T)


def mfu(
    cfg: GPTConfig, tokens_per_second: float, peak_flops: float, n_params: int | None = None
) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (estimate x throughput) over the device's peak."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be the device's peak FLOP/s (> 0), got {peak_flops}")
    return flops_per_token(cfg, n_params) * tokens_per_second / peak_flops
