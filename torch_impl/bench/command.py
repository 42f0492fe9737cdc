"""The benchmarks, one command: `python -m torch_impl.bench` (the README's `make bench`).

Sections (`--sections`, comma-separated; default all, "numpy" on the CPU only), one module each
in this package, listed in `torch_impl.bench.sections`:
  train      tokens/s and MFU of a training step, everything on and each optimization off:
             GPT-2 124M in bf16 on a GPU, the model `make train` trains on the CPU
  attention  SDPA flash vs manual attention (and Triton on a GPU), causal, forward + backward,
             time, TFLOPS and memory against T
  adamw      one AdamW step on GPT-2 124M's parameters: for-loop, foreach, fused
  numpy      the NumPy reference's training step against torch eager, on the CPU
Within a section every variant is measured in the same process, interleaved with the others,
and reported as the median of repeated calls after a warm-up (CUDA events on a GPU), with its
ratio to the section's baseline. The results are printed as tables and saved as JSON (device,
versions, date, configuration and every measured time) after each section, so a run cut short
keeps what it finished; `--figures` draws them, `--plot FILE` draws a saved file.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ref_numpy.errors import UserError
from torch_impl.bench.common import BenchOptions
from torch_impl.bench.sections import SECTIONS, default_sections
from torch_impl.report import (
    FIGURES_DIR,
    RESULTS_DIR,
    device_label,
    environment,
    load_report,
    save_report,
)
from torch_impl.runtime import resolve_device

PROGRAM = "python -m torch_impl.bench"
# (timed steps, warm-up steps) per kind of run; --steps and --warmup override them
STEPS = {"cuda": (20, 3), "cpu": (10, 2), "quick": (2, 1)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    parser.add_argument(
        "--lengths", default=None, help="attention section's T, comma-separated (e.g. 1024,4096)"
    )
    parser.add_argument(
        "--head_dims", default=None, help="attention section's head dims, comma-separated"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="train section's variants, comma-separated (with 'all on' always), e.g. "
        "'all on,triton attention'",
    )
    parser.add_argument("--figures", action="store_true", help="draw the results when done")
    parser.add_argument("--figures_dir", type=Path, default=FIGURES_DIR, help="figures/")
    parser.add_argument("--plot", type=Path, default=None, help="only draw this saved result")
    return parser.parse_args(argv)


def _sections(text: str | None, device: torch.device) -> list[str]:
    if text is None:
        return default_sections(device.type)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown or not chosen:
        raise UserError(f"--sections {text!r}: choose from {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def _options(args: argparse.Namespace, device: torch.device, sections: list[str]) -> BenchOptions:
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup must not be negative, got {args.warmup}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.nanogpt is not None:
        if "train" not in sections:
            raise UserError("--nanogpt times a training step: include the train section")
        if not (args.nanogpt / "model.py").is_file():
            raise UserError(f"--nanogpt {args.nanogpt}: no model.py there; give its checkout")
    lengths, head_dims = _sizes("--lengths", args.lengths), _sizes("--head_dims", args.head_dims)
    if (lengths or head_dims) and "attention" not in sections:
        raise UserError("--lengths and --head_dims size the attention section: include it")
    variants = None
    if args.variants is not None:
        from torch_impl.bench.train import variant_names

        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = sorted(set(variants) - set(variant_names()))
        if unknown or not variants or "train" not in sections:
            choices = ", ".join(variant_names())
            raise UserError(f"--variants {args.variants!r}: the train section's, of {choices}")
    default_steps, default_warmup = STEPS["quick" if args.quick else device.type]
    return BenchOptions(
        device=device,
        quick=args.quick,
        steps=args.steps or default_steps,
        warmup=default_warmup if args.warmup is None else args.warmup,
        batch_size=args.batch_size,
        nanogpt=args.nanogpt,
        lengths=lengths,
        head_dims=head_dims,
        variants=variants,
    )


def _sizes(flag: str, text: str | None) -> tuple[int, ...] | None:
    """'1024,4096' -> (1024, 4096); None stays None."""
    if text is None:
        return None
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UserError(f"{flag} {text!r}: give positive whole numbers, comma-separated")
    return sizes


def run_benchmarks(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device}: the benchmark runs on cpu or cuda")
    sections = _sections(args.sections, device)
    options = _options(args, device, sections)
    if device.type == "cuda":
        if device.index is not None:  # cuda:N: CUDA events record on the current device
            torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls, as training does
    # a run of some sections only, or a quick one, never replaces the full run's file
    partial = "" if sections == default_sections(device.type) else "_" + "_".join(sections)
    suffix = partial + ("_quick" if args.quick else "")
    out = args.out or RESULTS_DIR / f"bench_{device_label(device)}{suffix}.json"
    report = {"benchmark": PROGRAM, **environment(device), "quick": args.quick}
    report["sections"] = sections
    print(f"benchmarks on {report['device']} (torch {torch.__version__}): {', '.join(sections)}")
    for name in sections:
        start = time.perf_counter()
        report[name] = SECTIONS[name].run(options)
        report.setdefault("section_seconds", {})[name] = time.perf_counter() - start
        SECTIONS[name].print_table(report[name])
        save_report(report, out)
    print(f"\nsaved {out}")
    return report


def write_figures(report: dict, figures_dir: Path, stem: str | None = None) -> list[Path]:
    """Draw every section the report holds, `figures_dir/<stem>_<section>.png` with the stem
    `bench_<device>[_quick]` unless given; return the files written (a --quick run's never
    replace a real run's)."""
    import matplotlib  # only when drawing: a GPU machine may have no matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    quick = "_quick" if report.get("quick") else ""
    written = []
    for name, section in SECTIONS.items():
        if name not in report:
            continue
        fig = section.figure(report)
        path = figures_dir / f"{stem or 'bench_' + report['label'] + quick}_{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report = load_report(args.plot, PROGRAM) if args.plot else run_benchmarks(args)
    if args.plot or args.figures:
        for path in write_figures(report, args.figures_dir):
            print(f"wrote {path}")
