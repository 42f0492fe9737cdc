"""One training step of the torch GPT, and the loss estimate of an evaluation: the mirror of
`ref_numpy.step`, apart from any program.

A step accumulates the gradients of its micro-batches (each loss divided by their number, so the
sum is the gradient of the mean loss), clips their global norm and takes one optimizer step,
under autocast and with a GradScaler where the run's precision asks for them, and as one rank of
a data-parallel job under DDP. The trainer, the benchmarks and the cross-checks call these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch array on the device. To a GPU through page-locked (pinned) host memory and without
    waiting: a copy from pageable memory makes the host wait while the driver stages it, a
    non-blocking one from pinned memory is queued behind the GPU's work. torch's pinned-memory
    allocator keeps each block until the copy that reads it has run, so no later batch
    overwrites one still in flight."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    lr: float,
    grad_clip: float,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
    read_back: bool = True,
) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over gradient-accumulated micro-batches: (mean loss, grad norm).

    Mirrors `ref_numpy.step.train_step`: each micro-batch's loss is divided by their number, so
    the accumulated gradient is that of the mean loss. Under DDP each rank runs its share of the
    micro-batches; the gradients are all-reduced (averaged over ranks) only in the last
    backward, and the mean over ranks of those averages is the gradient of the global mean loss.

    With `read_back=False` the two come back as 0-d tensors on the device, unread: reading a
    number off a GPU waits for every kernel queued before it, so a trainer that reads them only
    for the steps it logs lets the host queue the next step while the GPU runs this one.
    """
    device = next(model.parameters()).device
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    last = len(micro_batches) - 1
    for i, (x, y) in enumerate(micro_batches):
        x, y = to_device(x, device), to_device(y, device)
        no_sync = isinstance(model, DistributedDataParallel) and i < last
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast or contextlib.nullcontext():
                _, loss = model(x, y)
            losses.append(loss.detach())
            scaled = loss / len(micro_batches)
            (scaler.scale(scaled) if scaler else scaled).backward()
    grad_norm = torch.tensor(float("nan"))
    if grad_clip > 0:
        if scaler:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mean_loss = torch.stack(losses).mean()
    if isinstance(model, DistributedDataParallel):  # the log shows the loss of all ranks' data
        dist.all_reduce(mean_loss)
        mean_loss /= dist.get_world_size()
    if not read_back:
        return mean_loss, grad_norm.detach()
    return mean_loss.item(), float(grad_norm)


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    batches: dict[str, list],
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """The mean loss of each split over its (x, y) batches, in eval mode: {"train": .., ...}."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for split, split_batches in batches.items():
        losses = []
        for x, y in split_batches:
            with autocast or contextlib.nullcontext():
                _, loss = model(to_device(x, device), to_device(y, device))
            losses.append(loss.detach())
        # one read-back per split; in float64, each loss exactly as float() would have read it
        out[split] = float(np.mean(torch.stack(losses).double().cpu().numpy()))
    model.train()
    return out
