"""ref_numpy.precision against torch: rounding to bf16 and fp16 bit for bit, the NumPy GPT under
an explicit bf16 autocast against torch's CPU autocast (both judged against a float64
reference, the 2x rule), and the loss scaler against torch.amp.GradScaler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ref_numpy.config import GPTConfig
from ref_numpy.gpt import backward, forward, init_params
from ref_numpy.precision import (
    FORMATS,
    Autocast,
    LossScaler,
    below_normal,
    flushed_to_zero,
    relative_error,
    round_to_bf16,
    round_to_fp16,
    round_to_tf32,
)
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params


def _pattern_classes() -> np.ndarray:
    """float32 bit patterns of every class a rounding can get wrong, as float32 values."""
    patterns = [
        0x00000000,
        0x80000000,  # +-0
        0x00000001,
        0x007FFFFF,
        0x80000001,  # float32 subnormals
        0x00800000,
        0x7F7FFFFF,
        0xFF7FFFFF,  # smallest normal, largest finite
        0x7F800000,
        0xFF800000,  # +-inf
        0x3F808000,
        0x3F818000,  # exact bf16 ties: 1 + 2^-8 (to even: 1), 1 + 3 * 2^-8 (up)
        0x3F807FFF,
        0x3F808001,  # just below and above the tie
        0x3F801000,
        0x3F803000,  # fp16 ties: 1 + 2^-11, 1 + 3 * 2^-11
        0x477FE000,
        0x477FF000,
        0x477FEFFF,  # fp16: 65504, the tie to inf, just below it
        0x33800000,
        0x33000000,
        0x33C00000,  # fp16: 2^-24, 2^-25 (tie to 0), 1.5 * 2^-24
        0x38800000,
        0x387FC000,  # fp16: smallest normal 2^-14, just below it
    ]
    return np.array(patterns, dtype=np.uint32).view(np.float32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    assert np.array_equal(nan_a, nan_b)
    assert np.array_equal(a[~nan_a].view(np.uint32), b[~nan_b].view(np.uint32))


@pytest.mark.parametrize(
    "ours, dtype", [(round_to_bf16, torch.bfloat16), (round_to_fp16, torch.float16)]
)
def test_rounding_equals_torch_bit_for_bit(ours, dtype):
    rng = np.random.default_rng(0)
    random = rng.integers(0, 2**32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate([_pattern_classes(), random.view(np.float32)])
    values = np.concatenate([values, np.array([np.nan, -np.nan], dtype=np.float32)])
    torchs = torch.from_numpy(values.copy()).to(dtype).to(torch.float32).numpy()
    _same_bits(ours(values), torchs)


def test_rounding_keeps_what_the_format_can_hold():
    x = np.array([1.0, 0.5, -3.0, 2.0**-20], dtype=np.float32)
    for round_to in (round_to_bf16, round_to_fp16, round_to_tf32):
        _same_bits(round_to(x[:3]), x[:3])
    assert round_to_tf32(np.float32(1 + 2**-11)) == 1.0  # a tie, to even
    assert round_to_tf32(np.float32(1 + 3 * 2**-11)) == np.float32(1 + 2**-9)
    rng = np.random.default_rng(1)
    y = rng.standard_normal(100_000).astype(np.float32)
    rounders = (("bf16", round_to_bf16), ("fp16", round_to_fp16), ("tf32", round_to_tf32))
    for name, round_to in rounders:  # within the normal range: below it, fewer bits remain
        normal = y[np.abs(y) >= FORMATS[name].smallest_normal]
        relative = np.abs(round_to(normal) - normal) / np.abs(normal)
        assert relative.max() <= FORMATS[name].unit_roundoff


def test_format_constants():
    assert FORMATS["bf16"].unit_roundoff == 2.0**-8
    assert FORMATS["fp16"].unit_roundoff == 2.0**-11
    assert FORMATS["fp32"].unit_roundoff == 2.0**-24
    assert FORMATS["fp16"].largest_normal == 65504.0
    assert FORMATS["fp16"].smallest_normal == 2.0**-14
    assert FORMATS["fp16"].smallest_subnormal == 2.0**-24
    assert FORMATS["bf16"].largest_normal == float(torch.finfo(torch.bfloat16).max)
    assert FORMATS["bf16"].smallest_normal == float(torch.finfo(torch.bfloat16).tiny)
    assert FORMATS["fp32"].largest_normal == float(np.finfo(np.float32).max)


def test_flush_and_subnormal_fractions():
    values = np.array([1.0, 2.0**-14, 2.0**-20, 2.0**-26, 0.0], dtype=np.float32)
    assert flushed_to_zero(values) == 0.25  # 2^-26 rounds to 0; zeros are not counted
    assert below_normal(values) == 0.5  # 2^-20 and 2^-26


# ----------------------------------------------------------------------------- autocast
CFG = GPTConfig(block_size=16, vocab_size=48, n_layer=2, n_head=2, n_embd=32)


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, CFG.vocab_size, (4, 12)), rng.integers(0, CFG.vocab_size, (4, 12)))


def _numpy_run(params: dict, idx, targets, autocast: Autocast | None):
    logits, loss, cache = forward(params, CFG, idx, targets, autocast=autocast)
    return logits, loss, backward(cache)


def _torch_run(params64: dict, idx, targets, autocast: bool):
    model = GPT(CFG, attention="manual")
    load_numpy_params(model, {n: p.astype(np.float32) for n, p in params64.items()})
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, loss = model(torch.from_numpy(idx), torch.from_numpy(targets))
    loss.backward()
    grads = {n: p.grad.double().numpy() for n, p in model.named_parameters()}
    return logits.float().detach().numpy(), loss.item(), grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_bf16_autocast_matches_torch_by_the_2x_rule(seed):
    """Forward (logits, loss) and backward (every gradient) of the NumPy GPT with bf16 rounded
    where torch's CPU autocast rounds, and of torch under that autocast, both against the
    float64 reference: each error at most twice the other's (plus a slack of one bf16 unit
    roundoff's share of float32 noise), i.e. the two emulate the same arithmetic."""
    params64 = init_params(CFG, seed=seed, dtype=np.float64)
    params32 = {n: p.astype(np.float32) for n, p in params64.items()}
    idx, targets = _batch(seed)
    reference = _numpy_run(params64, idx, targets, None)
    ours = _numpy_run(params32, idx, targets, Autocast("bf16"))
    theirs = _torch_run(params64, idx, targets, autocast=True)
    plain32 = _numpy_run(params32, idx, targets, None)
    pairs = [("logits", ours[0], theirs[0], reference[0], plain32[0])]
    pairs += [(n, ours[2][n], theirs[2][n], reference[2][n], plain32[2][n]) for n in reference[2]]
    for name, a, b, ref, f32 in pairs:
        error_ours, error_torch = relative_error(a, ref), relative_error(b, ref)
        slack = relative_error(f32, ref)  # float32's own error: the floor below which 2x is noise
        assert error_ours <= 2 * error_torch + slack, (name, error_ours, error_torch)
        assert error_torch <= 2 * error_ours + slack, (name, error_ours, error_torch)
        assert error_ours > 10 * slack, name  # bf16 shows in both: neither is float32 by accident
    # The loss is one number, its error one draw of the rounding (two runs' draws can differ
    # tenfold either way), so the 2x rule, which compares spreads, does not apply; both losses
    # are held to the error of the logits they are computed from instead.
    logits_error = relative_error(theirs[0], reference[0])
    for loss in (ours[1], theirs[1]):
        assert abs(loss - reference[1]) / abs(reference[1]) <= logits_error


# ----------------------------------------------------------------------------- loss scaling
def test_loss_scaler_follows_grad_scaler_through_overflows():
    """The same true gradients, scaled and rounded to fp16 as an fp16 backward makes them (inf
    where the scaled value overflows), fed to torch.amp.GradScaler and to LossScaler: the same
    scale before every step, the same steps skipped, the same parameters after."""
    rng = np.random.default_rng(0)
    options = dict(init_scale=2.0**24, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    ours = LossScaler(scale=options["init_scale"], growth_interval=3)
    theirs = torch.amp.GradScaler("cpu", **options)
    p_torch = torch.zeros(64, requires_grad=True)
    opt = torch.optim.SGD([p_torch], lr=0.1)
    p_ours = np.zeros(64, dtype=np.float32)
    magnitudes = [1e-1, 1e-2, 1e-3, 1e-1, 1.0, 1e-4, 1e-6, 1e-2, 1e-8, 10.0] * 3
    torch_history = []
    for magnitude in magnitudes:
        true_grad = (rng.standard_normal(64) * magnitude).astype(np.float32)
        # torch: the backward of the scaled loss, in fp16
        scale = theirs.scale(torch.tensor(1.0)).item()  # a loss of 1, scaled
        p_torch.grad = torch.from_numpy(round_to_fp16(true_grad * np.float32(scale)))
        skipped_before = p_torch.detach().clone()
        theirs.step(opt)
        theirs.update()
        torch_history.append((scale, bool(torch.equal(p_torch.detach(), skipped_before))))
        # ours: the same, by hand
        scaled = {"p": round_to_fp16(true_grad * np.float32(ours.scale_loss(1.0)))}
        grads, found_inf = ours.unscale(scaled)
        if not found_inf:  # the same SGD arithmetic as torch's, so only the scaler differs
            p_ours = torch.from_numpy(p_ours).add_(torch.from_numpy(grads["p"]), alpha=-0.1).numpy()
        ours.update(found_inf)
    assert [s for s, _ in ours.history] == [s for s, _ in torch_history]
    skips = [skipped for _, skipped in ours.history]
    assert skips == [skipped for _, skipped in torch_history]
    assert any(skips) and not all(skips)  # the run overflows, and recovers
    assert len({s for s, _ in ours.history}) > 3  # the scale went down and up
    np.testing.assert_array_equal(p_ours, p_torch.detach().numpy())
