"""A kernel list's time on a device: each kernel at the higher of its two roofs, plus what its
launches cost; the step's time, tokens per second and MFU."""

from __future__ import annotations

from dataclasses import dataclass

from ref_numpy.config import GPTConfig
from ref_numpy.flops import flops_per_token
from ref_numpy.roofline.kernel import GROUPS, Kernel


@dataclass(frozen=True)
class KernelTime:
    """One kernel's predicted time and which roof it meets."""

    kernel: Kernel
    compute_seconds: float  # FLOPs at the matmul or vector rate, plus its transcendentals
    memory_seconds: float  # bytes at the memory bandwidth
    overhead_seconds: float  # launches (or calls) x the device's per-launch cost
    bound: str  # "compute", "transcendental" or "memory"

    @property
    def seconds(self) -> float:
        return max(self.compute_seconds, self.memory_seconds) + self.overhead_seconds


@dataclass(frozen=True)
class Prediction:
    """`predict`'s answer: every kernel's time, and the step's."""

    device: str
    precision: str
    kernels: list[KernelTime]
    model_flops: float  # nanoGPT's 6N + 12*L*H*Q*T per token, times the step's tokens
    tokens: int
    peak_flops: float

    @property
    def seconds(self) -> float:
        return sum(k.seconds for k in self.kernels)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def mfu(self) -> float:
        return self.model_flops / self.seconds / self.peak_flops

    @property
    def overhead_seconds(self) -> float:
        """The launch (or call) costs, summed."""
        return sum(k.overhead_seconds for k in self.kernels)

    def by_group(self, overhead: bool = True) -> dict[str, float]:
        """Predicted seconds per kernel group, in `GROUPS` order; `overhead=False` without the
        launch costs (the work alone, to hold against a profiler's per-operator times)."""
        seconds = dict.fromkeys(GROUPS, 0.0)
        for k in self.kernels:
            seconds[k.kernel.group] += k.seconds - (0.0 if overhead else k.overhead_seconds)
        return seconds

    def bound_by_group(self) -> dict[str, str]:
        """Per kernel group, the roof its kernels meet for most of their time."""
        seconds: dict[str, dict[str, float]] = {}
        for k in self.kernels:
            by_bound = seconds.setdefault(k.kernel.group, {})
            by_bound[k.bound] = by_bound.get(k.bound, 0.0) + k.seconds
        return {group: max(b, key=b.get) for group, b in seconds.items()}

    def memory_bound_share(self) -> float:
        """The share of the step's time spent in memory-bound kernels."""
        return sum(k.seconds for k in self.kernels if k.bound == "memory") / self.seconds


def memory_seconds(kernel: Kernel, device) -> float:
    """The kernel's bytes at the device's bandwidth: from its cache where the whole working set
    fits there, from memory otherwise; with write-allocate, a fresh output (a tensor it does not
    also read) moved twice."""
    moved = kernel.bytes
    if device.write_allocate:
        moved += sum(size for name, size in kernel.writes.items() if name not in kernel.reads)
    cached = device.cache_bytes and kernel.bytes <= device.cache_bytes
    return moved / (device.cache_bandwidth if cached else device.bandwidth)


def predict(
    kernels: list[Kernel],
    device,
    precision: str = "bf16",
    cfg: GPTConfig | None = None,
    tokens: int | None = None,
    overhead: bool = True,
) -> Prediction:
    """Each kernel's time on `device` (a `ref_numpy.roofline.devices.Device`):
    max(compute, memory) + launches x overhead, where compute is FLOPs at the matmul rate of
    `precision` (tensor-core kernels) or the vector rate, plus each transcendental at its own
    rate, and memory is `memory_seconds`. With `cfg` and `tokens`, the step's model FLOPs for
    tokens/s and MFU (nanoGPT's estimate, T = block_size); `overhead=False` leaves launch costs
    out (every kernel at its roof, the ceiling)."""
    peak = device.peak_flops[precision]
    rows = []
    for kernel in kernels:
        flops_seconds = kernel.flops / (peak if kernel.tensor_cores else device.vector_flops)
        transcendental_seconds = sum(
            count / device.transcendentals[function]
            for function, count in kernel.transcendentals.items()
        )
        compute = flops_seconds + transcendental_seconds
        memory = memory_seconds(kernel, device)
        launches = kernel.calls if device.overhead_per == "call" else kernel.launches
        bound = (
            "memory"
            if memory >= compute
            else ("transcendental" if transcendental_seconds > flops_seconds else "compute")
        )
        rows.append(
            KernelTime(
                kernel,
                compute,
                memory,
                launches * device.launch_overhead if overhead else 0.0,
                bound,
            )
        )
    model_flops = flops_per_token(cfg) * tokens if cfg is not None and tokens else 0.0
    return Prediction(device.name, precision, rows, model_flops, tokens or 0, peak)
