"""Train the NumPy GPT on a CPU: `python -m ref_numpy.train --max_iters 200 ...`.

The reference trainer: the same loop, schedule, clipping and batches as torch_impl's, in the
hand-written NumPy model. Writes out_dir/log.jsonl, out_dir/loss.png and out_dir/params.npz.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ref_numpy.adamw import AdamW, clip_grad_norm
from ref_numpy.allocator import keep_freed_memory
from ref_numpy.data import decode
from ref_numpy.gpt import GPTConfig, backward, forward, init_params
from ref_numpy.layers import NAIVE_ATTENTION, Attention
from ref_numpy.options import parse_config, run_main
from ref_numpy.sample import generate
from ref_numpy.training import (
    RunLog,
    TrainConfig,
    atomic_write_bytes,
    load_training_data,
    train_loop,
)

DTYPES = {"float64": np.float64, "float32": np.float32}


@dataclass
class NumpyTrainConfig(TrainConfig):
    out_dir: str = "out-numpy"
    dtype: str = "float32"  # float32 or float64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


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
    the mean loss over all of them, as one large batch would.
    """
    total = None
    losses = []
    for x, y in micro_batches:
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


def estimate_loss(params: dict, cfg: GPTConfig, batches: dict[str, list]) -> dict[str, float]:
    return {
        split: float(np.mean([forward(params, cfg, x, y)[1] for x, y in split_batches]))
        for split, split_batches in batches.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(NumpyTrainConfig, argv, __doc__.splitlines()[0])
    keep_freed_memory()
    data = load_training_data(config)
    cfg = config.model_config(data.vocab_size)
    params = init_params(cfg, seed=config.seed, dtype=DTYPES[config.dtype])
    optimizer = AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    log = RunLog(config.out_dir, config)
    n_params = sum(p.size for p in params.values())
    print(f"NumPy GPT, {n_params:,} parameters, {config.dtype}")
    train_loop(
        config,
        data,
        log,
        step=lambda micro, lr: train_step(params, cfg, optimizer, micro, lr, config.grad_clip),
        estimate_loss=lambda batches: estimate_loss(params, cfg, batches),
        desc="numpy",
    )

    buffer = io.BytesIO()
    np.savez(buffer, **params)
    atomic_write_bytes(log.out_dir / "params.npz", buffer.getvalue())
    figure = log.plot(f"NumPy GPT on {data.meta['source']}")
    print(f"wrote {log.path}, {figure} and {log.out_dir / 'params.npz'}")
    if config.sample_tokens:
        rng = np.random.default_rng(config.seed)
        start_ids = np.zeros((1, 1), dtype=np.int64)  # token 0, the newline in Shakespeare
        out = generate(
            params, cfg, start_ids, config.sample_tokens, rng, config.temperature, config.top_k
        )
        print("---- sample ----")
        print(decode(out[0].tolist(), data.meta["chars"]))


if __name__ == "__main__":
    run_main(main)
