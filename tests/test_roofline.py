"""The roofline model's counts against a real eager torch step: FLOPs per matmul as
torch.utils.flop_counter charges them, bytes per kernel group as the aten operators read and
write them (torch_impl.roofline_check's dispatch mode), for both attentions and every AdamW."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ref_numpy.config import GPTConfig
from ref_numpy.flops import exact_matmul_flops
from ref_numpy.roofline import (
    GROUPS,
    TRANSCENDENTALS,
    Kernel,
    attention_kernels,
    multi_tensor_launches,
    predict,
    step_kernels,
)
from ref_numpy.roofline.claims import flash_attention_claim
from ref_numpy.roofline.devices import GPUS, NUMPY_OPS, Device, gpu_for, measure_device
from torch_impl.roofline_check import kernel_group, make_step, trace_attention, trace_step

# every dimension different and above 1, so a swapped or dropped factor shows, and a
# size-1 dimension cannot make a copy unnecessary
CFG = GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16)
B, T = 3, 12  # T below block_size: the mask and wpe are sliced


def _model_bytes(kernels: list[Kernel]) -> dict[str, tuple[float, float]]:
    totals = defaultdict(lambda: [0.0, 0.0])
    for k in kernels:
        totals[k.group][0] += k.bytes_read
        totals[k.group][1] += k.bytes_written
    return {g: tuple(totals[g]) for g in GROUPS}


@pytest.mark.parametrize(
    "cfg", [CFG, dataclasses.replace(CFG, bias=False, gelu="tanh")], ids=["bias", "no-bias"]
)
@pytest.mark.parametrize("optimizer", ["foreach", "fused", "for_loop"])
@pytest.mark.parametrize("attention", ["materialised", "flash"])
def test_bytes_per_group_equal_the_aten_operators(attention, optimizer, cfg):
    records = trace_step(cfg, B, T, attention, optimizer)
    unmapped = [(r.op, r.phase, r.shapes) for r in records if r.group is None]
    assert not unmapped, f"operators the model has no kernel for: {unmapped}"
    measured = defaultdict(lambda: [0, 0])
    for r in records:
        measured[r.group][0] += r.bytes_read
        measured[r.group][1] += r.bytes_written
    model = _model_bytes(step_kernels(cfg, B, T, attention=attention, optimizer=optimizer))
    assert {g: tuple(measured[g]) for g in GROUPS} == model
    assert all(read > 0 and written > 0 for read, written in model.values())


@pytest.mark.parametrize("optimizer", ["foreach", "fused", "for_loop"])
def test_operator_calls_equal_the_aten_operators(optimizer):
    """The optimizer's calls (a foreach op on a CPU loops one call per tensor) and every other
    group's one call per kernel, against the step's operators that move memory."""
    records = trace_step(CFG, B, T, "flash", optimizer)
    kernels = step_kernels(CFG, B, T, attention="flash", optimizer=optimizer)
    model_kernels = sum(1 for k in kernels if k.group != "optimizer")
    assert model_kernels == sum(1 for r in records if r.phase != "optimizer")
    # in the optimizer every aten call is counted: a foreach op is one call here
    expected = {"fused": 2, "foreach": 15, "for_loop": 0}[optimizer]
    if optimizer == "for_loop":  # one call per tensor and pass: 8 passes decayed, 7 not
        shapes = [p.dim() for p in make_step(CFG, B, T, "flash", optimizer)[1].parameters()]
        expected = sum(8 if dim >= 2 else 7 for dim in shapes)
    assert sum(1 for r in records if r.phase == "optimizer") == expected


def test_matmul_flops_per_kernel_equal_flop_counter():
    """Each matmul of the materialised step (addmm, mm, bmm), as FlopCounterMode charges it."""
    records = trace_step(CFG, B, T, "materialised", "foreach")
    counted = sorted(r.flops for r in records if r.flops)
    kernels = step_kernels(CFG, B, T, attention="materialised")
    assert sorted(k.flops for k in kernels if k.tensor_cores) == counted
    step, _ = make_step(CFG, B, T, "materialised", "foreach")
    with FlopCounterMode(display=False) as counter:
        step()
    assert counter.get_total_flops() == sum(counted)


@pytest.mark.parametrize("attention", ["materialised", "flash"])
def test_matmul_flops_equal_exact_matmul_flops(attention):
    """One source of truth: the step's matmul FLOPs are flops.exact_matmul_flops per token
    (flash: the causal half, with the backward's recomputation of S), times the tokens."""
    kernels = step_kernels(CFG, B, T, attention=attention)
    flash = attention == "flash"
    exact = exact_matmul_flops(CFG, T, causal_skip=flash, recompute_scores=flash)
    by_group = {
        g: sum(k.flops for k in kernels if k.tensor_cores and k.group == g)
        for g in ("matmul", "attention")
    }
    assert by_group["matmul"] == (exact["linear"]["total"] + exact["lm_head"]["total"]) * B * T
    assert by_group["attention"] == exact["attention"]["total"] * B * T


@pytest.mark.parametrize("attention", ["materialised", "flash"])
def test_attention_alone_equals_the_aten_operators(attention):
    """Attention as the attention benchmark times it (q, k, v leaf tensors of their own, no
    c_attn views): kernel by kernel, the bytes and FLOPs the model lists."""
    records = trace_attention(2, 3, 12, 8, attention)
    kernels = attention_kernels(2, 3, 12, 8, dtype_bytes=4, attention=attention, device_type="cpu")
    assert [(r.bytes_read, r.bytes_written) for r in records] == [
        (k.bytes_read, k.bytes_written) for k in kernels
    ]
    if attention == "materialised":  # FlopCounterMode has no formula for the CPU flash kernel
        assert [r.flops for r in records] == [k.flops if k.tensor_cores else 0 for k in kernels]


def test_kernel_group_settles_add_and_sum_by_shape():
    assert kernel_group("add", "forward", [(3, 12, 16), (12, 16)]) == "bias/residual"
    assert kernel_group("add", "backward", [(64, 16), (64, 16)]) == "embedding"
    assert kernel_group("sum", "backward", [(36, 48)]) == "bias/residual"
    assert kernel_group("sum", "backward", [(3, 12, 16)]) == "embedding"
    assert kernel_group("mul", "optimizer", [(16,)]) == "optimizer"
    assert kernel_group("view", "forward", [(3, 12, 16)]) is None


def test_fused_elementwise_reads_a_chain_once_and_writes_what_is_read_later():
    """The chain after a block's attention c_proj (residual add, then ln_2) fused: it reads the
    stream, the c_proj output and ln_2's weight and bias, and writes the new stream (read by the
    next residual and by ln_2's backward), ln_2's output and its mean and rstd (read by c_fc and
    the backward). The sum alone moves 3 stream-sized tensors; fused, the chain moves 4 + stats
    where eager moved 3 + 4 + stats."""
    C, BT = CFG.n_embd, B * T
    eager = step_kernels(CFG, B, T, attention="flash")
    fused = step_kernels(CFG, B, T, attention="flash", fused_elementwise=True)
    chain = next(k for k in fused if "transformer.h.0 residual (attention)" in k.name)
    assert chain.name.endswith("transformer.h.0.ln_2 forward")
    assert chain.reads == {
        "x0": 4 * BT * C,
        "transformer.h.0.attn_out": 4 * BT * C,
        "p:transformer.h.0.ln_2.weight": 4 * C,
        "p:transformer.h.0.ln_2.bias": 4 * C,
    }
    assert chain.writes == {
        "x0a": 4 * BT * C,
        "transformer.h.0.ln_2": 4 * BT * C,
        "transformer.h.0.ln_2.mean": 4 * BT,
        "transformer.h.0.ln_2.rstd": 4 * BT,
    }
    assert sum(k.bytes for k in fused) < sum(k.bytes for k in eager)
    assert [k.flops for k in fused if k.tensor_cores] == [k.flops for k in eager if k.tensor_cores]
    assert sum(k.flops for k in fused) == sum(k.flops for k in eager)


def test_multi_tensor_launches():
    assert multi_tensor_launches([10], 4) == 1
    assert multi_tensor_launches([10] * 36, 4) == 1  # 36 tensors fill one launch of 4 lists
    assert multi_tensor_launches([10] * 37, 4) == 2
    assert multi_tensor_launches([320 * 65536], 1) == 1  # 320 chunks fill one launch
    assert multi_tensor_launches([320 * 65536 + 1], 1) == 2
    assert multi_tensor_launches([], 2) == 0


def test_predict_takes_the_higher_roof_and_adds_launches():
    device = Device("toy", {"bf16": 100.0}, 10.0, 10.0, {"exp": 5.0}, 0.5)
    assert device.ridge_point() == 10.0
    matmul = Kernel(
        "mm",
        "matmul",
        "forward",
        flops=2000.0,
        reads={"a": 50.0},
        writes={"b": 50.0},
        tensor_cores=True,
    )  # 20 s of FLOPs, 10 s of bytes
    add = Kernel(
        "add", "bias/residual", "forward", flops=10.0, reads={"b": 100.0}, writes={"c": 100.0}
    )  # 1 s of FLOPs, 20 s of bytes
    exp = Kernel(
        "exp",
        "gelu",
        "forward",
        reads={"c": 10.0},
        writes={"d": 10.0},
        transcendentals={"exp": 50.0},
    )  # 10 s of exp, 2 s of bytes
    prediction = predict([matmul, add, exp], device, "bf16")
    assert [k.bound for k in prediction.kernels] == ["compute", "memory", "transcendental"]
    assert [k.seconds for k in prediction.kernels] == [20.5, 20.5, 10.5]
    assert prediction.by_group()["matmul"] == 20.5
    assert prediction.memory_bound_share() == 20.5 / 51.5


def test_gpt2_on_h100_flash_and_fusion_only_remove_traffic():
    """At GPT-2 124M, T = 1024, bf16: the optimizations leave the matmul time alone and cut
    the rest; flash attention is the largest cut of the three."""
    gpt2 = GPTConfig(block_size=1024, vocab_size=50304, n_layer=12, n_head=12, n_embd=768)
    h100 = GPUS["H100 SXM"]

    def seconds(**options):
        kernels = step_kernels(gpt2, 16, dtype_bytes=2, **options)
        return predict(kernels, h100, "bf16", gpt2, 16 * 1024)

    eager = seconds(attention="materialised", optimizer="foreach")
    flash = seconds(attention="flash", optimizer="foreach")
    fused = seconds(attention="flash", optimizer="fused")
    compiled = seconds(attention="flash", optimizer="fused", fused_elementwise=True)
    assert eager.by_group()["matmul"] == compiled.by_group()["matmul"]
    assert eager.seconds > flash.seconds > fused.seconds > compiled.seconds
    assert eager.seconds - flash.seconds > flash.seconds - compiled.seconds
    assert 0 < compiled.mfu < 1


def test_every_gpu_names_its_sources():
    for device in GPUS.values():
        assert set(device.sources) == {
            "peak_flops",
            "bandwidth",
            "transcendentals",
            "launch_overhead",
        }
        assert device.ridge_point("bf16") > 100  # FLOPs per byte: every GPU here
        assert set(device.transcendentals) == set(TRANSCENDENTALS)


def test_this_machine_is_measured():
    fast = dataclasses.replace(NUMPY_OPS, matmul_ceiling=lambda: 1e9)  # the ceiling has its test
    device = measure_device(fast, "this CPU")
    rates = [device.bandwidth, device.launch_overhead, *device.transcendentals.values()]
    assert all(math.isfinite(r) and r > 0 for r in rates)
    assert set(device.transcendentals) == set(TRANSCENDENTALS)
    assert device.overhead_per == "call"


def test_step_kernels_rejects_what_it_cannot_model():
    with pytest.raises(ValueError, match="attention"):
        step_kernels(CFG, 1, attention="sdpa")
    with pytest.raises(ValueError, match="optimizer"):
        step_kernels(CFG, 1, optimizer="adam")
    with pytest.raises(ValueError, match="T must be"):
        step_kernels(CFG, 1, CFG.block_size + 1)


def test_trace_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    trace_step(CFG, 1, 4, "flash", "fused")
    assert torch.equal(torch.get_rng_state(), state)


def test_gpu_for_names_the_datasheet_entry():
    assert gpu_for("NVIDIA H100 80GB HBM3").name == "H100 SXM"
    assert gpu_for("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert gpu_for("NVIDIA H200").name == "H200"
    assert gpu_for("NVIDIA H100 NVL").name == "H100 NVL"
    assert gpu_for("NVIDIA H200 NVL").name == "H200 NVL"
    assert gpu_for("NVIDIA A100-SXM4-80GB").name == "A100 80GB"
    assert gpu_for("NVIDIA A100-SXM4-40GB").name == "A100 40GB"
    assert gpu_for("NVIDIA GeForce RTX 4090") is None


def test_gpu_measurements_stand_beside_their_predictions(tmp_path):
    """A GPU run of the benchmark in results/ (written here by hand, in the sections' format)
    is read back as measured speedups beside the model's for that GPU; quick runs and CPU runs
    are not read."""
    from torch_impl.bench.attention import MANUAL, SDPA_FLASH
    from torch_impl.bench.roofline import gpu_measurements

    run = {
        "device": "NVIDIA H100 80GB HBM3",
        "device_type": "cuda",
        "date": "2026-12-01",
        "quick": False,
        "attention": {
            "rows": [
                {
                    "implementation": MANUAL,
                    "T": 1024,
                    "head_dim": 64,
                    "forward_backward_seconds": 0.006,
                },
                {
                    "implementation": SDPA_FLASH,
                    "T": 1024,
                    "head_dim": 64,
                    "forward_backward_seconds": 0.002,
                },
            ]
        },
        "adamw": [
            {"implementation": "foreach", "seconds_per_step": 0.004},
            {"implementation": "fused", "seconds_per_step": 0.002},
        ],
        "train": {
            "variants": [
                {"variant": "all on", "tokens_per_second": 500.0, "mfu_vs_peak": 0.4},
                {"variant": "no compile", "tokens_per_second": 400.0, "mfu_vs_peak": 0.32},
            ]
        },
    }
    (tmp_path / "bench_nvidia_h100.json").write_text(json.dumps(run))
    (tmp_path / "bench_cpu.json").write_text(json.dumps({**run, "device_type": "cpu"}))
    (tmp_path / "bench_x_quick.json").write_text(json.dumps({**run, "quick": True}))
    found = gpu_measurements(tmp_path)
    assert list(found) == ["bench_nvidia_h100.json"]
    rows = found["bench_nvidia_h100.json"]["rows"]
    assert found["bench_nvidia_h100.json"]["model"] == "H100 SXM"
    assert rows["flash attention, T = 1024"]["measured"] == pytest.approx(3.0)
    assert rows["fused AdamW over foreach"]["measured"] == pytest.approx(2.0)
    assert rows["compile, whole step"]["measured"] == pytest.approx(1.25)
    assert rows["MFU, everything on"]["measured"] == 0.4
    h100 = GPUS["H100 SXM"]
    assert (
        rows["flash attention, T = 1024"]["predicted"]
        == (flash_attention_claim(h100, 1024)["speedup_over_materialised"])
    )
