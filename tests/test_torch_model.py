"""The torch GPT on its own: names, init, attention backends, optimizer groups, interop, sampling.

Equality with the NumPy reference lives in its own test file; here the torch model is checked
against its contract (nanoGPT's names and semantics) and against itself (sdpa vs manual).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ref_numpy.config import GPTConfig
from ref_numpy.errors import UserError
from ref_numpy.flops import count_params, flops_per_token, mfu
from torch_impl.model import GPT, fused_adamw_available
from torch_impl.numpy_bridge import load_numpy_params, numpy_params

SMALL = GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def random_tokens(cfg: GPTConfig, batch: int, time: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, time), generator=generator)


def make_model(cfg: GPTConfig = SMALL, seed: int = 0, **kwargs) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg, **kwargs)


def expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """nanoGPT's parameter names and shapes, written out from the config."""
    C, V = cfg.n_embd, cfg.vocab_size
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}"
        layer = {
            f"{h}.ln_1.weight": (C,),
            f"{h}.ln_1.bias": (C,),
            f"{h}.attn.c_attn.weight": (3 * C, C),
            f"{h}.attn.c_attn.bias": (3 * C,),
            f"{h}.attn.c_proj.weight": (C, C),
            f"{h}.attn.c_proj.bias": (C,),
            f"{h}.ln_2.weight": (C,),
            f"{h}.ln_2.bias": (C,),
            f"{h}.mlp.c_fc.weight": (4 * C, C),
            f"{h}.mlp.c_fc.bias": (4 * C,),
            f"{h}.mlp.c_proj.weight": (C, 4 * C),
            f"{h}.mlp.c_proj.bias": (C,),
        }
        shapes.update(layer)
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    if not cfg.bias:
        shapes = {name: shape for name, shape in shapes.items() if not name.endswith(".bias")}
    return shapes


# --- names, shapes, tying -------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_names_and_shapes_are_nanogpts(bias):
    cfg = GPTConfig(block_size=16, vocab_size=65, n_layer=3, n_head=2, n_embd=32, bias=bias)
    model = make_model(cfg)
    actual = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert list(actual) == list(expected_shapes(cfg))
    assert actual == expected_shapes(cfg)
    # the checkpoint also carries the tied matrix under lm_head, and never the causal mask
    assert list(model.state_dict()) == list(expected_shapes(cfg)) + ["lm_head.weight"]


def test_lm_head_is_tied_to_wte_and_listed_once():
    model = make_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    names = [name for name, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and names.count("transformer.wte.weight") == 1


# --- initialisation -------------------------------------------------------------------------------


def test_init_statistics():
    cfg = GPTConfig(block_size=64, vocab_size=64, n_layer=6, n_head=6, n_embd=384)
    model = make_model(cfg)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    checked = 0
    for name, p in model.named_parameters():
        values = p.detach().double()
        if name.endswith(".bias"):
            assert torch.all(values == 0), name
        elif ".ln_" in name:
            assert torch.all(values == 1), name
        else:
            target = residual_std if name.endswith("c_proj.weight") else 0.02
            n = values.numel()
            # For n normal samples the sample mean has std target/sqrt(n) and the sample std has
            # relative std 1/sqrt(2n); 5 of those standard errors fail by chance ~1e-6 of the time.
            assert abs(values.mean().item()) < 5 * target / math.sqrt(n), name
            assert abs(values.std().item() / target - 1) < 5 / math.sqrt(2 * n), name
            checked += 1
    assert checked == 2 + 4 * cfg.n_layer  # wte, wpe and four matrices per block


# --- forward: attention backends, lengths, variants -----------------------------------------------


def loss_and_grads(model: GPT, idx: torch.Tensor, targets: torch.Tensor):
    model.zero_grad(set_to_none=True)
    logits, loss = model(idx, targets)
    loss.backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("time", [SMALL.block_size, 11])
def test_sdpa_equals_manual_attention_in_float64(time):
    model = make_model().double()
    idx, targets = random_tokens(SMALL, 3, time, seed=1), random_tokens(SMALL, 3, time, seed=2)
    logits_sdpa, grads_sdpa = loss_and_grads(model, idx, targets)
    model.attention = "manual"
    logits_manual, grads_manual = loss_and_grads(model, idx, targets)
    assert logits_sdpa.shape == (3, time, SMALL.vocab_size)
    assert torch.isfinite(logits_sdpa).all()
    assert relative_error(logits_sdpa, logits_manual) < 1e-12
    assert grads_sdpa.keys() == grads_manual.keys() == dict(model.named_parameters()).keys()
    for name in grads_sdpa:
        assert relative_error(grads_sdpa[name], grads_manual[name]) < 1e-12, name


def test_unknown_attention_raises():
    with pytest.raises(ValueError, match="attention"):
        GPT(SMALL, attention="flash")
    model = make_model()
    with pytest.raises(ValueError, match="attention"):
        model.attention = "flash"
    assert model.attention == "sdpa"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's refusal")
def test_cudnn_attention_is_refused_off_cuda_in_one_line():
    model = make_model(attention="cudnn")
    with pytest.raises(UserError, match="runs on a CUDA GPU only"):
        model(random_tokens(SMALL, 1, 4))


@pytest.mark.gpu
def test_cudnn_attention_is_as_exact_as_sdpa_on_a_gpu():
    """DESIGN.md's rule for a low-precision path: bf16 logits with cuDNN's attention are within
    twice the error of SDPA's own choice (flash), plus one bf16 unit roundoff, of float64's."""
    model = make_model()
    tokens = random_tokens(SMALL, 2, SMALL.block_size)
    reference, _ = make_model().double()(tokens, tokens)
    model = model.cuda()
    errors = {}
    for attention in ("sdpa", "cudnn"):
        model.attention = attention
        with torch.autocast("cuda", torch.bfloat16):
            logits, _ = model(tokens.cuda(), tokens.cuda())
        difference = logits.detach().double().cpu() - reference.detach()
        errors[attention] = float(difference.norm() / reference.detach().norm())
    assert errors["cudnn"] <= 2 * errors["sdpa"] + 2.0**-8, errors


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_sequence_longer_than_block_size_raises(attention):
    model = make_model(attention=attention)
    with pytest.raises(ValueError, match="block_size"):
        model(random_tokens(SMALL, 1, SMALL.block_size + 1))


def test_without_targets_only_the_last_position_is_scored():
    model = make_model()
    idx = random_tokens(SMALL, 2, 9)
    full_logits, _ = model(idx, random_tokens(SMALL, 2, 9, seed=1))
    last_logits, loss = model(idx)
    assert loss is None and last_logits.shape == (2, 1, SMALL.vocab_size)
    torch.testing.assert_close(last_logits, full_logits[:, -1:, :])


def test_ignored_targets_drop_out_of_the_mean():
    model = make_model().double()
    idx, targets = random_tokens(SMALL, 2, 8), random_tokens(SMALL, 2, 8, seed=1)
    logits, _ = model(idx, targets)
    targets[0, :3] = -1
    _, loss = model(idx, targets)
    kept = targets != -1
    by_hand = torch.nn.functional.cross_entropy(logits[kept], targets[kept])
    assert relative_error(loss, by_hand) < 1e-14


@pytest.mark.parametrize(
    "variant", [{"bias": False}, {"gelu": "tanh"}, {"bias": False, "gelu": "tanh"}]
)
def test_variants_run_forward_and_backward(variant):
    cfg = GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, **variant)
    model = make_model(cfg)
    logits, grads = loss_and_grads(model, random_tokens(cfg, 2, 16), random_tokens(cfg, 2, 16, 1))
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())


def test_tanh_gelu_differs_from_erf_gelu():
    erf_model = make_model()
    tanh_model = GPT(GPTConfig(**{**SMALL.to_dict(), "gelu": "tanh"}))
    tanh_model.load_state_dict(erf_model.state_dict())
    idx = random_tokens(SMALL, 2, 16)
    erf_logits, tanh_logits = erf_model(idx)[0], tanh_model(idx)[0]
    assert not torch.equal(erf_logits, tanh_logits)
    # the tanh form approximates erf's GELU to about 1e-3, so the logits stay close
    torch.testing.assert_close(erf_logits, tanh_logits, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_dropout_is_random_in_training_and_off_in_eval(attention):
    cfg = GPTConfig(**{**SMALL.to_dict(), "dropout": 0.2})
    model = make_model(cfg, attention=attention)
    idx = random_tokens(cfg, 2, 16)
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_crop_block_size_keeps_the_logits_of_short_sequences():
    model = make_model(attention="manual")
    idx = random_tokens(SMALL, 2, 8)
    before, _ = model(idx, idx)
    model.crop_block_size(8)
    assert model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, SMALL.n_embd)
    assert model.transformer.h[0].attn.causal_mask.shape == (8, 8)
    after, _ = model(idx, idx)
    assert torch.equal(before, after)
    with pytest.raises(ValueError, match="block_size"):
        model(random_tokens(SMALL, 1, 9))
    with pytest.raises(ValueError, match="block_size"):
        model.crop_block_size(9)


# --- optimizer ------------------------------------------------------------------------------------


def test_configure_optimizers_decays_exactly_the_matrices():
    model = make_model()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    params = list(model.parameters())
    assert {id(p) for p in decay["params"]} == {id(p) for p in params if p.dim() >= 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in params if p.dim() < 2}
    assert len(decay["params"]) + len(no_decay["params"]) == len(params)
    n_decay = sum(p.numel() for p in decay["params"])
    n_no_decay = sum(p.numel() for p in no_decay["params"])
    assert n_decay + n_no_decay == model.get_num_params(non_embedding=False)


def test_configure_optimizers_fused_flag_on_cpu():
    model = make_model()
    automatic = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    assert bool(automatic.defaults["fused"]) == fused_adamw_available("cpu")
    explicit_off = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", fused=False)
    assert not explicit_off.defaults["fused"] and explicit_off.defaults["foreach"]


@pytest.mark.skipif(not fused_adamw_available("cpu"), reason="this torch has no fused CPU AdamW")
def test_fused_and_foreach_adamw_take_the_same_step_in_float64():
    # One step: from the second on, rounding differences in the parameters change the gradients,
    # and Adam divides each gradient by its own running size, which amplifies them for elements
    # whose gradient is near eps; that is Adam's conditioning, not a difference of implementation.
    idx, targets = random_tokens(SMALL, 2, 16), random_tokens(SMALL, 2, 16, seed=1)
    results = []
    for fused in (True, False):
        model = make_model().double()
        opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu", fused=fused)
        loss_and_grads(model, idx, targets)
        opt.step()
        results.append(dict(model.named_parameters()))
    fused_params, foreach_params = results
    for name, p in foreach_params.items():
        assert relative_error(fused_params[name].detach(), p.detach()) < 1e-12, name


# --- interop: NumPy dicts and nanoGPT checkpoints -------------------------------------------------


def test_numpy_params_round_trip():
    source, target = make_model(seed=0), make_model(seed=1)
    arrays = numpy_params(source)
    assert {k: v.shape for k, v in arrays.items()} == expected_shapes(SMALL)
    assert all(v.dtype == np.float32 for v in arrays.values())
    load_numpy_params(target, arrays)
    for name, p in target.named_parameters():
        assert torch.equal(p, dict(source.named_parameters())[name]), name
    arrays["transformer.wte.weight"][:] = 0  # the dict holds copies, not views of the model
    assert source.transformer.wte.weight.abs().sum() > 0


def test_load_numpy_params_converts_to_the_model_dtype():
    model = make_model()
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape) for name, shape in expected_shapes(SMALL).items()}
    load_numpy_params(model, arrays)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p, torch.from_numpy(arrays[name]).float()), name
    assert model.lm_head.weight is model.transformer.wte.weight


def test_load_numpy_params_names_every_mismatch():
    model = make_model()
    arrays = numpy_params(model)
    del arrays["transformer.h.1.ln_2.bias"]
    arrays["transformer.h.9.attn.c_attn.weight"] = np.zeros((3, 3))
    arrays["transformer.wpe.weight"] = np.zeros((SMALL.block_size + 1, SMALL.n_embd))
    with pytest.raises(ValueError) as error:
        load_numpy_params(model, arrays)
    for name in (
        "transformer.h.1.ln_2.bias",
        "transformer.h.9.attn.c_attn.weight",
        "transformer.wpe.weight",
    ):
        assert name in str(error.value)


def nanogpt_checkpoint(model: GPT) -> dict[str, torch.Tensor]:
    """What nanoGPT's train.py saves for a compiled model from an older, mask-buffer nanoGPT."""
    state = dict(model.state_dict())
    size = model.config.block_size
    mask = torch.tril(torch.ones(size, size)).view(1, 1, size, size)
    for i in range(model.config.n_layer):
        state[f"transformer.h.{i}.attn.bias"] = mask
    return {f"_orig_mod.{key}": value.clone() for key, value in state.items()}


@pytest.mark.parametrize("assign", [False, True])
def test_nanogpt_state_dict_loads_and_reproduces_the_logits(assign):
    source, target = make_model(seed=0), make_model(seed=1)
    checkpoint = nanogpt_checkpoint(source)
    assert "_orig_mod.lm_head.weight" in checkpoint
    assert "_orig_mod.transformer.h.0.attn.bias" in checkpoint
    target.load_state_dict(checkpoint, assign=assign)
    assert target.lm_head.weight is target.transformer.wte.weight
    idx = random_tokens(SMALL, 2, 16)
    assert torch.equal(target(idx, idx)[0], source(idx, idx)[0])


def test_state_dict_with_untied_lm_head_is_refused():
    model = make_model()
    checkpoint = nanogpt_checkpoint(model)
    checkpoint["_orig_mod.lm_head.weight"] = torch.zeros(SMALL.vocab_size, SMALL.n_embd)
    with pytest.raises(ValueError, match="lm_head"):
        model.load_state_dict(checkpoint)


# --- sampling -------------------------------------------------------------------------------------


def test_generate_shape_range_and_determinism():
    model = make_model().eval()
    prompt = random_tokens(SMALL, 3, 5)
    n_new = 2 * SMALL.block_size  # runs past block_size, so the context must be cropped
    outputs = [
        model.generate(
            prompt, n_new, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(42)
        )
        for _ in range(2)
    ]
    assert outputs[0].shape == (3, 5 + n_new) and outputs[0].dtype == torch.long
    assert torch.equal(outputs[0][:, :5], prompt)
    assert outputs[0].min() >= 0 and outputs[0].max() < SMALL.vocab_size
    assert torch.equal(outputs[0], outputs[1])


def test_generate_with_top_k_one_is_greedy_decoding():
    model = make_model().eval()
    idx = random_tokens(SMALL, 2, 4)
    sampled = model.generate(idx, 20, top_k=1, generator=torch.Generator().manual_seed(0))
    greedy = idx
    with torch.no_grad():
        for _ in range(20):
            logits, _ = model(greedy[:, -SMALL.block_size :])
            greedy = torch.cat((greedy, logits[:, -1, :].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(sampled, greedy)


def test_generate_rejects_a_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        make_model().generate(random_tokens(SMALL, 1, 3), 2, temperature=0.0)


# --- parameter counts and FLOPs -------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("non_embedding", [True, False])
def test_count_params_matches_the_model(bias, non_embedding):
    cfg = GPTConfig(block_size=24, vocab_size=71, n_layer=3, n_head=4, n_embd=48, bias=bias)
    assert count_params(cfg, non_embedding) == make_model(cfg).get_num_params(non_embedding)


def test_flops_per_token_by_hand():
    cfg = GPTConfig(block_size=8, vocab_size=10, n_layer=2, n_head=2, n_embd=4, bias=True)
    # wte 10*4 = 40; per block: ln_1 + ln_2 = 16, c_attn 48 + 12 = 60, attn.c_proj 16 + 4 = 20,
    # c_fc 64 + 16 = 80, mlp.c_proj 64 + 4 = 68, so 244; ln_f 8; wpe (8*4) left out
    n_params = 40 + 2 * 244 + 8
    assert count_params(cfg) == n_params == 536
    L, H, Q, T = 2, 2, 2, 8
    assert flops_per_token(cfg) == 6 * 536 + 12 * L * H * Q * T == 3984
    model = make_model(cfg)
    # 4 sequences of T tokens in 0.5 s on a device of 1 MFLOP/s peak
    n_params = model.get_num_params()
    assert mfu(cfg, 4 * 8 / 0.5, 1e6, n_params) == pytest.approx(
        3984 * 8 * 4 / 0.5 / 1e6, rel=1e-15
    )
