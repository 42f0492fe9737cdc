"""The speed claims repeated about nanoGPT's optimizations, each predicted by the roofline model.

  "flash attention is ~3x faster"          `flash_attention_claim`
  "fused AdamW: a ~20-30% optimizer speedup" `fused_adamw_claim`
  "torch.compile gives ~2x"                 `compile_claim`
  "nanoGPT reaches ~40-50% MFU on an A100"  `mfu_ceiling_claim`
  "GPUs are compute-bound, not memory-bound" `memory_bound_claim`

Each function returns plain numbers (seconds, ratios, shares) per device, so that the benchmark
can print them beside measurements and the notebook can argue from them. The model is a bound:
every kernel at its roof. Where a measurement falls short of it, the gap is the kernel's
inefficiency, which the model does not know.
"""

from __future__ import annotations

from ref_numpy.config import GPTConfig
from ref_numpy.roofline import GROUPS, attention_kernels, fuse_elementwise, predict, step_kernels
from ref_numpy.roofline.devices import Device

GPT2_124M = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768)
GPT2_BATCH = 16  # sequences of 1024 tokens per step, as the benchmark's train section
# nanoGPT's bench.py of 30 Dec 2022 (commit 5a725d9), where "~250 ms -> 135 ms per iteration"
# was measured: batch 8 x 1024, bf16 autocast, the materialised attention (SDPA came to
# nanoGPT on 30 Jan 2023), tanh GELU, GPT-2's vocabulary unpadded, foreach AdamW (fused came
# on 3 Feb 2023). The README does not name the GPU; nanoGPT's other runs are on A100 40GB.
NANOGPT_DEC_2022 = GPTConfig(
    block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, gelu="tanh"
)
NANOGPT_DEC_2022_BATCH = 8
NANOGPT_DEC_2022_MS = (250.0, 135.0)  # eager, compiled: nanoGPT's README


def _precision(device: Device) -> tuple[str, int]:
    """bf16 (2 bytes) where the device has it, else float32 (4 bytes)."""
    return ("bf16", 2) if "bf16" in device.peak_flops else ("fp32", 4)


def attention_shape(T: int, device: Device, head_dim: int = 64) -> tuple[int, int]:
    """(batch, heads) of the attention benchmark at T: on a GPU 16,384 tokens and width 2048
    (FlashAttention-2's benchmark sizes); on a CPU one sequence and two heads."""
    if "bf16" not in device.peak_flops:
        return 1, 2
    return max(1, 16_384 // T), 2048 // head_dim


def flash_attention_claim(device: Device, T: int, head_dim: int = 64) -> dict:
    """Causal attention forward + backward at T: materialised (eager), materialised with its
    elementwise chain fused (a fused softmax, as compile or Megatron's kernel makes it), flash."""
    precision, dtype_bytes = _precision(device)
    batch, heads = attention_shape(T, device, head_dim)
    device_type = "cuda" if precision == "bf16" else "cpu"

    def seconds(attention: str, fused: bool = False) -> float:
        kernels = attention_kernels(
            batch,
            heads,
            T,
            head_dim,
            dtype_bytes=dtype_bytes,
            attention=attention,
            device_type=device_type,
        )
        kernels = fuse_elementwise(kernels) if fused else kernels
        return predict(kernels, device, precision).seconds

    materialised, fused, flash = (
        seconds("materialised"),
        seconds("materialised", True),
        seconds("flash"),
    )
    return {
        "T": T,
        "head_dim": head_dim,
        "batch": batch,
        "heads": heads,
        "materialised_seconds": materialised,
        "fused_softmax_seconds": fused,
        "flash_seconds": flash,
        "speedup_over_materialised": materialised / flash,
        "speedup_over_fused_softmax": fused / flash,
    }


def _step(device: Device, cfg: GPTConfig, batch: int, overhead: bool = True, **options):
    precision, dtype_bytes = _precision(device)
    kernels = step_kernels(cfg, batch, dtype_bytes=dtype_bytes, **options)
    return predict(kernels, device, precision, cfg, batch * cfg.block_size, overhead=overhead)


def _eager_and_compiled(device: Device, cfg: GPTConfig, batch: int, **options) -> dict:
    """Predicted seconds of the step eager and with its elementwise chains fused."""
    return {
        mode: _step(device, cfg, batch, fused_elementwise=mode == "compiled", **options).seconds
        for mode in ("eager", "compiled")
    }


def fused_adamw_claim(device: Device) -> dict:
    """One AdamW step on GPT-2 124M: for-loop, foreach, fused; each one's share of a whole step
    (flash attention, GPT-2 124M, batch 16 x 1024)."""
    rows = {}
    for optimizer in ("for_loop", "foreach", "fused"):
        prediction = _step(device, GPT2_124M, GPT2_BATCH, attention="flash", optimizer=optimizer)
        seconds = prediction.by_group()["optimizer"]
        rows[optimizer] = {"seconds": seconds, "share_of_step": seconds / prediction.seconds}
    for optimizer in rows:
        rows[optimizer]["fused_speedup"] = rows[optimizer]["seconds"] / rows["fused"]["seconds"]
    return rows


def compile_claim(device: Device) -> dict:
    """Eager against compiled (elementwise chains fused) GPT-2 124M steps: with today's flash
    attention and fused AdamW, and as nanoGPT measured it in December 2022."""
    today = _eager_and_compiled(device, GPT2_124M, GPT2_BATCH, attention="flash", optimizer="fused")
    dec_2022 = _eager_and_compiled(
        device,
        NANOGPT_DEC_2022,
        NANOGPT_DEC_2022_BATCH,
        attention="materialised",
        optimizer="foreach",
    )
    return {
        "flash_fused_eager_seconds": today["eager"],
        "flash_fused_compiled_seconds": today["compiled"],
        "flash_fused_speedup": today["eager"] / today["compiled"],
        "dec_2022_eager_seconds": dec_2022["eager"],
        "dec_2022_compiled_seconds": dec_2022["compiled"],
        "dec_2022_speedup": dec_2022["eager"] / dec_2022["compiled"],
    }


def mfu_ceiling_claim(device: Device) -> dict:
    """nanoGPT's MFU (6N + 12*L*H*Q*T per token) of GPT-2 124M if every kernel ran at its roof
    and launches cost nothing: eager (flash, fused AdamW) and compiled."""
    out = {}
    for mode in ("eager", "compiled"):
        prediction = _step(
            device,
            GPT2_124M,
            GPT2_BATCH,
            overhead=False,
            attention="flash",
            optimizer="fused",
            fused_elementwise=mode == "compiled",
        )
        out[f"{mode}_mfu"] = prediction.mfu
        out[f"{mode}_matmul_share"] = prediction.by_group()["matmul"] / prediction.seconds
    return out


def memory_bound_claim(device: Device) -> dict:
    """Which kernel groups of a GPT-2 124M step (eager, flash, fused AdamW) are memory-bound on
    `device`, and the share of the step's time spent in memory-bound kernels."""
    prediction = _step(device, GPT2_124M, GPT2_BATCH, attention="flash", optimizer="fused")
    bound = prediction.bound_by_group()
    return {
        "memory_bound_share": prediction.memory_bound_share(),
        "groups": {group: bound[group] for group in GROUPS if group in bound},
    }


def all_claims(devices: list[Device]) -> dict:
    """Every claim on every device, keyed by device name."""
    return {
        device.name: {
            "flash_attention": [flash_attention_claim(device, T) for T in (1024, 4096)],
            "fused_adamw": fused_adamw_claim(device),
            "compile": compile_claim(device),
            "mfu_ceiling": mfu_ceiling_claim(device),
            "memory_bound": memory_bound_claim(device),
        }
        for device in devices
    }
