"""FLOP counts: the formulas pinned for GPT-2 124M, the exact matmul count checked against torch's
FlopCounterMode on the torch mirror and against the matmuls the NumPy GPT does (counted), model
against hardware FLOPs, the vocabulary padding, and the device peak table.

The integers quoted in `ref_numpy/flops.py`'s docstring and printed by notebooks/06 are pinned here
exactly (tolerance 0): they are counts from integer arithmetic, the same on every machine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ref_numpy.config import GPTConfig
from ref_numpy.flash_attention import flash_attention
from ref_numpy.flops import (
    PEAK_FLOPS,
    MatmulFlopCounter,
    compare_with_formulas,
    count_matmul_flops,
    count_params,
    exact_matmul_flops,
    flops_per_token,
    flops_per_token_llmc,
    matmul_ceiling,
    measured_training_flops,
    mfu,
    model_and_hardware_flops,
    pad_vocab_size,
    peak_flops_for,
)
from torch_impl.model import GPT

GPT2 = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768, bias=True)


def test_gpt2_124m_formulas():
    # nanoGPT: 6N + 12*L*H*Q*T with N = 123,689,472 (wpe excluded, tied wte included)
    assert count_params(GPT2) == 123_689_472
    assert flops_per_token(GPT2) == 855_383_040
    # llm.c: 6N + 6*L*C*T with its own N, every parameter (wpe's 1024 x 768 included)
    assert count_params(GPT2, non_embedding=False) == 124_475_904 == 123_689_472 + 1024 * 768
    assert flops_per_token_llmc(GPT2) == 6 * 124_475_904 + 6 * 12 * 768 * 1024 == 803_478_528


def test_gpt2_124m_exact_vs_formulas():
    comparison = compare_with_formulas(GPT2)
    assert comparison["exact"] == 854_654_976
    assert comparison["exact_causal_skip"] == 798_031_872
    # 6N over-counts by 6 FLOPs per bias / LayerNorm parameter, and by nothing else
    assert comparison["one_dimensional_params"] == 121_344
    assert comparison["six_n_minus_exact"] == 6 * 121_344 == 728_064
    assert comparison["nanogpt"] - comparison["exact"] == 6 * 121_344
    # llm.c's N adds wpe, 6 FLOPs per lookup-only parameter on top
    assert comparison["wpe_params"] == 786_432
    assert comparison["llmc"] == flops_per_token_llmc(GPT2)
    assert comparison["llmc"] - comparison["exact_causal_skip"] == 6 * (121_344 + 786_432)
    # nanoGPT's attention term is the full T^2 count, llm.c's the causal half
    assert comparison["nanogpt_attention"] == comparison["exact_attention"]
    assert comparison["llmc_attention"] == comparison["exact_attention_causal_skip"]


def test_gpt2_124m_model_against_hardware_flops():
    # flash attention's backward recomputes S = Q K^T: one more 2*T*Q matmul per head and layer
    full = model_and_hardware_flops(GPT2)
    assert full["model"] == 854_654_976
    assert full["recompute"] == 12 * 12 * 2 * 1024 * 64 == 18_874_368
    assert full["hardware"] == 873_529_344
    assert full["ratio"] == pytest.approx(873_529_344 / 854_654_976, rel=1e-15)
    causal = model_and_hardware_flops(GPT2, causal_skip=True)
    assert causal["recompute"] == 18_874_368 / 2
    assert causal["model"] == 798_031_872


def test_vocabulary_padding():
    assert pad_vocab_size(50257) == 50304 == 64 * 786
    assert pad_vocab_size(50304) == 50304
    assert pad_vocab_size(65, 8) == 72
    with pytest.raises(ValueError, match="vocab_size"):
        pad_vocab_size(0)
    unpadded = GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
    assert count_params(GPT2) - count_params(unpadded) == 47 * 768 == 36_096
    assert flops_per_token(GPT2) - flops_per_token(unpadded) == 6 * 36_096


def test_exact_terms_add_up():
    report = exact_matmul_flops(GPT2, 1024)
    assert report["embedding"]["total"] == 0
    assert report["lm_head"]["total"] == 6 * 768 * 50304
    for term in ("lm_head", "linear"):  # backward = dx and dW, each as costly as the forward
        assert report[term]["backward"] == 2 * report[term]["forward"]
    assert report["attention"]["backward"] == 2 * report["attention"]["forward"]
    halved = exact_matmul_flops(GPT2, 1024, causal_skip=True)
    assert halved["attention"]["total"] == report["attention"]["total"] / 2
    assert halved["linear"] == report["linear"]


@pytest.mark.parametrize(
    ("cfg", "T"),
    [
        (GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32), 16),
        (GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=4, n_embd=32, bias=False), 8),
    ],
)
def test_exact_count_equals_torch_flop_counter(cfg, T):
    """FlopCounterMode counts 2*m*n*k for mm/addmm/bmm (matmul decomposes into these), forward
    and backward, and nothing for embedding lookups, softmax, LayerNorm, GELU, adds, bias adds or
    the loss: exactly the matmuls `exact_matmul_flops` counts. Every dx is needed (the input of
    the first block carries wte's gradient), so torch's backward does them all."""
    torch.manual_seed(0)
    model = GPT(cfg, attention="manual")  # the T x T matmuls as plain matmuls, not a fused kernel
    B = 3
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    counter = FlopCounterMode(display=False)
    with counter:
        _, loss = model(idx, idx)
        loss.backward()
    assert counter.get_total_flops() == exact_matmul_flops(cfg, T)["total"]["total"] * B * T


def test_peak_flops_lookup():
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989.5e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops_for("NVIDIA A100 80GB PCIe", "tf32") == 156e12
    assert peak_flops_for("NVIDIA H200") == 989.5e12
    assert peak_flops_for("NVIDIA H100 NVL") == 835.5e12  # the NVL cards have their own
    assert peak_flops_for("NVIDIA H200 NVL", "fp32") == 60e12
    assert peak_flops_for("NVIDIA L4") == 121e12
    assert peak_flops_for("NVIDIA L40S") == PEAK_FLOPS["L40S"]["bf16"]
    assert peak_flops_for("NVIDIA A10G") == PEAK_FLOPS["A10G"]["bf16"]
    assert peak_flops_for("NVIDIA GeForce RTX 4090") == 165.2e12
    assert peak_flops_for("Tesla V100-SXM2-16GB", "fp16") == 125e12
    assert peak_flops_for("Tesla V100-SXM2-16GB") is None  # no bf16 on Volta
    assert peak_flops_for("Some Unknown GPU") is None


def test_mfu_arithmetic():
    # the throughput whose estimated FLOP/s is half of a 4 TFLOP/s peak
    assert mfu(GPT2, 2e12 / flops_per_token(GPT2), 4e12) == pytest.approx(0.5)
    # 40% of an H100's datasheet bf16 peak, the peak looked up by the name torch reports
    h100 = peak_flops_for("NVIDIA H100 80GB HBM3")
    assert mfu(GPT2, 989.5e12 * 0.4 / flops_per_token(GPT2), h100) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(GPT2, 1.0, 0.0)


def test_matmul_ceiling_is_a_throughput():
    ceiling = matmul_ceiling(n=256, repeats=2)
    assert math.isfinite(ceiling) and ceiling > 1e6  # any machine does a MFLOP/s
    assert mfu(GPT2, ceiling / flops_per_token(GPT2), ceiling) == pytest.approx(1.0)


def test_matmul_counter_counts_what_numpy_multiplies():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5, 7)), rng.standard_normal((7, 2))
    product, flops = count_matmul_flops(lambda x, y: np.exp(x) @ y + 1.0, a, b)
    assert flops == 2 * 3 * 5 * 2 * 7
    np.testing.assert_array_equal(np.asarray(product), np.exp(a) @ b + 1.0)
    counter = MatmulFlopCounter()
    x = counter.wrap(a)
    x[..., 0] += 1.0  # in place, with out=: still the counter's array, nothing multiplied
    assert counter.flops == 0 and type(x) is type(counter.wrap(b))


SMALL = GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32)


def test_counted_numpy_gpt_equals_the_exact_count():
    """The NumPy GPT's forward and backward, counted matmul by matmul: the model FLOPs of
    `exact_matmul_flops` with the naive attention; with flash attention in one tile (nothing
    skipped) exactly one more T^2 matmul per head and layer, the recomputed S."""
    assert measured_training_flops(SMALL) == exact_matmul_flops(SMALL, 32)["total"]["total"]
    one_tile = measured_training_flops(SMALL, attention=flash_attention(32, 32))
    assert one_tile == exact_matmul_flops(SMALL, 32, recompute_scores=True)["total"]["total"]
    # 16 x 16 tiles skip the tile above the diagonal: between the causal half and the full count
    tiled = measured_training_flops(SMALL, attention=flash_attention(16, 16))
    causal = exact_matmul_flops(SMALL, 32, causal_skip=True, recompute_scores=True)
    assert causal["total"]["total"] < tiled < one_tile
