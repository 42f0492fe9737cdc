"""Train the PyTorch GPT: `python -m torch_impl.train` (the README's `make train`).

The same loop as `ref_numpy.train` (same flags, schedule, clipping, batches and initial
parameters, drawn by `ref_numpy.gpt.init_params`), run by torch: on a GPU when there is one, with
flash attention (SDPA), fused AdamW, bf16 autocast and torch.compile; on the CPU otherwise.
Writes out_dir/log.jsonl, out_dir/loss.png and out_dir/ckpt.pt, then prints a sample.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ref_numpy.data import decode
from ref_numpy.gpt import init_params
from ref_numpy.training import (
    RunLog,
    TrainConfig,
    atomic_write_bytes,
    load_training_data,
    parse_config,
    run_main,
    train_loop,
)
from torch_impl.model import GPT

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class TorchTrainConfig(TrainConfig):
    device: str = "auto"  # auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps
    # auto: bfloat16 autocast on a GPU that has it, else float32. float32/float64 set the
    # parameters' dtype; bfloat16/float16 keep float32 parameters and autocast the matmuls.
    dtype: str = "auto"
    compile: bool | None = None  # None: on for CUDA, off elsewhere
    attention: str = "sdpa"  # sdpa (flash on GPUs) or manual (materialised softmax)
    fused_adamw: bool | None = None  # None: fused wherever this torch supports it

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps asked for, but MPS is not available; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    dtype = DTYPES[name]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bfloat16; use --dtype float16 or float32")
    return dtype


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
    the accumulated gradient is that of the mean loss.
    """
    device = next(model.parameters()).device
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    for x, y in micro_batches:
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
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
    return torch.stack(losses).mean().item(), grad_norm


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


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(TorchTrainConfig, argv, __doc__.splitlines()[0])
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    data = load_training_data(config)
    cfg = config.model_config(data.vocab_size)

    torch.manual_seed(config.seed)  # dropout masks
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 tensor cores for float32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    low_precision = dtype in (torch.bfloat16, torch.float16)
    param_dtype = torch.float32 if low_precision else dtype
    model = GPT(cfg, attention=config.attention).to(device=device, dtype=param_dtype)
    # the NumPy trainer's init, drawn in float64 and rounded once to the parameters' dtype
    model.load_numpy_params(init_params(cfg, seed=config.seed))
    autocast = torch.autocast(device.type, dtype=dtype) if low_precision else None
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    optimizer = model.configure_optimizers(
        config.weight_decay,
        config.learning_rate,
        (config.beta1, config.beta2),
        device.type,
        fused=config.fused_adamw,
    )
    use_compile = device.type == "cuda" if config.compile is None else config.compile
    step_model = torch.compile(model) if use_compile else model

    log = RunLog(config.out_dir, config)
    print(
        f"torch GPT, {model.get_num_params(non_embedding=False):,} parameters, on {device} "
        f"({str(dtype).removeprefix('torch.')}, attention {config.attention}, "
        f"compile {use_compile})"
    )
    train_loop(
        config,
        data,
        log,
        step=lambda micro, lr: train_step(
            step_model, optimizer, micro, lr, config.grad_clip, autocast, scaler
        ),
        estimate_loss=lambda batches: estimate_loss(step_model, batches, autocast),
        desc=f"torch {device.type}",
    )

    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": cfg.to_dict(),
        "iter_num": config.max_iters,
        "config": asdict(config),
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(log.out_dir / "ckpt.pt", buffer.getvalue())
    figure = log.plot(f"torch GPT on {data.meta['source']} ({device.type})")
    print(f"wrote {log.path}, {figure} and {log.out_dir / 'ckpt.pt'}")
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
