"""Where and how a torch run executes: the device and precision asked for, the MFU denominator,
the process's place in a torchrun job, and the signals that ask a run to stop.

Shared by the trainer, the sampler and the benchmarks, so that `--device` and `--dtype` mean the
same thing in each.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ref_numpy.errors import UserError
from ref_numpy.flops import peak_flops_for

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but CUDA is not available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps asked for, but MPS is not available; use --device cpu")
    return device


LOW_PRECISION = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """Float32 matmuls and convolutions on TF32 tensor cores (`enabled`) or in full float32, while
    inside; the previous settings come back after, so that a run leaves later float32 work in the
    same process (a check against a float64 reference, say) as it found it."""
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def parameter_dtype(dtype: torch.dtype) -> torch.dtype:
    """The parameters' dtype for a run in `dtype`: bf16 and fp16 autocast the matmuls over
    float32 parameters (the optimizer's small updates would vanish in 8 or 11 mantissa bits)."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def autocast_for(device: torch.device, dtype: torch.dtype) -> torch.autocast | None:
    """The autocast context of a bf16 or fp16 run, None for float32 and float64."""
    return torch.autocast(device.type, dtype=dtype) if dtype in LOW_PRECISION else None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16; use --dtype float16 or float32")
    if dtype == torch.float64 and device.type == "mps":
        raise UserError("MPS has no float64; use --dtype float32")
    return dtype


# ----------------------------------------------------------------------------- MFU
def _timed_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    """Seconds of one a @ b, synchronised on a GPU."""
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    start = time.perf_counter()
    a @ b
    if a.device.type == "cuda":
        torch.cuda.synchronize(a.device)
    return time.perf_counter() - start


def _matrices(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG alone
    return tuple(
        torch.randn(n, n, device=device, dtype=dtype, generator=generator) for _ in range(2)
    )


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """FLOP/s of an n x n x n torch matmul here (best of 5 after two warm-ups): the MFU denominator
    where no datasheet peak is known, i.e. what this device can reach, not what it is sold at.

    Without `n`, the largest power of two up to 8192 on a GPU (1024 on a CPU) whose matmul stays
    under about 50 ms: where a format has no fast kernel (fp16 on a CPU, 1 GFLOP/s here) a 1024^3
    matmul takes seconds, and measuring it would cost a run more than its first steps."""
    largest = n or (8192 if device.type == "cuda" else 1024)
    n = n or 256
    a, b = _matrices(n, device, dtype)
    while n < largest and 8 * _timed_matmul(a, b) < 0.05:  # the next size does 8x the work
        n *= 2
        a, b = _matrices(n, device, dtype)
    best = math.inf
    for i in range(7):
        elapsed = _timed_matmul(a, b)
        if i > 1:  # the first two are warm-ups (thread pools, caches, clocks)
            best = min(best, elapsed)
    return 2 * n**3 / best


def datasheet_peak(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str | None]:
    """The GPU's datasheet peak FLOP/s in the precision its matmuls run in (bf16, fp16; TF32
    for float32 when TF32 is on, else fp32) and that precision's name; (None, None) on a CPU,
    an unknown GPU or float64."""
    if device.type != "cuda":
        return None, None
    keys = {
        torch.bfloat16: "bf16",
        torch.float16: "fp16",
        torch.float32: "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32",
    }
    key = keys.get(dtype)
    peak = peak_flops_for(torch.cuda.get_device_name(device), key) if key else None
    return peak, key


def resolve_peak_flops(
    peak_flops: float | None, device: torch.device, dtype: torch.dtype
) -> tuple[float, str, bool]:
    """The MFU denominator, where it came from, and whether it was measured here (a measured
    ceiling is worth measuring again: `ref_numpy.train.machine.MeasuredPeak`): --peak_flops;
    the GPU's datasheet peak; else a measured matmul ceiling."""
    if peak_flops is not None:
        return peak_flops, "--peak_flops", False
    peak, key = datasheet_peak(device, dtype)
    if peak is not None:
        return peak, f"{torch.cuda.get_device_name(device)} datasheet {key} peak", False
    ceiling = matmul_ceiling(device, dtype)
    return ceiling, f"measured {str(dtype).removeprefix('torch.')} matmul on {device.type}", True


# ----------------------------------------------------------------------------- processes
@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    def slots(self, n_slots: int) -> range:
        """The gradient-accumulation slots (batch streams) this rank runs."""
        per_rank = n_slots // self.world_size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)


RANK_0_GRACE_S = 10  # how long a rank other than 0 waits for rank 0 to report a shared mistake


def processes_from_env() -> int:
    """The number of processes of this torchrun job; a plain `python -m` run is one."""
    return int(os.environ["WORLD_SIZE"]) if "RANK" in os.environ else 1


def distributed_from_env(gradient_accumulation_steps: int) -> Distributed:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain `python -m` run sets none."""
    if "RANK" not in os.environ:
        return Distributed()
    ctx = Distributed(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    )
    if gradient_accumulation_steps % ctx.world_size:
        if not ctx.is_master:
            # Every rank finds the same mistake and rank 0 alone says it. The others wait for the
            # launcher to stop them once rank 0 has exited: exiting first would make torchrun
            # stop rank 0 (within 0.1 s) perhaps before it has printed the line.
            time.sleep(RANK_0_GRACE_S)
            raise SystemExit(2)
        raise UserError(
            f"--gradient_accumulation_steps {gradient_accumulation_steps} is not a multiple of "
            f"the {ctx.world_size} processes, which each run an equal share; use a multiple of "
            f"{ctx.world_size}, or leave it unset for one micro-batch per process"
        )
    return ctx


class StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM ask the run to stop: finish the step, save, exit.

    A second Ctrl-C stops at once (a KeyboardInterrupt), for a run stuck where it cannot save.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step",
            file=sys.stderr,
        )
