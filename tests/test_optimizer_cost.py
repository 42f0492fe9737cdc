"""Decay groups counted for GPT-2 124M, decaying everything against 2-D only, and the two AdamW
step functions that count memory traffic checked bitwise against `ref_numpy.adamw.AdamW`."""

from __future__ import annotations

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
    decay_report,
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
    not_decayed = adamw_traffic_per_param(np.float32, decay=False)
    assert not_decayed["multi_pass_bytes_per_param"] == 4 * 31
    assert not_decayed["single_pass_bytes_per_param"] == 4 * 7
