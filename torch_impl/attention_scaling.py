"""Scaled against unscaled attention in training, fast: the torch mirror of the NumPy experiment.

`ref_numpy.experiments.attention_scaling.train_and_record` is the specification of one run (the
NumPy GPT, attention scale 1/sqrt(D) or 1, the loss and the attention's row entropy and largest
probability recorded per step); `train_and_record` here does the same arithmetic in torch, from
the same init and batches (tests/test_attention_scaling.py holds the two float64 runs equal), and
`training_comparison` repeats it over head sizes and seeds, which the NumPy GPT is too slow to do
within a notebook's minute on a CPU. The model is `torch_impl.model.GPT` with its materialised
("manual") attention, whose blocks take a `RecordedAttention` that adds the scale and the record.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ref_numpy.config import GPTConfig
from ref_numpy.data import DEFAULT_DATA_DIR, BatchSampler, ensure_prepared, load_meta, load_split
from ref_numpy.experiments.attention_scaling import (
    ADAMW_BETAS,
    VAL_SEED,
    VARIANTS,
    WEIGHT_DECAY,
    learning_rate_at,
    uniform_causal_entropy,
)
from ref_numpy.gpt import init_params
from torch_impl.model import GPT, CausalSelfAttention
from torch_impl.numpy_bridge import load_numpy_params
from torch_impl.step import train_step


class RecordedAttention(CausalSelfAttention):
    """The model's materialised causal attention with a chosen scale (None: 1/sqrt(D)) that
    appends, on each forward, the mean entropy and largest probability of its rows (over B, H,
    T) to `record`, as a tensor [2]."""

    def __init__(self, config: GPTConfig, scale: float | None, record: list) -> None:
        super().__init__(config, attention="manual")
        self.scale = scale
        self.record = record

    def _manual_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T, head_size = q.size(-2), q.size(-1)
        scale = 1.0 / math.sqrt(head_size) if self.scale is None else self.scale
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, T)
        scores = scores.masked_fill(~self.causal_mask[:T, :T], float("-inf"))
        probs = F.softmax(scores, dim=-1)  # (B, nh, T, T)
        with torch.no_grad():
            entropy = -torch.special.xlogy(probs, probs).sum(dim=-1)  # 0 log 0 = 0 where masked
            self.record.append(torch.stack([entropy.mean(), probs.amax(dim=-1).mean()]))
        return probs @ v  # (B, nh, T, hs)


def recorded_model(cfg: GPTConfig, scale: float | None, record: list) -> GPT:
    """torch_impl's GPT whose every block attends through a `RecordedAttention`."""
    model = GPT(cfg, attention="manual")
    for block in model.transformer.h:
        block.attn = RecordedAttention(cfg, scale, record)
    return model


def train_and_record(
    scale: float | None,
    cfg: GPTConfig,
    data: np.ndarray,
    val_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> dict[str, np.ndarray]:
    """The torch mirror of the NumPy `train_and_record`: same init (`init_params(cfg, seed)`),
    batches, schedule, AdamW and clipping; returns `loss`, `entropy`, `max_prob` per step and
    `val_loss` on `val_batches` after the last step."""
    record: list[torch.Tensor] = []
    model = recorded_model(cfg, scale, record).to(dtype)
    load_numpy_params(model, init_params(cfg, seed=seed))
    optimizer = model.configure_optimizers(WEIGHT_DECAY, learning_rate, ADAMW_BETAS, "cpu")
    sampler = BatchSampler(data, cfg.block_size, batch_size, seed=seed)
    losses = np.empty(steps)
    for it in range(steps):
        lr = learning_rate_at(it, steps, learning_rate)
        losses[it] = train_step(model, optimizer, [sampler.next_batch()], lr, 1.0)[0]
    per_layer = torch.stack(record).reshape(steps, cfg.n_layer, 2).mean(dim=1)  # [steps, 2]
    model.eval()  # the validation forwards append to `record` too, after it has been read
    with torch.no_grad():
        val_loss = np.mean(
            [float(model(torch.from_numpy(x), torch.from_numpy(y))[1]) for x, y in val_batches]
        )
    per_layer = per_layer.double().numpy()
    return {
        "loss": losses,
        "entropy": per_layer[:, 0],
        "max_prob": per_layer[:, 1],
        "val_loss": np.array(val_loss),
    }


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread inside the block. These matmuls are tiny (at most 512 x 128 by
    128 x 512): on a busy 2-core machine, two threads waiting for each other made a step several
    times slower than one thread did."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclasses.dataclass(frozen=True)
class ComparisonSettings:
    """What every run of a training comparison shares; a run adds its head size, scale, seed."""

    n_embd: int
    n_layer: int
    block_size: int
    batch_size: int
    steps: int
    learning_rate: float
    val_batches: int
    data_dir: str


def _run(settings: ComparisonSettings, head_size: int, scale: float | None, seed: int) -> dict:
    """One run of a comparison, on one thread; a worker process calls it by name."""
    vocab_size = load_meta(settings.data_dir)["vocab_size"]
    data, val_data = load_split(settings.data_dir, "train"), load_split(settings.data_dir, "val")
    val_sampler = BatchSampler(
        val_data, settings.block_size, settings.batch_size, seed=VAL_SEED, name="val"
    )
    val_batches = [val_sampler.next_batch() for _ in range(settings.val_batches)]
    cfg = GPTConfig(
        block_size=settings.block_size,
        vocab_size=vocab_size,
        n_layer=settings.n_layer,
        n_head=settings.n_embd // head_size,
        n_embd=settings.n_embd,
    )
    with one_thread():
        return train_and_record(
            scale,
            cfg,
            data,
            val_batches,
            settings.steps,
            settings.batch_size,
            settings.learning_rate,
            seed,
        )


def training_comparison(
    head_sizes: Sequence[int] = (16, 64, 128),
    seeds: Sequence[int] = range(5),
    steps: int = 100,
    n_embd: int = 128,
    n_layer: int = 1,
    block_size: int = 32,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    val_batches: int = 16,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    workers: int = 2,
) -> dict[str, np.ndarray]:
    """Train scaled (1/sqrt(D)) and unscaled attention for each head size D and seed, in float32.

    The width n_embd is fixed and the heads split it, D = n_embd / n_head: every model has the
    same parameters and only the head size, hence the spread of the unscaled scores, changes. A
    seed fixes the init and the batches, shared by the scaled and the unscaled run. The
    validation loss is taken on `val_batches` fixed batches of the validation split. The runs are
    shared out among `workers` processes of one thread each (1: all in this process); a run's
    numbers do not depend on where it ran.

    Returns `head_sizes`, `seeds`, `step`, `uniform_entropy` (the mean entropy of causal rows
    spread evenly over the keys they see), `config` (the settings), and for * in scaled,
    unscaled: `loss_*`, `entropy_*`, `max_prob_*` [head sizes, seeds, steps] and `val_loss_*`
    [head sizes, seeds].
    """
    for head_size in head_sizes:
        if n_embd % head_size:
            raise ValueError(f"head size {head_size} does not divide n_embd {n_embd}")
    ensure_prepared(data_dir)  # here, before any worker reads the splits
    settings = ComparisonSettings(
        n_embd, n_layer, block_size, batch_size, steps, learning_rate, val_batches, str(data_dir)
    )
    jobs = [
        (head_size, scale, seed)
        for head_size in head_sizes
        for scale in VARIANTS.values()
        for seed in seeds
    ]
    columns = [[settings] * len(jobs), *zip(*jobs)]
    if workers > 1:
        # spawned, not forked: a fork of a process whose torch has started threads can hang
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            runs = list(pool.map(_run, *columns))
    else:
        runs = list(map(_run, *columns))
    shape = (len(head_sizes), len(VARIANTS), len(seeds))  # the order of `jobs`
    result = {}
    for key in runs[0]:
        values = np.array([run[key] for run in runs]).reshape(*shape, *runs[0][key].shape)
        for v, name in enumerate(VARIANTS):
            result[f"{key}_{name}"] = values[:, v]
    config = dataclasses.asdict(settings)
    del config["data_dir"]
    return {
        "head_sizes": np.array(head_sizes),
        "seeds": np.array(seeds),
        "step": np.arange(steps),
        "uniform_entropy": np.array(uniform_causal_entropy(block_size)),
        "config": config,
        **result,
    }
