"""Figures of a saved benchmark result (`python -m torch_impl.bench --plot results/FILE.json`).

One PNG per section, `figures/bench_<device>_<section>.png`, drawn from the JSON alone, so a
result measured on another machine draws the same here.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"sdpa flash": "tab:blue", "manual": "tab:red", "triton": "tab:green"}


def _title(report: dict, what: str) -> str:
    where = report["device"]
    if report["device_type"] == "cpu":
        where += f" ({report['cpu_threads']} threads)"
    return f"{what}\n{where}, torch {report['versions']['torch']}, {report['date']}"


def _train_figure(report: dict) -> plt.Figure:
    section = report["train"]
    variants = [v for v in section["variants"] if "tokens_per_second" in v]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(variants) + 2))
    names = [v["variant"] for v in variants][::-1]
    speeds = [v["tokens_per_second"] for v in variants][::-1]
    bars = ax.barh(names, speeds, color="tab:blue")
    labels = []
    for v in variants[::-1]:
        label = f"MFU {100 * v['mfu_vs_ceiling']:.1f}% of ceiling"
        if v.get("throughput_vs_all_on") is not None:
            label = f"{v['throughput_vs_all_on']:.2f}x of all on, " + label
        if v.get("mfu_vs_peak") is not None:
            label += f", {100 * v['mfu_vs_peak']:.1f}% of peak"
        labels.append(label)
    ax.bar_label(bars, labels=labels, padding=4, fontsize=8)
    ax.set_xlim(0, max(speeds) * 1.7)
    cfg = section["config"]
    ax.set_xlabel("tokens per second (median step)")
    ax.set_title(
        _title(
            report,
            f"training step, {cfg['n_layer']}x{cfg['n_embd']} GPT, context {cfg['block_size']}, "
            f"batch {section['batch_size']}, {section['dtype']}",
        ),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _attention_figure(report: dict) -> plt.Figure:
    section = report["attention"]
    rows = [row for row in section["rows"] if "forward_backward_seconds" in row]
    memory_key = "peak_memory_bytes" if report["device_type"] == "cuda" else None
    memory_key = memory_key or "saved_for_backward_bytes"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name, head_dim in sorted({(row["implementation"], row["head_dim"]) for row in rows}):
        line = sorted(
            (r for r in rows if (r["implementation"], r["head_dim"]) == (name, head_dim)),
            key=lambda r: r["T"],
        )
        T = [r["T"] for r in line]
        style = {"color": COLORS.get(name), "marker": "o", "ls": "-" if head_dim <= 64 else "--"}
        label = f"{name}, d={head_dim}"
        axes[0].plot(T, [r["forward_backward_seconds"] * 1e3 for r in line], label=label, **style)
        axes[1].plot(T, [r[memory_key] / 2**20 for r in line], label=label, **style)
        axes[2].plot(T, [r["forward_backward_tflops"] for r in line], label=label, **style)
    memory_label = {
        "peak_memory_bytes": "peak memory of forward + backward (MiB)",
        "saved_for_backward_bytes": "bytes saved for the backward (MiB)",
    }[memory_key]
    for ax, ylabel in zip(
        axes, ("forward + backward (ms)", memory_label, "forward + backward TFLOP/s (causal)")
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    fig.suptitle(
        _title(
            report,
            f"causal attention, {section['dtype']}, B*T = {section['tokens_per_batch']}, "
            f"H*d = {section['width']}",
        ),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def _bar_figure(report: dict, names: list[str], ms: list[float], labels: list[str], what: str):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    bars = ax.bar(names, ms, color=["tab:gray", "tab:blue", "tab:green"][: len(names)])
    ax.bar_label(bars, labels=labels, fontsize=8)
    ax.set_ylim(0, max(ms) * 1.3)
    ax.set_ylabel("median time per step (ms)")
    ax.set_title(_title(report, what), fontsize=9)
    fig.tight_layout()
    return fig


def _adamw_figure(report: dict) -> plt.Figure:
    runs = report["adamw"]
    ms = [run["seconds_per_step"] * 1e3 for run in runs]
    labels = [f"{t:.1f} ms\n{run['effective_bandwidth_gb_s']:.0f} GB/s" for t, run in zip(ms, runs)]
    what = f"one AdamW step, {runs[0]['n_params'] / 1e6:.1f}M {runs[0]['dtype']} parameters"
    return _bar_figure(report, [run["implementation"] for run in runs], ms, labels, what)


def _numpy_figure(report: dict) -> plt.Figure:
    section = report["numpy"]
    ms = [section["numpy_step_seconds"] * 1e3, section["torch_step_seconds"] * 1e3]
    labels = [f"{t:.1f} ms" for t in ms]
    cfg = section["config"]
    what = (
        f"float32 training step on the CPU, {cfg['n_layer']}x{cfg['n_embd']} GPT, "
        f"{section['tokens_per_step']} tokens: NumPy / torch = {section['numpy_over_torch']:.2f}x"
    )
    return _bar_figure(report, ["NumPy reference", "torch eager"], ms, labels, what)


FIGURES = {
    "train": _train_figure,
    "attention": _attention_figure,
    "adamw": _adamw_figure,
    "numpy": _numpy_figure,
}


def write_figures(report: dict, figures_dir: Path) -> list[Path]:
    """Draw every section the report holds; return the files written (a --quick run's names
    end in _quick, so they never replace a real run's figures)."""
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for section, draw in FIGURES.items():
        if section not in report:
            continue
        fig = draw(report)
        quick = "_quick" if report.get("quick") else ""
        path = figures_dir / f"bench_{report['label']}{quick}_{section}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
