"""The torch trainer's memory check: the run's estimated peak (`ref_numpy.train.memory`) against
what its device has free, made before the model is built, so that a run that cannot fit is
refused in one line instead of allocating until it fails.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from ref_numpy.config import GPTConfig
from ref_numpy.train.batches import TrainingData
from ref_numpy.train.memory import (
    MemoryEstimate,
    available_memory_bytes,
    check_memory,
    torch_run_memory,
)
from torch_impl.checkpoint import config_from_checkpoint
from torch_impl.model import fused_adamw_available
from torch_impl.runtime import Distributed
from torch_impl.train_config import TorchTrainConfig


def available_device_memory(device: torch.device) -> int | None:
    """Free bytes on `device`: the GPU's free memory, the CPU's MemAvailable; None on MPS, whose
    unified memory has no such count here."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return available_memory_bytes()
    return None


def _model_config(
    config: TorchTrainConfig, checkpoint: dict | None, data: TrainingData
) -> GPTConfig:
    """The shape `build_model` will give the model: the options', or the checkpoint's with this
    run's context and dropout (the checkpoint's own checks follow in build_model)."""
    if checkpoint is None:
        return config.model_config(data.vocab_size)
    saved = config_from_checkpoint(checkpoint)
    return dataclasses.replace(saved, block_size=config.block_size, dropout=config.dropout)


def check_run_memory(
    config: TorchTrainConfig,
    checkpoint: dict | None,
    data: TrainingData,
    ctx: Distributed,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Refuse (UserError) a run whose estimated peak exceeds its device's free memory.

    Counted per process: under DDP on GPUs each process has its own device; on the CPU the
    processes torchrun started on this machine (LOCAL_WORLD_SIZE) share its memory.
    """
    model_config = _model_config(config, checkpoint, data)

    def estimate(fused_adamw: bool) -> MemoryEstimate:
        return torch_run_memory(
            config,
            model_config,
            attention=config.attention,
            device_type=device.type,
            dtype=str(dtype).removeprefix("torch."),
            fused_adamw=fused_adamw,
            processes=ctx.world_size,
        )

    available = available_device_memory(device)
    where = f"the GPU {device}" if device.type == "cuda" else "the CPU"
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    if available is not None and sharing > 1:
        available //= sharing
        where = f"each of the {sharing} processes' share of the CPU"
    fused = config.fused_adamw
    if fused is None:  # fused wherever this torch has the kernel
        # Probing for it takes a second (its first step imports torch._dynamo): asked only
        # where the answer (foreach's temporaries, or none) decides the check.
        decides = available is not None and (
            estimate(True).total <= available < estimate(False).total
        )
        fused = fused_adamw_available(device.type) if decides else True
    check_memory(estimate(fused), available, where)
