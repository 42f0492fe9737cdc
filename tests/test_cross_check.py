"""torch_impl.cross_check: the NumPy and torch runs agree in float64 to rounding at the default
learning rate, and at a larger one the same rounding differences grow chaotically (the module's
comment, pinned); the unigram baseline; and reading the saved GPU cross-check
(torch_impl.cross_check_report), whose numbers notebook 07 prints."""

import numpy as np
import pytest
import torch

from ref_numpy import bpe
from ref_numpy.data import decode, load_meta, load_split
from tests.numerics import rel_error
from torch_impl import cross_check
from torch_impl.cross_check import cross_check_runs, flat_params, sample_text, unigram_loss
from torch_impl.cross_check_report import (
    load_cross_check,
    plot_seed_errors,
    seed_statistics,
    yardstick_ratios,
)
from torch_impl.gpu_cross_check import METRICS, RUNS, UNIT_ROUNDOFF
from torch_impl.numpy_bridge import numpy_params

# float64 rounding: a unit roundoff of 1.1e-16, times the differences in summation order between
# the two implementations (measured: a few 1e-15 over 50 steps); 1e-13 leaves a factor of ~20.
ROUNDING = 1e-13


def test_float64_runs_agree_and_sample(corpus_dir):
    result = cross_check_runs(steps=5, batch_size=4, float32=False, data_dir=corpus_dir)
    assert result["numpy64"].shape == result["torch64"].shape == (5,)
    assert np.all(result["step_error_torch64"] < ROUNDING)
    assert result["param_error_torch64"] < 1e-8
    assert result["steps"] == 5 and result["batch_size"] == 4 and result["lr"] == cross_check.LR
    assert 0 < result["unigram_loss"] < np.log(result["config"].vocab_size)
    text = sample_text(result["torch_model"], result["chars"], n_tokens=20, seed=0)
    assert len(text) == 21  # the prompt "\n" and 20 sampled characters


def test_float64_runs_agree_on_a_bpe_vocabulary(corpus_dir):
    """The NumPy embedding and cross-entropy take any vocabulary: on byte-level BPE tokens (512
    of them, not the corpus's 84 characters) the two runs still agree to rounding."""
    text = decode(load_split(corpus_dir, "train")[:100_000], load_meta(corpus_dir)["chars"])
    tokenizer = bpe.train_bpe(text, 512)
    tokens = bpe.encode(tokenizer, text)
    cfg = cross_check.small_config(vocab_size=tokenizer.get_vocab_size())
    assert cfg.vocab_size == 512 and tokens.max() > 255  # merged tokens are trained on
    numpy_losses, numpy_final = cross_check.numpy_run(cfg, tokens, 5, 4, 0, np.float64)
    torch_losses, torch_model = cross_check.torch_run(cfg, tokens, 5, 4, 0, torch.float64)
    assert np.all(np.abs(torch_losses - numpy_losses) / np.abs(numpy_losses) < ROUNDING)
    final = (flat_params(p) for p in (numpy_params(torch_model), numpy_final))
    assert rel_error(*final) < 1e-8


@pytest.mark.slow
def test_rounding_differences_grow_chaotically_at_a_larger_learning_rate(corpus_dir):
    """cross_check.py's comment: at LR = 3e-3 the float64 runs agree to rounding at every one of
    the 50 steps; at 1e-2 the differences of the last ten steps are more than 1e4 times those of
    the first ten (measured: from ~2e-16 to ~2e-10, about 7e5-fold)."""
    data = load_split(corpus_dir, "train")
    cfg = cross_check.small_config(vocab_size=84)
    growth = {}
    for lr in (cross_check.LR, 1e-2):
        numpy_losses, _ = cross_check.numpy_run(cfg, data, 50, 8, 0, np.float64, lr=lr)
        torch_losses, _ = cross_check.torch_run(cfg, data, 50, 8, 0, torch.float64, lr=lr)
        errors = np.abs(torch_losses - numpy_losses) / np.abs(numpy_losses)
        if lr == cross_check.LR:
            assert np.all(errors < ROUNDING)
        growth[lr] = errors[-10:].max() / max(errors[:10].max(), np.finfo(np.float64).eps / 2)
    assert growth[1e-2] > 1e4
    assert growth[1e-2] > 100 * growth[cross_check.LR]


def test_unigram_loss_is_the_entropy_of_the_frequencies():
    tokens = np.array([0, 0, 1, 2])  # frequencies 1/2, 1/4, 1/4
    assert unigram_loss(tokens, vocab_size=5) == pytest.approx(1.5 * np.log(2), rel=1e-15)


def test_saved_cpu_cross_check_reads_and_its_statistics_hold():
    report = load_cross_check()  # results/gpu_cross_check_cpu.json, committed
    statistics = seed_statistics(report)
    n_seeds = len(report["seeds"])
    assert n_seeds >= 5
    for run in RUNS:
        for metric in METRICS:
            entry = statistics[run.name][metric]
            # the report's own means, which its checks judge
            assert entry["mean"] == pytest.approx(
                report["mean_errors"][run.name][metric], rel=1e-12
            )
            assert len(entry["per_seed"]) == n_seeds and entry["standard_error"] > 0
    for check in report["checks"]:
        plain = statistics[check["yardstick"]][check["metric"]]["mean"]
        precision = next(r.precision for r in RUNS if r.name == check["run"])
        assert check["bound"] == pytest.approx(2 * plain + UNIT_ROUNDOFF[precision], rel=1e-12)
    ratios = yardstick_ratios(report, "bfloat16", "val_error")
    bf16 = [r.name for r in RUNS if r.precision == "bfloat16"]
    assert ratios == pytest.approx(
        np.array(
            [
                s["runs"][bf16[0]]["val_error"] / s["runs"][bf16[1]]["val_error"]
                for s in report["per_seed"]
            ]
        )
    )


def test_saved_cross_check_plots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plot_seed_errors(load_cross_check())
    assert len(figure.axes) == len(METRICS)
    plt.close(figure)
