"""One kernel of a training step, as the roofline model sees it: its FLOPs, its transcendental
function evaluations, and the tensors it reads and writes; and the builder the step's kernel
lists are written with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ref_numpy.flops import matmul_flops

GROUPS = (
    "matmul",
    "attention",
    "layernorm",
    "gelu",
    "bias/residual",
    "softmax + cross-entropy",
    "embedding",
    "optimizer",
)
ATTENTION_KINDS = ("materialised", "flash")
OPTIMIZERS = ("for_loop", "foreach", "fused")
TRANSCENDENTALS = ("exp", "log", "erf", "tanh", "sqrt")

STAT_BYTES = 4  # LayerNorm's mean and rstd, flash attention's log-sum-exp: float32 always
INDEX_BYTES = 8  # token ids and positions: int64
MASK_BYTES = 1  # the causal mask: bool
STATE_BYTES = 4  # parameters, gradients and AdamW's m, v as the optimizer sees them: float32


@dataclass(frozen=True)
class Kernel:
    """One kernel of a training step: what it computes and which tensors it reads and writes.

    `reads` / `writes` map a tensor's name to the bytes of it the kernel touches ("p:" names a
    parameter, "g:" a parameter's gradient, "d:" the gradient of an activation). `launches` are
    the GPU kernels eager PyTorch starts for it; `calls` the operator calls it dispatches (more
    than launches for a foreach op on a CPU, which loops over its tensors one call each).
    `tensor_cores`: its FLOPs run at the device's matmul rate. `fusable`: an elementwise or
    reduction kernel that torch.compile may merge with its neighbours.
    """

    name: str
    group: str
    phase: str  # "forward", "backward" or "optimizer"
    flops: float = 0.0
    reads: dict[str, float] = field(default_factory=dict)
    writes: dict[str, float] = field(default_factory=dict)
    transcendentals: dict[str, float] = field(default_factory=dict)
    launches: int = 1
    calls: int = 1
    tensor_cores: bool = False
    fusable: bool = True

    @property
    def bytes_read(self) -> float:
        return sum(self.reads.values())

    @property
    def bytes_written(self) -> float:
        return sum(self.writes.values())

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved."""
        return self.flops / self.bytes if self.bytes else math.inf


class StepBuilder:
    """Collects the kernels of one step; `act(n)` is the bytes of n activation elements."""

    def __init__(self, dtype_bytes: int) -> None:
        self.dtype_bytes = dtype_bytes
        self.kernels: list[Kernel] = []
        self.phase = "forward"

    def act(self, elements: float) -> float:
        return elements * self.dtype_bytes

    def add(self, name: str, group: str, reads: dict, writes: dict, **details) -> None:
        self.kernels.append(Kernel(name, group, self.phase, reads=reads, writes=writes, **details))

    def matmul(
        self,
        name: str,
        group: str,
        m: int,
        k: int,
        n: int,
        a: str,
        b: str,
        out,
        bias: str | None = None,
        batch: int = 1,
    ) -> None:
        """out [batch, m, n] = a [batch, m, k] @ b [batch, k, n] (+ bias [n], as addmm), each
        operand a tensor name (`out` may be a tuple of names: views that split the output into
        equal parts)."""
        reads = {a: self.act(batch * m * k), b: self.act(batch * k * n)}
        if bias is not None:
            reads[bias] = self.act(n)
        parts = (out,) if isinstance(out, str) else out
        self.add(
            name,
            group,
            reads,
            {part: self.act(batch * m * n) / len(parts) for part in parts},
            # an addmm's bias add (m*n) is left out, as flops.py and FlopCounterMode leave it
            flops=batch * matmul_flops(m, k, n),
            tensor_cores=True,
            fusable=False,
        )
