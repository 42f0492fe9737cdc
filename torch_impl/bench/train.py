"""Training throughput and MFU of the GPT, with each of its optimizations switched off in turn.

The "train" section of `python -m torch_impl.bench`. A step is forward, backward, clipping and
AdamW (`torch_impl.step.train_step`), of GPT-2 124M under bf16 autocast on a GPU, or of the
model `make train` trains, in float32, on the CPU, in four variants: everything on (SDPA flash
attention, fused AdamW, torch.compile) and each optimization switched off alone (manual masked
attention, foreach AdamW, eager), so that each one's share of the speed shows as the drop when it
alone is missing. All variants start from the same parameters and train on the same batch, their
steps interleaved. Reported: tokens/s, model FLOPs utilisation against the datasheet peak and
against a matmul ceiling measured in the same run (`torch_impl.runtime.matmul_ceiling`), and
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
from ref_numpy.errors import UserError
from ref_numpy.flops import flops_per_token, mfu
from torch_impl.bench.common import BenchOptions, timed_model, triton_runs_on
from torch_impl.bench.timing import interleaved_times, peak_allocated_bytes
from torch_impl.model import GPT
from torch_impl.report import figure_title, format_table, mib
from torch_impl.runtime import autocast_for, datasheet_peak, matmul_ceiling, resolve_dtype
from torch_impl.step import train_step


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
# torch.compile's code generation (inductor) takes ~20 s per graph on a 2-core CPU; --quick
# traces with "aot_eager" instead (dynamo and AOT autograd, no generated kernels), which runs
# the same code paths in about a second
QUICK_COMPILE_BACKEND = "aot_eager"
CEILING_SIZE = {"cuda": 8192, "cpu": 2048, "quick": 128}


@dataclasses.dataclass
class Candidate:
    """A model to time: how to build it, whether to compile it, and whether it may fail alone
    (an optional extra, Triton or nanoGPT, must not sink the section)."""

    name: str
    attention: str
    build: Callable[[], tuple[torch.nn.Module, torch.optim.Optimizer]]
    compiled: bool
    optional: bool = False


# ----------------------------------------------------------------------------- the models
def load_nanogpt(path: str | Path):
    """nanoGPT's `model.py` from a checkout folder, imported as a module (GPT, GPTConfig)."""
    model_file = Path(path) / "model.py"
    if not model_file.is_file():
        raise UserError(f"--nanogpt {path}: no model.py there; give a nanoGPT checkout's folder")
    spec = importlib.util.spec_from_file_location("nanogpt_model", model_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and torch.compile look modules up by name
    spec.loader.exec_module(module)
    if not (hasattr(module, "GPT") and hasattr(module, "GPTConfig")):
        raise UserError(f"--nanogpt {path}: its model.py defines no GPT and GPTConfig")
    return module


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


def candidates(cfg: GPTConfig, options: BenchOptions) -> list[Candidate]:
    """The four variants, then Triton attention where it runs, then nanoGPT's model if given."""
    device = options.device
    found = [
        Candidate(
            v.name, v.attention, functools.partial(_project_model, v, cfg, device), v.compiled
        )
        for v in VARIANTS
    ]
    if triton_runs_on(device):
        build = functools.partial(_project_model, TRITON_VARIANT, cfg, device)
        found.append(Candidate(TRITON_VARIANT.name, "triton", build, True, optional=True))
    if options.nanogpt is not None:
        build = functools.partial(_nanogpt_model, load_nanogpt(options.nanogpt), cfg, device)
        found.append(Candidate(NANOGPT, "nanoGPT's", build, True, optional=True))
    if options.variants is not None:  # "all on" always: every ratio is to it
        found = [c for c in found if c.name in options.variants or c.name == VARIANTS[0].name]
    return found


def variant_names(with_nanogpt: bool = True) -> list[str]:
    """Every variant the train section may time (Triton's only where it runs)."""
    return [v.name for v in VARIANTS] + [TRITON_VARIANT.name] + ([NANOGPT] if with_nanogpt else [])


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    if optimizer.defaults.get("fused"):
        return "fused"
    return "foreach" if optimizer.defaults.get("foreach") else "for-loop"


# ----------------------------------------------------------------------------- timing
def _prepare(
    entry: dict, candidate: Candidate, compile_backend: str, batch, autocast, options
) -> Callable[[], float]:
    """Build a candidate, run its warm-up steps (compilation happens in the first) and one more
    step for its peak memory; return its step. The entry receives what the build tells."""
    model, optimizer = candidate.build()
    step_model = torch.compile(model, backend=compile_backend) if candidate.compiled else model
    entry.update(
        n_params=model.get_num_params(),
        optimizer=_optimizer_name(optimizer),
        compiled=candidate.compiled,
        compile_backend=compile_backend if candidate.compiled else None,
    )

    def step() -> float:
        loss, _ = train_step(step_model, optimizer, [batch], LR, GRAD_CLIP, autocast)
        entry["last_loss"] = loss
        return loss

    for _ in range(options.warmup):
        step()
    entry["peak_memory_bytes"] = peak_allocated_bytes(step, options.device)
    return step


def _prepare_all(found, batch, autocast, options, batch_size) -> tuple[dict, dict]:
    """Every candidate built and warmed up: (entries by name, their steps to time)."""
    compile_backend = QUICK_COMPILE_BACKEND if options.quick else "inductor"
    entries: dict[str, dict] = {}
    steps: dict[str, Callable[[], float]] = {}
    for candidate in found:
        entry = entries[candidate.name] = {
            "variant": candidate.name,
            "attention": candidate.attention,
            "error": None,
        }
        try:
            steps[candidate.name] = _prepare(
                entry, candidate, compile_backend, batch, autocast, options
            )
        except torch.cuda.OutOfMemoryError:
            entry["error"] = f"out of memory at batch size {batch_size}"
        except Exception as error:  # an optional extra (Triton, nanoGPT) must not sink the rest
            if not candidate.optional:
                raise
            entry["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
        if entry["error"] is not None and options.device.type == "cuda":
            gc.collect()  # the failed variant's model and optimizer state, before the next
            torch.cuda.empty_cache()
    return entries, steps


def run(options: BenchOptions) -> dict:
    """Time the variants' training steps, interleaved, and report throughput and MFU."""
    device = options.device
    cfg, batch_size = timed_model(device.type, options.quick)
    batch_size = options.batch_size or batch_size
    dtype = resolve_dtype("auto", device)  # bf16 on a GPU that has it, else float32
    autocast = autocast_for(device, dtype)
    torch.compiler.reset()  # past 8 graphs per function compile quietly runs eager: start clean
    rng = np.random.default_rng(0)
    batch = tuple(rng.integers(0, cfg.vocab_size, size=(batch_size, cfg.block_size)) for _ in "xy")
    found = candidates(cfg, options)
    entries, steps = _prepare_all(found, batch, autocast, options, batch_size)
    times = interleaved_times(steps, options.steps, 0, device)  # warmed up in _prepare

    ceiling_dtype = dtype if device.type == "cuda" else torch.float32
    ceiling_n = CEILING_SIZE["quick" if options.quick else device.type]
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
        "steps": options.steps,
        "warmup": options.warmup,
        "flops_per_token": flops_per_token(cfg, entries["all on"].get("n_params")),
        "flops_convention": "nanoGPT's 6N + 12*L*H*Q*T (ref_numpy.flops.flops_per_token)",
        "peak_flops": peak,
        "peak_flops_dtype": peak_key,
        "matmul_ceiling_flops": ceiling,
        "matmul_ceiling": f"{ceiling_n}^3 {str(ceiling_dtype).removeprefix('torch.')} matmul",
        "variants": list(entries.values()),
    }
    if options.nanogpt is not None:
        report["nanogpt_path"] = str(options.nanogpt)
        theirs = entries[NANOGPT].get("tokens_per_second")
        report["all_on_over_nanogpt"] = reference / theirs if reference and theirs else None
    return report


# ----------------------------------------------------------------------------- the report
def _percent(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def print_table(section: dict) -> None:
    cfg = section["config"]
    peak = section["peak_flops"]
    print(
        f"\ntraining step: {cfg['n_layer']} layers, {cfg['n_head']} heads, {cfg['n_embd']} wide, "
        f"context {cfg['block_size']}, vocab {cfg['vocab_size']}, batch {section['batch_size']}, "
        f"{section['dtype']}; matmul ceiling {section['matmul_ceiling_flops'] / 1e12:.2f} "
        f"TFLOP/s ({section['matmul_ceiling']}), datasheet peak "
        + (f"{peak / 1e12:.1f} TFLOP/s" if peak else "unknown")
    )
    rows = [
        [
            v["variant"],
            f"{v['seconds_per_step'] * 1e3:.2f}" if "seconds_per_step" in v else "",
            f"{v['tokens_per_second']:,.0f}" if "tokens_per_second" in v else "",
            _percent(v.get("mfu_vs_peak")),
            _percent(v.get("mfu_vs_ceiling")),
            f"{v['throughput_vs_all_on']:.2f}x" if "throughput_vs_all_on" in v else "",
            mib(v.get("peak_memory_bytes")),
            v.get("optimizer", ""),
            v.get("error") or "",
        ]
        for v in section["variants"]
    ]
    headers = ["variant", "ms/step", "tokens/s", "MFU peak", "MFU ceiling", "vs all on"]
    print(format_table(headers + ["peak MiB", "AdamW", "error"], rows))
    if section.get("all_on_over_nanogpt"):
        print(f"all on / nanoGPT's model: {section['all_on_over_nanogpt']:.3f}x tokens/s")


def figure(report: dict):
    """Tokens per second of each variant, labelled with its ratio to all on and its MFU."""
    import matplotlib.pyplot as plt  # only when drawing: a GPU machine may have no matplotlib

    section = report["train"]
    variants = [v for v in section["variants"] if "tokens_per_second" in v]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(variants) + 2))
    names = [v["variant"] for v in variants][::-1]
    speeds = [v["tokens_per_second"] for v in variants][::-1]
    bars = ax.barh(names, speeds, color="tab:blue")
    labels = []
    for v in variants[::-1]:
        label = f"MFU {100 * v['mfu_vs_ceiling']:.1f}% of ceiling"
        if v.get("throughput_vs_all_on") is not None:
            label = f"{v['throughput_vs_all_on']:.2f}x of all on, " + label
        if v.get("mfu_vs_peak") is not None:
            label += f", {100 * v['mfu_vs_peak']:.1f}% of peak"
        labels.append(label)
    ax.bar_label(bars, labels=labels, padding=4, fontsize=8)
    ax.set_xlim(0, max(speeds) * 1.7)
    cfg = section["config"]
    ax.set_xlabel("tokens per second (median step)")
    what = (
        f"training step, {cfg['n_layer']}x{cfg['n_embd']} GPT, context {cfg['block_size']}, "
        f"batch {section['batch_size']}, {section['dtype']}"
    )
    ax.set_title(figure_title(report, what), fontsize=9)
    fig.tight_layout()
    return fig
