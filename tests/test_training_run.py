"""A whole training run, NumPy against torch: 50 steps on the Shakespeare corpus.

Both sides start from the same parameters (ref_numpy.gpt.init_params), draw the same batches
(one BatchSampler each, same seed), follow the same schedule (ref_numpy.schedule.get_lr), clip
at 1.0 and decay at 0.1, through the trainers' own `train_step` functions; the torch side uses
SDPA attention and fused AdamW. The two runs are torch_impl.cross_check's (notebook 07 plots them).
"""

import numpy as np
import pytest
import torch

from ref_numpy.data import load_split
from tests.numerics import rel_error
from torch_impl import cross_check

CFG = cross_check.small_config(vocab_size=84)
STEPS, BATCH, SEED = 50, 8, 0  # learning rate and schedule: torch_impl.cross_check (and why)
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def numpy_run(data, dtype, accumulation, seed=SEED):
    return cross_check.numpy_run(CFG, data, STEPS, BATCH, seed, dtype, accumulation)


def torch_run(data, dtype, accumulation, seed=SEED):
    losses, model = cross_check.torch_run(CFG, data, STEPS, BATCH, seed, dtype, accumulation)
    return losses, {n: p.detach().double().numpy() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def train_data(corpus_dir):
    data = load_split(corpus_dir, "train")
    assert int(data.max()) < CFG.vocab_size
    return data


@pytest.fixture(scope="module")
def reference_run(train_data):
    return numpy_run(train_data, np.float64, accumulation=1)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_float64_runs_agree_step_by_step(train_data, reference_run, accumulation):
    if accumulation == 1:
        numpy_losses, numpy_params = reference_run
    else:
        numpy_losses, numpy_params = numpy_run(train_data, np.float64, accumulation)
    torch_losses, torch_params = torch_run(train_data, torch.float64, accumulation)
    step_errors = np.abs(torch_losses - numpy_losses) / np.abs(numpy_losses)
    param_error = rel_error(
        cross_check.flat_params(torch_params), cross_check.flat_params(numpy_params)
    )
    print(
        f"accumulation {accumulation}: max per-step loss rel error {step_errors.max():.3e}, "
        f"final params rel error {param_error:.3e}"
    )
    assert np.all(step_errors < 1e-9)
    assert param_error < 1e-8
    assert numpy_losses[-1] < numpy_losses[0] - 0.5  # and it does learn


def test_float32_torch_is_as_close_as_plain_float32(train_data, reference_run):
    """DESIGN.md's rule: torch float32's error against the float64 reference is at most twice
    that of a plain float32 implementation (the NumPy GPT run in float32), plus a slack of
    1.2e-7 (float32's machine epsilon: a float32 loss is itself rounded that much).

    Training amplifies every rounding difference by the same chaotic factor (~100x in these 50
    steps), so for a single seed the ratio of two float32 runs' errors scatters: over seeds 0-5
    it ranged 0.8-2.1 on the final parameters. The rule is therefore applied to the mean error
    over three seeds (each seed its own init and batches), where the scatter averages out.
    """
    errors = {"plain": [], "torch": []}  # per seed: (loss-curve error, final-parameter error)
    for seed in (0, 1, 2):
        reference_losses, reference_params = (
            reference_run if seed == SEED else numpy_run(train_data, np.float64, 1, seed)
        )
        for name, (losses, params) in (
            ("plain", numpy_run(train_data, np.float32, 1, seed)),
            ("torch", torch_run(train_data, torch.float32, 1, seed)),
        ):
            errors[name].append(
                (
                    rel_error(losses, reference_losses),
                    rel_error(
                        cross_check.flat_params(params), cross_check.flat_params(reference_params)
                    ),
                )
            )
    plain, torch32 = np.mean(errors["plain"], axis=0), np.mean(errors["torch"], axis=0)
    print(
        f"mean over 3 seeds, loss curve: plain float32 {plain[0]:.3e}, torch float32 "
        f"{torch32[0]:.3e}; final params: plain {plain[1]:.3e}, torch {torch32[1]:.3e}"
    )
    assert torch32[0] <= 2 * plain[0] + FLOAT32_EPS
    assert torch32[1] <= 2 * plain[1] + FLOAT32_EPS
