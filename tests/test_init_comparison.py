"""The residual-init training runs of notebook 02: plain and scaled runs of one seed differ only in
the c_proj weights, every run is evaluated on the same batches, and worker processes give the
same runs as one process."""

import math

import numpy as np
import pytest

from ref_numpy.gpt import GPTConfig, init_params
from torch_impl.init_comparison import RunSizes, compare_inits, train_run

TINY = RunSizes(n_embd=16, n_head=2, block_size=8, batch_size=2, steps=4, eval_interval=2)


def test_plain_and_scaled_inits_of_a_seed_differ_only_in_c_proj():
    cfg = GPTConfig(block_size=8, vocab_size=20, n_layer=3, n_head=2, n_embd=16)
    plain = init_params(cfg, seed=7, scaled_residual_init=False)
    scaled = init_params(cfg, seed=7, scaled_residual_init=True)
    for name in plain:
        if name.endswith("c_proj.weight"):  # the same draws, scaled by 1/sqrt(2 n_layer)
            np.testing.assert_allclose(scaled[name], plain[name] / math.sqrt(6), rtol=1e-12)
        else:
            np.testing.assert_array_equal(scaled[name], plain[name])


def test_train_run_records_every_step_and_the_evaluations(corpus_dir):
    run = train_run(2, True, seed=0, sizes=TINY, data_dir=corpus_dir)
    assert run["loss"].shape == (4,)
    np.testing.assert_array_equal(run["eval_step"], [0, 2, 4])
    assert run["val_loss"].shape == (3,)
    assert np.all(np.isfinite(run["loss"])) and np.all(np.isfinite(run["val_loss"]))
    again = train_run(2, True, seed=0, sizes=TINY, data_dir=corpus_dir)
    np.testing.assert_array_equal(run["loss"], again["loss"])
    plain = train_run(2, False, seed=0, sizes=TINY, data_dir=corpus_dir)
    assert not np.array_equal(run["val_loss"], plain["val_loss"])


@pytest.mark.slow
def test_worker_processes_give_the_runs_of_one_process(corpus_dir):
    one = compare_inits((1, 2), (0, 1), TINY, corpus_dir, processes=1)
    workers = compare_inits((1, 2), (0, 1), TINY, corpus_dir, processes=2)
    assert sorted(one) == [(1, False), (1, True), (2, False), (2, True)]
    for key, result in one.items():
        assert result["loss"].shape == (2, 4) and result["val_loss"].shape == (2, 3)
        # the workers run torch on one thread; these tensors are too small for torch to split
        # over threads here, but a different reduction order would still be rounding: 1e-6
        np.testing.assert_allclose(workers[key]["loss"], result["loss"], rtol=1e-6)
        np.testing.assert_allclose(workers[key]["val_loss"], result["val_loss"], rtol=1e-6)
