"""Where the time of a training step goes: every kernel, its FLOPs and the bytes it moves.

A kernel cannot finish faster than its arithmetic allows (FLOPs / peak FLOP/s) nor faster than
its memory traffic allows (bytes / memory bandwidth): the roofline model (Williams, Waterman and
Patterson, "Roofline", CACM 2009). Its arithmetic intensity, FLOPs per byte, says which roof it
meets: below the device's ridge point (peak / bandwidth) a kernel is memory-bound, and making its
arithmetic faster changes nothing. `step_kernels` lists the kernels of one GPT training step in
the order eager PyTorch launches them (forward, backward, AdamW), each with the tensors it reads
and writes; `predict` puts them against a `ref_numpy.roofline.devices.Device`.

The optimizations nanoGPT relies on change this list, and nothing else. Flash attention
(`attention="flash"`) replaces the materialised scores S and probabilities P, written to and read
back from memory as B*H*T*T arrays, by one kernel that keeps its tiles on chip. Fused AdamW
(`optimizer="fused"`) reads p, g, m, v once and writes p, m, v once, where the foreach path makes
eight passes. torch.compile (`fused_elementwise=True`) merges each chain of elementwise and
reduction kernels between two matmuls into one, which reads the chain's inputs once and writes
only what is read later (`fuse_elementwise`); matmuls, attention kernels and the optimizer are
left as they are, as nanoGPT compiles the model and not the optimizer.

What the list counts and what it leaves out, on purpose. Bytes are the bytes of the tensors a
kernel reads and writes, once each (a cache that holds more is the device's business, not the
count's); `tests/test_roofline.py` checks them against the aten operators of a real
eager torch step. Scalars (the loss, Adam's step counts) move no memory worth counting. A gather
reads the rows it gathers, not the whole table. Matmul FLOPs are `flops.matmul_flops` of each
matmul's shapes, the count `exact_matmul_flops` uses per token. Elementwise FLOPs are estimates
(a few per element); they never decide a roof, because those kernels sit far below every ridge.
Transcendental functions (exp, log, erf, tanh, sqrt) are counted apart from FLOPs, because a
device evaluates them at a rate of its own. With `dtype_bytes=2` activations and matmul operands
are bf16 and parameters, gradients and AdamW's state float32, as under autocast, but autocast's
casts between them are not listed (see notebook 10 and `ref_numpy.precision` for mixed precision).
"""

from __future__ import annotations

from ref_numpy.config import GPTConfig
from ref_numpy.roofline.adamw_kernels import (
    TORCH_ADAMW_PASSES,
    multi_tensor_launches,
    optimizer_kernels,
)
from ref_numpy.roofline.attention_kernels import attention_kernels
from ref_numpy.roofline.fusion import fusable_runs, fuse_elementwise, fused_runs
from ref_numpy.roofline.gpt_kernels import backward_kernels, forward_kernels
from ref_numpy.roofline.kernel import (
    ATTENTION_KINDS,
    GROUPS,
    OPTIMIZERS,
    TRANSCENDENTALS,
    Kernel,
    StepBuilder,
)
from ref_numpy.roofline.predict import KernelTime, Prediction, predict

__all__ = [
    "ATTENTION_KINDS",
    "GROUPS",
    "OPTIMIZERS",
    "TORCH_ADAMW_PASSES",
    "TRANSCENDENTALS",
    "Kernel",
    "KernelTime",
    "Prediction",
    "attention_kernels",
    "fusable_runs",
    "fuse_elementwise",
    "fused_runs",
    "multi_tensor_launches",
    "predict",
    "step_kernels",
]


def step_kernels(
    cfg: GPTConfig,
    batch_size: int,
    T: int | None = None,
    *,
    dtype_bytes: int = 4,
    attention: str = "materialised",
    optimizer: str = "foreach",
    fused_elementwise: bool = False,
) -> list[Kernel]:
    """The kernels of one training step of `torch_impl.model.GPT` (nanoGPT's model): forward,
    backward and AdamW, in eager PyTorch's launch order; `fused_elementwise` as torch.compile
    fuses them. T defaults to block_size; dropout is taken as 0 (no dropout kernels)."""
    T = cfg.block_size if T is None else T
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not 1 <= T <= cfg.block_size:
        raise ValueError(f"T must be in [1, block_size={cfg.block_size}], got {T}")
    builder = StepBuilder(dtype_bytes)
    forward_kernels(builder, cfg, batch_size, T, attention)
    backward_kernels(builder, cfg, batch_size, T, attention)
    optimizer_kernels(builder, cfg, optimizer)
    kernels = builder.kernels
    return fuse_elementwise(kernels) if fused_elementwise else kernels
