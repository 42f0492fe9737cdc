"""How much arithmetic a GPT does per token, and how much of the device's peak a run achieves.

Training costs about 6N + 12*L*H*Q*T floating-point operations per token (PaLM, Chowdhery et al.
2022, appendix B; nanoGPT's `estimate_mfu`). Every parameter of a matmul meets every token once in
the forward pass (a multiply and an add: 2 FLOPs) and twice in the backward pass (the gradient
with respect to the input and with respect to the weight: 4 FLOPs), hence 6N. Attention adds
matmuls with no parameters: the scores q @ k^T and the mix scores @ v each cost 2*Q FLOPs per
head, per query, per key, so 4*H*Q*T per layer forward and three times that forward plus
backward: 12*L*H*Q*T. (L layers, H heads, Q = head size, T = context length; like PaLM and nanoGPT
that estimate lets every query see all T keys, ignoring the causal mask.) llm.c's
`gpt2_estimate_mfu` counts the causal half, 6N + 6*L*C*T, and with its own N: every parameter,
the position table wpe included (`flops_per_token_llmc`).

Neither formula is the exact matmul count, and `compare_with_formulas` says by how much. N holds
the biases and LayerNorm parameters, which do no matmul: for GPT-2 124M (T = 1024) the exact count
of the NumPy forward and backward (`exact_matmul_flops`) is 854,654,976 FLOPs per token, 728,064
(= 6 x 121,344 one-dimensional parameters) below nanoGPT's 855,383,040; llm.c's N adds wpe's
786,432 lookup-only parameters on top (tests/test_flops.py pins these integers exactly). The
embedding lookup is no matmul and nanoGPT rightly leaves wpe out of N; wte is rightly kept,
because the tied lm_head is a V x C matmul. Whether attention is counted whole or half is a
convention, not an error: a kernel that skips masked tiles does half.

These are model FLOPs: the arithmetic the model needs. The hardware can do more: flash attention's
backward recomputes the scores S = Q K^T instead of storing them (`recompute_scores`), so the
hardware FLOPs exceed the model FLOPs, and `count_matmul_flops` counts what a NumPy function
actually multiplies. Model FLOPs utilisation (`mfu`) is the FLOP/s the estimate implies for a
measured throughput, divided by the device's peak FLOP/s (`PEAK_FLOPS`, vendor datasheets) or by a
measured matmul ceiling (`matmul_ceiling`, NumPy's here; `torch_impl.runtime.matmul_ceiling`,
torch's); hardware FLOPs utilisation (HFU) divides the hardware FLOP/s instead.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ref_numpy.config import GPTConfig
from ref_numpy.gpt import backward, forward, init_params, param_shapes
from ref_numpy.layers import NAIVE_ATTENTION, Attention


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


def flops_per_token_llmc(cfg: GPTConfig, n_params: int | None = None) -> float:
    """Training FLOPs per token as llm.c's `gpt2_estimate_mfu` counts them: 6N + 6*L*C*T.

    Two differences from nanoGPT's `flops_per_token`. The attention term is half of nanoGPT's
    (H*Q = C): under the causal mask a query sees on average about T/2 keys, and a kernel that
    skips the masked tiles does only that half. And N is llm.c's `num_parameters`: every
    parameter, the position table wpe included (`n_params` defaults to it), although looking wpe
    up is no matmul.
    """
    N = count_params(cfg, non_embedding=False) if n_params is None else n_params
    L, C, T = cfg.n_layer, cfg.n_embd, cfg.block_size
    return float(6 * N + 6 * L * C * T)


def pad_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """The vocabulary rounded up to a multiple of `multiple`, as nanoGPT pads GPT-2's 50257 to
    50304 (= 64 x 786). The extra rows of wte / lm_head are never a target; they make the lm_head
    matmul's V dimension divide into the GPU's tile sizes (a speed claim for GPUs, which the
    notebook does not measure)."""
    if vocab_size < 1 or multiple < 1:
        raise ValueError(f"need vocab_size >= 1 and multiple >= 1, got {vocab_size}, {multiple}")
    return -(-vocab_size // multiple) * multiple


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of one [m, k] @ [k, n] matmul: m*n outputs, each k multiplies and k adds, 2*m*n*k.
    The one count every matmul of the project is charged by (`exact_matmul_flops` per token,
    `roofline.step_kernels` per kernel)."""
    return 2 * m * k * n


def linear_shapes(cfg: GPTConfig) -> tuple[tuple[int, int], ...]:
    """(in, out) of every Linear of one block, in the order the forward runs them: c_attn,
    attn.c_proj, mlp.c_fc, mlp.c_proj."""
    C = cfg.n_embd
    return ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C))


def exact_matmul_flops(
    cfg: GPTConfig, T: int, causal_skip: bool = False, recompute_scores: bool = False
) -> dict:
    """FLOPs per token of every matmul in `ref_numpy.gpt`'s forward and backward, by term.

    A matmul [m, k] @ [k, n] costs 2*m*n*k. Per token (m = 1 row of the batch) a Linear
    [out, in] costs 2*in*out forward and twice that backward (dx = dout @ W, dW = dout^T @ x).
    Per head and per token, scores q @ k^T and the mix probs @ v cost 2*T*Q each forward; the
    backward does four such matmuls (dv, dprobs, dq, dk). With `causal_skip` the attention terms
    are halved, as a kernel that skips the masked half of the T x T scores does (exactly it would
    do T(T+1)/2 entries, or more with whole diagonal tiles; half is the convention).
    With `recompute_scores` the backward does a fifth T^2 matmul, S = q @ k^T again, as flash
    attention's backward does (FlashAttention-2, Algorithm 2, line 9): hardware FLOPs, where the
    default counts model FLOPs. Terms: "embedding" (a lookup, 0), "lm_head", "linear" (c_attn,
    c_proj, c_fc, mlp c_proj), "attention" (the T^2 matmuls); each with "forward", "backward",
    "total".
    """
    C, L, V, H, Q = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.n_head, cfg.head_size
    # per token: one row (m = 1) through c_attn, attn.c_proj, c_fc, mlp.c_proj
    linear_forward = L * sum(matmul_flops(1, k, n) for k, n in linear_shapes(cfg))
    lm_head_forward = matmul_flops(1, C, V)
    attention_fraction = 0.5 if causal_skip else 1.0
    score_row = matmul_flops(1, Q, T)  # one query against T keys (or one row of P against V)
    attention_forward = L * H * 2 * score_row * attention_fraction  # scores, mix
    backward_matmuls = 5 if recompute_scores else 4  # (S again,) dv, dprobs, dq, dk
    attention_backward = L * H * backward_matmuls * score_row * attention_fraction
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

    nanoGPT's 6N uses N = `count_params(cfg)`: wpe excluded (a lookup), wte included (it is the
    lm_head). That N still holds every bias and LayerNorm parameter, which do no matmul:
    `one_dimensional_params` of them, 6 FLOPs each, are the whole difference between 6N and the
    exact lm_head + linear terms. llm.c's 6N uses its own N, every parameter ("llmc_n_params"):
    the `wpe_params` add 6 FLOPs each on top. nanoGPT's attention term equals the exact full-T^2
    count, llm.c's the causal half. T defaults to block_size, the formulas' T.
    """
    T = cfg.block_size if T is None else T
    full = exact_matmul_flops(cfg, T)
    causal = exact_matmul_flops(cfg, T, causal_skip=True)
    C, L = cfg.n_embd, cfg.n_layer
    N = count_params(cfg)
    N_llmc = count_params(cfg, non_embedding=False)
    one_dimensional = sum(shape[0] for shape in param_shapes(cfg).values() if len(shape) == 1)
    exact_parameter_matmuls = full["lm_head"]["total"] + full["linear"]["total"]
    formula_attention_nanogpt = float(12 * L * cfg.n_head * cfg.head_size * T)
    formula_attention_causal = float(6 * L * C * T)
    return {
        "T": T,
        "n_params": N,
        "llmc_n_params": N_llmc,
        "wpe_params": N_llmc - N,
        "one_dimensional_params": one_dimensional,
        "six_n": float(6 * N),
        "six_n_llmc": float(6 * N_llmc),
        "exact_parameter_matmuls": exact_parameter_matmuls,
        "six_n_minus_exact": float(6 * N) - exact_parameter_matmuls,
        "nanogpt_attention": formula_attention_nanogpt,
        "exact_attention": full["attention"]["total"],
        "llmc_attention": formula_attention_causal,
        "exact_attention_causal_skip": causal["attention"]["total"],
        "nanogpt": float(6 * N) + formula_attention_nanogpt,
        "llmc": float(6 * N_llmc) + formula_attention_causal,  # = flops_per_token_llmc
        "exact": full["total"]["total"],
        "exact_causal_skip": causal["total"]["total"],
    }


def model_and_hardware_flops(
    cfg: GPTConfig, T: int | None = None, causal_skip: bool = False
) -> dict:
    """Model FLOPs per token (the exact matmul count, what MFU credits) against hardware FLOPs
    (the same plus flash attention's recomputation of S = q @ k^T in the backward, what the
    device executes), their difference and ratio. HFU = MFU x ratio for the same run."""
    T = cfg.block_size if T is None else T
    model = exact_matmul_flops(cfg, T, causal_skip)["total"]["total"]
    hardware = exact_matmul_flops(cfg, T, causal_skip, recompute_scores=True)["total"]["total"]
    return {
        "model": model,
        "hardware": hardware,
        "recompute": hardware - model,
        "ratio": hardware / model,
    }


class MatmulFlopCounter:
    """Counts the FLOPs of every matmul done on arrays it has wrapped: `counter.wrap(a)` returns
    a view of `a` whose `@` (np.matmul) adds 2*m*n*k to `counter.flops`. Results stay wrapped,
    so everything computed from wrapped inputs is counted: a measurement of what a NumPy function
    multiplies, to hold beside the formulas (np.matmul is a ufunc, hence `__array_ufunc__`)."""

    def __init__(self) -> None:
        self.flops = 0
        counter = self

        class Counted(np.ndarray):
            def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
                inputs = tuple(_plain(x) for x in inputs)
                if out is not None:
                    kwargs["out"] = tuple(_plain(x) for x in out)
                result = getattr(ufunc, method)(*inputs, **kwargs)
                if ufunc is np.matmul and method == "__call__":
                    counter.flops += 2 * result.size * inputs[0].shape[-1]  # 2 x outputs x k
                if out is not None:
                    return out[0] if len(out) == 1 else out
                return result.view(Counted) if isinstance(result, np.ndarray) else result

        def _plain(x):
            return x.view(np.ndarray) if isinstance(x, Counted) else x

        self._type = Counted

    def wrap(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array).view(self._type)


def count_matmul_flops(function, *arrays: np.ndarray, **kwargs) -> tuple[object, int]:
    """`function(*arrays, **kwargs)` with its arrays wrapped by a `MatmulFlopCounter`: the result
    and the matmul FLOPs it did."""
    counter = MatmulFlopCounter()
    result = function(*(counter.wrap(a) for a in arrays), **kwargs)
    return result, counter.flops


# Dense peak FLOP/s (no 2:4 sparsity) from NVIDIA's datasheets; "bf16"/"fp16" are tensor-core
# rates with fp32 accumulation, "tf32" the tensor-core fp32-input rate, "fp32" plain CUDA cores.
# None: the GPU has no such tensor-core path (V100 has no bf16 or tf32).
PEAK_FLOPS: dict[str, dict[str, float | None]] = {
    "A100 SXM": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "A100 PCIe": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "H100 SXM": {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H200": {"bf16": 989.5e12, "fp16": 989.5e12, "tf32": 494.7e12, "fp32": 66.9e12},
    # The NVL parts are PCIe cards with lower clocks and power (350-400 W, 600 W) than the SXM
    # ones. NVIDIA's H100 and H200 product pages give, per GPU, 1,671 bf16/fp16 and 835 tf32
    # TFLOPS with sparsity (halved here) and 60 fp32 TFLOPS for both; an earlier H100 NVL
    # datasheet gave the totals of a bridged pair of cards (twice the SXM's figures), which
    # is why tables that copied it disagree.
    "H100 NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "H200 NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "L40S": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    # Ada whitepaper: 165.2 with fp32 accumulate (330.3 only with fp16 accumulate)
    "RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    # AWS's A10G has no NVIDIA datasheet; these are the A10's, an upper bound (lower clocks)
    "A10G": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "V100": {"bf16": None, "fp16": 125e12, "tf32": None, "fp32": 15.7e12},
}

# Substrings of torch.cuda.get_device_name() names, most specific first ("A10" is in "A100",
# "L4" in "L40S", and an H100 that says neither PCIe nor NVL is the SXM part, "NVIDIA H100 80GB
# HBM3").
_DEVICE_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("A100", "PCIE"), "A100 PCIe"),
    (("A100",), "A100 SXM"),
    (("H100", "PCIE"), "H100 PCIe"),
    (("H100", "NVL"), "H100 NVL"),
    (("H100",), "H100 SXM"),
    (("H200", "NVL"), "H200 NVL"),
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


def measured_training_flops(
    cfg: GPTConfig,
    batch_size: int = 2,
    T: int | None = None,
    attention: Attention = NAIVE_ATTENTION,
) -> int:
    """Matmul FLOPs per token of one forward and backward of the NumPy GPT (`ref_numpy.gpt`),
    counted by `MatmulFlopCounter` on random tokens: with `NAIVE_ATTENTION` the model FLOPs of
    `exact_matmul_flops(cfg, T)`, with `flash_attention.FLASH_ATTENTION` what the tiled backward
    executes (compare `recompute_scores=True`, and `causal_skip`, which skips only whole tiles)."""
    T = cfg.block_size if T is None else T
    counter = MatmulFlopCounter()
    params = {name: counter.wrap(p) for name, p in init_params(cfg, seed=0).items()}
    idx = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch_size, T))
    cache = forward(params, cfg, idx, idx, attention=attention)[2]
    backward(cache)
    return counter.flops // (batch_size * T)
