"""nanoGPT's learning-rate schedule: linear warmup, then cosine decay to min_lr.

Warmup keeps the first Adam steps small while the second-moment estimates are still noisy;
the cosine ends training at a small rate. Both trainers (NumPy and torch) call this function.
"""

from __future__ import annotations

import math


def get_lr(
    it: int,
    learning_rate: float,
    warmup_iters: int,
    lr_decay_iters: int,
    min_lr: float,
    decay_lr: bool = True,
) -> float:
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:  # 1) linear warmup, never exactly 0 at it = 0
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:  # 3) after the decay: constant min_lr
        return min_lr
    # 2) cosine from learning_rate (decay_ratio 0) down to min_lr (decay_ratio 1)
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)
