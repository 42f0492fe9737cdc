"""The Triton FlashAttention-2 kernels against the NumPy reference and plain attention.

On a CPU the kernels run under Triton's interpreter (the module picks it at import when there is
no GPU), in float32 at small shapes whose T is off the block size: the output, L and the three
gradients within DESIGN.md's 2x rule of a float64 reference (`ref_numpy.flash_attention`, itself
checked against `attention_naive`), every output element written, and the GPT with
attention="triton" against "sdpa". On a GPU the same tests run compiled, and the `gpu` ones add
bfloat16 and float16 at T up to 4096 and a short GPT training run against "sdpa".
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import os
import sys

import numpy as np
import pytest
import torch

try:
    import triton  # noqa: F401
except ImportError:
    if torch.cuda.is_available():  # a GPU run is rare: its tests must fail, not pass by skipping
        raise ImportError(
            "the Triton kernels' GPU tests need the triton package: "
            "pip install -r requirements-triton.txt"
        ) from None
    pytest.skip(
        "the Triton kernels need: pip install -r requirements-triton.txt", allow_module_level=True
    )

TRITON_INTERPRET_BEFORE = os.environ.get("TRITON_INTERPRET")

import torch_impl  # noqa: E402
from ref_numpy.config import GPTConfig  # noqa: E402
from ref_numpy.flash_attention import (  # noqa: E402
    attention_naive,
    flash_attention_backward,
    flash_attention_forward,
)
from tests.numerics import rel_error  # noqa: E402
from torch_impl import triton_attention as ta  # noqa: E402
from torch_impl.model import GPT  # noqa: E402

DEVICE = "cpu" if ta.INTERPRETED else "cuda"
compiled_only = pytest.mark.skipif(
    ta.INTERPRETED, reason="long sequences and 16-bit tiles need the compiled kernels"
)

# The absolute slack of the 2x rule: half a float32 ulp of relative error. The kernels accumulate
# in float32, and in float32 the errors measured here are 1e-7 to 5e-7, a few roundings,
# where a plain implementation that happens to round luckily makes a factor of two mere noise;
# this floor keeps the test about the kernels' arithmetic. At bfloat16's errors (1e-3) it is nil.
SLACK = float(np.finfo(np.float32).eps) / 2


@contextlib.contextmanager
def nan_filled_allocations():
    """torch.empty hands out NaN-filled memory here, so an output element no kernel wrote shows."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def plain_attention(q, k, v, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v and the row logsumexp, materialised in the inputs' dtype."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        T = q.shape[-2]
        above = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(above, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def output_and_grads(attention, qkvdo, dtype: torch.dtype) -> list[torch.Tensor]:
    """[O, dQ, dK, dV] of attention(q, k, v) in `dtype` (float64 tensors or NumPy arrays in)."""
    q, k, v, do = (torch.as_tensor(x).to(device=DEVICE, dtype=dtype, copy=True) for x in qkvdo)
    for x in (q, k, v):
        x.requires_grad_()
    o = attention(q, k, v)
    o.backward(do)
    return [o.detach(), q.grad, k.grad, v.grad]


def as_numpy(x) -> np.ndarray:
    return x.detach().to(device="cpu", dtype=torch.float64).numpy() if torch.is_tensor(x) else x


def check_2x_rule(got, plain, reference, names) -> dict[str, tuple[float, float]]:
    """Every element written (finite) and err(got) <= 2 err(plain) + SLACK, per output."""
    errors = {}
    for name, g, p, r in zip(names, got, plain, reference):
        g, p, r = as_numpy(g), as_numpy(p), as_numpy(r)
        assert np.all(np.isfinite(g)), f"{name}: an element was never written (NaN) or overflowed"
        errors[name] = (rel_error(g, r), rel_error(p, r))
        assert errors[name][0] <= 2 * errors[name][1] + SLACK, (name, errors[name])
    return errors


# --- float32, under the interpreter on a CPU (compiled on a GPU) ------------------------------


# The interpreter's blocks are 32 queries x 16 keys (forward, dQ) and 16 x 32 (dK, dV): T = 37,
# 77, 100 and 50 end in a partial block of each, T = 64 in whole ones; d = 24 takes the
# zero-padding to 32; d = 64 and 128 are GPT-2's and the largest head dims.
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("T", "d"), [(37, 16), (77, 32), (64, 24), (100, 64), (50, 128)])
def test_float32_within_twice_plain_float32(T, d, causal, rng):
    q, k, v, do = (rng.standard_normal((2, 2, T, d)) for _ in range(4))
    ref_o, ref_lse = flash_attention_forward(q, k, v, causal, 16, 32)
    assert rel_error(ref_o, attention_naive(q, k, v, causal)) < 1e-12  # the reference, checked
    reference = [ref_o, *flash_attention_backward(q, k, v, ref_o, ref_lse, do, causal, 16, 32)]
    plain = output_and_grads(
        lambda *x: plain_attention(*x, causal)[0], (q, k, v, do), torch.float32
    )
    with nan_filled_allocations():
        got = output_and_grads(
            lambda *x: ta.triton_attention(*x, causal=causal), (q, k, v, do), torch.float32
        )
    assert all(x.dtype == torch.float32 and x.shape == (2, 2, T, d) for x in got)
    check_2x_rule(got, plain, reference, ("O", "dQ", "dK", "dV"))


@pytest.mark.parametrize("causal", [True, False])
def test_logsumexp_within_twice_plain_float32(causal, rng):
    """L, the one number per row the backward keeps, against NumPy's lse (natural log units)."""
    q, k, v = (rng.standard_normal((1, 3, 50, 16)) for _ in range(3))
    ref_o, ref_lse = flash_attention_forward(q, k, v, causal)
    q32, k32, v32 = (torch.tensor(x, dtype=torch.float32, device=DEVICE) for x in (q, k, v))
    with nan_filled_allocations():
        o, lse = ta.flash_attention_forward(q32, k32, v32, causal)
    assert lse.dtype == torch.float32 and lse.shape == (1, 3, 50)
    check_2x_rule((o, lse), plain_attention(q32, k32, v32, causal), (ref_o, ref_lse), ("O", "L"))


def test_one_token_attends_to_itself_alone(rng):
    """T = 1: the softmax of one score is 1, so O = V exactly, dV = P dO = dO but for the few
    roundings in P = exp2(S - L) (L went to natural units and back), and dQ, dK vanish but for
    the rounding of dS = P (dP - D), dP and D being two float32 dot products of the same d
    numbers: |dP - D| <= d eps sum|dO V| (the dot-product error bound, d u each)."""
    d = 32
    eps = np.finfo(np.float32).eps
    q, k, v, do = (rng.standard_normal((2, 3, 1, d)).astype(np.float32) for _ in range(4))
    with nan_filled_allocations():
        o, dq, dk, dv = output_and_grads(ta.triton_attention, (q, k, v, do), torch.float32)
    assert np.array_equal(as_numpy(o), v)
    assert np.all(np.abs(as_numpy(dv) - do) <= 4 * eps * np.abs(do))
    dS_bound = d * eps * np.abs(do * v).sum(-1, keepdims=True)
    # dQ = dS K / sqrt(d), dK = dS Q / sqrt(d); a factor 2 for the roundings after dS
    assert np.all(np.abs(as_numpy(dq)) <= 2 * dS_bound * np.abs(k) / math.sqrt(d))
    assert np.all(np.abs(as_numpy(dk)) <= 2 * dS_bound * np.abs(q) / math.sqrt(d))


def test_strided_inputs_give_the_same_bits(rng):
    """The model hands q, k, v over as views of one (B, T, 3, H, d) tensor: the kernels read
    them through their strides, with the same arithmetic as on contiguous copies."""
    qkv = torch.tensor(rng.standard_normal((2, 45, 3, 2, 16)), dtype=torch.float32, device=DEVICE)
    do = torch.tensor(rng.standard_normal((2, 2, 45, 16)), dtype=torch.float32, device=DEVICE)
    strided = [qkv[:, :, i].transpose(1, 2) for i in range(3)]  # (B, H, T, d), not contiguous
    assert not any(x.is_contiguous() for x in strided)
    contiguous = [x.contiguous() for x in strided]
    results = []
    for inputs in (strided, contiguous):
        leaves = [x.detach().requires_grad_() for x in inputs]
        o = ta.triton_attention(*leaves)
        o.backward(do)
        results.append([o, *(x.grad for x in leaves)])
    assert all(torch.equal(a, b) for a, b in zip(*results))


SMALL = GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32)  # head dim 16


def gpt_and_batch() -> tuple[GPT, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(SMALL, attention="triton").to(DEVICE)
    generator = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(0, 65, (2, 29), generator=generator).to(DEVICE) for _ in range(2))
    return model, idx, targets


def loss_and_grads(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> list[np.ndarray]:
    model.zero_grad()
    _, loss = model(idx, targets)
    loss.backward()
    grads = [p.grad.reshape(-1) for p in model.parameters()]
    return [as_numpy(loss), as_numpy(torch.cat(grads))]


def test_gpt_with_triton_attention_within_twice_sdpa():
    """One forward and backward of the GPT: loss and gradients in float32 with attention="triton",
    against a float64 model, within twice the error of the same float32 model with "sdpa"."""
    model, idx, targets = gpt_and_batch()
    reference_model = copy.deepcopy(model).double()
    reference_model.attention = "manual"
    reference = loss_and_grads(reference_model, idx, targets)
    sdpa_model = copy.deepcopy(model)
    sdpa_model.attention = "sdpa"
    plain = loss_and_grads(sdpa_model, idx, targets)
    got = loss_and_grads(model, idx, targets)
    check_2x_rule(got, plain, reference, ("loss", "grads"))


def test_model_and_module_import_without_triton(monkeypatch):
    """With triton absent both modules import, and asking for it names the fix."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    for name in ("model", "triton_attention"):  # fresh imports, the originals restored after
        monkeypatch.delitem(sys.modules, f"torch_impl.{name}")
        monkeypatch.setattr(torch_impl, name, getattr(torch_impl, name))
    model_module = importlib.import_module("torch_impl.model")
    fresh = importlib.import_module("torch_impl.triton_attention")
    assert not fresh.TRITON_AVAILABLE and not fresh.INTERPRETED
    model_module.GPT(SMALL)  # sdpa needs no triton
    with pytest.raises(ValueError, match=r"requirements-triton\.txt"):
        model_module.GPT(SMALL, attention="triton")
    x = torch.ones(1, 1, 4, 16)
    with pytest.raises(ValueError, match=r"requirements-triton\.txt"):
        fresh.triton_attention(x, x, x)


def test_the_environment_is_left_as_it_was():
    assert os.environ.get("TRITON_INTERPRET") == TRITON_INTERPRET_BEFORE


def test_bad_inputs_are_refused_with_a_reason():
    x = torch.ones(1, 2, 8, 16, device=DEVICE)
    with pytest.raises(ValueError, match="dtype"):
        ta.triton_attention(x.double(), x.double(), x.double())
    with pytest.raises(ValueError, match="one shape"):
        ta.triton_attention(x, x, x[:, :, :4])
    with pytest.raises(ValueError, match="head_dim"):
        ta.triton_attention(*(torch.ones(1, 1, 8, 160, device=DEVICE) for _ in range(3)))
    dropout = GPT(
        GPTConfig(block_size=8, vocab_size=65, n_layer=1, n_head=1, n_embd=16, dropout=0.1)
    )
    dropout.attention = "triton"
    with pytest.raises(ValueError, match="dropout"):
        dropout.to(DEVICE)(torch.zeros(1, 8, dtype=torch.long, device=DEVICE))


# --- torch.compile: the kernels as operators of the torch library -------------------------------


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches emptied before and after, so no test sees another's compiled frames."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_the_operators_pass_opcheck(rng):
    """torch.library.opcheck runs each operator eagerly, on fake tensors (its registered shapes),
    through AOTAutograd, and checks the schema and the autograd registration against them."""
    q, k, v, do = (
        torch.tensor(rng.standard_normal((1, 2, 20, 16)), dtype=torch.float32, device=DEVICE)
        for _ in range(4)
    )
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    torch.library.opcheck(ta._forward_op, (*leaves, True, 0.25))
    o, L = ta._forward_op(q, k, v, True, 0.25)
    torch.library.opcheck(ta._backward_op, (q, k, v, o, L, do, True, 0.25))


def test_gpt_with_triton_attention_traces_as_one_graph(fresh_dynamo):
    """Dynamo traces the GPT's forward and loss whole: no graph break at the attention (the
    torch.compiler.disable it once had broke the graph in every layer), and each layer's
    attention is one node, the forward operator."""
    model, idx, targets = gpt_and_batch()
    explanation = torch._dynamo.explain(model)(idx, targets)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    (graph,) = explanation.graphs
    calls = [n for n in graph.graph.nodes if n.target is torch.ops.nanogpt.flash_forward.default]
    assert len(calls) == SMALL.n_layer


def test_compiled_gpt_gives_the_eager_loss_and_gradients(fresh_dynamo):
    """torch.compile with AOTAutograd (aot_eager: the traced graphs run op by op, so that the
    compiled model does the eager arithmetic) and fullgraph=True, which raises on a graph break:
    the same bits as the eager model, the backward through the registered autograd formula."""
    model, idx, targets = gpt_and_batch()
    eager = loss_and_grads(model, idx, targets)
    compiled = loss_and_grads(
        torch.compile(model, backend="aot_eager", fullgraph=True), idx, targets
    )
    assert all(np.array_equal(a, b) for a, b in zip(eager, compiled))


# --- GPU: 16-bit inputs at long T, a training run -----------------------------------------------


@pytest.mark.gpu
@compiled_only
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("T", "d", "dtype"),
    [
        (1000, 64, torch.bfloat16),
        (1000, 128, torch.bfloat16),
        (4096, 64, torch.bfloat16),
        (4096, 128, torch.bfloat16),
        (1000, 64, torch.float16),
    ],
)
def test_16_bit_within_twice_plain_16_bit(T, d, dtype, causal):
    generator = torch.Generator(device=DEVICE).manual_seed(T + d)
    qkvdo = [
        torch.randn((1, 4, T, d), generator=generator, device=DEVICE, dtype=torch.float64)
        for _ in range(4)
    ]
    reference = output_and_grads(lambda *x: plain_attention(*x, causal)[0], qkvdo, torch.float64)
    plain = output_and_grads(lambda *x: plain_attention(*x, causal)[0], qkvdo, dtype)
    with nan_filled_allocations():
        got = output_and_grads(lambda *x: ta.triton_attention(*x, causal=causal), qkvdo, dtype)
    assert all(x.dtype == dtype for x in got)
    check_2x_rule(got, plain, reference, ("O", "dQ", "dK", "dV"))


def train(model: GPT, batches, dtype: torch.dtype) -> list[np.ndarray]:
    """Losses of a short AdamW run (bf16: under autocast, as torch_impl.train runs it) and the
    parameters it ends with."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    bf16 = dtype == torch.bfloat16
    losses = []
    for idx, targets in batches:
        with torch.autocast("cuda", dtype=dtype) if bf16 else contextlib.nullcontext():
            _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    params = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    return [np.array(losses), as_numpy(params)]


@pytest.mark.gpu
@compiled_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpt_training_with_triton_within_twice_sdpa(dtype):
    """20 steps on a learnable sequence (next = 7 * token + 3 mod 65): the loss curve and the
    final weights with "triton", against a float64 run, within twice the error of "sdpa"."""
    cfg = GPTConfig(block_size=256, vocab_size=65, n_layer=2, n_head=4, n_embd=128)  # d = 32
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(20):
        tokens = torch.randint(0, 65, (8, 1), generator=generator)
        for _ in range(cfg.block_size):
            tokens = torch.cat([tokens, (7 * tokens[:, -1:] + 3) % 65], dim=1)
        batches.append(
            (tokens[:, :-1].contiguous().to(DEVICE), tokens[:, 1:].contiguous().to(DEVICE))
        )
    torch.manual_seed(0)
    model = GPT(cfg, attention="triton").to(DEVICE)
    runs = {}
    for attention, run_dtype in (("manual", torch.float64), ("sdpa", dtype), ("triton", dtype)):
        replica = copy.deepcopy(model)
        replica.attention = attention
        param_dtype = torch.float64 if run_dtype == torch.float64 else torch.float32
        runs[attention] = train(replica.to(param_dtype), batches, run_dtype)
    assert runs["manual"][0][-1] < runs["manual"][0][0] - 0.5  # it learns: the curve is not flat
    check_2x_rule(runs["triton"], runs["sdpa"], runs["manual"], ("losses", "weights"))
