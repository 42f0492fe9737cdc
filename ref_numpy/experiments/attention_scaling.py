"""Why attention divides the scores by sqrt(d_k): the variance of q.k grows like d.

For q, k in R^d with independent unit-variance entries, q.k is a sum of d products of mean 0 and
variance 1, so E[q.k] = 0 and Var[q.k] = d; dividing by sqrt(d) makes the variance 1 at every
head size (Vaswani et al. 2017, section 3.2.1, footnote 4). A common explanation says "the dot
product is about d": its mean is 0, what grows is its spread. A wide spread makes softmax rows
nearly one-hot, and the softmax Jacobian diag(p) - p p^T, through which every gradient to q and k
passes, vanishes on a one-hot row. The same explanation's example softmax(0.5, 1.2, 1.8) =
(0.2, 0.35, 0.45) is wrong: it is (0.15, 0.30, 0.55) to two decimals (`softmax`; the tests pin
it).

The experiments: `dot_product_stats` (sample moments of q.k against the theory),
`softmax_saturation` (random rows as d grows) and `train_and_record`, one training run with
the attention scale 1/sqrt(D) or 1 that records the loss and the attention's row entropy per
step (the specification of `torch_impl.attention_scaling`, which repeats it over head sizes and
seeds). Their measured numbers are printed by notebooks/01_attention_scaling.ipynb, not quoted
here; tests/test_attention_scaling.py checks the moments within standard errors of the theory and
the trends with d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ref_numpy.adamw import AdamW
from ref_numpy.data import BatchSampler
from ref_numpy.experiments.seeds import mean_and_standard_error
from ref_numpy.gpt import GPTConfig, forward, init_params
from ref_numpy.layers import Attention, attention_backward, attention_forward
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


def softmax(scores: np.ndarray) -> np.ndarray:
    """softmax over the last axis, shifted by the row maximum (the result is the same)."""
    exp = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def row_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of p [..., T]; 0 log 0 counts as 0 (masked entries)."""
    return -(p * np.log(np.maximum(p, np.finfo(p.dtype).tiny))).sum(axis=-1)


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
            p = softmax(row_scores)  # [n_rows, T]
            results.setdefault(f"max_prob_{variant}", []).append(float(p.max(axis=-1).mean()))
            results.setdefault(f"entropy_{variant}", []).append(float(row_entropy(p).mean()))
            results.setdefault(f"jacobian_norm_{variant}", []).append(
                float(softmax_jacobian_norm(p).mean())
            )
    out = {"dims": np.array(dims), "log_T": np.array(math.log(T))}
    return out | {key: np.array(values) for key, values in results.items()}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Means of `window` consecutive entries along the last axis, [..., n] -> [..., n - window + 1]
    (the plots smooth the noisy per-step losses with it before averaging over seeds)."""
    kernel = np.ones(window) / window
    return np.apply_along_axis(np.convolve, -1, values, kernel, mode="valid")


def attention_row_statistics(probs: np.ndarray) -> tuple[float, float]:
    """Mean entropy (nats) and mean largest probability of the rows of probs [..., T_q, T_k]."""
    return float(row_entropy(probs).mean()), float(probs.max(axis=-1).mean())


def uniform_causal_entropy(T: int) -> float:
    """Mean entropy of causal rows that spread evenly over the keys they see: mean_t log(t + 1)."""
    return float(np.log(np.arange(1, T + 1)).mean())


def recording_attention(scale: float | None, record: list[tuple[float, float]]) -> Attention:
    """The materialised attention (scale None: 1/sqrt(D); 1.0: unscaled) that appends, on each
    forward, the mean entropy and largest probability of its rows (over B, H, T) to `record`."""

    def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray):
        out, cache = attention_forward(q, k, v, scale=scale)
        record.append(attention_row_statistics(cache.probs))
        return out, cache

    return Attention(forward, attention_backward)


# The training runs' settings, shared with the torch mirror (torch_impl.attention_scaling).
VARIANTS = {"scaled": None, "unscaled": 1.0}  # the attention scale: None is 1/sqrt(head size)
ADAMW_BETAS = (0.9, 0.99)  # nanoGPT's Shakespeare-char setting: small batches, faster beta2
WEIGHT_DECAY = 0.1
VAL_SEED = 10_000  # the validation batches: one fixed draw, the same for every run


def learning_rate_at(it: int, steps: int, learning_rate: float) -> float:
    """Warmup over the first tenth of the run, then cosine decay to a tenth of the peak."""
    return get_lr(it, learning_rate, max(1, steps // 10), steps, learning_rate / 10)


def train_and_record(
    scale: float | None,
    cfg: GPTConfig,
    data: np.ndarray,
    val_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    dtype=np.float64,
) -> dict[str, np.ndarray]:
    """Train the NumPy GPT with attention scale `scale` (None: 1/sqrt(D); 1.0: unscaled).

    The seed fixes the init and the batches. Returns per step the training loss (`loss`) and the
    attention's mean row entropy in nats (`entropy`) and mean largest probability (`max_prob`),
    averaged over batch, heads, rows and layers, and after the last step the mean loss on
    `val_batches` (`val_loss`). The specification of torch_impl.attention_scaling's runs.
    """
    params = init_params(cfg, seed=seed, dtype=dtype)
    optimizer = AdamW(params, lr=learning_rate, betas=ADAMW_BETAS, weight_decay=WEIGHT_DECAY)
    sampler = BatchSampler(data, cfg.block_size, batch_size, seed=seed)
    record: list[tuple[float, float]] = []
    attention = recording_attention(scale, record)
    losses = np.empty(steps)
    for it in range(steps):
        lr = learning_rate_at(it, steps, learning_rate)
        batch = [sampler.next_batch()]
        losses[it] = train_step(params, cfg, optimizer, batch, lr, 1.0, attention)[0]
    per_layer = np.array(record).reshape(steps, cfg.n_layer, 2).mean(axis=1)  # [steps, 2]
    # the validation forwards append to `record` too, after it has been read
    val_loss = np.mean([forward(params, cfg, x, y, attention=attention)[1] for x, y in val_batches])
    return {
        "loss": losses,
        "entropy": per_layer[:, 0],
        "max_prob": per_layer[:, 1],
        "val_loss": np.array(val_loss),
    }


def final_summary(result: dict[str, np.ndarray], last_steps: int = 10) -> dict[str, np.ndarray]:
    """Mean and standard error over seeds, per head size, of the runs of a training comparison.

    `result` holds `val_loss_*` [head sizes, seeds] and `entropy_*`, `max_prob_*` [head sizes,
    seeds, steps] for * in scaled, unscaled. Returns `val_loss_*`, `entropy_*`, `max_prob_*`
    (the last two averaged over the last `last_steps` steps of each run first) and `val_loss_gap`
    (unscaled minus scaled, paired by seed), each as mean [head sizes] with `*_se` beside it.
    """
    per_seed = {"val_loss_gap": result["val_loss_unscaled"] - result["val_loss_scaled"]}
    for name in VARIANTS:
        per_seed[f"val_loss_{name}"] = result[f"val_loss_{name}"]
        for key in ("entropy", "max_prob"):
            per_seed[f"{key}_{name}"] = result[f"{key}_{name}"][..., -last_steps:].mean(axis=-1)
    summary = {}
    for key, values in per_seed.items():
        summary[key], summary[f"{key}_se"] = mean_and_standard_error(values, axis=1)
    return summary
