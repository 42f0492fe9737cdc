"""Train the PyTorch GPT: `python -m torch_impl.train` (the README's `make train`).

The same loop as the NumPy trainer (`python -m ref_numpy.train`: same flags, schedule, clipping,
batches and initial parameters, drawn by `ref_numpy.gpt.init_params`), run by torch: on a GPU
when there is one, with flash attention (SDPA), fused AdamW, bf16 autocast and torch.compile; on
the CPU otherwise.

Options come from the dataclass defaults (sized for the device: GPT-2 small's shape on a GPU, a
small model that trains in minutes on a CPU), then `--config FILE` (TOML or JSON), then flags.
Every `eval_interval` iterations and at the end it writes out_dir/ckpt.pt, which holds all an
exact resume needs (`--init_from resume`); SIGINT and SIGTERM save one before exiting. Under
`torchrun --nproc_per_node=K -m torch_impl.train` it trains data-parallel (DDP). Writes
out_dir/log.jsonl and out_dir/loss.png, then prints a sample.

The file reads top to bottom: the set-up (options, device, processes, data), the model, the
optimizer, the loop (a `ref_numpy.train.loop.Trainer` for `train_loop`), the end. The options
themselves, and how a resume takes them from its checkpoint, are `torch_impl.train_config`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ref_numpy.errors import UserError
from ref_numpy.flops import flops_per_token, mfu
from ref_numpy.gpt import init_params
from ref_numpy.train.batches import MicroBatchStreams, TrainingData, load_training_data
from ref_numpy.train.loop import LoopState, Trainer, train_loop
from ref_numpy.train.machine import MeasuredPeak
from ref_numpy.train.options import run_main
from ref_numpy.train.run_dir import check_free_space, claim_run_dir
from ref_numpy.train.run_log import RunLog
from torch_impl.checkpoint import (
    capture,
    checked_model_config,
    load_model_state,
    rank_state,
    restore,
    save_checkpoint,
)
from torch_impl.memory_check import check_run_memory
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params
from torch_impl.runtime import (
    Distributed,
    StopSignal,
    autocast_for,
    distributed_from_env,
    matmul_ceiling,
    parameter_dtype,
    resolve_device,
    resolve_dtype,
    resolve_peak_flops,
    tf32_matmuls,
)
from torch_impl.step import estimate_loss, train_step
from torch_impl.train_config import TorchTrainConfig, config_for_run


# ----------------------------------------------------------------------------- set-up
def main(argv: Sequence[str] | None = None) -> None:
    config, checkpoint = config_for_run(argv, __doc__.splitlines()[0])
    ctx = distributed_from_env(config.gradient_accumulation_steps)
    if config.attention == "cudnn" and resolve_device(config.device).type != "cuda":
        raise UserError(f"--attention cudnn runs on a CUDA GPU, not on {config.device}; use sdpa")
    with contextlib.ExitStack() as held:
        if ctx.is_master:  # rank 0 writes the run's files: its folder is checked and locked first
            new_run = config.init_from != "resume"
            run_dir = claim_run_dir(config.out_dir, new_run=new_run, overwrite=config.overwrite)
            held.enter_context(run_dir)
            config = dataclasses.replace(config, out_dir=str(run_dir.folder))
        device = resolve_device(config.device)
        if ctx.enabled and device.type == "cuda":
            device = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(device)
        dtype = resolve_dtype(config.dtype, device)
        if device.type == "cuda":  # TF32 tensor cores for float32 matmuls, for this run only
            held.enter_context(tf32_matmuls(True))
        if ctx.enabled:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            held.callback(dist.destroy_process_group)
        train(config, checkpoint, ctx, device, dtype)


def load_data(config: TorchTrainConfig, ctx: Distributed) -> TrainingData:
    """The run's data; under DDP rank 0 prepares the folder first and the others then read it."""
    if ctx.enabled and not ctx.is_master:
        dist.barrier()
    data = load_training_data(config)
    if ctx.enabled and ctx.is_master:
        dist.barrier()
    return data


# ----------------------------------------------------------------------------- model
def build_model(
    config: TorchTrainConfig,
    checkpoint: dict | None,
    data: TrainingData,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[GPT, TorchTrainConfig]:
    """The model a run starts from, and the options with the model's shape where a checkpoint
    gave it: the NumPy trainer's initialisation (drawn in float64, rounded once to the model's
    dtype), or a checkpoint's weights, its context cropped to --block_size."""
    if checkpoint is None:
        model_config = config.model_config(data.vocab_size)
    else:
        resume = config.init_from == "resume"
        model_config = checked_model_config(checkpoint, data, config.block_size, resume)
        model_config = dataclasses.replace(model_config, dropout=config.dropout)
        shape = ("n_layer", "n_head", "n_embd", "bias", "gelu")
        config = dataclasses.replace(config, **{k: getattr(model_config, k) for k in shape})
    model = GPT(model_config, attention=config.attention)
    model.to(device=device, dtype=parameter_dtype(dtype))
    if checkpoint is None:
        load_numpy_params(model, init_params(model_config, seed=config.seed))
    else:
        load_model_state(model, checkpoint)
    if config.block_size < model_config.block_size:
        model.crop_block_size(config.block_size)
    return model, config


def wrap_for_steps(
    model: GPT, config: TorchTrainConfig, ctx: Distributed, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(what a training step runs, what an evaluation runs): compiled where asked, and under
    DDP the step's model wrapped to all-reduce the gradients."""
    use_compile = device.type == "cuda" if config.compile is None else config.compile
    compiled = torch.compile(model) if use_compile else model
    if not ctx.enabled:
        return compiled, compiled
    # the causal mask is the only buffer and a constant: nothing to broadcast each forward.
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers (the old name now warns, once
    # per rank); torch 2.11, on some GPU machines, knows only the old name.
    renamed = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(compiled, device_ids=device_ids, **no_sync), compiled


# ----------------------------------------------------------------------------- the loop
@dataclass
class TorchTrainer(Trainer):
    """The torch model and optimizer as `train_loop` drives them, one rank of `ctx`."""

    config: TorchTrainConfig
    data: TrainingData
    model: GPT  # the bare model: its state_dict is what a checkpoint holds
    step_model: torch.nn.Module  # compiled and/or DDP-wrapped: what a training step runs
    eval_model: torch.nn.Module  # compiled: what an evaluation runs
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    streams: MicroBatchStreams
    ctx: Distributed
    device: torch.device
    peak_flops: float
    stop: StopSignal
    autocast: torch.autocast | None = None
    measured_peak: MeasuredPeak | None = None  # where peak_flops is a measured matmul ceiling

    @property
    def name(self) -> str:
        return f"torch {self.device.type}"

    @property
    def is_master(self) -> bool:
        return self.ctx.is_master

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.config.out_dir) / "ckpt.pt"

    def step(self, micro_batches: list, lr: float) -> tuple[float, float]:
        return train_step(
            self.step_model,
            self.optimizer,
            micro_batches,
            lr,
            self.config.grad_clip,
            self.autocast,
            self.scaler,
            read_back=False,  # the loop reads the loss back for the steps it logs
        )

    def estimate_loss(self, batches: dict[str, list]) -> dict[str, float]:
        return estimate_loss(self.eval_model, batches, self.autocast)

    def save(self, state: LoopState) -> None:
        ranks = [rank_state(self.streams, self.device)]
        if self.ctx.enabled:  # rank 0 writes, holding every rank's batch streams and RNG
            mine, ranks = ranks[0], [None] * self.ctx.world_size
            dist.all_gather_object(ranks, mine)
        if self.ctx.is_master:
            saved = capture(
                self.model, self.optimizer, self.scaler, state, self.config, ranks, self.data
            )
            save_checkpoint(self.checkpoint_path, saved)

    def stop_requested(self) -> bool:
        if not self.ctx.enabled:
            return self.stop.signum is not None
        # every rank must stop at the same step, or the others would wait in an all-reduce
        on = self.device if self.device.type == "cuda" else None
        flag = torch.tensor([self.stop.signum or 0], device=on)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop.signum = int(flag.item()) or None
        return self.stop.signum is not None

    def after_storage_failure(self, state: LoopState) -> str:
        if state.last_saved_iter is None:
            return "no checkpoint of this run was written yet; free some space and start again"
        return (
            f"'{self.checkpoint_path}' (iteration {state.last_saved_iter}) is kept; free some "
            f"space, then continue with --init_from resume --out_dir {self.config.out_dir}"
        )

    @functools.cached_property
    def n_params(self) -> int:
        return self.model.get_num_params()

    def mfu(self, tokens_per_second: float) -> float | None:
        """Against the device's peak, for this rank's share of the tokens; against a measured
        ceiling, re-measured when exceeded (`ref_numpy.train.machine.MeasuredPeak`)."""
        per_device = tokens_per_second / self.ctx.world_size
        if self.measured_peak is None:
            return mfu(self.model.config, per_device, self.peak_flops, n_params=self.n_params)
        achieved = flops_per_token(self.model.config, self.n_params) * per_device
        return self.measured_peak.mfu_of(achieved)


def train(
    config: TorchTrainConfig,
    checkpoint: dict | None,
    ctx: Distributed,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    resume = config.init_from == "resume"
    data = load_data(config, ctx)
    config = config.with_data_tokenizer(data.meta)
    check_run_memory(config, checkpoint, data, ctx, device, dtype)  # before any parameter
    model, config = build_model(config, checkpoint, data, device, dtype)
    # the optimizer, and where the run stands: from scratch, or restored from the checkpoint
    optimizer = model.configure_optimizers(
        config.weight_decay,
        config.learning_rate,
        (config.beta1, config.beta2),
        device.type,
        fused=config.fused_adamw,
    )
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    streams = MicroBatchStreams(data, config, ctx.slots(config.gradient_accumulation_steps))
    torch.manual_seed(config.seed + ctx.rank)  # dropout masks, different on each rank
    state = LoopState()
    if resume:
        state = restore(checkpoint, optimizer, scaler, streams, ctx.rank, ctx.world_size, device)

    # the loop
    step_model, eval_model = wrap_for_steps(model, config, ctx, device)
    peak, peak_source, measured = resolve_peak_flops(config.peak_flops, device, dtype)
    measured_peak = MeasuredPeak(lambda: matmul_ceiling(device, dtype), peak) if measured else None
    if ctx.is_master:  # a checkpoint holds the weights and AdamW's two moments of each
        size = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
        check_free_space(Path(config.out_dir), size, "a checkpoint")
    log = RunLog(config.out_dir, config, state.iter_num if resume else None, ctx.is_master)
    if ctx.is_master:
        announce(config, checkpoint, model, optimizer, state, ctx, device, dtype)
        print(data.describe())
        print(f"MFU against {peak / 1e12:.3g} TFLOP/s ({peak_source})")
    trainer = TorchTrainer(
        config=config,
        data=data,
        model=model,
        step_model=step_model,
        eval_model=eval_model,
        optimizer=optimizer,
        scaler=scaler,
        streams=streams,
        ctx=ctx,
        device=device,
        peak_flops=peak,
        stop=StopSignal(),
        autocast=autocast_for(device, dtype),
        measured_peak=measured_peak,
    )
    with trainer.stop:
        completed = train_loop(config, data, log, trainer, streams, state)
    if not completed:
        stopped(trainer, state)
    if ctx.is_master and not config.eval_only:
        finish(trainer, log)


def announce(config, checkpoint, model, optimizer, state, ctx, device, dtype) -> None:
    """One line on what trains where, and from what."""
    started = f"resumed at iteration {state.iter_num}" if config.init_from == "resume" else ""
    if not started:
        started = (
            "from scratch" if checkpoint is None else f"from the weights of {checkpoint['path']}"
        )
    compiled = device.type == "cuda" if config.compile is None else config.compile
    print(
        f"torch GPT, {model.get_num_params(non_embedding=False):,} parameters, on {device} "
        f"({str(dtype).removeprefix('torch.')}, attention {config.attention}, compile "
        f"{compiled}, fused AdamW {optimizer.defaults.get('fused')}), {started}"
        + (f", {ctx.world_size} processes" if ctx.enabled else "")
    )


# ----------------------------------------------------------------------------- the end
def stopped(trainer: TorchTrainer, state: LoopState) -> None:
    """A signal ended the run after a save: say how to continue, exit with 128 + its number."""
    signum = trainer.stop.signum
    if trainer.is_master:
        print(
            f"stopped by {signal.Signals(signum).name} after iteration {state.iter_num}; saved "
            f"{trainer.checkpoint_path}; continue with --init_from resume --out_dir "
            f"{trainer.config.out_dir}",
            file=sys.stderr,
        )
    raise SystemExit(128 + signum)


def finish(trainer: TorchTrainer, log: RunLog) -> None:
    """The loss figure, and a sample from the trained model."""
    config, device, model = trainer.config, trainer.device, trainer.model
    figure = log.plot(f"torch GPT on {trainer.data.meta['source']} ({device.type})")
    print(f"wrote {log.path}, {figure} and {trainer.checkpoint_path}")
    if not config.sample_tokens:
        return
    generator = torch.Generator(device=device).manual_seed(config.seed)
    start_ids = torch.zeros((1, 1), dtype=torch.long, device=device)  # token 0
    model.eval()
    with trainer.autocast or contextlib.nullcontext():
        out = model.generate(
            start_ids, config.sample_tokens, config.temperature, config.top_k, generator=generator
        )
    tokenizer = trainer.data.tokenizer
    if tokenizer.note is not None:  # GPT-2's tokens without tiktoken: ids, and why
        print(tokenizer.note)
    print("---- sample ----")
    print(tokenizer.decode(out[0].tolist()))


if __name__ == "__main__":
    run_main(main)
