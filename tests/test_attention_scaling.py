"""The 1/sqrt(d) experiments: dot-product moments within standard errors of the theory,
softmax saturation trends as d grows, and a tiny training comparison that runs."""

import numpy as np

from ref_numpy.experiments.attention_scaling import (
    dot_product_stats,
    softmax_jacobian_norm,
    softmax_saturation,
    training_comparison,
)

DIMS = (16, 64, 256)
N_STANDARD_ERRORS = 5  # a 5-sigma miss has probability ~6e-7 per check


def test_dot_product_mean_zero_and_variance_d_unscaled_one_scaled():
    stats = dot_product_stats(DIMS, n_samples=4000, seed=0)
    dims = stats["dims"]
    assert np.all(np.abs(stats["mean_unscaled"]) < N_STANDARD_ERRORS * stats["mean_unscaled_se"])
    assert np.all(np.abs(stats["mean_scaled"]) < N_STANDARD_ERRORS * stats["mean_scaled_se"])
    assert np.all(
        np.abs(stats["var_unscaled"] - dims) < N_STANDARD_ERRORS * stats["var_unscaled_se"]
    )
    assert np.all(np.abs(stats["var_scaled"] - 1.0) < N_STANDARD_ERRORS * stats["var_scaled_se"])
    # the mean is nowhere near d: the "dot product is about d" explanation is wrong
    assert np.all(np.abs(stats["mean_unscaled"]) < 0.1 * dims)


def test_dot_product_stats_reproducible_with_seed():
    first = dot_product_stats((8, 32), n_samples=500, seed=3)
    again = dot_product_stats((8, 32), n_samples=500, seed=3)
    other = dot_product_stats((8, 32), n_samples=500, seed=4)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["var_unscaled"], other["var_unscaled"])


def test_softmax_jacobian_norm_matches_closed_form(rng):
    # ||diag(p) - p p^T||_F^2 = sum p^2 - 2 sum p^3 + (sum p^2)^2, expanding the squares
    scores = rng.standard_normal((5, 7))
    p = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)
    s2, s3 = (p**2).sum(axis=-1), (p**3).sum(axis=-1)
    np.testing.assert_allclose(softmax_jacobian_norm(p), np.sqrt(s2 - 2 * s3 + s2**2), rtol=1e-12)


def test_unscaled_softmax_saturates_as_d_grows_scaled_does_not():
    result = softmax_saturation(DIMS, T=32, n_rows=300, seed=0)
    assert np.all(np.diff(result["max_prob_unscaled"]) > 0)
    assert np.all(np.diff(result["entropy_unscaled"]) < 0)
    assert np.all(np.diff(result["jacobian_norm_unscaled"]) < 0)
    assert result["max_prob_unscaled"][-1] > 0.8
    assert result["entropy_unscaled"][-1] < 0.15 * result["log_T"]
    # scaled: the distribution of the scores is N(0, 1) at every d, so the statistics agree
    # across d within sampling noise (300 rows: a few percent)
    for key in ("max_prob_scaled", "entropy_scaled", "jacobian_norm_scaled"):
        values = result[key]
        assert values.max() / values.min() < 1.15, key
    assert result["entropy_scaled"].min() > 0.75 * result["log_T"]


def test_training_comparison_tiny_runs_same_start():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 20, size=2000).astype(np.uint16)
    result = training_comparison(steps=4, data=data, vocab_size=20, block_size=16, batch_size=4)
    scaled, unscaled = result["loss_scaled"], result["loss_unscaled"]
    assert scaled.shape == unscaled.shape == (4,)
    assert np.all(np.isfinite(scaled)) and np.all(np.isfinite(unscaled))
    # at init the scores are ~0.1 in spread with or without 1/sqrt(d), so both attentions are
    # nearly uniform and the first losses agree closely, near log(vocab)
    assert abs(scaled[0] - unscaled[0]) < 1e-3 * scaled[0]
    assert abs(scaled[0] - np.log(20)) < 0.1
    assert result["config"]["n_embd"] == 64 and result["config"]["n_head"] == 2
