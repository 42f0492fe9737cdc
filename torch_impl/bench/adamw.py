"""torch's three AdamW implementations timed on one device: for-loop, foreach and fused.

The "adamw" section of `python -m torch_impl.bench` (`--sections adamw`).

AdamW is elementwise, so a step is bound by memory traffic, not arithmetic. The for-loop path
launches a handful of operations per tensor, the foreach path the same operations batched over
all tensors, the fused path one kernel that reads p, g, m, v once and writes p, m, v once: 28
bytes per float32 parameter (`ref_numpy.experiments.optimizer_cost.adamw_single_pass`). The
effective bandwidth reported is that fused byte count over the measured step time, for every
implementation, so it says how close each comes to moving only what a fused step must move.
All implementations are timed in one process, their steps interleaved (the machines are shared
and noisy); times are printed and saved, never asserted.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from ref_numpy.gpt import param_shapes
from torch_impl.bench.common import GPT2_124M, BenchOptions, bar_figure
from torch_impl.bench.timing import interleaved_times
from torch_impl.report import RESULTS_DIR, format_table, saved_results

IMPLEMENTATIONS = ("for-loop", "foreach", "fused")
FUSED_READS_WRITES = 7  # p, g, m, v read once; p, m, v written once
# A GPT-like spread of tensor sizes: a few large matrices and many small vectors.
TENSOR_SHAPE_FRACTIONS = (0.3, 0.2, 0.2, 0.15, 0.15)
SMALL_TENSORS = 24
QUICK_PARAMS = 5_000  # --quick: enough to run every code path


def _spread_shapes(n_params: int) -> list[tuple[int, ...]]:
    """About `n_params` parameters as five large tensors and 24 small ones."""
    small = max(1, n_params // 1000)
    sizes = [int(f * (n_params - SMALL_TENSORS * small)) for f in TENSOR_SHAPE_FRACTIONS]
    return [(max(size, 1),) for size in sizes + [small] * SMALL_TENSORS]


def _parameters(
    shapes: Sequence[tuple[int, ...]], dtype: torch.dtype, device: str, seed: int
) -> list[torch.Tensor]:
    """Parameters of the given shapes with random values and random gradients."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=generator, dtype=dtype).to(device)
        p.requires_grad_(True)
        p.grad = torch.randn(p.shape, generator=generator, dtype=dtype).to(device)
        params.append(p)
    return params


def _optimizer(params: list[torch.Tensor], implementation: str) -> torch.optim.AdamW:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    options = {
        "for-loop": {"foreach": False, "fused": False},
        "foreach": {"foreach": True},
        "fused": {"fused": True},
    }[implementation]
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, **options)


def _report(implementation: str, params: list[torch.Tensor], times: list[float]) -> dict:
    n_total = sum(p.numel() for p in params)
    median = statistics.median(times)
    bytes_per_param = FUSED_READS_WRITES * params[0].element_size()
    return {
        "implementation": implementation,
        "n_params": n_total,
        "dtype": str(params[0].dtype).removeprefix("torch."),
        "seconds_per_step": median,
        "step_times": times,
        "fused_bytes_per_param": bytes_per_param,
        "effective_bandwidth_gb_s": bytes_per_param * n_total / median / 1e9,
    }


def time_adamw(
    n_params: int | None,
    implementation: str,
    steps: int = 20,
    warmup: int = 3,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> dict:
    """Median seconds per `torch.optim.AdamW.step` over `steps` steps (after `warmup`).

    `implementation`: "for-loop" (foreach=False), "foreach" or "fused". The parameters are the
    tensors of `shapes` (a GPT's, say) or, without it, about `n_params` in a GPT-like spread.
    Returns the median, every step's time, the parameter count and the effective bandwidth in
    GB/s, computed from the fused byte count (7 accesses of `dtype`'s size per parameter: 28 B
    for float32).
    """
    runs = compare_adamw(n_params, (implementation,), steps, warmup, dtype, device, seed, shapes)
    return runs[implementation]


def compare_adamw(
    n_params: int | None,
    implementations: tuple[str, ...] = IMPLEMENTATIONS,
    steps: int = 20,
    warmup: int = 3,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> dict[str, dict]:
    """`time_adamw` for several implementations at once, their steps interleaved (round-robin),
    so that a burst of load on a shared machine hits all of them alike. Each implementation
    has its own copy of the same parameters and gradients. On a GPU the steps are timed with
    CUDA events (`torch_impl.bench.timing.interleaved_times`)."""
    if shapes is None:
        if n_params is None:
            raise ValueError("give n_params or shapes")
        shapes = _spread_shapes(n_params)
    optimizers = {}
    for name in implementations:
        params = _parameters(shapes, dtype, device, seed)
        optimizers[name] = (params, _optimizer(params, name))
    with torch.no_grad():
        times = interleaved_times(
            {name: optimizer.step for name, (_, optimizer) in optimizers.items()},
            steps,
            warmup,
            torch.device(device),
        )
    return {name: _report(name, optimizers[name][0], times[name]) for name in implementations}


def run(options: BenchOptions) -> list[dict]:
    """The benchmark's AdamW section: every implementation on the parameters of GPT-2 124M
    (its 148 tensors, 124M float32 numbers), or a few thousand with `--quick`."""
    shapes = None if options.quick else list(param_shapes(GPT2_124M).values())
    runs = compare_adamw(
        QUICK_PARAMS,
        IMPLEMENTATIONS,
        options.steps,
        options.warmup,
        device=str(options.device),
        shapes=shapes,
    )
    baseline = runs["for-loop"]["seconds_per_step"]
    for run in runs.values():
        run["speedup_over_for_loop"] = baseline / run["seconds_per_step"]
    return list(runs.values())


def saved_gpu_results(results_dir: Path = RESULTS_DIR) -> list[dict]:
    """The saved reports (`results/*.json`, and the GPU report's `results/gpu_report_*/`) that
    hold an "adamw" section measured on a GPU."""
    return [
        {**report, "path": str(path)}
        for path, report in saved_results(results_dir, "*.json")
        if "adamw" in report and report.get("device_type") == "cuda"
    ]


# ----------------------------------------------------------------------------- the report
def print_table(runs: list[dict]) -> None:
    print(f"\nAdamW step, {runs[0]['n_params']:,} {runs[0]['dtype']} parameters")
    rows = [
        [
            run["implementation"],
            f"{run['seconds_per_step'] * 1e3:.2f}",
            f"{run['effective_bandwidth_gb_s']:.1f}",
            f"{run['speedup_over_for_loop']:.2f}x",
        ]
        for run in runs
    ]
    print(format_table(["implementation", "ms/step", "GB/s (28 B/param)", "vs for-loop"], rows))


def figure(report: dict):
    """Milliseconds per step of each implementation, labelled with its effective bandwidth."""
    runs = report["adamw"]
    ms = [run["seconds_per_step"] * 1e3 for run in runs]
    labels = [f"{t:.1f} ms\n{run['effective_bandwidth_gb_s']:.0f} GB/s" for t, run in zip(ms, runs)]
    what = f"one AdamW step, {runs[0]['n_params'] / 1e6:.1f}M {runs[0]['dtype']} parameters"
    return bar_figure(report, [run["implementation"] for run in runs], ms, labels, what)
