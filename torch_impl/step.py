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


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    lr: float,
    grad_clip: float,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One optimizer step over gradient-accumulated micro-batches: (mean loss, grad norm).

    Mirrors `ref_numpy.step.train_step`: each micro-batch's loss is divided by their number, so
    the accumulated gradient is that of the mean loss. Under DDP each rank runs its share of the
    micro-batches; the gradients are all-reduced (averaged over ranks) only in the last
    backward, and the mean over ranks of those averages is the gradient of the global mean loss.
    """
    device = next(model.parameters()).device
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    last = len(micro_batches) - 1
    for i, (x, y) in enumerate(micro_batches):
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        no_sync = isinstance(model, DistributedDataParallel) and i < last
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast or contextlib.nullcontext():
                _, loss = model(x, y)
            losses.append(loss.detach())
            scaled = loss / len(micro_batches)
            (scaler.scale(scaled) if scaler else scaled).backward()
    grad_norm = float("nan")
    if grad_clip > 0:
        if scaler:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
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
    return mean_loss.item(), grad_norm


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
                _, loss = model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
            losses.append(float(loss))
        out[split] = float(np.mean(losses))
    model.train()
    return out
