"""Training runs that differ only in the init of the residual projections (notebook 02).

Each run trains the torch GPT from `ref_numpy.gpt.init_params` with the plain (0.02) or the
scaled (0.02 / sqrt(2 * n_layer)) `c_proj` init. Runs of one seed share everything else: the
init draws the same standard normals in the same order (only the `c_proj` weights are scaled
differently) and the sampler draws the same batches, so plain and scaled form pairs. Every run is
evaluated on the same fixed validation batches. The runs are independent, so `compare_inits`
spreads them over worker processes of one thread each.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ref_numpy.config import GPTConfig
from ref_numpy.data import DEFAULT_DATA_DIR, BatchSampler, ensure_prepared, get_batch, load_split
from ref_numpy.gpt import init_params
from ref_numpy.schedule import get_lr
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params
from torch_impl.step import estimate_loss, train_step

VAL_SEED = 0  # the generator of the fixed validation batches, the same for every run


@dataclass(frozen=True)
class RunSizes:
    """Model and run sizes shared by every run of a comparison. The optimizer is nanoGPT's
    (AdamW, decay 0.1 on matrices, clip 1.0, warmup over steps // 10, cosine to a tenth)."""

    n_embd: int = 32
    n_head: int = 2
    block_size: int = 32
    batch_size: int = 8
    steps: int = 40
    learning_rate: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.99)
    eval_interval: int = 5
    eval_batches: int = 2


def train_run(
    n_layer: int,
    scaled_residual_init: bool,
    seed: int,
    sizes: RunSizes = RunSizes(),
    data_dir: str | Path = DEFAULT_DATA_DIR,
) -> dict[str, np.ndarray]:
    """One run: `loss` [steps], the training loss of every step; `eval_step` (0, eval_interval,
    ..., steps) and `val_loss` at those steps, on `eval_batches` fixed validation batches."""
    vocab_size = ensure_prepared(data_dir)["vocab_size"]
    train_data, val_data = load_split(data_dir, "train"), load_split(data_dir, "val")
    cfg = GPTConfig(
        block_size=sizes.block_size,
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_head=sizes.n_head,
        n_embd=sizes.n_embd,
    )
    model = GPT(cfg)
    init = init_params(cfg, seed, np.float32, scaled_residual_init=scaled_residual_init)
    load_numpy_params(model, init)
    optimizer = model.configure_optimizers(0.1, sizes.learning_rate, sizes.betas, "cpu")
    sampler = BatchSampler(train_data, cfg.block_size, sizes.batch_size, seed=seed)
    val_rng = np.random.default_rng(VAL_SEED)
    val_batches = [
        get_batch(val_data, cfg.block_size, sizes.batch_size, val_rng, "val")
        for _ in range(sizes.eval_batches)
    ]
    warmup_iters = max(1, sizes.steps // 10)
    losses, eval_steps, val_losses = [], [], []
    for it in range(sizes.steps + 1):
        if it % sizes.eval_interval == 0 or it == sizes.steps:
            eval_steps.append(it)
            val_losses.append(estimate_loss(model, {"val": val_batches})["val"])
        if it == sizes.steps:
            break
        lr = get_lr(it, sizes.learning_rate, warmup_iters, sizes.steps, sizes.learning_rate / 10)
        losses.append(train_step(model, optimizer, [sampler.next_batch()], lr, 1.0)[0])
    return {
        "loss": np.array(losses),
        "eval_step": np.array(eval_steps),
        "val_loss": np.array(val_losses),
    }


def _one_thread() -> None:
    torch.set_num_threads(1)  # the workers share the cores among themselves, one thread each


def compare_inits(
    depths: Sequence[int],
    seeds: Sequence[int],
    sizes: RunSizes = RunSizes(),
    data_dir: str | Path = DEFAULT_DATA_DIR,
    processes: int = 2,
) -> dict[tuple[int, bool], dict[str, np.ndarray]]:
    """Every (depth, init, seed) run; `processes` > 1 runs them in that many worker processes.

    Returns, for each (n_layer, scaled_residual_init), `loss` [n_seeds, steps], `val_loss`
    [n_seeds, n_evals] (rows in the order of `seeds`) and `eval_step`.
    """
    ensure_prepared(data_dir)  # once, before any worker reads it
    jobs = [
        (n_layer, scaled, seed) for n_layer in depths for scaled in (False, True) for seed in seeds
    ]
    if processes > 1:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter, not a forked torch
        with concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=context, initializer=_one_thread
        ) as pool:
            longest_first = sorted(jobs, key=lambda job: -job[0])
            futures = {job: pool.submit(train_run, *job, sizes, data_dir) for job in longest_first}
            runs = {job: future.result() for job, future in futures.items()}
    else:
        runs = {job: train_run(*job, sizes, data_dir) for job in jobs}
    results = {}
    for n_layer in depths:
        for scaled in (False, True):
            rows = [runs[n_layer, scaled, seed] for seed in seeds]
            results[n_layer, scaled] = {
                "loss": np.stack([row["loss"] for row in rows]),
                "val_loss": np.stack([row["val_loss"] for row in rows]),
                "eval_step": rows[0]["eval_step"],
            }
    return results
