"""One training step on the CPU, NumPy reference against torch eager, both float32.

`python -m torch_impl.bench_cpu [--steps 20] [--warmup 3] [--out results/bench_cpu.json]`

A step is forward, backward, gradient clipping and the AdamW update, on the default training
configuration, in one process (the same machine state for both sides). Prints the median step
time of each side, their ratio, and where the NumPy time goes (a profile of its functions), and
saves all of it as JSON. Times are measured, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import platform
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ref_numpy.adamw import AdamW
from ref_numpy.allocator import keep_freed_memory
from ref_numpy.gpt import init_params
from ref_numpy.train import train_step as numpy_train_step
from ref_numpy.training import TrainConfig
from torch_impl.model import GPT
from torch_impl.train import train_step as torch_train_step

VOCAB_SIZE = 84  # the Shakespeare characters
REPO = Path(__file__).resolve().parents[1]


def median_seconds(
    step: Callable[[], object], steps: int, warmup: int
) -> tuple[float, list[float]]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench_cpu.json")
    args = parser.parse_args()
    allocator_tuned = keep_freed_memory()  # as ref_numpy.train does; both sides run under it

    config = TrainConfig()
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

    numpy_median, numpy_times = median_seconds(numpy_step, args.steps, args.warmup)
    torch_median, torch_times = median_seconds(torch_step, args.steps, args.warmup)
    profile = numpy_profile(numpy_step, max(args.steps // 2, 1))
    tokens = config.batch_size * config.block_size
    result = {
        "benchmark": "one float32 training step on the CPU: NumPy reference vs torch eager",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": platform.processor() or platform.machine(),
        "cpu_count": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
        "config": {**cfg.to_dict(), "batch_size": config.batch_size},
        "torch_optimizer": "fused AdamW"
        if torch_optimizer.defaults.get("fused")
        else "foreach AdamW",
        "steps": args.steps,
        "allocator_keeps_freed_memory": allocator_tuned,
        "numpy_step_seconds": numpy_median,
        "torch_step_seconds": torch_median,
        "numpy_over_torch": numpy_median / torch_median,
        "numpy_tokens_per_second": tokens / numpy_median,
        "torch_tokens_per_second": tokens / torch_median,
        "numpy_step_times": numpy_times,
        "torch_step_times": torch_times,
        "numpy_profile": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"config: {cfg}, batch {config.batch_size}; {tokens} tokens/step, median of {args.steps}")
    for name, median in (("NumPy float32", numpy_median), ("torch eager float32", torch_median)):
        print(f"{name:20s}{median * 1e3:8.1f} ms/step  {tokens / median:10,.0f} tokens/s")
    print(f"NumPy / torch: {numpy_median / torch_median:.2f}x")
    print("where the NumPy step spends its time (own time per function):")
    for row in profile:
        print(f"  {row['share']:6.1%}  {row['seconds_per_step'] * 1e3:7.2f} ms  {row['function']}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
