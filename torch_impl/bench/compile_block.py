"""One transformer block, forward and backward, eager against compiled: what torch.compile gives
a block, and what compiling it costs.

The "compile" section of `python -m torch_impl.bench` (`--sections compile`). The block is one of
the model the train section times (GPT-2 124M's under bf16 autocast on a GPU; the model `make
train` trains, in float32, on the CPU), fed a random input that requires a gradient, so that the
backward runs through the whole block. torch.compile's inductor generates the block's kernels
(C++ on a CPU, Triton on a GPU); `--quick` traces with "aot_eager" instead, which runs the code
path without generating kernels. The first compiled call's time (tracing and code generation) is
reported apart; inductor caches what it generates on disk, so it is the full cost only on a first
run; after a warm-up the two are timed interleaved and reported as medians.
Notebook 09 reads this section's saved result; the roofline model's bound for the same fusion is
`ref_numpy.roofline.fused_runs`.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from torch_impl.bench.common import BenchOptions, bar_figure, timed_model
from torch_impl.bench.timing import interleaved_times, synchronize
from torch_impl.bench.train import QUICK_COMPILE_BACKEND
from torch_impl.model import Block
from torch_impl.report import format_table
from torch_impl.runtime import autocast_for, resolve_dtype


def run(options: BenchOptions) -> dict:
    """Time one block's forward and backward, eager and compiled, interleaved."""
    device = options.device
    cfg, batch_size = timed_model(device.type, options.quick)
    batch_size = options.batch_size or batch_size
    dtype = resolve_dtype("auto", device)  # bf16 autocast on a GPU that has it, else float32
    torch.manual_seed(0)
    block = Block(cfg).to(device).train()
    x = torch.randn(batch_size, cfg.block_size, cfg.n_embd, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    backend = QUICK_COMPILE_BACKEND if options.quick else "inductor"
    torch.compiler.reset()
    compiled_block = torch.compile(block, backend=backend)

    def forward_backward(module):
        def call():
            with autocast_for(device, dtype) or contextlib.nullcontext():
                out = module(x)
            out.backward(grad)

        return call

    calls = {"eager": forward_backward(block), "compiled": forward_backward(compiled_block)}
    synchronize(device)
    start = time.perf_counter()
    calls["compiled"]()  # the first call traces and generates the kernels
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    times = interleaved_times(calls, options.steps, options.warmup, device)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "config": {k: getattr(cfg, k) for k in ("block_size", "n_embd", "n_head", "gelu")},
        "batch_size": batch_size,
        "dtype": str(dtype).removeprefix("torch."),
        "backend": backend,
        "compile_seconds": compile_seconds,
        "eager_seconds": medians["eager"],
        "compiled_seconds": medians["compiled"],
        "speedup": medians["eager"] / medians["compiled"],
        "times": times,
        "steps": options.steps,
        "warmup": options.warmup,
    }


def print_table(section: dict) -> None:
    cfg = section["config"]
    print(
        f"\none block (C={cfg['n_embd']}, T={cfg['block_size']}, B={section['batch_size']}, "
        f"{section['dtype']}), forward + backward, torch.compile backend {section['backend']}"
    )
    rows = [[name, f"{section[f'{name}_seconds'] * 1e3:.2f}"] for name in ("eager", "compiled")]
    print(format_table(["", "ms (median)"], rows))
    print(
        f"compiled is {section['speedup']:.2f}x eager; compiling took "
        f"{section['compile_seconds']:.1f} s"
    )


def figure(report: dict):
    """Eager and compiled milliseconds of one block."""
    section = report["compile"]
    ms = [section["eager_seconds"] * 1e3, section["compiled_seconds"] * 1e3]
    labels = [f"{t:.2f} ms" for t in ms]
    what = (
        f"one block forward + backward, {section['dtype']}: compiled ({section['backend']}) "
        f"{section['speedup']:.2f}x eager"
    )
    return bar_figure(report, ["eager", "compiled"], ms, labels, what)
