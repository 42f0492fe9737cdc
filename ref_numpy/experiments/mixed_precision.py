"""Mixed precision measured on the NumPy GPT: how far one forward and backward in bf16 or fp16
lands from float64, which gradients fp16 cannot hold, and training in float32 against bf16.

Every run keeps float32 master parameters and AdamW state; `ref_numpy.precision.Autocast`
rounds the matmuls, attention and GELU as torch.autocast does. `torch_impl.mixed_precision`
runs the same comparisons through torch's own autocast, from the same initialisation and on
the same batches, so the two sets of numbers stand side by side.
"""

from __future__ import annotations

import numpy as np

from ref_numpy.adamw import AdamW, split_decay
from ref_numpy.config import GPTConfig
from ref_numpy.data import get_batch
from ref_numpy.gpt import backward, forward, init_params
from ref_numpy.precision import Autocast, relative_error

SMALL = GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=64)


def float64_step(
    cfg: GPTConfig, idx: np.ndarray, targets: np.ndarray, seed: int
) -> tuple[np.ndarray, float, dict[str, np.ndarray]]:
    """The reference: logits, loss and gradients of the NumPy GPT in float64 at `seed`'s init."""
    logits, loss, cache = forward(init_params(cfg, seed=seed, dtype=np.float64), cfg, idx, targets)
    return logits, loss, backward(cache)


def errors_against(
    reference: tuple, logits: np.ndarray, loss: float, grads: dict[str, np.ndarray]
) -> dict[str, float]:
    """Relative errors of one step's logits, loss and all gradients taken together against the
    float64 `reference` (`float64_step`)."""
    logits64, loss64, grads64 = reference
    flat64 = np.concatenate([g.ravel() for g in grads64.values()])
    flat = np.concatenate([np.asarray(grads[name], np.float64).ravel() for name in grads64])
    return {
        "logits": relative_error(logits, logits64),
        "loss": abs(loss - loss64) / abs(loss64),
        "gradients": relative_error(flat, flat64),
    }


def step_errors(
    cfg: GPTConfig, idx: np.ndarray, targets: np.ndarray, seed: int, autocast: Autocast | None
) -> dict[str, float]:
    """`errors_against` float64 of one forward and backward with float32 parameters (and
    `autocast`'s rounding)."""
    params32 = init_params(cfg, seed=seed, dtype=np.float32)
    logits, loss, cache = forward(params32, cfg, idx, targets, autocast=autocast)
    return errors_against(float64_step(cfg, idx, targets, seed), logits, loss, backward(cache))


def gradient_values(cfg: GPTConfig, data: np.ndarray, batch_size: int, seed: int) -> np.ndarray:
    """Every parameter gradient of one float32 step at initialisation, flattened."""
    params = init_params(cfg, seed=seed, dtype=np.float32)
    x, y = get_batch(data, cfg.block_size, batch_size, np.random.default_rng(seed))
    _, _, cache = forward(params, cfg, x, y)
    return np.concatenate([g.ravel() for g in backward(cache).values()])


def train_losses(
    cfg: GPTConfig,
    data: np.ndarray,
    steps: int,
    batch_size: int,
    seed: int,
    autocast: Autocast | None = None,
    lr: float = 1e-3,
) -> np.ndarray:
    """The training losses of the NumPy GPT with float32 parameters, AdamW (decay on 2-D
    tensors), seeded init and batches; `autocast` rounds as torch's autocast would."""
    params = init_params(cfg, seed=seed, dtype=np.float32)
    optimizer = AdamW(
        params,
        lr=lr,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        decay_names=split_decay(params)[0],
    )
    batches = np.random.default_rng(seed + 1)
    losses = []
    for _ in range(steps):
        x, y = get_batch(data, cfg.block_size, batch_size, batches)
        _, loss, cache = forward(params, cfg, x, y, autocast=autocast)
        optimizer.step(backward(cache))
        losses.append(loss)
    return np.array(losses)
