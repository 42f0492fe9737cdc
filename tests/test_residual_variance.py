"""The residual-init experiments at small width (n_embd 32): the instrumented pass is the model's,
the residual stream's std grows with depth under the plain init and not under the scaled one,
the idealised model against the measurement, and the gradient's path to the first block."""

import math

import numpy as np

from ref_numpy.experiments.residual_variance import (
    _model,
    gelu_second_moment,
    idealised_std,
    init_statistics,
    random_tokens,
)
from ref_numpy.experiments.seeds import mean_and_standard_error
from ref_numpy.gpt import backward, forward

SMALL = dict(n_embd=32, n_head=2, block_size=32, batch_size=4)
SEEDS = (0, 1, 2)


def final_std(n_layer, scaled):
    return init_statistics(n_layer, scaled, seeds=SEEDS, **SMALL)["std"][:, -1].mean()


def test_instrumented_pass_is_the_models_own():
    # same tokens through gpt.forward / gpt.backward: the c_attn gradient is the same, and with
    # one sequence the position table's gradient is the gradient at the embedding output
    sizes = SMALL | dict(batch_size=1)
    for scaled in (False, True):
        result = init_statistics(3, scaled, seeds=(4,), dtype=np.float64, **sizes)
        cfg, params = _model(3, scaled, 4, 32, 2, 32, 65, np.float64)
        idx, targets = random_tokens(cfg, 1, 4)
        _, _, cache = forward(params, cfg, idx, targets)
        grads = backward(cache)
        np.testing.assert_allclose(
            result["c_attn_grad"][0],
            np.linalg.norm(grads["transformer.h.0.attn.c_attn.weight"]),
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            result["stream_grad"][0, 0],
            np.linalg.norm(grads["transformer.wpe.weight"]),
            rtol=1e-12,
        )


def test_plain_init_grows_with_depth_scaled_init_does_not():
    plain = np.array([final_std(n, False) for n in (2, 12)])
    scaled = np.array([final_std(n, True) for n in (2, 12)])
    # idealised: plain grows by sqrt((2 + 12 u) / (2 + 2 u)) ~ 1.6 here (u the update variance
    # over 0.02^2), scaled not at all; the spread over seeds is under 2% of the std
    assert plain[1] / plain[0] > 1.3
    assert abs(scaled[1] / scaled[0] - 1.0) < 0.05
    assert plain[1] / plain[0] > scaled[1] / scaled[0] + 0.25


def test_idealised_model_within_ten_percent_of_measurement():
    # the model ignores correlations between positions (its attention term averages independent
    # values); at n_embd 32 it is at most 6.5% off over ten seed triples, so 10% is the margin
    for scaled in (False, True):
        measured = init_statistics(8, scaled, seeds=SEEDS, **SMALL)["std"].mean(axis=0)
        idealised = idealised_std(8, scaled, n_embd=32, block_size=32)["std"]
        np.testing.assert_allclose(measured, idealised, rtol=0.10)


def test_embedding_std_is_exact_and_blocks_add_variance():
    result = init_statistics(4, False, seeds=SEEDS, **SMALL)
    std = result["std"]
    # token + position rows ~ N(0, 2 * 0.02^2); 32 x 32 x 4 x 32 draws: std within ~3%
    np.testing.assert_allclose(std[:, 0].mean(), 0.02 * np.sqrt(2), rtol=0.05)
    assert np.all(np.diff(std.mean(axis=0)) > 0)
    assert std.shape == (len(SEEDS), 5)
    # the share is a ratio of the first and last variances, exactly
    np.testing.assert_allclose(result["embedding_share"], std[:, 0] ** 2 / std[:, -1] ** 2)
    # the updates are nearly uncorrelated with the embedding and each other: at n_embd 32 their
    # covariances are at most 6% of the final variance (8 to 12 blocks, both inits)
    assert np.all(np.abs(result["covariance_share"]) < 0.1)


def test_embedding_keeps_its_share_only_under_the_scaled_init():
    plain = init_statistics(12, False, seeds=SEEDS, **SMALL)["embedding_share"].mean()
    scaled = init_statistics(12, True, seeds=SEEDS, **SMALL)["embedding_share"].mean()
    # measured 0.23 and 0.88 at n_embd 32 (the updates are smaller there than at 128)
    assert scaled > 3 * plain


def test_reproducible_with_seed():
    first = init_statistics(3, True, seeds=(5,), **SMALL)
    again = init_statistics(3, True, seeds=(5,), **SMALL)
    other = init_statistics(3, True, seeds=(6,), **SMALL)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["std"], other["std"])


def test_mean_and_standard_error():
    values = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    mean, standard_error = mean_and_standard_error(values)
    np.testing.assert_allclose(mean, [3.0, 6.0])
    np.testing.assert_allclose(standard_error, [2.0 / math.sqrt(3), 4.0 / math.sqrt(3)])
    _, single = mean_and_standard_error(values[:1])
    np.testing.assert_array_equal(single, [0.0, 0.0])


def test_gelu_second_moment_against_sampling(rng):
    z = rng.normal(0.0, np.sqrt(0.3), size=400_000)
    gelu = 0.5 * z * (1 + np.vectorize(math.erf)(z / np.sqrt(2)))
    sample = np.mean(gelu**2)
    standard_error = np.std(gelu**2) / np.sqrt(len(z))
    assert abs(gelu_second_moment(0.3) - sample) < 5 * standard_error


def test_gradient_path_to_the_first_block():
    n_layer = 8
    plain = init_statistics(n_layer, False, seeds=SEEDS, **SMALL)
    scaled = init_statistics(n_layer, True, seeds=SEEDS, **SMALL)

    def ratio(key, index=None):  # scaled / plain of the seed means
        values = [r[key] if index is None else r[key][:, index] for r in (scaled, plain)]
        return values[0].mean() / values[1].mean()

    # LayerNorm's backward divides by the std its forward divided by: the gradient entering the
    # stream is larger under the scaled init by the factor its stream is smaller (each row is
    # divided by its own std, the ratio uses the global one: 1.5% apart here, 3% is the margin)
    np.testing.assert_allclose(ratio("stream_grad", -1), 1 / ratio("std", -1), rtol=0.03)
    # c_proj multiplies the gradient by its weights, whose std the scaled init divides by
    # sqrt(2 n_layer): measured within 1% (random matrix, 32 x 32), 3% is the margin
    c_proj = ratio("c_proj_input_grad") / ratio("attn_output_grad")
    np.testing.assert_allclose(c_proj, 1 / math.sqrt(2 * n_layer), rtol=0.03)
    # ... but c_proj's factor alone does not set the c_attn gradient: at this width the ratio is
    # 0.195 against 1/sqrt(16) = 0.25, the attention's backward passing less of the scaled init's
    assert ratio("c_attn_grad") < 0.85 / math.sqrt(2 * n_layer)
    # the part of the gradient at a_0 that came straight down is the one that entered the stream
    for result in (plain, scaled):
        np.testing.assert_allclose(
            result["attn_output_grad_straight"], result["stream_grad"][:, -1]
        )
        parts = result["c_attn_grad_straight"] + result["c_attn_grad_added"]  # triangle inequality
        assert np.all(result["c_attn_grad"] <= parts * (1 + 1e-6))
