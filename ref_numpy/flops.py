"""How much arithmetic a GPT does per token, and how much of the device's peak a run achieves.

Training costs about 6N + 12*L*H*Q*T floating-point operations per token (PaLM, Chowdhery et al.
2022, appendix B; nanoGPT's `estimate_mfu`). Every parameter of a matmul meets every token once in
the forward pass (a multiply and an add: 2 FLOPs) and twice in the backward pass (the gradient
with respect to the input and with respect to the weight: 4 FLOPs), hence 6N. Attention adds
matmuls with no parameters: the scores q @ k^T and the mix scores @ v each cost 2*Q FLOPs per
head, per query, per key, so 4*H*Q*T per layer forward and three times that forward plus
backward: 12*L*H*Q*T. (L layers, H heads, Q = head size, T = context length; like PaLM and nanoGPT
that estimate lets every query see all T keys, ignoring the causal mask.) llm.c counts the causal
half instead: 6N + 6*L*C*T.

Neither formula is the exact matmul count, and `compare_with_formulas` says by how much. N holds
the biases and LayerNorm parameters, which do no matmul: for GPT-2 124M (T = 1024) the exact count
of the NumPy forward and backward (`exact_matmul_flops`) is 854,654,976 FLOPs per token, 728,064
(= 6 x 121,344 one-dimensional parameters) below nanoGPT's 855,383,040. The embedding lookup is
no matmul and wpe is rightly left out of N; wte is rightly kept, because the tied lm_head is a
V x C matmul. Whether attention is counted whole or half is a convention, not an error: a kernel
that skips masked tiles does half.

Model FLOPs utilisation (`mfu`) is the FLOP/s this estimate implies for a measured throughput,
divided by the device's peak FLOP/s (`PEAK_FLOPS`, vendor datasheets) or by a measured matmul
ceiling (`matmul_ceiling`, NumPy's here; `torch_impl.runtime.matmul_ceiling`, torch's).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ref_numpy.config import GPTConfig
from ref_numpy.gpt import param_shapes


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

    nanoGPT's (and PaLM's) convention: attention counted as if every query saw all T keys.
    `n_params` defaults to the non-embedding count of `cfg`, as in nanoGPT's `estimate_mfu`.
    """
    N = count_params(cfg) if n_params is None else n_params
    L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.head_size, cfg.block_size
    return float(6 * N + 12 * L * H * Q * T)


def flops_per_token_causal(cfg: GPTConfig, n_params: int | None = None) -> float:
    """Training FLOPs per token in llm.c's causal convention: 6N + 6*L*C*T, T = block_size.

    Half of nanoGPT's attention term (H*Q = C): under the causal mask a query sees on average
    about T/2 keys, and a kernel that skips the masked tiles does only that half.
    """
    N = count_params(cfg) if n_params is None else n_params
    L, C, T = cfg.n_layer, cfg.n_embd, cfg.block_size
    return float(6 * N + 6 * L * C * T)


def exact_matmul_flops(cfg: GPTConfig, T: int, causal_skip: bool = False) -> dict:
    """FLOPs per token of every matmul in `ref_numpy.gpt`'s forward and backward, by term.

    A matmul [m, k] @ [k, n] costs 2*m*n*k. Per token (m = 1 row of the batch) a Linear
    [out, in] costs 2*in*out forward and twice that backward (dx = dout @ W, dW = dout^T @ x).
    Per head and per token, scores q @ k^T and the mix probs @ v cost 2*T*Q each forward; the
    backward does four such matmuls (dv, dprobs, dq, dk). With `causal_skip` the attention terms
    are halved, as a kernel that skips the masked half of the T x T scores does (exactly it would
    do T(T+1)/2 entries, or more with whole diagonal tiles; half is the convention).
    Terms: "embedding" (a lookup, 0), "lm_head", "linear" (c_attn, c_proj, c_fc, mlp c_proj),
    "attention" (the four T^2 matmuls); each with "forward", "backward", "total".
    """
    C, L, V, H, Q = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.n_head, cfg.head_size
    linear_forward = L * 2 * (C * 3 * C + C * C + C * 4 * C + 4 * C * C)
    lm_head_forward = 2 * C * V
    attention_fraction = 0.5 if causal_skip else 1.0
    attention_forward = L * H * (2 * T * Q + 2 * T * Q) * attention_fraction  # scores, mix
    attention_backward = L * H * 4 * (2 * T * Q) * attention_fraction  # dv, dprobs, dq, dk
    terms = {
        "embedding": (0, 0),
        "lm_head": (lm_head_forward, 2 * lm_head_forward),
        "linear": (linear_forward, 2 * linear_forward),
        "attention": (attention_forward, attention_backward),
    }
    report = {
        name: {"forward": float(fwd), "backward": float(bwd), "total": float(fwd + bwd)}
        for name, (fwd, bwd) in terms.items()
    }
    report["total"] = {
        key: sum(report[name][key] for name in terms) for key in ("forward", "backward", "total")
    }
    return report


def compare_with_formulas(cfg: GPTConfig, T: int | None = None) -> dict:
    """The exact matmul count beside nanoGPT's and llm.c's formulas, term by term.

    Both formulas use 6N for the parameter matmuls, N = `count_params(cfg)`: wpe excluded (a
    lookup), wte included (it is the lm_head). N also holds every bias and LayerNorm parameter,
    which do no matmul: `one_dimensional_params` of them, 6 FLOPs each, are the whole difference
    between 6N and the exact lm_head + linear terms. The attention term of nanoGPT equals the
    exact full-T^2 count, llm.c's the causal half. T defaults to block_size, the formulas' T.
    """
    T = cfg.block_size if T is None else T
    full = exact_matmul_flops(cfg, T)
    causal = exact_matmul_flops(cfg, T, causal_skip=True)
    C, L = cfg.n_embd, cfg.n_layer
    N = count_params(cfg)
    one_dimensional = sum(shape[0] for shape in param_shapes(cfg).values() if len(shape) == 1)
    exact_parameter_matmuls = full["lm_head"]["total"] + full["linear"]["total"]
    formula_attention_nanogpt = float(12 * L * cfg.n_head * cfg.head_size * T)
    formula_attention_causal = float(6 * L * C * T)
    return {
        "T": T,
        "n_params": N,
        "one_dimensional_params": one_dimensional,
        "six_n": float(6 * N),
        "exact_parameter_matmuls": exact_parameter_matmuls,
        "six_n_minus_exact": float(6 * N) - exact_parameter_matmuls,
        "nanogpt_attention": formula_attention_nanogpt,
        "exact_attention": full["attention"]["total"],
        "llmc_attention": formula_attention_causal,
        "exact_attention_causal_skip": causal["attention"]["total"],
        "nanogpt": float(6 * N) + formula_attention_nanogpt,
        "llmc": float(6 * N) + formula_attention_causal,
        "exact": full["total"]["total"],
        "exact_causal_skip": causal["total"]["total"],
    }


# Dense peak FLOP/s (no 2:4 sparsity) from NVIDIA's datasheets; "bf16"/"fp16" are tensor-core
# rates with fp32 accumulation, "tf32" the tensor-core fp32-input rate, "fp32" plain CUDA cores.
# None: the GPU has no such tensor-core path (V100 has no bf16 or tf32).
PEAK_FLOPS: dict[str, dict[str, float | None]] = {
    "A100 SXM": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "A100 PCIe": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "H100 SXM": {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H200": {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "L40S": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    # Ada whitepaper: 165.2 with fp32 accumulate (330.3 only with fp16 accumulate)
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    # AWS's A10G has no NVIDIA datasheet; these are the A10's, an upper bound (lower clocks)
    "A10G": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "V100": {"bf16": None, "fp16": 125e12, "tf32": None, "fp32": 15.7e12},
}

# Substrings of torch.cuda.get_device_name() names, most specific first ("A10" is in "A100",
# "L4" in "L40S", and an H100 that does not say PCIe is the SXM part, "NVIDIA H100 80GB HBM3").
_DEVICE_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("A100", "PCIE"), "A100 PCIe"),
    (("A100",), "A100 SXM"),
    (("H100", "PCIE"), "H100 PCIe"),
    (("H100",), "H100 SXM"),
    (("H200",), "H200"),
    (("L40S",), "L40S"),
    (("L4",), "L4"),
    (("4090",), "RTX 4090"),
    (("A10G",), "A10G"),
    (("V100",), "V100"),
)


def peak_flops_for(device_name: str, dtype: str = "bf16") -> float | None:
    """Dense peak FLOP/s of a device named as torch.cuda.get_device_name() does; None if unknown."""
    upper = device_name.upper()
    for substrings, key in _DEVICE_PATTERNS:
        if all(s in upper for s in substrings):
            return PEAK_FLOPS[key].get(dtype)
    return None


def mfu(
    cfg: GPTConfig, tokens_per_second: float, peak_flops: float, n_params: int | None = None
) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (estimate x throughput) over the device's peak.

    The achieved FLOP/s is `flops_per_token(cfg, n_params)` times `tokens_per_second`; the
    denominator is a datasheet peak (`peak_flops_for`) or a measured one (`matmul_ceiling`).
    """
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be the device's peak FLOP/s (> 0), got {peak_flops}")
    return flops_per_token(cfg, n_params) * tokens_per_second / peak_flops


def matmul_ceiling(n: int = 2048, dtype=np.float32, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n NumPy matmul on this machine: the best of `repeats`, after one
    warm-up. A second MFU denominator, the throughput this library can actually reach here,
    next to the datasheet peak (which a CPU has none of in the table above)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm-up: BLAS threads and caches
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
