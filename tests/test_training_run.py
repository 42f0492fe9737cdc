"""A whole training run, NumPy against torch: 50 steps on the Shakespeare corpus.

Both sides start from the same parameters (ref_numpy.gpt.init_params), draw the same batches
(one BatchSampler each, same seed), follow the same schedule (ref_numpy.schedule.get_lr), clip
at 1.0 and decay at 0.1, through the trainers' own `train_step` functions; the torch side uses
SDPA attention and fused AdamW.
"""

import numpy as np
import pytest
import torch

from ref_numpy.adamw import AdamW
from ref_numpy.data import BatchSampler, load_split
from ref_numpy.gpt import GPTConfig, init_params
from ref_numpy.schedule import get_lr
from ref_numpy.train import train_step as numpy_train_step
from tests.numerics import rel_error
from torch_impl.model import GPT
from torch_impl.train import train_step as torch_train_step

CFG = GPTConfig(block_size=32, vocab_size=84, n_layer=2, n_head=2, n_embd=32)
STEPS, BATCH, SEED = 50, 8, 0
# At learning rate 3e-3 the two float64 runs agree to rounding (~1e-15 per step). At 1e-2 this
# tiny model trains in a chaotic regime: the same rounding differences grow ~1e5-fold in 50
# steps (measured: 2e-10 on the last losses), which tests the dynamics, not the arithmetic.
LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, GRAD_CLIP = 3e-3, 3e-4, 10, 0.1, (0.9, 0.95), 1.0


FLOAT32_EPS = float(np.finfo(np.float32).eps)


def schedule(it):
    return get_lr(it, LR, WARMUP, STEPS, MIN_LR)


def numpy_run(data, dtype, accumulation, seed=SEED):
    params = init_params(CFG, seed=seed, dtype=dtype)
    opt = AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    sampler = BatchSampler(data, CFG.block_size, BATCH, seed=seed)
    losses = []
    for it in range(STEPS):
        micro = [sampler.next_batch() for _ in range(accumulation)]
        losses.append(numpy_train_step(params, CFG, opt, micro, schedule(it), GRAD_CLIP)[0])
    return np.array(losses), params


def torch_run(data, dtype, accumulation, seed=SEED):
    model = GPT(CFG, attention="sdpa").to(dtype)
    model.load_numpy_params(init_params(CFG, seed=seed))  # cast to the model's dtype
    opt = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu", fused=True)
    sampler = BatchSampler(data, CFG.block_size, BATCH, seed=seed)
    losses = []
    for it in range(STEPS):
        micro = [sampler.next_batch() for _ in range(accumulation)]
        losses.append(torch_train_step(model, opt, micro, schedule(it), GRAD_CLIP)[0])
    return np.array(losses), {n: p.detach().double().numpy() for n, p in model.named_parameters()}


def flat(params):
    return np.concatenate([params[n].reshape(-1) for n in sorted(params)]).astype(np.float64)


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
    print(
        f"accumulation {accumulation}: max per-step loss rel error {step_errors.max():.3e}, "
        f"final params rel error {rel_error(flat(torch_params), flat(numpy_params)):.3e}"
    )
    assert np.all(step_errors < 1e-9)
    assert rel_error(flat(torch_params), flat(numpy_params)) < 1e-8
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
                    rel_error(flat(params), flat(reference_params)),
                )
            )
    plain, torch32 = np.mean(errors["plain"], axis=0), np.mean(errors["torch"], axis=0)
    print(
        f"mean over 3 seeds, loss curve: plain float32 {plain[0]:.3e}, torch float32 "
        f"{torch32[0]:.3e}; final params: plain {plain[1]:.3e}, torch {torch32[1]:.3e}"
    )
    assert torch32[0] <= 2 * plain[0] + FLOAT32_EPS
    assert torch32[1] <= 2 * plain[1] + FLOAT32_EPS
