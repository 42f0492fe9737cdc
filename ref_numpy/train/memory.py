"""A training run's peak memory, counted from its options before any of it is spent.

A step holds four copies of every parameter (the weights, their gradients, AdamW's two moments),
the tensors its forward pass keeps for the backward, and the backward's temporaries on top of
those. The kept tensors are counted from each implementation's code, one micro-batch at a time,
in four shapes: (B, T, C), (B, T, 4C), the attention matrix (B, H, T, T) and the logits
(B, T, V). For the NumPy GPT they are what `ref_numpy.gpt.forward` caches; for torch, what
autograd saves for each op of `torch_impl.model` (listed with
`torch.autograd.graph.saved_tensors_hooks`, as `torch_impl.bench.timing` does). Tensors of
shape (B, T), (B, H, T) or smaller (LayerNorm's statistics, the log-sum-exp of flash attention)
are left out: they are a 1/C share of the rest. A run whose estimate exceeds the memory
available is refused with one line that says which flag to lower (`check_memory`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ref_numpy.config import GPTConfig
from ref_numpy.errors import UserError
from ref_numpy.gpt import param_shapes
from ref_numpy.train.config import TrainConfig

TOKEN_BYTES = 8  # a batch's x and y are int64 (ref_numpy.data.get_batch)
GIB = 2**30
# the parts that grow with --batch_size and --block_size; the others are the model's state
SCALES_WITH_BATCH = ("activations", "attention matrices", "logits", "temporaries", "token batches")


@dataclass(frozen=True)
class Tensors:
    """A number of tensors of each activation shape."""

    btc: int = 0  # (B, T, C)
    bt4c: int = 0  # (B, T, 4C): the MLP's hidden layer
    bhtt: int = 0  # (B, H, T, T): the attention matrix
    btv: int = 0  # (B, T, V): the logits

    def elements(self, B: int, T: int, cfg: GPTConfig) -> int:
        C, H, V = cfg.n_embd, cfg.n_head, cfg.vocab_size
        return B * T * (self.btc * C + self.bt4c * 4 * C + self.bhtt * H * T + self.btv * V)

    def __add__(self, other: Tensors) -> Tensors:
        return Tensors(*(a + b for a, b in zip(self._counts(), other._counts())))

    def times(self, n: int) -> Tensors:
        return Tensors(*(a * n for a in self._counts()))

    def only(self, *shapes: str) -> Tensors:
        """These counts for the named shapes, 0 for the others."""
        return Tensors(**{shape: getattr(self, shape) for shape in shapes})

    def _counts(self) -> tuple[int, ...]:
        return dataclasses.astuple(self)


@dataclass(frozen=True)
class MemoryEstimate:
    """The peak bytes of one training process, part by part, and the options that set them."""

    parts: dict[str, int]
    batch_size: int
    block_size: int

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def batch_bytes(self) -> int:
        """The bytes that grow with --batch_size and --block_size."""
        return sum(self.parts.get(name, 0) for name in SCALES_WITH_BATCH)


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:,.1f} GiB" if n_bytes >= GIB / 10 else f"{n_bytes / 2**20:,.0f} MiB"


def _model_state(cfg: GPTConfig, itemsize: int) -> tuple[int, int]:
    """(the parameters' bytes, the largest parameter's bytes)."""
    sizes = [math.prod(shape) for shape in param_shapes(cfg).values()]
    return sum(sizes) * itemsize, max(sizes) * itemsize


def _batch_bytes(config: TrainConfig, micro_batches: int) -> int:
    """The int64 (x, y) token batches a process holds: its micro-batches of a step (drawn all at
    once by `MicroBatchStreams`) and the fixed evaluation batches of both splits, kept for the
    whole run (`ref_numpy.train.batches.eval_batches`)."""
    tokens_per_batch = 2 * config.batch_size * config.block_size  # x and y
    n_batches = micro_batches + 2 * config.eval_iters
    return n_batches * tokens_per_batch * TOKEN_BYTES


# ----------------------------------------------------------------------------- NumPy
# What `ref_numpy.gpt.forward` caches for each block, all of it kept until `backward` returns
# (the cache dict holds every block's cache): the tensors of the *Cache tuples of ref_numpy.layers.
NUMPY_KEPT_PER_LAYER = Tensors(
    # ln_1's xhat; ln_1's output (c_attn's LinearCache.x); qkv (B, T, 3C), whose q, k, v views
    # the AttentionCache holds; the attention output O; `merged`, the copy that the reshape of
    # the transposed heads makes (c_proj's x); ln_2's xhat; ln_2's output (c_fc's x)
    btc=1 + 1 + 3 + 1 + 1 + 1 + 1,
    # c_fc's output (GeluCache.x); Phi(x) or tanh(u) (GeluCache.saved); the GELU's output
    # (c_proj's x)
    bt4c=3,
    bhtt=1,  # P = softmax(S), materialised (AttentionCache.probs)
)
NUMPY_KEPT_PER_MODEL = Tensors(
    btc=2,  # ln_f's xhat and its output (lm_head's x)
    # the logits (train_step holds forward's first result in `_` through the backward) and the
    # softmax of the cross-entropy (CrossEntropyCache.probs)
    btv=2,
)
# The temporaries of the last block, beside every block's cache: each is a phase of the forward
# or the backward, and the largest phase sets the peak.
NUMPY_FORWARD_TEMPORARIES = {
    # q k^T and its scaled copy exist together (the copy becomes P in place); the residual x
    "attention scores": Tensors(bhtt=1, btc=1),
    # x / sqrt(2) and |x| inside erf, beside the kept x and Phi(x); the residual x
    "GELU": Tensors(bt4c=2, btc=1),
    # cross-entropy: the shifted logits and their exp, beside the logits and their softmax
    "cross-entropy": Tensors(btv=2, btc=1),
}
# All through the backward: dlogits and dxf (locals of `backward`) and the residual gradient.
NUMPY_BACKWARD_TEMPORARIES = {
    # the attention core: dP, dP - delta and dS together, with dV and d(merged)
    "attention backward": Tensors(btv=1, btc=2 + 2, bhtt=3),
    # dq, dk, dv, their three transposed copies and the concatenated d(qkv)
    "q, k, v gradients": Tensors(btv=1, btc=2 + 9),
    # the MLP: d(GELU output) and d(c_fc output) together, and d(h2)
    "MLP backward": Tensors(btv=1, btc=2 + 1, bt4c=2),
}


def numpy_run_memory(config: TrainConfig, cfg: GPTConfig, itemsize: int) -> MemoryEstimate:
    """The NumPy trainer's peak: `ref_numpy.step.train_step` in float32 (4) or float64 (8).

    With gradient accumulation, train_step keeps the running sum of the gradients beside each
    micro-batch's, and holds the previous micro-batch's cache (in its `cache` and `_`
    variables) until the next forward returns: two micro-batches' caches at that peak.
    """
    B, T, G = config.batch_size, config.block_size, config.gradient_accumulation_steps
    parameters, largest = _model_state(cfg, itemsize)
    kept = NUMPY_KEPT_PER_LAYER.times(cfg.n_layer) + NUMPY_KEPT_PER_MODEL

    def size(tensors: Tensors) -> int:
        return tensors.elements(B, T, cfg) * itemsize

    forward = max(size(phase) for phase in NUMPY_FORWARD_TEMPORARIES.values())
    backward = max(size(phase) for phase in NUMPY_BACKWARD_TEMPORARIES.values())
    temporaries = max(forward, backward)
    if G > 1:  # the peak: two caches and a forward's temporaries, or one cache and a backward's
        temporaries = max(forward, backward - size(kept))
        kept = kept.times(2)
    return MemoryEstimate(
        {
            "parameters": parameters,
            "gradients": parameters * (2 if G > 1 else 1),
            "AdamW moments": 2 * parameters,
            # AdamW.step makes about three temporaries of one parameter at a time
            "AdamW temporaries": 3 * largest,
            "activations": size(kept.only("btc", "bt4c")),
            "attention matrices": size(kept.only("bhtt")),
            "logits": size(kept.only("btv")),
            "temporaries": temporaries,
            "token batches": _batch_bytes(config, G),
        },
        B,
        T,
    )


# ----------------------------------------------------------------------------- torch
# What autograd saves for each block of `torch_impl.model` in eager mode. Under bf16/fp16
# autocast the matmuls' inputs are cast copies in the low precision, while the residual stream,
# and with it LayerNorm's input, stays in the parameters' float32.
TORCH_KEPT_PER_LAYER_FULL_PRECISION = Tensors(btc=2)  # ln_1's and ln_2's input (native_layer_norm)
TORCH_KEPT_PER_LAYER = Tensors(
    # c_attn's input (addmm saves it); the attention's 4 (see `_attention_kept`); c_fc's input
    btc=1 + 4 + 1,
    bt4c=2,  # the GELU's input (GeluBackward) and its output (the MLP c_proj's input)
)
TORCH_KEPT_PER_MODEL_FULL_PRECISION = Tensors(
    btc=1,  # ln_f's input
    btv=1,  # log_softmax's output (cross_entropy runs in float32 under autocast)
)
TORCH_KEPT_PER_MODEL = Tensors(
    btc=1,  # lm_head's input
    btv=1,  # the logits, held by train_step's `_` through the backward
)
# Autograd frees each op's saved tensors once its backward has run, so the backward's peak comes
# at its start, in the last block, with every other block's tensors still saved.
TORCH_TEMPORARY_PHASES = {
    # NllLossBackward's dense gradient of log_softmax, and LogSoftmaxBackward's of the logits
    "loss backward": Tensors(btv=2),
    # d(GELU output) from the c_proj addmm and d(GELU input), beside the residual gradient
    "MLP backward": Tensors(bt4c=2, btc=1),
    # flash/memory-efficient: dO, then dq, dk, dv and SplitBackward's concatenation of them
    "attention backward": Tensors(btc=1 + 6),
}
# materialised: dP from the P V matmul and dS from SoftmaxBackward, beside the residual gradient
MATERIALISED_ATTENTION_BACKWARD = Tensors(bhtt=2, btc=1)


def _attention_kept(materialised: bool, dropout: bool) -> Tensors:
    """The attention's saved tensors beyond the 4 (B, T, C) that every path keeps.

    SDPA's flash (CPU; CUDA in bf16/fp16) and memory-efficient (CUDA float32) kernels save q, k,
    v (views of c_attn's output), the output O and its log-sum-exp, and recompute P in the
    backward; O is laid out (B, T, H, D), so c_proj reads it with no copy. The materialised path
    ("manual", or SDPA's math fallback) saves copies of q and k for the q k^T matmul, v's copy
    and the contiguous copy of the heads that c_proj reads, and P (SoftmaxBackward and the P V
    matmul share it); with dropout also the dropout mask and the dropped P.
    """
    if not materialised:
        return Tensors()
    return Tensors(bhtt=3 if dropout else 1)


def sdpa_materialises(device_type: str, dtype: str, dropout: float) -> bool:
    """Whether F.scaled_dot_product_attention takes its math path, which materialises the
    (B, H, T, T) attention: with dropout on a CPU (the CPU flash kernel has none), in float64 on
    CUDA (no fused kernel takes it), and on MPS."""
    if device_type == "cpu":
        return dropout > 0
    if device_type == "cuda":
        return dtype == "float64"
    return True


def torch_run_memory(
    config: TrainConfig,
    cfg: GPTConfig,
    *,
    attention: str,
    device_type: str,
    dtype: str,
    fused_adamw: bool,
    processes: int = 1,
) -> MemoryEstimate:
    """One process's peak in the torch trainer (`torch_impl.step.train_step`, eager).

    `dtype` is the run's resolved precision: float32/float64 parameters and activations, or
    bfloat16/float16 autocast over float32 parameters. Under DDP (`processes` > 1) each process
    holds the whole model, its optimizer state, DDP's gradient buckets (a flat copy of the
    gradients) and one micro-batch's activations at a time. torch.compile saves fewer tensors
    (it fuses the GELU and recomputes cheap ops), so for a compiled run this is an upper bound.
    """
    B, T, G = config.batch_size, config.block_size, config.gradient_accumulation_steps
    full = 8 if dtype == "float64" else 4
    low = 2 if dtype in ("bfloat16", "float16") else full
    parameters, _ = _model_state(cfg, full)
    materialised = attention == "manual" or (
        attention == "sdpa" and sdpa_materialises(device_type, dtype, cfg.dropout)
    )
    per_layer = TORCH_KEPT_PER_LAYER + _attention_kept(materialised, cfg.dropout > 0)
    per_model = TORCH_KEPT_PER_MODEL
    micro_batches = G // processes
    if micro_batches > 1:  # train_step's `_` holds the last logits through the next forward
        per_model += Tensors(btv=1)
    if cfg.dropout > 0:
        # the masks of the residual, MLP and embedding dropouts, one (B, T, C) each: floats on
        # a CPU (its dropout multiplies by a noise tensor), bools on CUDA (counted as floats)
        per_layer += Tensors(btc=2)
        per_model += Tensors(btc=1)
    low_kept = per_layer.times(cfg.n_layer) + per_model
    full_kept = TORCH_KEPT_PER_LAYER_FULL_PRECISION.times(cfg.n_layer)
    full_kept += TORCH_KEPT_PER_MODEL_FULL_PRECISION
    # CUDA's autocast runs softmax in float32, and the P V matmul saves P's low-precision copy
    attention_itemsize = low + full if low != full and device_type == "cuda" else low

    def size(tensors: Tensors, itemsize: int) -> int:
        return tensors.elements(B, T, cfg) * itemsize

    phases = dict(TORCH_TEMPORARY_PHASES)
    if materialised:
        phases["attention backward"] = MATERIALISED_ATTENTION_BACKWARD
    parts = {
        "parameters": parameters,
        "gradients": parameters,
        "AdamW moments": 2 * parameters,
        # the foreach implementation's sqrt of the second moments; the fused kernel makes none
        "AdamW temporaries": 0 if fused_adamw else parameters,
        "activations": size(low_kept.only("btc", "bt4c"), low)
        + size(full_kept.only("btc", "bt4c"), full),
        "attention matrices": size(low_kept.only("bhtt"), attention_itemsize),
        "logits": size(low_kept.only("btv"), low) + size(full_kept.only("btv"), full),
        # a gradient has its tensor's precision: counted in the wider one
        "temporaries": max(size(phase, full) for phase in phases.values()),
    }
    if low != full:  # autocast's low-precision copy of each matmul weight, saved by the matmul
        cast = sum(
            math.prod(shape)
            for name, shape in param_shapes(cfg).items()
            if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight", "wte.weight"))
        )
        parts["low-precision weight copies"] = cast * low
    if processes > 1:
        parts["DDP gradient buckets"] = parameters
    if device_type == "cpu":
        parts["token batches"] = _batch_bytes(config, micro_batches)
    else:  # the batches stay in host memory; a step copies one micro-batch's x, y over
        parts["token batches"] = 2 * B * T * TOKEN_BYTES
    return MemoryEstimate(parts, B, T)


# ----------------------------------------------------------------------------- the check
def available_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """The CPU memory a new allocation can get without swapping (Linux's MemAvailable), or None
    where it cannot be read (not Linux)."""
    try:
        with open(meminfo) as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(estimate: MemoryEstimate, available: int | None, where: str) -> None:
    """Refuse a run whose estimated peak exceeds the `available` bytes of `where` ("the CPU",
    "the GPU cuda:0"), naming the flag to lower; nothing to check where `available` is None."""
    if available is None or estimate.total <= available:
        return
    activations = estimate.batch_bytes
    model = estimate.total - activations
    batch = f"--batch_size {estimate.batch_size} x --block_size {estimate.block_size}"
    if activations >= model:
        fix = (
            "lower --batch_size (raising --gradient_accumulation_steps keeps the tokens per step)"
            " or --block_size"
        )
    else:
        fix = "lower --n_layer or --n_embd (the model's state), then --batch_size if need be"
    raise UserError(
        f"this run needs about {_size(estimate.total)} ({_size(model)} for the parameters, "
        f"gradients and AdamW state, {_size(activations)} for the activations of {batch}), "
        f"but {where} has {_size(available)} available; {fix}"
    )


def check_numpy_run(config: TrainConfig, cfg: GPTConfig, itemsize: int) -> None:
    """The NumPy trainer's check, before its parameters exist: its peak against the CPU's."""
    check_memory(numpy_run_memory(config, cfg, itemsize), available_memory_bytes(), "the CPU")
