"""One training step on the CPU, NumPy reference against torch eager, both float32.

The "numpy" section of `python -m torch_impl.bench` (`--sections numpy`; on by default on the
CPU). A step is forward, backward, gradient clipping and the AdamW update, on the default
training configuration (`ref_numpy.training.TrainConfig`), through each trainer's own
`train_step`, the two sides' steps interleaved in one process (two in a row, the second timed).
Reports the median step time of each side, their ratio, and where the NumPy time goes (a profile
of its functions). Times are measured, never asserted.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ref_numpy.adamw import AdamW
from ref_numpy.allocator import keep_freed_memory
from ref_numpy.gpt import init_params
from ref_numpy.train import train_step as numpy_train_step
from ref_numpy.training import TrainConfig
from torch_impl.bench_timing import interleaved_times
from torch_impl.model import GPT
from torch_impl.train import train_step as torch_train_step

VOCAB_SIZE = 84  # the Shakespeare characters
# --quick: one narrow layer, a short context and a small batch; every code path, in a blink
QUICK_CONFIG = TrainConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4)


def numpy_profile(step: Callable[[], object], steps: int, top: int = 12) -> list[dict]:
    """The functions with the most own time over `steps` steps, as a share of the total."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values())
    rows = sorted(
        ((entry[2], f"{Path(file).name}:{name}") for (file, _, name), entry in stats.items()),
        reverse=True,
    )[:top]
    return [
        {"function": where, "seconds_per_step": own / steps, "share": own / total}
        for own, where in rows
    ]


def numpy_section(quick: bool, steps: int, warmup: int) -> dict:
    """The NumPy float32 training step against torch eager float32, same model, batch and
    initial parameters, on the CPU (whatever device the rest of the benchmark runs on)."""
    # as ref_numpy.train does; a process-wide setting, so both sides run under it
    allocator_tuned = keep_freed_memory()
    config = QUICK_CONFIG if quick else TrainConfig()
    cfg = config.model_config(VOCAB_SIZE)
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB_SIZE, size=(config.batch_size, config.block_size))
    y = rng.integers(0, VOCAB_SIZE, size=(config.batch_size, config.block_size))
    betas = (config.beta1, config.beta2)

    params = init_params(cfg, seed=0, dtype=np.float32)
    optimizer = AdamW(
        params, lr=config.learning_rate, betas=betas, weight_decay=config.weight_decay
    )

    def numpy_step():
        return numpy_train_step(
            params, cfg, optimizer, [(x, y)], config.learning_rate, config.grad_clip
        )

    model = GPT(cfg, attention="sdpa")
    model.load_numpy_params(init_params(cfg, seed=0))
    torch_optimizer = model.configure_optimizers(
        config.weight_decay, config.learning_rate, betas, "cpu"
    )

    def torch_step():
        return torch_train_step(
            model, torch_optimizer, [(x, y)], config.learning_rate, config.grad_clip
        )

    # settle=1: the step timed is the second of two in a row, so that neither side is charged
    # for the other library's threads and caches (measured: torch's step doubled without it)
    times = interleaved_times(
        {"numpy": numpy_step, "torch": torch_step}, steps, warmup, torch.device("cpu"), settle=1
    )
    numpy_median, torch_median = (statistics.median(times[side]) for side in ("numpy", "torch"))
    tokens = config.batch_size * config.block_size
    return {
        "benchmark": "one float32 training step on the CPU: NumPy reference vs torch eager",
        "config": {**cfg.to_dict(), "batch_size": config.batch_size},
        "torch_optimizer": "fused AdamW"
        if torch_optimizer.defaults.get("fused")
        else "foreach AdamW",
        "steps": steps,
        "warmup": warmup,
        "allocator_keeps_freed_memory": allocator_tuned,
        "tokens_per_step": tokens,
        "numpy_step_seconds": numpy_median,
        "torch_step_seconds": torch_median,
        "numpy_over_torch": numpy_median / torch_median,
        "numpy_tokens_per_second": tokens / numpy_median,
        "torch_tokens_per_second": tokens / torch_median,
        "numpy_step_times": times["numpy"],
        "torch_step_times": times["torch"],
        "numpy_profile": numpy_profile(numpy_step, max(steps // 2, 1)),
    }
