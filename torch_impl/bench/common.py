"""What the benchmark sections share: the options of a run, the models they time, and the bar
chart two of them draw.

The models: GPT-2 124M as nanoGPT trains it on a GPU; on the CPU, the model `make train` trains
(the training options' defaults, with the vocabulary of the corpus it trains on); and with
`--quick`, one tiny model for every section, which runs every code path in a blink.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ref_numpy.config import GPTConfig
from ref_numpy.data import ensure_prepared
from ref_numpy.train.config import TrainConfig
from torch_impl.report import figure_title

# GPT-2 small as nanoGPT trains it: 12 layers, 12 heads, 768 wide, context 1024, the vocabulary
# padded from 50257 to 50304 (a multiple of 64, for the matmul tiles). Biases on, as in GPT-2.
GPT2_124M = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768)
GPU_BATCH_SIZE = 16  # sequences of 1024 tokens per step: 16,384 tokens
# --quick: one narrow layer, a short context and a small batch
QUICK_MODEL = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32)
QUICK_BATCH_SIZE = 4


@dataclass(frozen=True)
class BenchOptions:
    """One run's settings, as `python -m torch_impl.bench` read them from its flags."""

    device: torch.device
    quick: bool
    steps: int  # timed steps per variant
    warmup: int  # untimed steps before them
    batch_size: int | None = None  # the train section's batch; None: the model's own
    nanogpt: Path | None = None  # a nanoGPT checkout whose model the train section times too
    lengths: tuple[int, ...] | None = None  # the attention section's T; None: its device's grid
    head_dims: tuple[int, ...] | None = None  # and its head dims
    variants: tuple[str, ...] | None = None  # the train section's variants; None: all of them


def make_train_model() -> tuple[GPTConfig, int]:
    """The model and batch size `make train` trains on a CPU: the training options' defaults,
    with the vocabulary of the corpus (its data folder prepared first, as the trainer does)."""
    config = TrainConfig()
    meta = ensure_prepared(config.resolved_data_dir(), config.text)
    return config.model_config(meta["vocab_size"]), config.batch_size


def timed_model(device_type: str, quick: bool) -> tuple[GPTConfig, int]:
    """The model a training step is timed on, and its batch size."""
    if quick:
        return QUICK_MODEL, QUICK_BATCH_SIZE
    if device_type == "cuda":
        return GPT2_124M, GPU_BATCH_SIZE
    return make_train_model()


def triton_runs_on(device: torch.device) -> bool:
    """Whether torch_impl's Triton attention runs here: a CUDA device and the triton package.
    (Imported only when asked: triton is optional, and a slow import.)"""
    if device.type != "cuda":
        return False
    from torch_impl.triton_attention import TRITON_AVAILABLE

    return TRITON_AVAILABLE


def bar_figure(report: dict, names: list[str], ms: list[float], labels: list[str], what: str):
    """Median milliseconds per step of a few implementations, as bars (a matplotlib Figure)."""
    import matplotlib.pyplot as plt  # only when drawing: a GPU machine may have no matplotlib

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    bars = ax.bar(names, ms, color=["tab:gray", "tab:blue", "tab:green"][: len(names)])
    ax.bar_label(bars, labels=labels, fontsize=8)
    ax.set_ylim(0, max(ms) * 1.3)
    ax.set_ylabel("median time per step (ms)")
    ax.set_title(figure_title(report, what), fontsize=9)
    fig.tight_layout()
    return fig
