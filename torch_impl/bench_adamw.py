"""torch's three AdamW implementations timed on one device: for-loop, foreach and fused.

`python -m torch_impl.bench_adamw [--n_params 20000000] [--steps 20] [--warmup 3] [--device cpu]`

AdamW is elementwise, so a step is bound by memory traffic, not arithmetic. The for-loop path
launches a handful of operations per tensor, the foreach path the same operations batched over
all tensors, the fused path one kernel that reads p, g, m, v once and writes p, m, v once: 28
bytes per float32 parameter (`ref_numpy.optimizer_cost.adamw_single_pass`). The effective
bandwidth reported is that fused byte count over the measured step time, for every
implementation, so it says how close each comes to moving only what a fused step must move.
All implementations are timed in one process, their steps interleaved (the machines are shared
and noisy); times are
printed and saved, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

IMPLEMENTATIONS = ("for-loop", "foreach", "fused")
FUSED_READS_WRITES = 7  # p, g, m, v read once; p, m, v written once
REPO = Path(__file__).resolve().parents[1]
# A GPT-like spread of tensor sizes: a few large matrices and many small vectors.
TENSOR_SHAPE_FRACTIONS = (0.3, 0.2, 0.2, 0.15, 0.15)
SMALL_TENSORS = 24


def _parameters(n_params: int, dtype: torch.dtype, device: str, seed: int) -> list[torch.Tensor]:
    """About `n_params` parameters with random gradients: five large tensors and 24 small ones."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    small = max(1, n_params // 1000)
    sizes = [int(f * (n_params - SMALL_TENSORS * small)) for f in TENSOR_SHAPE_FRACTIONS]
    sizes += [small] * SMALL_TENSORS
    params = []
    for size in sizes:
        p = torch.randn(max(size, 1), generator=generator, dtype=dtype).to(device)
        p.requires_grad_(True)
        p.grad = torch.randn(p.shape, generator=generator, dtype=dtype).to(device)
        params.append(p)
    return params


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
    n_params: int,
    implementation: str,
    steps: int = 20,
    warmup: int = 3,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Median seconds per `torch.optim.AdamW.step` over `steps` steps (after `warmup`).

    `implementation`: "for-loop" (foreach=False), "foreach" or "fused". Returns the median,
    every step's time, the parameter count and the effective bandwidth in GB/s, computed from
    the fused byte count (7 accesses of `dtype`'s size per parameter: 28 B for float32).
    """
    return compare_adamw(n_params, (implementation,), steps, warmup, dtype, device, seed)[
        implementation
    ]


def compare_adamw(
    n_params: int,
    implementations: tuple[str, ...] = IMPLEMENTATIONS,
    steps: int = 20,
    warmup: int = 3,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, dict]:
    """`time_adamw` for several implementations at once, their steps interleaved (round-robin),
    so that a burst of load on a shared machine hits all of them alike. Each implementation
    has its own copy of the same parameters and gradients."""
    optimizers = {}
    for name in implementations:
        params = _parameters(n_params, dtype, device, seed)
        optimizers[name] = (params, _optimizer(params, name))
    times = {name: [] for name in implementations}
    with torch.no_grad():
        for step in range(warmup + steps):
            for name, (_, optimizer) in optimizers.items():
                _synchronize(device)
                start = time.perf_counter()
                optimizer.step()
                _synchronize(device)
                if step >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: _report(name, optimizers[name][0], times[name]) for name in implementations}


def device_name(device: str) -> str:
    """A short name for file names and tables: the GPU's name, or the CPU architecture."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device).replace(" ", "_")
    return platform.machine()


def saved_gpu_results(results_dir: Path = REPO / "results") -> list[dict]:
    """The saved reports (`results/*.json`) that hold an "adamw" section measured on a GPU."""
    reports = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not a report of ours
        if isinstance(report, dict) and "adamw" in report and report.get("device_type") == "cuda":
            reports.append({**report, "path": str(path)})
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_params", type=int, default=20_000_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, default=None, help="default results/bench_adamw_<device>.json"
    )
    args = parser.parse_args(argv)
    if args.n_params < 1000 or args.steps < 1 or args.warmup < 0:
        parser.error("need --n_params >= 1000, --steps >= 1 and --warmup >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but this torch sees no CUDA GPU; use --device cpu")
    runs = list(
        compare_adamw(
            args.n_params, IMPLEMENTATIONS, args.steps, args.warmup, device=args.device
        ).values()
    )
    baseline = runs[0]["seconds_per_step"]
    print(f"AdamW step, {runs[0]['n_params']:,} float32 parameters on {device_name(args.device)}")
    print(f"{'implementation':<15}{'ms/step':>10}{'GB/s (28 B/param)':>20}{'vs for-loop':>13}")
    for run in runs:
        print(
            f"{run['implementation']:<15}{run['seconds_per_step'] * 1e3:>10.2f}"
            f"{run['effective_bandwidth_gb_s']:>20.1f}{baseline / run['seconds_per_step']:>12.2f}x"
        )
    name = device_name(args.device)
    out = args.out or REPO / "results" / f"bench_adamw_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "one torch.optim.AdamW step: for-loop vs foreach vs fused",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": name,
        "device_type": torch.device(args.device).type,
        "cpu_count": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "adamw": runs,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
