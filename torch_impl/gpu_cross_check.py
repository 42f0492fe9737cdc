"""The GPU cross-check: torch_impl with every optimization on, trained beside the NumPy reference.

`python -m torch_impl.gpu_cross_check [--device cuda] [--steps 200] [--seeds 0,1,2,3,4]`

The small configuration of `torch_impl.cross_check` trains for `steps` steps on the Shakespeare
corpus from the same initial parameters on the same batches, once in the NumPy reference in
float64 on the CPU, and four times in torch on the device:
  bf16 optimized     SDPA held to flash attention, fused AdamW, torch.compile, bf16 autocast
  bf16 plain         manual attention, foreach AdamW, eager, bf16 autocast (the yardstick)
  float32 optimized  SDPA (its own kernel choice), fused AdamW, compile; float32, TF32 off
  float32 plain      the float32 yardstick, TF32 off
No run in low precision can match float64 exactly; the question is whether the optimizations
add error beyond the precision's own. DESIGN.md's rule answers it: each optimized run's error
against the float64 reference must be at most twice its plain yardstick's, plus one unit
roundoff of the precision (the most that rounding a single number to it moves it, relative).
Three errors, each relative to the reference and averaged over five seeds: the whole loss curve
(norm of the difference), its worst step, and the final validation loss. Training amplifies
rounding chaotically, so for one seed the ratio of two runs' errors scatters (notebook 07 prints
the seed-by-seed ratios of the saved CPU run), while the mean over seeds, each seed its own
initialisation and batches, is stable. Prints them, saves JSON and a
figure, and exits 1 if a check fails. With `--device cpu` the same runs take place on the CPU
(without compile unless asked), which is how the tests exercise it without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ref_numpy.data import DEFAULT_DATA_DIR, BatchSampler, ensure_prepared, load_split
from ref_numpy.errors import UserError
from ref_numpy.step import estimate_loss as numpy_estimate_loss
from ref_numpy.train.batches import EVAL_SEED_OFFSET
from ref_numpy.train.options import run_main
from torch_impl.cross_check import numpy_run, small_config, torch_run
from torch_impl.report import (
    FIGURES_DIR,
    RESULTS_DIR,
    device_label,
    environment,
    format_table,
    load_report,
    save_report,
)
from torch_impl.runtime import resolve_device, tf32_matmuls
from torch_impl.step import estimate_loss as torch_estimate_loss

# The most that rounding one number to the precision changes it, relative: 2^-p for a p-bit
# significand (bf16 keeps 8 bits, float32 24).
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float32": 2.0**-24}
VAL_BATCHES = 20  # the same validation batches for every run: a smooth, comparable estimate
METRICS = ("curve_error", "max_step_error", "val_error")
PROGRAM = "python -m torch_impl.gpu_cross_check"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    precision: str  # "bfloat16" (autocast over float32 parameters) or "float32"
    optimized: bool  # flash attention, fused AdamW, compile; else manual, foreach, eager


RUNS = (
    Run("bf16 optimized", "bfloat16", True),
    Run("bf16 plain", "bfloat16", False),
    Run("float32 optimized", "float32", True),
    Run("float32 plain", "float32", False),
)


def _relative_errors(losses: np.ndarray, val_loss: float, reference: dict) -> dict:
    ref_losses, ref_val = reference["losses"], reference["val_loss"]
    return {
        "curve_error": float(np.linalg.norm(losses - ref_losses) / np.linalg.norm(ref_losses)),
        "max_step_error": float(np.max(np.abs(losses - ref_losses) / np.abs(ref_losses))),
        "val_error": abs(val_loss - ref_val) / abs(ref_val),
    }


def _attention_kernel(run: Run) -> contextlib.AbstractContextManager:
    """SDPA held to its flash kernel in the optimized bf16 run, so that "flash" is what ran (an
    error otherwise, never a silent fallback). Flash takes 16-bit inputs on a GPU; the float32
    run keeps SDPA's own choice (there the memory-efficient kernel, also tiled)."""
    if run.optimized and run.precision == "bfloat16":
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return contextlib.nullcontext()


def _torch_run(run: Run, cfg, data, val_batches, steps, batch_size, seed, device, compile_model):
    autocast = torch.bfloat16 if run.precision == "bfloat16" else None
    # float32 runs in full float32 (TF32 off), as the yardstick it is compared with
    precision = tf32_matmuls(False) if run.precision == "float32" else contextlib.nullcontext()
    with precision, _attention_kernel(run):
        losses, model = torch_run(
            cfg,
            data,
            steps,
            batch_size,
            seed,
            torch.float32,
            device=device,
            autocast=autocast,
            attention="sdpa" if run.optimized else "manual",
            fused=run.optimized,
            compile_model=compile_model and run.optimized,
        )
        context = torch.autocast(device.type, dtype=autocast) if autocast else None
        val_loss = torch_estimate_loss(model, {"val": val_batches}, context)["val"]
    return losses, val_loss


def _checks(runs: dict[str, dict]) -> list[dict]:
    """Each optimized run against its plain yardstick, metric by metric, means over seeds."""
    checks = []
    for run in RUNS:
        if not run.optimized:
            continue
        plain = next(r for r in RUNS if r.precision == run.precision and not r.optimized)
        slack = UNIT_ROUNDOFF[run.precision]
        for metric in METRICS:
            value, yardstick = runs[run.name][metric], runs[plain.name][metric]
            bound = 2 * yardstick + slack
            checks.append(
                {
                    "run": run.name,
                    "metric": metric,
                    "error": value,
                    "yardstick": plain.name,
                    "yardstick_error": yardstick,
                    "bound": bound,
                    "rule": f"error <= 2 x yardstick + {slack:.3g} (unit roundoff)",
                    "passed": bool(value <= bound),
                }
            )
    return checks


def cross_check(
    device: torch.device,
    steps: int = 200,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    batch_size: int = 8,
    compile_model: bool | None = None,
    data_dir: str | Path = DEFAULT_DATA_DIR,
) -> dict:
    """Train the reference and the four torch runs for every seed; errors, checks, curves."""
    if compile_model is None:
        compile_model = device.type == "cuda"
    # A clean compile cache: torch.compile keeps at most 8 graphs per function and quietly runs
    # eager past that, which models compiled earlier in the same process could otherwise cause.
    # New instances of the same model reuse a graph, so the runs below need two (bf16, float32).
    torch.compiler.reset()
    meta = ensure_prepared(data_dir)
    data, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    cfg = small_config(meta["vocab_size"])
    per_seed = []
    for seed in seeds:
        sampler = BatchSampler(val, cfg.block_size, batch_size, seed + EVAL_SEED_OFFSET, "val")
        val_batches = [sampler.next_batch() for _ in range(VAL_BATCHES)]
        ref_losses, ref_params = numpy_run(cfg, data, steps, batch_size, seed, np.float64)
        reference = {
            "losses": ref_losses,
            "val_loss": numpy_estimate_loss(ref_params, cfg, {"val": val_batches})["val"],
        }
        seed_runs = {"numpy float64": {**reference, "losses": ref_losses.tolist()}}
        for run in RUNS:
            losses, val_loss = _torch_run(
                run, cfg, data, val_batches, steps, batch_size, seed, device, compile_model
            )
            seed_runs[run.name] = {
                "losses": losses.tolist(),
                "val_loss": val_loss,
                **_relative_errors(losses, val_loss, reference),
            }
        per_seed.append({"seed": seed, "runs": seed_runs})
    means = {
        run.name: {m: float(np.mean([s["runs"][run.name][m] for s in per_seed])) for m in METRICS}
        for run in RUNS
    }
    checks = _checks(means)
    return {
        "benchmark": PROGRAM,
        **environment(device),
        "config": cfg.to_dict(),
        "steps": steps,
        "batch_size": batch_size,
        "seeds": list(seeds),
        "compiled": compile_model,
        "runs": {run.name: dataclasses.asdict(run) for run in RUNS},
        "mean_errors": means,
        "checks": checks,
        "passed": all(check["passed"] for check in checks),
        "per_seed": per_seed,
    }


def print_report(report: dict) -> None:
    print(
        f"{report['steps']} steps, seeds {report['seeds']}, on {report['device']} "
        f"(compile {report['compiled']}); errors relative to NumPy float64, means over seeds"
    )
    rows = [
        [name] + [f"{errors[m]:.3e}" for m in METRICS]
        for name, errors in report["mean_errors"].items()
    ]
    print(format_table(["run", "loss curve", "worst step", "final val loss"], rows))
    rows = [
        [
            c["run"],
            c["metric"],
            f"{c['error']:.3e}",
            f"{c['bound']:.3e}",
            "ok" if c["passed"] else "FAIL",
        ]
        for c in report["checks"]
    ]
    print(format_table(["run", "metric", "error", "bound", "check"], rows))


def write_figure(report: dict, figures_dir: Path) -> Path:
    """Loss curves of the first seed, and each run's per-step error against the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["per_seed"][0]["runs"]
    reference = np.array(runs["numpy float64"]["losses"])
    fig, (curves, errors) = plt.subplots(1, 2, figsize=(13, 4.5))
    curves.plot(reference, color="black", lw=2, label="NumPy float64 (reference)")
    for name, color in zip(
        [r.name for r in RUNS], ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    ):
        losses = np.array(runs[name]["losses"])
        style = "-" if "optimized" in name else "--"
        curves.plot(losses, color=color, ls=style, lw=1, label=name)
        errors.semilogy(
            np.abs(losses - reference) / reference, color=color, ls=style, lw=1, label=name
        )
    curves.set(xlabel="step", ylabel="training loss (nats per character)")
    errors.set(xlabel="step", ylabel="|loss - reference| / reference")
    curves.legend(fontsize=8)
    errors.legend(fontsize=8)
    verdict = "all checks pass" if report["passed"] else "a check FAILS"
    fig.suptitle(
        f"torch_impl on {report['device']} against the NumPy float64 reference, seed "
        f"{report['per_seed'][0]['seed']}; {verdict}",
        fontsize=9,
    )
    fig.tight_layout()
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / f"gpu_cross_check_{report['label']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda:N")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per step")
    parser.add_argument(
        "--compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="torch.compile the optimized runs (auto: on CUDA only)",
    )
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR, help="the corpus")
    parser.add_argument(
        "--out", type=Path, default=None, help="results/gpu_cross_check_<device>.json"
    )
    parser.add_argument("--figures_dir", type=Path, default=FIGURES_DIR, help="figures/")
    parser.add_argument("--plot", type=Path, default=None, help="only draw this saved result")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot is not None:
        report = load_report(args.plot, PROGRAM)
        print(f"wrote {write_figure(report, args.figures_dir)}")
        return 0
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give integers separated by commas") from None
    if args.steps < 2 or args.batch_size < 1 or not seeds:
        raise UserError("need --steps >= 2, --batch_size >= 1 and at least one seed")
    device = resolve_device(args.device)
    compile_model = {"auto": None, "true": True, "false": False}[args.compile]
    report = cross_check(device, args.steps, seeds, args.batch_size, compile_model, args.data_dir)
    print_report(report)
    out = args.out or RESULTS_DIR / f"gpu_cross_check_{device_label(device)}.json"
    save_report(report, out)
    print(f"saved {out}\nwrote {write_figure(report, args.figures_dir)}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    run_main(lambda: sys.exit(main()))
