"""Reading a saved GPU cross-check (`python -m torch_impl.gpu_cross_check`): per-seed errors, their
mean and standard error over the seeds, the 2x rule's checks, and a figure for notebook 07.

The cross-check trains the small model of `torch_impl.cross_check` in four torch runs beside the
NumPy float64 reference (bf16 and float32, each optimized and plain) for several seeds, and judges
each optimized run by DESIGN.md's rule: its error against the reference, averaged over the seeds,
at most twice its plain yardstick's plus one unit roundoff of the precision. The report is JSON
(see `gpu_cross_check.cross_check`); this module only reads it, so a result measured on a GPU
elsewhere reads and draws the same here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torch_impl.gpu_cross_check import METRICS, PROGRAM, RUNS, UNIT_ROUNDOFF
from torch_impl.report import RESULTS_DIR, load_report

METRIC_LABELS = {
    "curve_error": "whole loss curve",
    "max_step_error": "worst step",
    "val_error": "final validation loss",
}
CPU_RESULT = RESULTS_DIR / "gpu_cross_check_cpu.json"


def load_cross_check(path: str | Path = CPU_RESULT) -> dict:
    """A report saved by `python -m torch_impl.gpu_cross_check` (a one-line error otherwise)."""
    return load_report(Path(path), PROGRAM)


def per_seed_errors(report: dict, run: str, metric: str) -> np.ndarray:
    """One relative error per seed, in the report's seed order."""
    return np.array([seed["runs"][run][metric] for seed in report["per_seed"]])


def seed_statistics(report: dict) -> dict[str, dict[str, dict]]:
    """run -> metric -> mean, standard error (sample std / sqrt(seeds)) and the per-seed values.

    The mean is the number the report's checks judge; the standard error says how far it could
    move with other seeds."""
    statistics = {}
    for run in RUNS:
        statistics[run.name] = {}
        for metric in METRICS:
            values = per_seed_errors(report, run.name, metric)
            spread = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
            statistics[run.name][metric] = {
                "mean": float(values.mean()),
                "standard_error": float(spread),
                "per_seed": values,
            }
    return statistics


def yardstick_ratios(report: dict, precision: str, metric: str) -> np.ndarray:
    """Per seed, the optimized run's error over the plain run's, in one precision: how one seed
    alone would judge the optimizations (the check uses the means over seeds instead)."""
    optimized, plain = (
        next(r.name for r in RUNS if r.precision == precision and r.optimized == flag)
        for flag in (True, False)
    )
    return per_seed_errors(report, optimized, metric) / per_seed_errors(report, plain, metric)


def plot_seed_errors(report: dict):
    """Three panels (loss curve, worst step, final validation loss): each run's error against
    the float64 reference, mean +- standard error over the seeds with every seed as a dot, and
    each optimized run's bound (2 x its plain run's mean + one unit roundoff). Returns the Figure
    (drawn with pyplot, whatever backend the caller has)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    statistics = seed_statistics(report)
    colours = {"bfloat16": "C0", "float32": "C1"}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(13, 4.6), sharey=True)
    for ax, metric in zip(axes, METRICS):
        for position, run in enumerate(RUNS):
            entry = statistics[run.name][metric]
            colour = colours[run.precision]
            seeds = entry["per_seed"]
            ax.scatter(
                np.full(len(seeds), position) + np.linspace(0.12, 0.32, len(seeds)),  # beside
                seeds,
                color=colour,
                alpha=0.35,
                s=14,
            )
            ax.errorbar(
                position - 0.05,
                entry["mean"],
                yerr=entry["standard_error"],
                fmt="o" if run.optimized else "s",
                mfc=colour if run.optimized else "white",
                color=colour,
                ms=8,
                capsize=5,
                lw=1.5,
            )
            if run.optimized:
                plain = next(r for r in RUNS if r.precision == run.precision and not r.optimized)
                bound = 2 * statistics[plain.name][metric]["mean"] + UNIT_ROUNDOFF[run.precision]
                ax.hlines(bound, position - 0.3, position + 0.35, color="black", ls="--", lw=1.2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(RUNS)), [r.name.replace(" ", "\n") for r in RUNS], fontsize=8)
        ax.set_title(METRIC_LABELS[metric], fontsize=10)
    axes[0].set_ylabel("relative error against NumPy float64 (log scale)")
    handles = [
        Line2D([], [], color="gray", marker="o", ls="", ms=8, label="optimized: mean +- s.e."),
        Line2D(
            [], [], color="gray", marker="s", mfc="white", ls="", ms=8, label="plain: mean +- s.e."
        ),
        Line2D([], [], color="gray", marker="o", alpha=0.35, ls="", ms=4, label="one seed"),
        Line2D([], [], color="black", ls="--", label="bound: 2 x plain mean + unit roundoff"),
        Line2D([], [], color="C0", lw=6, label="bf16 autocast"),
        Line2D([], [], color="C1", lw=6, label="float32 (TF32 off)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    seeds = len(report["seeds"])
    fig.suptitle(
        f"Saved cross-check on {report['device']} ({report['device_type']}, compile "
        f"{report['compiled']}), {report['steps']} steps, {seeds} seeds, {report['date']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
