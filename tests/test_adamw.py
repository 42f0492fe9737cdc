"""AdamW, gradient clipping and the learning-rate schedule against torch, in float64."""

import math

import numpy as np
import pytest
import torch

from ref_numpy.adamw import AdamW, clip_grad_norm, split_decay
from ref_numpy.schedule import get_lr
from tests.numerics import rel_error

SHAPES = {
    "a.weight": (6, 5),
    "a.bias": (6,),
    "emb.weight": (9, 4),
    "ln.weight": (4,),
    "w3": (2, 3, 4),
}


def test_split_decay_by_ndim(rng):
    params = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    decay, no_decay = split_decay(params)
    assert decay == ["a.weight", "emb.weight", "w3"]
    assert no_decay == ["a.bias", "ln.weight"]


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_100_steps_match_torch_adamw(implementation, rng):
    params = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    torch_params = {n: torch.tensor(p, requires_grad=True) for n, p in params.items()}
    decay, no_decay = split_decay(params)
    groups = [
        {"params": [torch_params[n] for n in decay], "weight_decay": 0.1},
        {"params": [torch_params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    torch_opt = torch.optim.AdamW(
        groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, **{implementation: True}
    )
    opt = AdamW(params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(100):
        lr = get_lr(step, 1e-2, warmup_iters=10, lr_decay_iters=100, min_lr=1e-3)
        grads = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
        opt.step(grads, lr=lr)
        for group in torch_opt.param_groups:
            group["lr"] = lr
        for n, p in torch_params.items():
            p.grad = torch.tensor(grads[n])
        torch_opt.step()
    for n, p in params.items():
        assert rel_error(p, torch_params[n].detach().numpy()) < 1e-12, n
        state = torch_opt.state[torch_params[n]]
        assert rel_error(opt.m[n], state["exp_avg"].numpy()) < 1e-12
        assert rel_error(opt.v[n], state["exp_avg_sq"].numpy()) < 1e-12


def test_decay_touches_only_2d_parameters(rng):
    """With zero gradients Adam's update is 0, so only the decoupled decay moves parameters."""
    params = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    before = {n: p.copy() for n, p in params.items()}
    AdamW(params, lr=0.5, weight_decay=0.1).step({n: np.zeros(s) for n, s in SHAPES.items()})
    for n, p in params.items():
        expected = before[n] * (1 - 0.5 * 0.1) if p.ndim >= 2 else before[n]
        np.testing.assert_array_equal(p, expected)


def test_state_dict_round_trip_continues_exactly(rng):
    make = lambda: {n: np.ones(s) for n, s in SHAPES.items()}  # noqa: E731
    grads = [{n: rng.standard_normal(s) for n, s in SHAPES.items()} for _ in range(4)]
    a_params, b_params = make(), make()
    a = AdamW(a_params, lr=0.1)
    for g in grads:
        a.step(g)
    b = AdamW(b_params, lr=0.1)
    for g in grads[:2]:
        b.step(g)
    saved = b.state_dict()
    c = AdamW({n: p.copy() for n, p in b_params.items()}, lr=0.1)
    c.load_state_dict(saved)
    for g in grads[2:]:
        c.step(g)
    for n in a_params:
        np.testing.assert_array_equal(a_params[n], c.params[n])


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_clip_grad_norm_matches_torch(scale, rng):
    grads = {n: scale * rng.standard_normal(s) for n, s in SHAPES.items()}
    tensors = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm=1.0)
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert abs(norm - torch_norm.item()) / torch_norm.item() < 1e-14
    for t, g in zip(tensors, grads.values()):
        assert rel_error(g, t.grad.numpy()) < 1e-14
    clipped = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    assert clipped <= 1.0 + 1e-12


def test_schedule_warmup_cosine_and_floor():
    kwargs = dict(learning_rate=1.0, warmup_iters=10, lr_decay_iters=110, min_lr=0.1)
    lrs = [get_lr(it, **kwargs) for it in range(130)]
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)  # linear warmup
    assert lrs[10] == 1.0  # peak where the cosine starts
    assert lrs[60] == pytest.approx(0.1 + 0.5 * 0.9)  # halfway down the cosine
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))  # decays monotonically
    assert all(lr == 0.1 for lr in lrs[110:])  # then holds min_lr
    assert get_lr(5, decay_lr=False, **kwargs) == 1.0
    assert get_lr(3, 1.0, warmup_iters=5, lr_decay_iters=5, min_lr=0.2) == pytest.approx(4 / 6)
    assert get_lr(5, 1.0, warmup_iters=5, lr_decay_iters=5, min_lr=0.2) == 0.2  # no 0/0
