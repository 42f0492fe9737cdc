"""Attention alone, forward and backward: SDPA's flash kernel against the materialised softmax.

The "attention" section of `python -m torch_impl.bench`. Causal self-attention on (B, H, T, d)
tensors, with T from 256 to 8192 at B*T = 16,384 tokens and H*d = 2048 (the sizes of
FlashAttention-2's own benchmarks), in bf16 on a GPU; smaller, and in float32, on the CPU. For
each implementation: forward time, forward + backward time, the FLOP rates these imply, the peak
memory of forward + backward (CUDA), and the bytes autograd keeps for the backward (any device),
where the manual path's T x T probabilities show and flash attention's O(T) statistics do not.
On a GPU with torch_impl's Triton kernel, that kernel is a third column, at head dims 64 and 128.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ref_numpy.config import GPTConfig
from torch_impl.bench_timing import interleaved_times, peak_memory_bytes, saved_for_backward_bytes
from torch_impl.bench_train import triton_attention_available
from torch_impl.model import CausalSelfAttention

SDPA_FLASH, MANUAL, TRITON = "sdpa flash", "manual", "triton"
# (tokens B*T, width H*d, sequence lengths T, head dims d) per kind of run
GRIDS = {
    "cuda": (16_384, 2048, (256, 512, 1024, 2048, 4096, 8192), (64, 128)),
    "cpu": (2048, 512, (256, 512, 1024, 2048), (64,)),
    "quick": (64, 32, (16, 32), (16,)),
}


def causal_attention_flops(batch: int, heads: int, T: int, head_dim: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of causal attention, counting the unmasked half only.

    Per head, S = Q K^T and O = P V each cost 2*T*T*d (a multiply and an add per term): 4*T^2*d,
    of which the causal mask leaves half, so forward = 2*B*H*T^2*d. The backward does four such
    matmuls, dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q (twice the forward), and
    FlashAttention-2's backward recomputes S = Q K^T from Q and K (half a forward): 2.5x the
    forward, so forward + backward = 3.5x the forward. Every implementation is charged this same
    count, so its TFLOPS is useful work per second (the manual path computes and stores the
    whole T x T square, masked half included).
    """
    forward = 4 * batch * heads * T * T * head_dim / 2
    return forward, 3.5 * forward


def _sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # forced: SDPA would otherwise pick any backend it likes, and the column says "flash"
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _manual(T: int, heads: int, head_dim: int, device: torch.device) -> Callable:
    """The model's own manual path: scores, causal mask, softmax, weighted sum (eval mode: the
    dropout is the identity and no time goes to it)."""
    cfg = GPTConfig(block_size=T, vocab_size=1, n_layer=1, n_head=heads, n_embd=heads * head_dim)
    module = CausalSelfAttention(cfg, attention="manual").to(device).eval()
    return module._manual_attention


def attention_functions(
    T: int, heads: int, head_dim: int, device: torch.device, with_manual: bool
) -> dict[str, Callable]:
    """The implementations measured at this size: (q, k, v) (B, H, T, d) -> (B, H, T, d)."""
    functions = {SDPA_FLASH: _sdpa_flash}
    if with_manual:
        functions[MANUAL] = _manual(T, heads, head_dim, device)
    if triton_attention_available(device):
        from torch_impl.triton_attention import triton_attention

        functions[TRITON] = lambda q, k, v: triton_attention(q, k, v, causal=True)
    return functions


def _measure_size(
    T: int, head_dim: int, tokens: int, width: int, device, dtype, with_manual, steps, warmup
) -> list[dict]:
    batch, heads = max(1, tokens // T), width // head_dim
    generator = torch.Generator(device="cpu").manual_seed(T + head_dim)
    q, k, v, grad_out = (
        torch.randn(batch, heads, T, head_dim, generator=generator).to(device=device, dtype=dtype)
        for _ in range(4)
    )
    for tensor in (q, k, v):
        tensor.requires_grad_(True)
    forward_flops, total_flops = causal_attention_flops(batch, heads, T, head_dim)
    with torch.no_grad():
        reference = _sdpa_flash(q, k, v)

    rows, calls = {}, {}
    for name, attend in attention_functions(T, heads, head_dim, device, with_manual).items():
        row = rows[name] = {
            "implementation": name,
            "T": T,
            "head_dim": head_dim,
            "batch": batch,
            "heads": heads,
            "dtype": str(dtype).removeprefix("torch."),
            "error": None,
        }

        def forward(attend=attend):
            with torch.no_grad():
                return attend(q, k, v)

        def forward_backward(attend=attend):
            return torch.autograd.grad(attend(q, k, v), (q, k, v), grad_out)

        try:
            row["max_abs_diff_vs_sdpa_flash"] = float((forward() - reference).abs().max())
            row["saved_for_backward_bytes"] = saved_for_backward_bytes(lambda a=attend: a(q, k, v))
            row["peak_memory_bytes"] = peak_memory_bytes(forward_backward, device)
        except torch.cuda.OutOfMemoryError:  # the manual path at long T: a result, not a bug
            row["error"] = "out of memory"
            continue
        except Exception as error:  # an unverified extra kernel must not sink the table
            if name != TRITON:
                raise
            row["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
            continue
        calls[f"{name}|forward"] = forward
        calls[f"{name}|forward_backward"] = forward_backward

    times = interleaved_times(calls, steps, warmup, device)
    for key, seconds in times.items():
        name, phase = key.split("|")
        median = statistics.median(seconds)
        flops = forward_flops if phase == "forward" else total_flops
        rows[name].update({f"{phase}_seconds": median, f"{phase}_tflops": flops / median / 1e12})
    return list(rows.values())


def attention_section(device: torch.device, quick: bool, steps: int, warmup: int) -> dict:
    """Every implementation at every size of the device's grid, causal, forward and backward."""
    tokens, width, lengths, head_dims = GRIDS["quick" if quick else device.type]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for head_dim in head_dims:
        with_manual = head_dim == head_dims[0]  # the manual path at head dim 64 (or --quick's)
        for T in lengths:
            rows += _measure_size(
                T, head_dim, tokens, width, device, dtype, with_manual, steps, warmup
            )
    return {
        "tokens_per_batch": tokens,
        "width": width,
        "dtype": str(dtype).removeprefix("torch."),
        "causal": True,
        "flops_convention": "causal half: forward 2*B*H*T^2*d, forward+backward 3.5x that",
        "triton_measured": any(row["implementation"] == TRITON for row in rows),
        "steps": steps,
        "warmup": warmup,
        "rows": rows,
    }
