"""One training step on the CPU, NumPy reference against torch eager, both float32.

The "numpy" section of `python -m torch_impl.bench` (`--sections numpy`; on by default on the
CPU). A step is forward, backward, gradient clipping and the AdamW update, of the model `make
train` trains, through the step functions the two trainers run (`ref_numpy.step.train_step` and
`torch_impl.step.train_step`), the two sides' steps interleaved in one process (two in a row,
the second timed). Reports the median step time of each side, their ratio, and where the NumPy
time goes (a profile of its functions). Times are measured, never asserted.
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
from ref_numpy.gpt import init_params
from ref_numpy.step import train_step as numpy_train_step
from ref_numpy.train.allocator import keep_freed_memory
from ref_numpy.train.config import TrainConfig
from torch_impl.bench.common import BenchOptions, bar_figure, timed_model
from torch_impl.bench.timing import interleaved_times
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params
from torch_impl.report import format_table
from torch_impl.step import train_step as torch_train_step

CPU_ONLY = True  # the NumPy side runs on the CPU whatever device the rest measures


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


def run(options: BenchOptions) -> dict:
    """The NumPy float32 training step against torch eager float32, same model, batch and
    initial parameters, on the CPU (whatever device the rest of the benchmark runs on)."""
    # as the NumPy trainer does; a process-wide setting, so both sides run under it
    allocator_tuned = keep_freed_memory()
    cfg, batch_size = timed_model("cpu", options.quick)
    optimizer_settings = TrainConfig()  # the trainers' AdamW settings and clipping
    lr, grad_clip = optimizer_settings.learning_rate, optimizer_settings.grad_clip
    betas = (optimizer_settings.beta1, optimizer_settings.beta2)
    weight_decay = optimizer_settings.weight_decay
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, cfg.vocab_size, size=(batch_size, cfg.block_size)) for _ in "xy")

    params = init_params(cfg, seed=0, dtype=np.float32)
    optimizer = AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)

    def numpy_step():
        return numpy_train_step(params, cfg, optimizer, [(x, y)], lr, grad_clip)

    model = GPT(cfg, attention="sdpa")
    load_numpy_params(model, init_params(cfg, seed=0))
    torch_optimizer = model.configure_optimizers(weight_decay, lr, betas, "cpu")

    def torch_step():
        return torch_train_step(model, torch_optimizer, [(x, y)], lr, grad_clip)

    # settle=1: the step timed is the second of two in a row, so that neither side is charged
    # for the other library's threads and caches (measured: torch's step doubled without it)
    times = interleaved_times(
        {"numpy": numpy_step, "torch": torch_step},
        options.steps,
        options.warmup,
        torch.device("cpu"),
        settle=1,
    )
    numpy_median, torch_median = (statistics.median(times[side]) for side in ("numpy", "torch"))
    tokens = batch_size * cfg.block_size
    fused = torch_optimizer.defaults.get("fused")
    return {
        "benchmark": "one float32 training step on the CPU: NumPy reference vs torch eager",
        "config": {**cfg.to_dict(), "batch_size": batch_size},
        "torch_optimizer": "fused AdamW" if fused else "foreach AdamW",
        "steps": options.steps,
        "warmup": options.warmup,
        "allocator_keeps_freed_memory": allocator_tuned,
        "tokens_per_step": tokens,
        "numpy_step_seconds": numpy_median,
        "torch_step_seconds": torch_median,
        "numpy_over_torch": numpy_median / torch_median,
        "numpy_tokens_per_second": tokens / numpy_median,
        "torch_tokens_per_second": tokens / torch_median,
        "numpy_step_times": times["numpy"],
        "torch_step_times": times["torch"],
        "numpy_profile": numpy_profile(numpy_step, max(options.steps // 2, 1)),
    }


# ----------------------------------------------------------------------------- the report
def print_table(section: dict) -> None:
    print(f"\nfloat32 training step on the CPU, {section['tokens_per_step']} tokens")
    rows = [
        [
            side,
            f"{section[f'{key}_step_seconds'] * 1e3:.1f}",
            f"{section[f'{key}_tokens_per_second']:,.0f}",
        ]
        for side, key in (("NumPy reference", "numpy"), ("torch eager", "torch"))
    ]
    print(format_table(["implementation", "ms/step", "tokens/s"], rows))
    print(
        f"NumPy / torch: {section['numpy_over_torch']:.2f}x; where the NumPy step spends its time:"
    )
    for row in section["numpy_profile"][:6]:
        print(f"  {row['share']:6.1%}  {row['seconds_per_step'] * 1e3:7.2f} ms  {row['function']}")


def figure(report: dict):
    """The two sides' milliseconds per step."""
    section = report["numpy"]
    ms = [section["numpy_step_seconds"] * 1e3, section["torch_step_seconds"] * 1e3]
    labels = [f"{t:.1f} ms" for t in ms]
    cfg = section["config"]
    what = (
        f"float32 training step on the CPU, {cfg['n_layer']}x{cfg['n_embd']} GPT, "
        f"{section['tokens_per_step']} tokens: NumPy / torch = {section['numpy_over_torch']:.2f}x"
    )
    return bar_figure(report, ["NumPy reference", "torch eager"], ms, labels, what)
