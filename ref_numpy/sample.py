"""Autoregressive sampling from the NumPy GPT: temperature and top-k, one token at a time."""

from __future__ import annotations

import numpy as np

from ref_numpy.gpt import GPTConfig, forward


def softmax_sample(
    logits: np.ndarray, rng: np.random.Generator, temperature: float = 1.0, top_k: int | None = None
) -> np.ndarray:
    """Draw one token per row of logits [B, V] from softmax(logits / temperature), top-k only."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = logits.astype(np.float64) / temperature  # [B, V]
    if top_k is not None:
        kth = np.sort(logits, axis=-1)[:, -min(top_k, logits.shape[-1])][:, None]  # [B, 1]
        logits = np.where(logits < kth, -np.inf, logits)  # keep the k largest
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])  # [B]


def generate(
    params: dict[str, np.ndarray],
    cfg: GPTConfig,
    idx: np.ndarray,
    max_new_tokens: int,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> np.ndarray:
    """Extend idx [B, T0] by max_new_tokens tokens, each seeing at most block_size before it."""
    for _ in range(max_new_tokens):
        context = idx[:, -cfg.block_size :]  # [B, <=block_size]
        logits, _, _ = forward(params, cfg, context)
        next_token = softmax_sample(logits[:, -1, :], rng, temperature, top_k)  # [B]
        idx = np.concatenate([idx, next_token[:, None]], axis=1)
    return idx
