"""The 1/sqrt(d) experiments: dot-product moments within standard errors of the theory,
softmax saturation trends as d grows, the common explanation's softmax example (the module
docstring's numbers), the attention statistics recorded during training, and the torch runs of
the training comparison held to the NumPy specification."""

import math

import numpy as np
import pytest
import torch

from ref_numpy.data import load_split
from ref_numpy.experiments.attention_scaling import (
    attention_row_statistics,
    dot_product_stats,
    final_summary,
    moving_average,
    recording_attention,
    softmax,
    softmax_jacobian_norm,
    softmax_saturation,
    train_and_record,
    uniform_causal_entropy,
)
from ref_numpy.experiments.seeds import mean_and_standard_error
from ref_numpy.gpt import GPTConfig
from ref_numpy.layers import attention_forward
from torch_impl import attention_scaling as torch_runs

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


def test_the_common_explanations_softmax_example_is_wrong():
    # the module docstring: softmax(0.5, 1.2, 1.8) is (0.15, 0.30, 0.55) to two decimals
    # (tolerance: half a unit in the last decimal quoted), not (0.2, 0.35, 0.45)
    probs = softmax(np.array([0.5, 1.2, 1.8]))
    np.testing.assert_allclose(probs, [0.15, 0.30, 0.55], atol=0.005)
    assert np.max(np.abs(probs - [0.2, 0.35, 0.45])) > 0.05
    # a softmax's probability ratios are the exponentials of its score differences
    np.testing.assert_allclose(probs[2] / probs[0], math.exp(1.8 - 0.5), rtol=1e-12)


def test_mean_and_standard_error_over_an_axis():
    values = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 30.0]])  # 3 seeds, 2 settings
    mean, se = mean_and_standard_error(values, axis=0)
    np.testing.assert_allclose(mean, [7 / 3, 20.0])
    np.testing.assert_allclose(se, [np.std([1, 2, 4], ddof=1) / np.sqrt(3), 10 / np.sqrt(3)])


def test_moving_average_along_the_last_axis():
    values = np.arange(12.0).reshape(2, 6)
    np.testing.assert_allclose(moving_average(values, 3), values[:, 1:-1])  # linear: the middle


def test_recording_attention_returns_the_attention_and_records_its_rows(rng):
    q, k, v = rng.standard_normal((3, 2, 3, 8, 4))  # [B, H, T, D] each
    for scale in (None, 1.0):
        record = []
        out, _ = recording_attention(scale, record).forward(q, k, v)
        reference, reference_cache = attention_forward(q, k, v, scale=scale)
        np.testing.assert_array_equal(out, reference)
        assert record == [attention_row_statistics(reference_cache.probs)]
    # q = 0: every causal row spreads evenly over the t + 1 keys it sees
    record = []
    recording_attention(None, record).forward(np.zeros_like(q), k, v)
    (entropy, max_prob), T = record[0], q.shape[-2]
    assert entropy == pytest.approx(uniform_causal_entropy(T), rel=1e-12)
    assert max_prob == pytest.approx(np.mean(1.0 / np.arange(1, T + 1)), rel=1e-12)


# float64 rounding: a unit roundoff of 1.1e-16, grown by the differences in summation order
# between NumPy and torch over the steps (measured: a few 1e-16 over 20 steps); 1e-12 is
# DESIGN.md's tolerance for one float64 forward and backward.
ROUNDING = 1e-12


@pytest.mark.parametrize("scale", [None, 1.0], ids=["scaled", "unscaled"])
def test_torch_runs_match_the_numpy_specification(corpus_dir, scale):
    data = load_split(corpus_dir, "train")
    val_data = load_split(corpus_dir, "val")
    val_batches = [
        (
            val_data[i : i + 32].reshape(4, 8).astype(np.int64),
            val_data[i + 1 : i + 33].reshape(4, 8).astype(np.int64),
        )
        for i in (0, 1000)
    ]
    cfg = GPTConfig(block_size=8, vocab_size=int(data.max()) + 1, n_layer=2, n_head=2, n_embd=16)
    args = (scale, cfg, data, val_batches, 20, 4, 3e-3, 0)
    reference = train_and_record(*args, dtype=np.float64)
    mirror = torch_runs.train_and_record(*args, dtype=torch.float64)
    assert reference.keys() == mirror.keys()
    for key in reference:
        error = np.max(np.abs(mirror[key] - reference[key]) / np.abs(reference[key]))
        assert error < ROUNDING, key


def test_training_comparison_tiny(corpus_dir):
    result = torch_runs.training_comparison(
        head_sizes=(8, 16),
        seeds=(0, 1),
        steps=6,
        n_embd=16,
        block_size=8,
        batch_size=4,
        val_batches=2,
        data_dir=corpus_dir,
        workers=1,
    )
    for name in ("scaled", "unscaled"):
        for key in ("loss", "entropy", "max_prob"):
            assert result[f"{key}_{name}"].shape == (2, 2, 6)
            assert np.all(np.isfinite(result[f"{key}_{name}"]))
        assert result[f"val_loss_{name}"].shape == (2, 2)
    # at init the scores are tiny with or without 1/sqrt(d), so attention is nearly uniform and
    # the paired runs (same init, same batches) start from nearly the same loss
    uniform = float(result["uniform_entropy"])
    assert uniform == pytest.approx(uniform_causal_entropy(8))
    for name in ("scaled", "unscaled"):
        np.testing.assert_allclose(result[f"entropy_{name}"][..., 0], uniform, rtol=0.02)
    np.testing.assert_allclose(
        result["loss_scaled"][..., 0], result["loss_unscaled"][..., 0], rtol=1e-3
    )
    summary = final_summary(result, last_steps=3)
    gap = result["val_loss_unscaled"] - result["val_loss_scaled"]
    np.testing.assert_allclose(summary["val_loss_gap"], gap.mean(axis=1))
    np.testing.assert_allclose(summary["val_loss_gap_se"], gap.std(axis=1, ddof=1) / np.sqrt(2))
    np.testing.assert_allclose(
        summary["entropy_unscaled"], result["entropy_unscaled"][..., -3:].mean(axis=(1, 2))
    )
    with pytest.raises(ValueError, match="does not divide"):
        torch_runs.training_comparison(head_sizes=(5,), n_embd=16, data_dir=corpus_dir)


@pytest.mark.slow
def test_worker_processes_give_the_same_numbers(corpus_dir):
    settings = dict(
        head_sizes=(8,),
        seeds=(0, 1),
        steps=3,
        n_embd=16,
        block_size=8,
        batch_size=4,
        val_batches=1,
        data_dir=corpus_dir,
    )
    here = torch_runs.training_comparison(**settings, workers=1)
    spread = torch_runs.training_comparison(**settings, workers=2)
    for key, value in here.items():
        if key != "config":
            np.testing.assert_array_equal(spread[key], value, err_msg=key)
