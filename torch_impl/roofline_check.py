"""The roofline model (`ref_numpy.roofline`) held against a real eager torch training step.

Three instruments. `trace_step` runs one step of `torch_impl.model.GPT` under a
TorchDispatchMode and records, for every aten operator, the bytes of the tensors it reads and
writes and the FLOPs `torch.utils.flop_counter` charges it: what the model's kernel list must
equal. `profile_step` times the same step's operators with torch.profiler and adds their time up
by the model's kernel groups. `measure_this_cpu` measures this machine's roofs with torch's own
kernels (`ref_numpy.roofline.devices.measure_device`), since the step predicted is torch's.

The rule for bytes: every tensor argument is read and every output written, each counted once
by the elements its strides reach (a broadcast mask counts its T x T, not its B x H x T x T);
arguments the schema marks mutable are written too. Views move nothing. Scalars (0-d tensors:
the loss, Adam's step counts) are left out, as the model leaves them out. Where an operator's
kernel provably touches less than its arguments, `_READ_LESS` says so, one reason each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from ref_numpy.config import GPTConfig
from ref_numpy.roofline import step_kernels
from ref_numpy.roofline.devices import ArrayOps, Device, measure_device, median_seconds
from torch_impl.model import GPT
from torch_impl.runtime import matmul_ceiling

# aten operator -> the model's kernel group (outside the optimizer, where every operator is
# "optimizer"); add and sum are settled by their shapes in `kernel_group`
_OP_GROUPS = {
    "addmm": "matmul",
    "mm": "matmul",
    "bmm": "attention",
    "mul": "attention",  # the 1/sqrt(d) scale, forward and backward
    "bitwise_not": "attention",
    "masked_fill": "attention",
    "_softmax": "attention",
    "_softmax_backward_data": "attention",
    "clone": "attention",  # q, k, v, y and their gradients copied between head layouts
    "cat": "attention",  # dq, dk, dv into the c_attn output's gradient
    "_scaled_dot_product_flash_attention_for_cpu": "attention",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "_scaled_dot_product_flash_attention": "attention",
    "_scaled_dot_product_flash_attention_backward": "attention",
    "native_layer_norm": "layernorm",
    "native_layer_norm_backward": "layernorm",
    "gelu": "gelu",
    "gelu_backward": "gelu",
    "add": "bias/residual",
    "sum": "bias/residual",
    "_log_softmax": "softmax + cross-entropy",
    "_log_softmax_backward_data": "softmax + cross-entropy",
    "nll_loss_forward": "softmax + cross-entropy",
    "nll_loss_backward": "softmax + cross-entropy",
    "arange": "embedding",
    "embedding": "embedding",
    "embedding_dense_backward": "embedding",
}


def kernel_group(op: str, phase: str, shapes: list[tuple[int, ...]]) -> str | None:
    """The model's group of an aten operator (its name without "aten::" or overload), or None
    for an operator the model has no kernel for. `shapes`: its tensor arguments' shapes."""
    if phase == "optimizer":
        return "optimizer"
    group = _OP_GROUPS.get(op)
    if op == "add" and shapes and len(shapes[0]) == 2:
        return "embedding"  # wte's two gradients (lookup, lm_head), [V, C]
    if op == "sum" and shapes and len(shapes[0]) == 3:
        return "embedding"  # wpe's gradient, summed over the batch
    return group


# (operator, argument index) -> the bytes its kernel reads of that argument, given all arguments
_READ_LESS: dict[tuple[str, int], Callable[[tuple], int]] = {
    # a gather reads the rows it gathers
    ("embedding", 0): lambda args: args[1].numel() * args[0].shape[-1] * args[0].element_size(),
    # the loss reads one log-probability per row, the target's
    ("nll_loss_forward", 0): lambda args: args[1].numel() * args[0].element_size(),
    # the loss gradient is zeros with -1/N at the targets: the log-probabilities give its shape
    ("nll_loss_backward", 1): lambda args: 0,
    # dx, dw and db need the weight, not the bias
    ("native_layer_norm_backward", 6): lambda args: 0,
    # a copy overwrites its destination without reading it
    ("copy_", 0): lambda args: 0,
}
# allocations: no kernel runs, nothing is read or written
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
# (operator, argument index): marked mutable by the schema, but written only in a case the step
# does not use (fused AdamW unscales the gradients in place only when given a grad_scale)
_WRITTEN_ONLY_IF_SCALED = {("_fused_adamw_", 1)}


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for t in value if isinstance(t, torch.Tensor)]
    return []


def _key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor reaches (a stride-0 dimension counts once)."""
    if t.dim() == 0:
        return 0
    elements = math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0)
    return elements * t.element_size()


@dataclass
class OpRecord:
    """One aten operator of a traced step."""

    op: str
    phase: str
    group: str | None
    bytes_read: int
    bytes_written: int
    flops: int  # as torch.utils.flop_counter counts it (0 where it has no formula)
    shapes: list[tuple[int, ...]]


class _TrafficMode(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.records: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = func._schema.name.removeprefix("aten::")
        inputs = {_key(t): t for a in (*args, *kwargs.values()) for t in _tensors(a)}
        storages = {t.untyped_storage().data_ptr() for t in inputs.values()}
        outputs = [t for t in _tensors(out) if t.untyped_storage().data_ptr() not in storages]
        written = {}
        for index, argument in enumerate(func._schema.arguments):
            value = args[index] if index < len(args) else kwargs.get(argument.name)
            alias = argument.alias_info
            if alias is not None and alias.is_write and (op, index) not in _WRITTEN_ONLY_IF_SCALED:
                written |= {_key(t): t for t in _tensors(value)}
        if (not outputs and not written) or op in _ALLOCATIONS:
            return out  # a view, an allocation, or scalars only: no kernel moves memory
        # the arguments whose kernel reads less than the whole tensor, and how much it reads
        less = {
            _key(t): rule(args)
            for (name, index), rule in _READ_LESS.items()
            if name == op and index < len(args)
            for t in _tensors(args[index])
        }
        read = sum(less.get(key, tensor_bytes(t)) for key, t in inputs.items())
        write = sum(map(tensor_bytes, outputs)) + sum(map(tensor_bytes, written.values()))
        if read == 0 and write == 0:
            return out
        formula = flop_registry.get(func._overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula is not None else 0
        shapes = [tuple(t.shape) for a in args for t in _tensors(a)]
        self.records.append(
            OpRecord(
                op, self.phase, kernel_group(op, self.phase, shapes), read, write, flops, shapes
            )
        )
        return out


def make_step(
    cfg: GPTConfig, batch_size: int, T: int, attention: str, optimizer: str, seed: int = 0
) -> tuple[Callable[[Callable[[str], object]], None], GPT]:
    """A float32 eager training step of `GPT(cfg)` on random tokens: `step(mark)` runs forward,
    backward and AdamW, calling `mark(phase)` ("forward", "backward", "optimizer") before each.
    `attention`: the model's "materialised" ("manual") or "flash" (SDPA); `optimizer`:
    "for_loop", "foreach" or "fused", as torch.optim.AdamW's flags choose them."""
    with torch.random.fork_rng():  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        model = GPT(cfg, attention="manual" if attention == "materialised" else "sdpa")
    flags = {
        "for_loop": {"foreach": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }[optimizer]
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
        **flags,
    )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (batch_size, T), generator=generator)
    y = torch.randint(0, cfg.vocab_size, (batch_size, T), generator=generator)

    def step(mark: Callable[[str], object] = lambda phase: None) -> None:
        mark("forward")
        _, loss = model(x, y)
        mark("backward")
        loss.backward()
        mark("optimizer")
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def trace(run: Callable[[Callable[[str], None]], object]) -> list[OpRecord]:
    """Every aten operator `run(mark)` calls that moves memory; `run` calls `mark(phase)` as it
    enters each phase ("forward", "backward", "optimizer")."""
    mode = _TrafficMode()
    with mode:
        run(lambda phase: setattr(mode, "phase", phase))
    return mode.records


def trace_step(
    cfg: GPTConfig, batch_size: int, T: int, attention: str, optimizer: str
) -> list[OpRecord]:
    """Every aten operator of one eager float32 step (the second: AdamW's state exists)."""
    step, _ = make_step(cfg, batch_size, T, attention, optimizer)
    step()
    return trace(step)


def trace_attention(
    batch: int, heads: int, T: int, head_dim: int, attention: str
) -> list[OpRecord]:
    """Every aten operator of causal attention alone, forward and backward, as the attention
    benchmark runs it: float32 contiguous (B, H, T, d) q, k, v on this CPU."""
    from torch_impl.bench.attention import MANUAL, SDPA_FLASH, attention_functions

    name = MANUAL if attention == "materialised" else SDPA_FLASH
    attend = attention_functions(T, heads, head_dim, torch.device("cpu"), True)[name]
    generator = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(batch, heads, T, head_dim, generator=generator) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)

    def run(mark: Callable[[str], None]) -> None:
        mark("forward")
        y = attend(q, k, v)
        mark("backward")
        y.backward(grad)

    return trace(run)


# ----------------------------------------------------------------------------- timing
@contextmanager
def _phase_ranges() -> Iterator[Callable[[str], None]]:
    """`mark(phase)` closes the previous phase's profiler range and opens the next."""
    current: list = []

    def mark(phase: str) -> None:
        if current:
            current.pop().__exit__(None, None, None)
        scope = torch.profiler.record_function(f"phase:{phase}")
        scope.__enter__()
        current.append(scope)

    yield mark
    if current:
        current.pop().__exit__(None, None, None)


def profile_step(
    cfg: GPTConfig, batch_size: int, T: int, attention: str, optimizer: str, steps: int = 5
) -> dict:
    """Measured seconds per step: the wall-clock median of `steps` plain steps, and per kernel
    group the profiler's time of the operators `kernel_group` maps (outermost only, so none is
    counted twice), averaged over `steps` profiled steps, and the operator calls behind each;
    "other" is the profiled step's time in no mapped operator (Python, autograd's bookkeeping,
    views). The profiler costs time of its own per recorded event: compare "profiled_seconds"
    with "wall_seconds" over "events_per_step"."""
    step, _ = make_step(cfg, batch_size, T, attention, optimizer)
    for _ in range(2):
        step()  # warm-up: AdamW's state, the allocator, thread pools
    wall = median_seconds(step, steps)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as profiler:
        for _ in range(steps):
            with _phase_ranges() as mark:
                step(mark)
    groups: dict[str, float] = {}
    calls: dict[str, int] = {}
    profiled, events = 0.0, 0
    for event in profiler.events():
        if event.name.startswith("phase:"):
            profiled += event.cpu_time_total
            continue
        events += 1
        chain, parent = [], event.cpu_parent
        while parent is not None and not parent.name.startswith("phase:"):
            chain.append(parent)
            parent = parent.cpu_parent
        if parent is None:
            continue
        phase = parent.name.removeprefix("phase:")
        if any(_mapped(above, phase) is not None for above in chain):
            continue  # inside an operator already counted
        group = _mapped(event, phase)
        if group is not None:
            groups[group] = groups.get(group, 0.0) + event.cpu_time_total
            calls[group] = calls.get(group, 0) + 1
    seconds = {group: us / 1e6 / steps for group, us in groups.items()}
    seconds["other"] = profiled / 1e6 / steps - sum(seconds.values())
    return {
        "wall_seconds": wall,
        "profiled_seconds": profiled / 1e6 / steps,
        "groups": seconds,
        "calls": {group: n // steps for group, n in calls.items()},
        "events_per_step": events // steps,  # every recorded event, views and allocations too
    }


def _mapped(event, phase: str) -> str | None:
    if not event.name.startswith("aten::"):
        return None
    return kernel_group(
        event.name.removeprefix("aten::"),
        phase,
        [tuple(s) for s in (event.input_shapes or []) if s],
    )


# ----------------------------------------------------------------------------- this machine
_TINY = GPTConfig(block_size=4, vocab_size=8, n_layer=1, n_head=1, n_embd=4)


def _step_call_overhead(repeats: int = 51) -> float:
    """What one operator of an eager training step costs when it does almost no work: a whole
    step of a 1-layer, 4-wide GPT on 4 tokens, divided by the operator calls the model lists for
    it (this includes autograd's and Python's share, as a real step pays them)."""
    step, _ = make_step(_TINY, 1, 4, "flash", "foreach")
    seconds = median_seconds(step, repeats)
    calls = sum(k.calls for k in step_kernels(_TINY, 1, 4, attention="flash"))
    return seconds / calls


def _torch_array(n: int) -> torch.Tensor:
    return torch.empty(n).uniform_(-3, 3, generator=torch.Generator().manual_seed(0))


TORCH_OPS = ArrayOps(
    library="torch",
    array=_torch_array,
    copy=lambda a, out: out.copy_(a),
    triad=lambda a, b, out: torch.add(a, b, alpha=3.0, out=out),
    functions={
        "exp": lambda a, out: torch.exp(a, out=out),
        "log": lambda a, out: torch.log(a.abs(), out=out),
        "erf": lambda a, out: torch.erf(a, out=out),
        "tanh": lambda a, out: torch.tanh(a, out=out),
        "sqrt": lambda a, out: torch.sqrt(a.abs(), out=out),
    },
    call_overhead=_step_call_overhead,
    # 2048^3, the ceiling the train section's MFU uses: the largest rate torch reaches here
    matmul_ceiling=lambda: matmul_ceiling(torch.device("cpu"), torch.float32, n=2048),
)


def measure_this_cpu(quick: bool = False) -> Device:
    """This CPU's roofs as torch's kernels reach them (float32); `quick` as `measure_device`'s."""
    name = f"this CPU (torch, {torch.get_num_threads()} threads)"
    return measure_device(TORCH_OPS, name, quick)


def gelu_rate(elements: int = 1 << 16, repeats: int = 21) -> float:
    """torch's GELU in evaluations per second, in cache: beside `measure_this_cpu`'s erf rate it
    shows that F.gelu evaluates its erf by a faster kernel of its own than torch.erf."""
    a = _torch_array(elements)
    return elements / median_seconds(lambda: F.gelu(a), repeats)
