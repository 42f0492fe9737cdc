"""One training step of the NumPy GPT, and the loss estimate of an evaluation: the math of a
training run, apart from any program.

A step accumulates the gradients of its micro-batches, averages them (the gradient of the mean
loss over all of them, as one large batch would give), clips their global norm and takes one
AdamW step. Both training programs and the experiments call these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ref_numpy.adamw import AdamW, clip_grad_norm
from ref_numpy.config import GPTConfig
from ref_numpy.gpt import backward, forward
from ref_numpy.layers import NAIVE_ATTENTION, Attention


def train_step(
    params: dict[str, np.ndarray],
    cfg: GPTConfig,
    optimizer: AdamW,
    micro_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    lr: float,
    grad_clip: float,
    attention: Attention = NAIVE_ATTENTION,
) -> tuple[float, float]:
    """One optimizer step over gradient-accumulated micro-batches: (mean loss, grad norm).

    Each micro-batch's gradient is divided by their number, so the step uses the gradient of
    the mean loss over all of them. The norm is the one before clipping (nan with no clipping).
    """
    total = None
    losses = []
    for x, y in micro_batches:  # each [B, T]
        _, loss, cache = forward(params, cfg, x, y, attention=attention)
        grads = backward(cache)
        losses.append(float(loss))
        if total is None:
            total = grads
        else:
            for name, g in grads.items():
                total[name] += g
    scale = 1.0 / len(micro_batches)
    for g in total.values():
        g *= scale
    grad_norm = clip_grad_norm(total, grad_clip) if grad_clip > 0 else float("nan")
    optimizer.step(total, lr=lr)
    return float(np.mean(losses)), grad_norm


def estimate_loss(
    params: dict[str, np.ndarray], cfg: GPTConfig, batches: dict[str, list]
) -> dict[str, float]:
    """The mean loss of each split over its (x, y) batches: {"train": .., "val": ..}."""
    return {
        split: float(np.mean([forward(params, cfg, x, y)[1] for x, y in split_batches]))
        for split, split_batches in batches.items()
    }
