"""Why attention divides the scores by sqrt(d_k): the variance of q.k grows like d.

For q, k in R^d with independent unit-variance entries, q.k is a sum of d products of mean 0 and
variance 1, so E[q.k] = 0 and Var[q.k] = d; dividing by sqrt(d) makes the variance 1 at every
head size (Vaswani et al. 2017, section 3.2.1, footnote 4). A common explanation says "the dot
product is about d": it is not, its mean is 0 (`dot_product_stats()`, 20 000 pairs, seed 0, at
d = 1024: mean -0.7 +- 0.2, variance 1000 +- 10; scaled 0.98 +- 0.01). What grows is the spread,
and the spread saturates the softmax: over 64 keys at d = 1024 (`softmax_saturation()`) unscaled
rows have mean max probability 0.95 and entropy 0.13 nats (log 64 = 4.16) against 0.11 and 3.69
scaled, and the Jacobian diag(p) - p p^T, through which every gradient to q and k passes, falls
from 0.18 to 0.07 in Frobenius norm. In training (`training_comparison`, 300 steps on
Shakespeare, loss averaged over the last 20 steps) it shows with a large head: with head size 32
the losses agree (2.61 scaled, 2.60 unscaled), with one head of 256 unscaled ends at 2.58, scaled
at 2.32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ref_numpy.adamw import AdamW
from ref_numpy.data import DEFAULT_DATA_DIR, BatchSampler, ensure_prepared, load_split
from ref_numpy.gpt import GPTConfig, init_params
from ref_numpy.layers import NAIVE_ATTENTION, UNSCALED_ATTENTION, Attention
from ref_numpy.schedule import get_lr
from ref_numpy.step import train_step

DEFAULT_DIMS = (16, 32, 64, 128, 256, 512, 1024)
CHUNK_ELEMENTS = 2**22  # draw q, k in chunks of about this many numbers per array (32 MiB)


def _chunks(n: int, per_item: int):
    """Sizes of chunks that split n items so each chunk holds about CHUNK_ELEMENTS numbers."""
    step = max(1, CHUNK_ELEMENTS // per_item)
    for start in range(0, n, step):
        yield min(step, n - start)


def _mean_and_variance_with_errors(x: np.ndarray) -> tuple[float, float, float, float]:
    """Sample mean, variance and their standard errors, se(mean) = s / sqrt(n) and
    se(var) = sqrt((m4 - s^4) / n) with m4 the fourth central moment (large-n formula)."""
    n = len(x)
    mean = x.mean()
    centred = x - mean
    var = (centred**2).mean()
    m4 = (centred**4).mean()
    return float(mean), math.sqrt(var / n), float(var), math.sqrt(max(m4 - var**2, 0.0) / n)


def dot_product_stats(
    dims: Sequence[int] = DEFAULT_DIMS, n_samples: int = 20_000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Mean and variance of q.k and q.k / sqrt(d) over n_samples pairs q, k ~ N(0, I_d).

    Returns arrays over dims: `mean_unscaled`, `mean_unscaled_se`, `var_unscaled`,
    `var_unscaled_se` and the same four `*_scaled`. Theory: means 0, variances d and 1.
    """
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {}
    for d in dims:
        dots = np.concatenate(
            [
                np.einsum("nd,nd->n", rng.standard_normal((n, d)), rng.standard_normal((n, d)))
                for n in _chunks(n_samples, d)
            ]
        )  # [n_samples] q.k
        for variant, values in (("unscaled", dots), ("scaled", dots / math.sqrt(d))):
            mean, mean_se, var, var_se = _mean_and_variance_with_errors(values)
            stats.setdefault(f"mean_{variant}", []).append(mean)
            stats.setdefault(f"mean_{variant}_se", []).append(mean_se)
            stats.setdefault(f"var_{variant}", []).append(var)
            stats.setdefault(f"var_{variant}_se", []).append(var_se)
    return {"dims": np.array(dims)} | {key: np.array(values) for key, values in stats.items()}


def softmax_jacobian_norm(p: np.ndarray) -> np.ndarray:
    """Frobenius norm of d softmax / d scores = diag(p) - p p^T, for each row of p [..., T]."""
    jacobian = p[..., :, None] * np.eye(p.shape[-1]) - p[..., :, None] * p[..., None, :]
    return np.linalg.norm(jacobian, axis=(-2, -1))  # [..., T, T] -> [...]


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def softmax_saturation(
    dims: Sequence[int] = DEFAULT_DIMS, T: int = 64, n_rows: int = 500, seed: int = 0
) -> dict[str, np.ndarray]:
    """How peaked softmax(q.k_j) over T keys gets as d grows, unscaled and scaled by 1/sqrt(d).

    Each row: one query q and T keys k_j, all ~ N(0, I_d). Returns arrays over dims of the mean
    over rows of the largest probability (`max_prob_*`), the entropy in nats (`entropy_*`; a
    uniform row has log T, returned as `log_T`) and the Jacobian's Frobenius norm
    (`jacobian_norm_*`), for * in unscaled, scaled. A saturated row (max prob 1, entropy 0) has
    Jacobian 0: no gradient reaches the scores.
    """
    rng = np.random.default_rng(seed)
    results: dict[str, list[float]] = {}
    for d in dims:
        scores = np.concatenate(
            [
                np.einsum("nd,ntd->nt", rng.standard_normal((n, d)), rng.standard_normal((n, T, d)))
                for n in _chunks(n_rows, T * d)
            ]
        )  # [n_rows, T] q.k_j
        for variant, row_scores in (("unscaled", scores), ("scaled", scores / math.sqrt(d))):
            p = _softmax(row_scores)  # [n_rows, T]
            entropy = -(p * np.log(np.maximum(p, np.finfo(p.dtype).tiny))).sum(axis=-1)
            results.setdefault(f"max_prob_{variant}", []).append(float(p.max(axis=-1).mean()))
            results.setdefault(f"entropy_{variant}", []).append(float(entropy.mean()))
            results.setdefault(f"jacobian_norm_{variant}", []).append(
                float(softmax_jacobian_norm(p).mean())
            )
    out = {"dims": np.array(dims), "log_T": np.array(math.log(T))}
    return out | {key: np.array(values) for key, values in results.items()}


def _train(
    attention: Attention,
    cfg: GPTConfig,
    data: np.ndarray,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    dtype,
) -> np.ndarray:
    params = init_params(cfg, seed=seed, dtype=dtype)
    optimizer = AdamW(params, lr=learning_rate, betas=(0.9, 0.99), weight_decay=0.1)
    sampler = BatchSampler(data, cfg.block_size, batch_size, seed=seed)
    warmup_iters = max(1, steps // 10)
    losses = np.empty(steps)
    for it in range(steps):
        lr = get_lr(it, learning_rate, warmup_iters, steps, learning_rate / 10)
        batch = [sampler.next_batch()]
        losses[it] = train_step(params, cfg, optimizer, batch, lr, 1.0, attention)[0]
    return losses


def training_comparison(
    steps: int = 300,
    data: np.ndarray | None = None,
    vocab_size: int | None = None,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    large_head: bool = False,
    n_layer: int = 2,
    block_size: int = 32,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """Train the NumPy GPT twice, scaled (NAIVE_ATTENTION) and unscaled (UNSCALED_ATTENTION).

    Same seed, init and batches; only the 1/sqrt(d) differs. The model has n_embd 64 and 2 heads
    (head size 32), or with `large_head` n_embd 256 and 1 head (head size 256), where unscaled
    scores start out 16 times larger in spread. `data` is a uint16 token array with
    `vocab_size`; without it, the train split of `data_dir` (prepared if missing).
    Returns `step`, `loss_scaled`, `loss_unscaled` (training loss per step) and `config`.
    """
    if data is None:
        vocab_size = ensure_prepared(data_dir)["vocab_size"]
        data = load_split(data_dir, "train")
    elif vocab_size is None:
        raise ValueError("pass vocab_size together with data")
    n_embd, n_head = (256, 1) if large_head else (64, 2)
    cfg = GPTConfig(
        block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    runs = {
        f"loss_{name}": _train(attention, cfg, data, steps, batch_size, learning_rate, seed, dtype)
        for name, attention in (("scaled", NAIVE_ATTENTION), ("unscaled", UNSCALED_ATTENTION))
    }
    return {"step": np.arange(steps), **runs, "config": cfg.to_dict()}
