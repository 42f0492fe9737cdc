"""Attention alone, forward and backward: SDPA's flash kernel against the materialised softmax.

The "attention" section of `python -m torch_impl.bench`. Causal self-attention on (B, H, T, d)
tensors, with T from 256 to 8192 at B*T = 16,384 tokens and H*d = 2048 (the sizes of
FlashAttention-2's own benchmarks), in bf16 on a GPU; smaller, and in float32, on the CPU. For
each implementation: forward time, forward + backward time, the FLOP rates these imply, the peak
memory of forward + backward (CUDA), and the bytes autograd keeps for the backward (any device),
where the manual path's T x T probabilities show and flash attention's O(T) statistics do not.
On a GPU two more columns: SDPA held to cuDNN's attention, and torch_impl's Triton kernel where
the triton package is installed, at head dims 64 and 128. `--lengths` and `--head_dims` narrow
the grid (the GPU report times T = 1024 and 4096). Each timed reading is 10 calls back to back on
a GPU (`timing.interleaved_times`), and each implementation runs once before its peak memory is
read, so that one-off allocations (the Triton autotuner's cache-flush buffer) stay out of it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ref_numpy.config import GPTConfig
from torch_impl.bench.common import BenchOptions, triton_runs_on
from torch_impl.bench.timing import (
    interleaved_times,
    peak_allocated_bytes,
    saved_for_backward_bytes,
)
from torch_impl.model import CausalSelfAttention
from torch_impl.report import figure_title, format_table, mib

SDPA_FLASH, SDPA_CUDNN, MANUAL, TRITON = "sdpa flash", "sdpa cudnn", "manual", "triton"
OPTIONAL = (SDPA_CUDNN, TRITON)  # may be missing or fail here without sinking the table
REPEAT = {"cuda": 10, "cpu": 1}  # calls per timed reading
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


def _sdpa_cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
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
    if device.type == "cuda":
        functions[SDPA_CUDNN] = _sdpa_cudnn
    if with_manual:
        functions[MANUAL] = _manual(T, heads, head_dim, device)
    if triton_runs_on(device):
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
            forward_backward()  # compiles and autotunes first: its buffers are not the kernel's
            row["peak_memory_bytes"] = peak_allocated_bytes(forward_backward, device)
        except torch.cuda.OutOfMemoryError:  # the manual path at long T: a result, not a bug
            row["error"] = "out of memory"
            continue
        except Exception as error:  # an unverified extra kernel must not sink the table
            if name not in OPTIONAL:
                raise
            row["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
            continue
        calls[f"{name}|forward"] = forward
        calls[f"{name}|forward_backward"] = forward_backward

    times = interleaved_times(calls, steps, warmup, device, repeat=REPEAT[device.type])
    for key, seconds in times.items():
        name, phase = key.split("|")
        median = statistics.median(seconds)
        flops = forward_flops if phase == "forward" else total_flops
        rows[name].update({f"{phase}_seconds": median, f"{phase}_tflops": flops / median / 1e12})
    return list(rows.values())


def run(options: BenchOptions) -> dict:
    """Every implementation at every size of the device's grid, causal, forward and backward."""
    device, steps, warmup = options.device, options.steps, options.warmup
    tokens, width, lengths, head_dims = GRIDS["quick" if options.quick else device.type]
    lengths, head_dims = options.lengths or lengths, options.head_dims or head_dims
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for head_dim in head_dims:
        with_manual = head_dim == head_dims[0]  # the manual path at head dim 64 (or --quick's)
        for T in lengths:
            rows += _measure_size(
                T, head_dim, tokens, width, device, dtype, with_manual, steps, warmup
            )
    chosen = None
    if any(row["implementation"] == TRITON and not row["error"] for row in rows):
        from torch_impl.triton_attention import chosen_configs

        chosen = chosen_configs()
    return {
        "triton_chosen_configs": chosen,
        "tokens_per_batch": tokens,
        "width": width,
        "dtype": str(dtype).removeprefix("torch."),
        "causal": True,
        "flops_convention": "causal half: forward 2*B*H*T^2*d, forward+backward 3.5x that",
        "triton_measured": any(row["implementation"] == TRITON for row in rows),
        "calls_per_reading": REPEAT[device.type],
        "steps": steps,
        "warmup": warmup,
        "rows": rows,
    }


# ----------------------------------------------------------------------------- the report
def print_table(section: dict) -> None:
    print(
        f"\ncausal attention, {section['dtype']}, B*T = {section['tokens_per_batch']} tokens, "
        f"H*d = {section['width']}; TFLOPS count {section['flops_convention']}"
    )
    rows = [
        [
            row["implementation"],
            row["T"],
            row["head_dim"],
            f"{row['forward_seconds'] * 1e3:.3f}" if "forward_seconds" in row else "",
            f"{row['forward_backward_seconds'] * 1e3:.3f}" if "forward_seconds" in row else "",
            f"{row['forward_backward_tflops']:.3g}" if "forward_seconds" in row else "",
            mib(row.get("peak_memory_bytes")),
            mib(row.get("saved_for_backward_bytes")),
            row["error"] or "",
        ]
        for row in section["rows"]
    ]
    headers = ["implementation", "T", "d", "fwd ms", "fwd+bwd ms", "fwd+bwd TFLOPS"]
    print(format_table(headers + ["peak MiB", "saved MiB", "error"], rows))


COLORS = {SDPA_FLASH: "tab:blue", SDPA_CUDNN: "tab:purple", MANUAL: "tab:red", TRITON: "tab:green"}


def figure(report: dict):
    """Time, memory and FLOP rate against T, one line per implementation and head dim."""
    import matplotlib.pyplot as plt  # only when drawing: a GPU machine may have no matplotlib

    section = report["attention"]
    rows = [row for row in section["rows"] if "forward_backward_seconds" in row]
    on_gpu = report["device_type"] == "cuda"
    memory_key = "peak_memory_bytes" if on_gpu else "saved_for_backward_bytes"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, head_dim in sorted({(row["implementation"], row["head_dim"]) for row in rows}):
        line = sorted(
            (r for r in rows if (r["implementation"], r["head_dim"]) == (name, head_dim)),
            key=lambda r: r["T"],
        )
        T = [r["T"] for r in line]
        style = {"color": COLORS.get(name), "marker": "o", "ls": "-" if head_dim <= 64 else "--"}
        label = f"{name}, d={head_dim}"
        axes[0].plot(T, [r["forward_backward_seconds"] * 1e3 for r in line], label=label, **style)
        axes[1].plot(T, [r[memory_key] / 2**20 for r in line], label=label, **style)
        axes[2].plot(T, [r["forward_backward_tflops"] for r in line], label=label, **style)
    memory_label = {
        "peak_memory_bytes": "peak memory of forward + backward (MiB)",
        "saved_for_backward_bytes": "bytes saved for the backward (MiB)",
    }[memory_key]
    for ax, ylabel in zip(
        axes, ("forward + backward (ms)", memory_label, "forward + backward TFLOP/s (causal)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    what = (
        f"causal attention, {section['dtype']}, B*T = {section['tokens_per_batch']}, "
        f"H*d = {section['width']}"
    )
    fig.suptitle(figure_title(report, what), fontsize=9)
    fig.tight_layout()
    return fig
