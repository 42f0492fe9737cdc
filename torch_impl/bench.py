"""The benchmarks, one command: `python -m torch_impl.bench` (the README's `make bench`).

Sections (`--sections`, comma-separated; default all, "numpy" on the CPU only):
  train      tokens/s and MFU of a training step, everything on and each optimization off
             (torch_impl.bench_train): GPT-2 124M in bf16 on a GPU, the small config on the CPU
  attention  SDPA flash vs manual attention (and Triton on a GPU), causal, forward + backward,
             time, TFLOPS and memory against T (torch_impl.bench_attention)
  adamw      one AdamW step on GPT-2 124M's parameters: for-loop, foreach, fused
             (torch_impl.bench_adamw)
  numpy      the NumPy reference's training step against torch eager, on the CPU
             (torch_impl.bench_cpu)
Within a section every variant is measured in the same process, interleaved with the others,
and reported as the median of repeated calls after a warm-up (CUDA events on a GPU), with its
ratio to the section's baseline. The results are printed as tables and saved as JSON (device,
versions, date, configuration and every measured time) after each section, so a run cut short
keeps what it finished; `--figures` draws them, `--plot FILE` draws a saved file.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ref_numpy.options import run_main
from torch_impl.bench_adamw import adamw_section
from torch_impl.bench_attention import attention_section
from torch_impl.bench_cpu import numpy_section
from torch_impl.bench_timing import REPO, device_label, environment
from torch_impl.bench_train import train_section
from torch_impl.runtime import resolve_device

SECTIONS = ("train", "attention", "adamw", "numpy")
# (timed steps, warm-up steps) per kind of run; --steps and --warmup override them
STEPS = {"cuda": (20, 3), "cpu": (10, 2), "quick": (2, 1)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m torch_impl.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda:N")
    parser.add_argument(
        "--sections", default=None, help=f"comma-separated, from {','.join(SECTIONS)}"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it all runs")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before them")
    parser.add_argument("--batch_size", type=int, default=None, help="train section's batch")
    parser.add_argument(
        "--out", type=Path, default=None, help="results/bench_<device>[_<sections>][_quick].json"
    )
    parser.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout folder")
    parser.add_argument("--figures", action="store_true", help="draw the results when done")
    parser.add_argument("--figures_dir", type=Path, default=REPO / "figures", help="figures/")
    parser.add_argument("--plot", type=Path, default=None, help="only draw this saved result")
    return parser.parse_args(argv)


def _sections(text: str | None, device: torch.device) -> list[str]:
    if text is None:
        return [s for s in SECTIONS if s != "numpy" or device.type == "cpu"]
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown or not chosen:
        raise ValueError(f"--sections {text!r}: choose from {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def _check(args: argparse.Namespace, sections: list[str]) -> None:
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup must not be negative, got {args.warmup}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.nanogpt is not None:
        if "train" not in sections:
            raise ValueError("--nanogpt times a training step: include the train section")
        if not (args.nanogpt / "model.py").is_file():
            raise ValueError(f"--nanogpt {args.nanogpt}: no model.py there; give its checkout")


# ----------------------------------------------------------------------------- tables
def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned columns (the first left-aligned), each as wide as its widest cell."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _percent(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _mib(x: int | None) -> str:
    return "" if x is None else f"{x / 2**20:,.1f}"


def print_train(report: dict) -> None:
    cfg = report["config"]
    print(
        f"\ntraining step: {cfg['n_layer']} layers, {cfg['n_head']} heads, {cfg['n_embd']} wide, "
        f"context {cfg['block_size']}, vocab {cfg['vocab_size']}, batch {report['batch_size']}, "
        f"{report['dtype']}; matmul ceiling {report['matmul_ceiling_flops'] / 1e12:.2f} TFLOP/s "
        f"({report['matmul_ceiling']}), datasheet peak "
        + (f"{report['peak_flops'] / 1e12:.1f} TFLOP/s" if report["peak_flops"] else "unknown")
    )
    rows = [
        [
            v["variant"],
            f"{v['seconds_per_step'] * 1e3:.2f}" if "seconds_per_step" in v else "",
            f"{v['tokens_per_second']:,.0f}" if "tokens_per_second" in v else "",
            _percent(v.get("mfu_vs_peak")),
            _percent(v.get("mfu_vs_ceiling")),
            f"{v['throughput_vs_all_on']:.2f}x" if "throughput_vs_all_on" in v else "",
            _mib(v.get("peak_memory_bytes")),
            v.get("optimizer", ""),
            v.get("error") or "",
        ]
        for v in report["variants"]
    ]
    headers = ["variant", "ms/step", "tokens/s", "MFU peak", "MFU ceiling", "vs all on"]
    print(format_table(headers + ["peak MiB", "AdamW", "error"], rows))
    if report.get("all_on_over_nanogpt"):
        print(f"all on / nanoGPT's model: {report['all_on_over_nanogpt']:.3f}x tokens/s")


def print_attention(report: dict) -> None:
    print(
        f"\ncausal attention, {report['dtype']}, B*T = {report['tokens_per_batch']} tokens, "
        f"H*d = {report['width']}; TFLOPS count {report['flops_convention']}"
    )
    rows = [
        [
            row["implementation"],
            row["T"],
            row["head_dim"],
            f"{row['forward_seconds'] * 1e3:.3f}" if "forward_seconds" in row else "",
            f"{row['forward_backward_seconds'] * 1e3:.3f}" if "forward_seconds" in row else "",
            f"{row['forward_backward_tflops']:.3g}" if "forward_seconds" in row else "",
            _mib(row.get("peak_memory_bytes")),
            _mib(row.get("saved_for_backward_bytes")),
            row["error"] or "",
        ]
        for row in report["rows"]
    ]
    headers = ["implementation", "T", "d", "fwd ms", "fwd+bwd ms", "fwd+bwd TFLOPS"]
    print(format_table(headers + ["peak MiB", "saved MiB", "error"], rows))


def print_adamw(runs: list[dict]) -> None:
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


def print_numpy(report: dict) -> None:
    print(f"\nfloat32 training step on the CPU, {report['tokens_per_step']} tokens")
    rows = [
        [
            side,
            f"{report[f'{key}_step_seconds'] * 1e3:.1f}",
            f"{report[f'{key}_tokens_per_second']:,.0f}",
        ]
        for side, key in (("NumPy reference", "numpy"), ("torch eager", "torch"))
    ]
    print(format_table(["implementation", "ms/step", "tokens/s"], rows))
    print(
        f"NumPy / torch: {report['numpy_over_torch']:.2f}x; where the NumPy step spends its time:"
    )
    for row in report["numpy_profile"][:6]:
        print(f"  {row['share']:6.1%}  {row['seconds_per_step'] * 1e3:7.2f} ms  {row['function']}")


PRINTERS = {
    "train": print_train,
    "attention": print_attention,
    "adamw": print_adamw,
    "numpy": print_numpy,
}


# ----------------------------------------------------------------------------- the command
def run_benchmarks(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {args.device}: the benchmark runs on cpu or cuda")
    sections = _sections(args.sections, device)
    _check(args, sections)
    if device.type == "cuda":
        if device.index is not None:  # cuda:N: CUDA events record on the current device
            torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls, as training does
    default_steps, default_warmup = STEPS["quick" if args.quick else device.type]
    steps = args.steps or default_steps
    warmup = default_warmup if args.warmup is None else args.warmup
    # a run of some sections only, or a quick one, never replaces the full run's file
    partial = "" if sections == _sections(None, device) else "_" + "_".join(sections)
    suffix = partial + ("_quick" if args.quick else "")
    out = args.out or REPO / "results" / f"bench_{device_label(device)}{suffix}.json"
    report = {
        "benchmark": "python -m torch_impl.bench",
        **environment(device),
        "quick": args.quick,
        "sections": sections,
    }
    runners = {
        "train": lambda: train_section(
            device, args.quick, steps, warmup, args.batch_size, args.nanogpt
        ),
        "attention": lambda: attention_section(device, args.quick, steps, warmup),
        "adamw": lambda: adamw_section(device, args.quick, steps, warmup),
        "numpy": lambda: numpy_section(args.quick, steps, warmup),
    }
    print(f"benchmarks on {report['device']} (torch {torch.__version__}): {', '.join(sections)}")
    for section in sections:
        start = time.perf_counter()
        report[section] = runners[section]()
        report.setdefault("section_seconds", {})[section] = time.perf_counter() - start
        PRINTERS[section](report[section])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nsaved {out}")
    return report


def load_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--plot {path}: cannot read a saved result ({error})") from None
    if not isinstance(report, dict) or report.get("benchmark") != "python -m torch_impl.bench":
        raise ValueError(f"--plot {path}: not a file written by python -m torch_impl.bench")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = load_report(args.plot) if args.plot else run_benchmarks(args)
    if args.plot or args.figures:
        # matplotlib only when drawing: a GPU machine may have torch and no matplotlib
        from torch_impl.bench_figures import write_figures

        for path in write_figures(report, args.figures_dir):
            print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
