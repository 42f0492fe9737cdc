"""Decay groups counted for GPT-2 124M, decaying everything against 2-D only, decoupled decay
against an L2 penalty under Adam, the shrink of a whole schedule, and the two AdamW step functions
that count memory traffic checked bitwise against `ref_numpy.adamw.AdamW`.

The counts quoted in `optimizer_cost`'s docstring are pinned here exactly: they are counts, not
measurements, so there is no tolerance to state."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest

from ref_numpy.adamw import AdamW
from ref_numpy.config import GPTConfig
from ref_numpy.experiments.optimizer_cost import (
    adamw_multi_pass,
    adamw_single_pass,
    adamw_traffic_per_param,
    decay_everything_vs_2d,
    decay_groups_over_seeds,
    decay_report,
    decay_shrink_factor,
    decay_under_adam,
    new_adamw_state,
)
from ref_numpy.gpt import init_params, param_shapes

GPT2 = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768, bias=True)
TINY = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=2, n_embd=16)


def test_gpt2_124m_decay_groups():
    report = decay_report(param_shapes(GPT2))
    assert (report["decay"]["tensors"], report["decay"]["params"]) == (50, 124_354_560)
    assert (report["no_decay"]["tensors"], report["no_decay"]["params"]) == (98, 121_344)
    # the token embedding (38.6M, 2-D) is decayed: not the "85M decayed, 39M not" often quoted
    assert "transformer.wte.weight" in report["decay"]["names"]
    assert math.prod(param_shapes(GPT2)["transformer.wte.weight"]) == 38_633_472
    assert report["no_decay"]["params"] / report["decay"]["params"] < 1e-3


def test_decay_report_arrays_match_shapes():
    params = init_params(TINY, seed=0)
    assert decay_report(params) == decay_report(param_shapes(TINY))


def test_decay_everything_pulls_layernorm_gains_towards_zero():
    data = np.random.default_rng(3).integers(0, TINY.vocab_size, size=200)
    runs = decay_everything_vs_2d(10, cfg=TINY, data=data, lr=1e-2, weight_decay=1.0)
    for run in runs.values():
        assert run["losses"].shape == (10,) and np.all(np.isfinite(run["losses"]))
    # identical first step (same init, same batch); decay shrinks gains by (1 - lr*wd)^t = 0.90
    assert runs["decay_2d"]["losses"][0] == runs["decay_all"]["losses"][0]
    assert runs["decay_all"]["layernorm_gain_mean"] < runs["decay_2d"]["layernorm_gain_mean"] - 0.05
    assert (
        runs["decay_all"]["layernorm_gain_mean_distance_from_1"]
        > runs["decay_2d"]["layernorm_gain_mean_distance_from_1"]
    )


@pytest.mark.parametrize(
    "step", [adamw_multi_pass, adamw_single_pass, partial(adamw_single_pass, chunk=7)]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_functions_equal_adamw_bitwise(step, dtype):
    params = {name: p.astype(dtype) for name, p in init_params(TINY, seed=1).items()}
    copy = {name: p.copy() for name, p in params.items()}
    hyper = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    reference = AdamW(params, **hyper)
    state = new_adamw_state(copy)
    rng = np.random.default_rng(2)
    for _ in range(3):
        grads = {name: rng.standard_normal(p.shape).astype(dtype) for name, p in params.items()}
        reference.step(grads)
        step(copy, grads, state, **hyper)
    for name in params:
        assert params[name].dtype == copy[name].dtype == dtype
        np.testing.assert_array_equal(copy[name], params[name])
        np.testing.assert_array_equal(state["m"][name], reference.m[name])
        np.testing.assert_array_equal(state["v"][name], reference.v[name])
    assert state["t"] == reference.t == 3


def test_traffic_counts_float32():
    decayed = adamw_traffic_per_param(np.float32, decay=True)
    assert decayed["multi_pass_passes"] == 14
    assert decayed["multi_pass_bytes_per_param"] == 4 * 33  # 19 reads + 14 writes
    assert decayed["single_pass_bytes_per_param"] == 4 * 7  # read p, g, m, v; write p, m, v
    assert decayed["ratio"] == pytest.approx(33 / 7)
    assert f"{decayed['ratio']:.1f}" == "4.7"  # as the docstring and notebook 05 quote it
    not_decayed = adamw_traffic_per_param(np.float32, decay=False)
    assert not_decayed["multi_pass_passes"] == 13
    assert not_decayed["multi_pass_bytes_per_param"] == 4 * 31
    assert not_decayed["single_pass_bytes_per_param"] == 4 * 7
    assert f"{not_decayed['ratio']:.1f}" == "4.4"


def test_decay_groups_over_seeds_pairs_the_runs_of_each_seed():
    data = np.random.default_rng(3).integers(0, TINY.vocab_size, size=300)
    val_data = np.random.default_rng(4).integers(0, TINY.vocab_size, size=100)
    options = dict(cfg=TINY, data=data, val_data=val_data, lr=1e-2, eval_every=3, eval_batches=2)
    runs = decay_groups_over_seeds([0, 1], 7, **options)
    assert list(runs["val_steps"]) == [3, 6, 7]  # every eval_every steps, and the last
    for label in ("decay_2d", "decay_all"):
        assert runs[label]["val_losses"].shape == (2, 3)
        assert np.all(np.isfinite(runs[label]["val_losses"]))
        np.testing.assert_array_equal(
            runs[label]["final_val_loss"], runs[label]["val_losses"][:, -1]
        )
    np.testing.assert_array_equal(
        runs["paired_final_difference"],
        runs["decay_all"]["final_val_loss"] - runs["decay_2d"]["final_val_loss"],
    )
    one_seed = decay_everything_vs_2d(7, seed=1, **options)  # stacked, not recomputed differently
    np.testing.assert_array_equal(
        runs["decay_all"]["val_losses"][1], one_seed["decay_all"]["val_losses"]
    )
    assert runs["decay_2d"]["val_losses"][0, 0] != runs["decay_2d"]["val_losses"][1, 0]  # new init
    with pytest.raises(ValueError, match="val_data"):
        decay_groups_over_seeds([0], 2, cfg=TINY, data=data)


def test_decoupled_decay_ignores_the_gradient_scale_and_l2_does_not():
    lr, weight_decay, steps = 1e-3, 0.1, 300
    result = decay_under_adam([0.0, 1e-2, 1.0, 100.0], lr, weight_decay, steps)
    shrink = result["decoupled_prediction"]
    assert shrink == pytest.approx((1 - lr * weight_decay) ** steps - 1)
    # decoupled: the same shrink whatever the gradient (the weight is ~1, so shift ~ prediction)
    np.testing.assert_allclose(result["shift_decoupled"], shrink, rtol=0.01)
    # L2 through Adam: without a loss gradient the penalty's own gradient is normalised to a
    # step of ~lr, far more than lr * wd; under a large gradient it is divided away
    shift_l2 = result["shift_l2"]
    assert shift_l2[0] < 5 * shrink < 0
    assert np.all(np.diff(shift_l2) > 0)  # less decay the larger the gradient
    assert abs(shift_l2[-1]) < abs(shrink) / 50


def test_decay_shrink_factor_constant_and_nanogpt_schedule():
    constant = decay_shrink_factor(0.1, 1e-3, 500)
    assert constant["sum_lr"] == pytest.approx(0.5)
    assert constant["eta_lambda_steps"] == pytest.approx(0.05)
    assert constant["shrink_factor"] == pytest.approx((1 - 1e-4) ** 500, rel=1e-12)
    # nanoGPT's GPT-2 124M run: warmup sums to lr * warmup / 2; the cosine's coefficients over
    # n points of a half period sum to (n + 1) / 2 exactly
    lr, min_lr, warmup, iters = 6e-4, 6e-5, 2000, 600_000
    run = decay_shrink_factor(0.1, lr, iters, warmup, iters, min_lr)
    cosine_steps = iters - warmup
    expected = lr * warmup / 2 + cosine_steps * min_lr + (cosine_steps + 1) / 2 * (lr - min_lr)
    assert run["sum_lr"] == pytest.approx(expected, rel=1e-12)
    assert run["shrink_factor"] == pytest.approx(math.exp(-run["eta_lambda_steps"]), rel=1e-3)
