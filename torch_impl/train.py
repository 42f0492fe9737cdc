"""Train the PyTorch GPT: `python -m torch_impl.train` (the README's `make train`).

The same loop as `ref_numpy.train` (same flags, schedule, clipping, batches and initial
parameters, drawn by `ref_numpy.gpt.init_params`), run by torch: on a GPU when there is one, with
flash attention (SDPA), fused AdamW, bf16 autocast and torch.compile; on the CPU otherwise.

Options come from the dataclass defaults (sized for the device: GPT-2 small's shape on a GPU, a
small model that trains in minutes on a CPU), then `--config FILE` (TOML or JSON), then flags.
Every `eval_interval` iterations and at the end it writes out_dir/ckpt.pt, which holds all an
exact resume needs (`--init_from resume`); SIGINT and SIGTERM save one before exiting. Under
`torchrun --nproc_per_node=K -m torch_impl.train` it trains data-parallel (DDP). Writes
out_dir/log.jsonl and out_dir/loss.png, then prints a sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ref_numpy.data import decode
from ref_numpy.flops import mfu
from ref_numpy.gpt import init_params
from ref_numpy.options import read_overrides, run_main
from ref_numpy.training import (
    LoopState,
    MicroBatchStreams,
    RunLog,
    TrainConfig,
    TrainingData,
    load_training_data,
    train_loop,
)
from torch_impl.checkpoint import (
    FORMAT,
    CheckpointError,
    config_from_checkpoint,
    is_full_checkpoint,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from torch_impl.model import ATTENTION_BACKENDS, GPT
from torch_impl.runtime import (
    DTYPES,
    Distributed,
    StopSignal,
    autocast_for,
    distributed_from_env,
    parameter_dtype,
    resolve_device,
    resolve_dtype,
    resolve_peak_flops,
)


@dataclass
class TorchTrainConfig(TrainConfig):
    device: str = "auto"  # auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps
    # auto: bfloat16 autocast on a GPU that has it, else float32. float32/float64 set the
    # parameters' dtype; bfloat16/float16 keep float32 parameters and autocast the matmuls
    # (float16 with a GradScaler).
    dtype: str = "auto"
    compile: bool | None = None  # None: on for CUDA, off elsewhere
    attention: str = "sdpa"  # sdpa (flash on GPUs), manual (materialised softmax), triton
    fused_adamw: bool | None = None  # None: fused wherever this torch supports it
    # scratch; resume (out_dir/ckpt.pt, exactly where it stopped); or a checkpoint file of this
    # trainer or of nanoGPT, whose weights start a new run
    init_from: str = "scratch"
    peak_flops: float | None = None  # MFU denominator; None: GPU datasheet, else measured matmul

    # A GPU trains GPT-2 small's shape (12 layers, 12 heads, 768 wide, 1024 context) on the
    # character corpus, with GPT-2's optimizer settings, in a few minutes on one H100.
    GPU_DEFAULTS: ClassVar[dict[str, Any]] = {
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "block_size": 1024,
        "batch_size": 16,
        "learning_rate": 6e-4,
        "min_lr": 6e-5,
        "beta2": 0.95,
        "warmup_iters": 100,
        "eval_iters": 20,
    }
    # What a resume keeps from the checkpoint: a different value would change the model's shape
    # or the batches, and the continuation would no longer be the run that was saved.
    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = (
        "n_layer",
        "n_head",
        "n_embd",
        "block_size",
        "bias",
        "gelu",
        "batch_size",
        "gradient_accumulation_steps",
        "seed",
        "text",
        "data_dir",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(
                f"--attention must be one of {ATTENTION_BACKENDS}, not {self.attention!r}"
            )
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ValueError(f"--peak_flops must be positive, got {self.peak_flops}")

    @classmethod
    def device_defaults(cls, device: str) -> dict[str, Any]:
        """Defaults that differ by device: the GPU ones where `device` resolves to CUDA."""
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        return dict(cls.GPU_DEFAULTS) if on_cuda else {}


# ----------------------------------------------------------------------------- one step
def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    lr: float,
    grad_clip: float,
    autocast: contextlib.AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One optimizer step over gradient-accumulated micro-batches: (mean loss, grad norm).

    Mirrors ref_numpy.train.train_step: each micro-batch's loss is divided by their number, so
    the accumulated gradient is that of the mean loss. Under DDP each rank runs its share of the
    micro-batches; the gradients are all-reduced (averaged over ranks) only in the last
    backward, and the mean over ranks of those averages is the gradient of the global mean loss.
    """
    device = next(model.parameters()).device
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    last = len(micro_batches) - 1
    for i, (x, y) in enumerate(micro_batches):
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        no_sync = isinstance(model, DistributedDataParallel) and i < last
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with autocast or contextlib.nullcontext():
                _, loss = model(x, y)
            losses.append(loss.detach())
            scaled = loss / len(micro_batches)
            (scaler.scale(scaled) if scaler else scaled).backward()
    grad_norm = float("nan")
    if grad_clip > 0:
        if scaler:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mean_loss = torch.stack(losses).mean()
    if isinstance(model, DistributedDataParallel):  # the log shows the loss of all ranks' data
        dist.all_reduce(mean_loss)
        mean_loss /= dist.get_world_size()
    return mean_loss.item(), grad_norm


@torch.no_grad()
def estimate_loss(model, batches: dict[str, list], autocast=None) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for split, split_batches in batches.items():
        losses = []
        for x, y in split_batches:
            with autocast or contextlib.nullcontext():
                _, loss = model(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
            losses.append(float(loss))
        out[split] = float(np.mean(losses))
    model.train()
    return out


# ----------------------------------------------------------------------------- runs
def data_fingerprint(data: TrainingData) -> dict[str, Any]:
    """What the batch streams index into: resuming on other data would not be the same run."""
    return {
        "source": data.meta["source"],
        "vocab_size": data.vocab_size,
        "n_train": len(data.train),
        "n_val": len(data.val),
    }


def config_for_run(argv: Sequence[str] | None) -> tuple[TorchTrainConfig, dict | None]:
    """The run's options and, for `--init_from resume` or a file, the checkpoint it starts from.

    A resume takes every option from the checkpoint except those given again, and refuses new
    values for FIXED_ON_RESUME; `--init_from resume --max_iters 4000` extends a run.
    """
    explicit = read_overrides(TorchTrainConfig, argv, __doc__.splitlines()[0])
    init_from = explicit.get("init_from", TorchTrainConfig.init_from)
    if init_from != "resume":
        base = TorchTrainConfig.device_defaults(explicit.get("device", TorchTrainConfig.device))
        config = TorchTrainConfig(**{**base, **explicit})
        checkpoint = None if init_from == "scratch" else load_checkpoint(init_from)
        return config, checkpoint
    path = Path(explicit.get("out_dir", TorchTrainConfig.out_dir)) / "ckpt.pt"
    checkpoint = load_checkpoint(path)
    if not is_full_checkpoint(checkpoint):
        raise CheckpointError(
            f"'{path}' was not written by this trainer, so it lacks the optimizer, RNG and data "
            f"state a resume needs; start a new run from its weights with --init_from {path}"
        )
    names = {f.name for f in dataclasses.fields(TorchTrainConfig)}
    saved = {k: v for k, v in checkpoint["config"].items() if k in names}
    changed = [
        f"--{k} {explicit[k]} (checkpoint: {saved[k]})"
        for k in TorchTrainConfig.FIXED_ON_RESUME
        if k in explicit and k in saved and explicit[k] != saved[k]
    ]
    if changed:
        raise ValueError(f"a resume continues the saved run; it cannot change {', '.join(changed)}")
    return TorchTrainConfig(**{**saved, **explicit}), checkpoint


def model_config_for_run(config: TorchTrainConfig, data: TrainingData, checkpoint: dict | None):
    """The GPTConfig: the flags' for a new model, the checkpoint's when starting from one."""
    if checkpoint is None:
        return config.model_config(data.vocab_size)
    cfg = config_from_checkpoint(checkpoint)
    where = checkpoint["path"]
    if cfg.vocab_size < data.vocab_size:
        raise CheckpointError(
            f"'{where}' has a vocabulary of {cfg.vocab_size}, smaller than the data's "
            f"{data.vocab_size}"
        )
    chars = checkpoint.get("meta", {}).get("chars")
    if chars is not None and list(chars) != list(data.meta["chars"]):
        raise CheckpointError(f"'{where}' was trained on another vocabulary than this data's")
    if config.block_size > cfg.block_size:
        raise CheckpointError(
            f"--block_size {config.block_size} is longer than the context of '{where}' "
            f"({cfg.block_size})"
        )
    if is_full_checkpoint(checkpoint) and config.init_from == "resume":
        if checkpoint.get("data") != data_fingerprint(data):
            raise CheckpointError(
                f"'{where}' was trained on other data ({checkpoint.get('data')}); resume it "
                f"with the same --text / --data_dir"
            )
    return dataclasses.replace(cfg, dropout=config.dropout)


def main(argv: Sequence[str] | None = None) -> None:
    config, checkpoint = config_for_run(argv)
    ctx = distributed_from_env(config.gradient_accumulation_steps)
    device = resolve_device(config.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    dtype = resolve_dtype(config.dtype, device)
    if ctx.enabled:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        _train(config, checkpoint, ctx, device, dtype)
    finally:
        if ctx.enabled:
            dist.destroy_process_group()


def _train(config, checkpoint, ctx: Distributed, device, dtype) -> None:
    resume = config.init_from == "resume"
    if ctx.enabled and not ctx.is_master:
        dist.barrier()  # rank 0 prepares the data folder first; the others then read it
    data = load_training_data(config)
    if ctx.enabled and ctx.is_master:
        dist.barrier()
    cfg = model_config_for_run(config, data, checkpoint)
    if checkpoint is not None and not resume:  # the model's shape is the checkpoint's
        shape = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "bias", "gelu")}
        config = dataclasses.replace(config, **shape)

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for float32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(cfg, attention=config.attention).to(device=device, dtype=parameter_dtype(dtype))
    if checkpoint is None:  # the NumPy trainer's init, drawn in float64, rounded once
        model.load_numpy_params(init_params(cfg, seed=config.seed))
    else:
        load_model_state(model, checkpoint)
    if config.block_size < cfg.block_size:
        model.crop_block_size(config.block_size)
    autocast = autocast_for(device, dtype)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    optimizer = model.configure_optimizers(
        config.weight_decay,
        config.learning_rate,
        (config.beta1, config.beta2),
        device.type,
        fused=config.fused_adamw,
    )
    streams = MicroBatchStreams(data, config, ctx.slots(config.gradient_accumulation_steps))
    torch.manual_seed(config.seed + ctx.rank)  # dropout masks, different on each rank
    state = LoopState()
    if resume:
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
            if scaler is not None and checkpoint.get("scaler") is not None:
                scaler.load_state_dict(checkpoint["scaler"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(
                f"'{checkpoint['path']}' has an optimizer state that does not fit: {error}"
            ) from None
        streams.load_state_dict(checkpoint["sampler"])
        rng = checkpoint.get("rng") or []
        if len(rng) == ctx.world_size:  # else a new world size: dropout streams start afresh
            torch.set_rng_state(rng[ctx.rank]["torch"])
            if device.type == "cuda" and rng[ctx.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[ctx.rank]["cuda"], device)
        state = LoopState(
            iter_num=int(checkpoint["iter_num"]),
            best_val_loss=float(checkpoint.get("best_val_loss", math.inf)),
            last_saved_iter=int(checkpoint["iter_num"]),
        )

    use_compile = device.type == "cuda" if config.compile is None else config.compile
    compiled = torch.compile(model) if use_compile else model
    step_model = compiled
    if ctx.enabled:
        # the causal mask is the only buffer and a constant: nothing to broadcast each forward
        device_ids = [device.index] if device.type == "cuda" else None
        step_model = DistributedDataParallel(
            compiled, device_ids=device_ids, broadcast_buffers=False
        )
    peak, peak_source = resolve_peak_flops(config.peak_flops, device, dtype)

    log = RunLog(
        config.out_dir, config, resume_iter=state.iter_num if resume else None, active=ctx.is_master
    )
    ckpt_path = log.out_dir / "ckpt.pt"
    if ctx.is_master:
        started = f"resumed at iteration {state.iter_num}" if resume else "from scratch"
        if checkpoint is not None and not resume:
            started = f"from the weights of {checkpoint['path']}"
        print(
            f"torch GPT, {model.get_num_params(non_embedding=False):,} parameters, on {device} "
            f"({str(dtype).removeprefix('torch.')}, attention {config.attention}, compile "
            f"{use_compile}, fused AdamW {optimizer.defaults.get('fused')}), {started}"
            + (f", {ctx.world_size} processes" if ctx.enabled else "")
        )
        print(f"MFU against {peak / 1e12:.3g} TFLOP/s ({peak_source})")

    def save(loop_state: LoopState) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        }
        sampler_states = streams.state_dict()
        rngs = [rng]
        if ctx.enabled:  # rank 0 writes, holding every rank's batch streams and RNG
            gathered: list[Any] = [None] * ctx.world_size
            dist.all_gather_object(gathered, (sampler_states, rng))
            sampler_states = {j: s for states, _ in gathered for j, s in states.items()}
            rngs = [r for _, r in gathered]
        if not ctx.is_master:
            return
        save_checkpoint(
            ckpt_path,
            {
                "format": FORMAT,
                "model": model.state_dict(),  # the bare model: no `_orig_mod.`, no `module.`
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "model_args": cfg.to_dict(),
                "iter_num": loop_state.iter_num,
                "best_val_loss": loop_state.best_val_loss,
                "config": asdict(config),
                "rng": rngs,
                "sampler": sampler_states,
                "data": data_fingerprint(data),
                "meta": {"chars": list(data.meta["chars"]), "source": data.meta["source"]},
            },
        )

    stop = StopSignal()

    def stop_requested() -> bool:
        if not ctx.enabled:
            return stop.signum is not None
        # every rank must stop at the same step, or the others would wait in an all-reduce
        flag = torch.tensor([stop.signum or 0], device=device if device.type == "cuda" else None)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop.signum = int(flag.item()) or None
        return stop.signum is not None

    tokens_per_device = 1.0 / ctx.world_size
    n_params = model.get_num_params()
    with stop:
        state = train_loop(
            config,
            data,
            log,
            step=lambda micro, lr: train_step(
                step_model, optimizer, micro, lr, config.grad_clip, autocast, scaler
            ),
            estimate_loss=lambda batches: estimate_loss(compiled, batches, autocast),
            desc=f"torch {device.type}",
            streams=streams,
            state=state,
            save=None if config.eval_only else save,
            stop_requested=stop_requested,
            mfu=lambda tokens_per_second: mfu(
                cfg, tokens_per_second * tokens_per_device, peak, n_params=n_params
            ),
            is_master=ctx.is_master,
        )
    if state.stopped:
        name = signal.Signals(stop.signum).name
        if ctx.is_master:
            print(
                f"stopped by {name} after iteration {state.iter_num}; saved {ckpt_path}; "
                f"continue with --init_from resume --out_dir {config.out_dir}",
                file=sys.stderr,
            )
        raise SystemExit(128 + stop.signum)
    if not ctx.is_master or config.eval_only:
        return
    figure = log.plot(f"torch GPT on {data.meta['source']} ({device.type})")
    print(f"wrote {log.path}, {figure} and {ckpt_path}")
    if config.sample_tokens:
        generator = torch.Generator(device=device).manual_seed(config.seed)
        start_ids = torch.zeros((1, 1), dtype=torch.long, device=device)  # token 0
        model.eval()
        with autocast or contextlib.nullcontext():
            out = model.generate(
                start_ids,
                config.sample_tokens,
                config.temperature,
                config.top_k,
                generator=generator,
            )
        print("---- sample ----")
        print(decode(out[0].tolist(), data.meta["chars"]))


if __name__ == "__main__":
    run_main(main)
