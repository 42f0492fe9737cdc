"""Training throughput and MFU of the GPT, with each of its optimizations switched off in turn.

The "train" section of `python -m torch_impl.bench`. A step is forward, backward, clipping and
AdamW (`torch_impl.train.train_step`), of GPT-2 124M under bf16 autocast on a GPU, or of the
default small configuration in float32 on the CPU, in four variants: everything on (SDPA flash
attention, fused AdamW, torch.compile) and each optimization switched off alone (manual masked
attention, foreach AdamW, eager), so that each one's share of the speed shows as the drop when it
alone is missing. All variants start from the same parameters and train on the same batch, their
steps interleaved. Reported: tokens/s, model FLOPs utilisation against the datasheet peak and
against a matmul ceiling measured in the same run (`torch_impl.train.matmul_ceiling`), and
throughput relative to everything on. On a GPU where torch_impl's Triton attention runs, it is a
fifth variant; with `--nanogpt PATH` nanoGPT's own model (loaded from that checkout at run time,
never copied into this project) runs the same step, everything on, and the two throughputs are
given as a ratio.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import importlib.util
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ref_numpy.config import GPTConfig
from ref_numpy.flops import flops_per_token, mfu
from ref_numpy.training import TrainConfig
from torch_impl.bench_cpu import VOCAB_SIZE
from torch_impl.bench_timing import (
    GPT2_124M,
    interleaved_times,
    peak_memory_bytes,
)
from torch_impl.model import ATTENTION_BACKENDS, GPT
from torch_impl.runtime import autocast_for, datasheet_peak, matmul_ceiling, resolve_dtype
from torch_impl.train import train_step


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of running the training step: which attention, which AdamW, compiled or not."""

    name: str
    attention: str = "sdpa"
    fused_adamw: bool = True
    compiled: bool = True


VARIANTS = (
    Variant("all on"),
    Variant("no flash", attention="manual"),
    Variant("no fused AdamW", fused_adamw=False),
    Variant("no compile", compiled=False),
)
TRITON_VARIANT = Variant("triton attention", attention="triton")
NANOGPT = "nanoGPT model"
# nanoGPT's GPT-2 training settings; the values change no timing, only the numbers updated
LR, BETAS, WEIGHT_DECAY, GRAD_CLIP = 6e-4, (0.9, 0.95), 0.1, 1.0
GPU_BATCH_SIZE = 16  # sequences of 1024 tokens per step: 16,384 tokens
# --quick: one narrow layer, a short context and a small batch; every code path, in a blink
QUICK_CONFIG = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=32)
QUICK_BATCH_SIZE = 4
# torch.compile's code generation (inductor) takes ~20 s per graph on a 2-core CPU; --quick
# traces with "aot_eager" instead (dynamo and AOT autograd, no generated kernels), which runs
# the same code paths in about a second
QUICK_COMPILE_BACKEND = "aot_eager"
CEILING_SIZE = {"cuda": 8192, "cpu": 2048, "quick": 128}


def load_nanogpt(path: str | Path):
    """nanoGPT's `model.py` from a checkout folder, imported as a module (GPT, GPTConfig)."""
    model_file = Path(path) / "model.py"
    if not model_file.is_file():
        raise ValueError(f"--nanogpt {path}: no model.py there; give a nanoGPT checkout's folder")
    spec = importlib.util.spec_from_file_location("nanogpt_model", model_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and torch.compile look modules up by name
    spec.loader.exec_module(module)
    if not (hasattr(module, "GPT") and hasattr(module, "GPTConfig")):
        raise ValueError(f"--nanogpt {path}: its model.py defines no GPT and GPTConfig")
    return module


def triton_attention_available(device: torch.device) -> bool:
    """Whether the model has the "triton" attention path and it can run here (CUDA, Triton)."""
    if device.type != "cuda" or "triton" not in ATTENTION_BACKENDS:
        return False
    try:
        from torch_impl import triton_attention
    except ImportError:
        return False
    return bool(getattr(triton_attention, "TRITON_AVAILABLE", True))  # False: no triton package


def _project_model(variant: Variant, cfg: GPTConfig, device: torch.device):
    torch.manual_seed(0)
    model = GPT(cfg, attention=variant.attention).to(device)
    # fused=None: the fused kernel wherever this torch has one for the device
    optimizer = model.configure_optimizers(
        WEIGHT_DECAY, LR, BETAS, device.type, fused=None if variant.fused_adamw else False
    )
    return model, optimizer


def _nanogpt_model(module, cfg: GPTConfig, device: torch.device):
    """nanoGPT's GPT of the same shape, with its own optimizer set-up (fused on CUDA)."""
    names = {field.name for field in dataclasses.fields(module.GPTConfig)}
    torch.manual_seed(0)
    model = module.GPT(module.GPTConfig(**{k: v for k, v in cfg.to_dict().items() if k in names}))
    model = model.to(device)
    optimizer = model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, device.type)
    return model, optimizer


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    if optimizer.defaults.get("fused"):
        return "fused"
    return "foreach" if optimizer.defaults.get("foreach") else "for-loop"


def _prepare(
    entry: dict,
    build: Callable[[], tuple[torch.nn.Module, torch.optim.Optimizer]],
    compiled: bool,
    compile_backend: str,
    batch: tuple[np.ndarray, np.ndarray],
    autocast: torch.autocast | None,
    warmup: int,
    device: torch.device,
) -> Callable[[], float]:
    """Build a variant, run its warm-up steps (compilation happens in the first) and one more
    step for its peak memory; return its step. The entry receives what the build tells."""
    model, optimizer = build()
    step_model = torch.compile(model, backend=compile_backend) if compiled else model
    entry.update(
        n_params=model.get_num_params(),
        optimizer=_optimizer_name(optimizer),
        compiled=compiled,
        compile_backend=compile_backend if compiled else None,
    )

    def step() -> float:
        loss, _ = train_step(step_model, optimizer, [batch], LR, GRAD_CLIP, autocast)
        entry["last_loss"] = loss
        return loss

    for _ in range(warmup):
        step()
    entry["peak_memory_bytes"] = peak_memory_bytes(step, device)
    return step


def train_section(
    device: torch.device,
    quick: bool,
    steps: int,
    warmup: int,
    batch_size: int | None = None,
    nanogpt: str | Path | None = None,
) -> dict:
    """Time the variants' training steps, interleaved, and report throughput and MFU."""
    on_gpu = device.type == "cuda"
    if quick:
        cfg, default_batch = QUICK_CONFIG, QUICK_BATCH_SIZE
    elif on_gpu:
        cfg, default_batch = GPT2_124M, GPU_BATCH_SIZE
    else:
        train_config = TrainConfig()
        cfg, default_batch = train_config.model_config(VOCAB_SIZE), train_config.batch_size
    batch_size = batch_size or default_batch
    dtype = resolve_dtype("auto", device)  # bf16 on a GPU that has it, else float32
    autocast = autocast_for(device, dtype)
    compile_backend = QUICK_COMPILE_BACKEND if quick else "inductor"
    torch.compiler.reset()  # past 8 graphs per function compile quietly runs eager: start clean
    rng = np.random.default_rng(0)
    batch = tuple(rng.integers(0, cfg.vocab_size, size=(batch_size, cfg.block_size)) for _ in "xy")

    # (name, attention, build, compiled, optional): an optional extra may fail without stopping
    candidates = [
        (v.name, v.attention, functools.partial(_project_model, v, cfg, device), v.compiled, False)
        for v in VARIANTS
    ]
    if triton_attention_available(device):
        build = functools.partial(_project_model, TRITON_VARIANT, cfg, device)
        candidates.append((TRITON_VARIANT.name, "triton", build, True, True))
    if nanogpt is not None:
        build = functools.partial(_nanogpt_model, load_nanogpt(nanogpt), cfg, device)
        candidates.append((NANOGPT, "nanoGPT's", build, True, True))

    entries: dict[str, dict] = {}
    steps_to_time: dict[str, Callable[[], float]] = {}
    for name, attention, build, compiled, optional in candidates:
        entry = entries[name] = {"variant": name, "attention": attention, "error": None}
        try:
            steps_to_time[name] = _prepare(
                entry, build, compiled, compile_backend, batch, autocast, warmup, device
            )
        except torch.cuda.OutOfMemoryError:
            entry["error"] = f"out of memory at batch size {batch_size}"
        except Exception as error:  # an optional extra (Triton, nanoGPT) must not sink the rest
            if not optional:
                raise
            entry["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        if entry["error"] is not None and on_gpu:
            gc.collect()  # the failed variant's model and optimizer state, before the next
            torch.cuda.empty_cache()

    times = interleaved_times(steps_to_time, steps, 0, device)  # warmed up in _prepare
    ceiling_dtype = dtype if on_gpu else torch.float32
    ceiling_n = CEILING_SIZE["quick" if quick else device.type]
    ceiling = matmul_ceiling(device, ceiling_dtype, ceiling_n)
    peak, peak_key = datasheet_peak(device, dtype)
    tokens_per_step = batch_size * cfg.block_size
    for name, step_times in times.items():
        entry = entries[name]
        seconds = statistics.median(step_times)
        tokens_per_second = tokens_per_step / seconds
        entry.update(
            seconds_per_step=seconds,
            step_times=step_times,
            tokens_per_second=tokens_per_second,
            flops_per_token=flops_per_token(cfg, entry["n_params"]),
            mfu_vs_peak=mfu(cfg, tokens_per_second, peak, entry["n_params"]) if peak else None,
            mfu_vs_ceiling=mfu(cfg, tokens_per_second, ceiling, entry["n_params"]),
        )
    reference = entries["all on"].get("tokens_per_second")
    for entry in entries.values():
        if reference and entry.get("tokens_per_second"):
            entry["throughput_vs_all_on"] = entry["tokens_per_second"] / reference
    report = {
        "config": cfg.to_dict(),
        "batch_size": batch_size,
        "tokens_per_step": tokens_per_step,
        "dtype": "bfloat16 autocast" if autocast else str(dtype).removeprefix("torch."),
        "steps": steps,
        "warmup": warmup,
        "flops_per_token": flops_per_token(cfg, entries["all on"].get("n_params")),
        "flops_convention": "nanoGPT's 6N + 12*L*H*Q*T (ref_numpy.flops.flops_per_token)",
        "peak_flops": peak,
        "peak_flops_dtype": peak_key,
        "matmul_ceiling_flops": ceiling,
        "matmul_ceiling": f"{ceiling_n}^3 {str(ceiling_dtype).removeprefix('torch.')} matmul",
        "variants": list(entries.values()),
    }
    if nanogpt is not None:
        report["nanogpt_path"] = str(nanogpt)
        theirs = entries[NANOGPT].get("tokens_per_second")
        report["all_on_over_nanogpt"] = reference / theirs if reference and theirs else None
    return report
