"""torch_impl.cross_check: a few steps of the NumPy and torch runs agree in float64."""

import numpy as np

from torch_impl.cross_check import cross_check_runs, sample_text


def test_float64_runs_agree_and_sample(corpus_dir):
    result = cross_check_runs(steps=5, batch_size=4, float32=False, data_dir=corpus_dir)
    assert result["numpy64"].shape == result["torch64"].shape == (5,)
    assert np.all(result["step_error_torch64"] < 1e-9)
    assert result["param_error_torch64"] < 1e-8
    text = sample_text(result["torch_model"], result["chars"], n_tokens=20, seed=0)
    assert len(text) == 21  # the prompt "\n" and 20 sampled characters
