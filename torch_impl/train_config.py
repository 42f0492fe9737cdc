"""The torch trainer's options: nanoGPT's training options (`ref_numpy.train.config`) plus the
torch-only ones, with defaults sized for the device, and the options of one run as the command
line, a config file and, on resume, the checkpoint set them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ref_numpy.errors import UserError
from ref_numpy.train.config import TrainConfig, option
from ref_numpy.train.options import read_overrides
from torch_impl.checkpoint import CheckpointError, is_full_checkpoint, load_checkpoint
from torch_impl.model import ATTENTION_BACKENDS
from torch_impl.runtime import DTYPES, processes_from_env


@dataclass
class TorchTrainConfig(TrainConfig):
    device: str = option("auto", "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    dtype: str = option(
        "auto",
        "auto (bfloat16 on a GPU that has it, else float32), float32, float64, bfloat16 or "
        "float16: float32/float64 set the parameters' dtype, bfloat16/float16 autocast the "
        "matmuls over float32 parameters (float16 with a GradScaler)",
    )
    compile: bool | None = option(None, "torch.compile the model; none: on for CUDA, off elsewhere")
    attention: str = option(
        "sdpa",
        "sdpa (torch's fused attention, flash on GPUs), cudnn (SDPA held to cuDNN's, CUDA only), "
        "manual (the softmax materialised) or triton (this project's kernels)",
    )
    fused_adamw: bool | None = option(
        None, "AdamW's fused kernel; none: fused wherever this torch supports it"
    )
    init_from: str = option(
        "scratch",
        "scratch; resume (out_dir/ckpt.pt, exactly where it stopped); or a checkpoint file of "
        "this trainer or of nanoGPT, whose weights start a new run",
    )
    peak_flops: float | None = option(
        None, "FLOP/s that MFU divides by; none: the GPU's datasheet peak, else a measured matmul"
    )

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
        "tokenizer",
        "vocab_size",
        "dataset",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UserError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise UserError(
                f"--attention must be one of {ATTENTION_BACKENDS}, not {self.attention!r}"
            )
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise UserError(f"--peak_flops must be positive, got {self.peak_flops}")
        if self.attention == "triton" and self.dropout > 0:
            raise UserError("--attention triton has no attention dropout; use --dropout 0 or sdpa")

    def process_count(self) -> int:
        """The processes of this torchrun job (1 without torchrun), for one micro-batch each."""
        return processes_from_env()

    @classmethod
    def device_defaults(cls, device: str) -> dict[str, Any]:
        """Defaults that differ by device: the GPU ones where `device` resolves to CUDA."""
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        return dict(cls.GPU_DEFAULTS) if on_cuda else {}


def config_for_run(
    argv: Sequence[str] | None, description: str = ""
) -> tuple[TorchTrainConfig, dict | None]:
    """The run's options and, for `--init_from resume` or a file, the checkpoint it starts from.

    A resume takes every option from the checkpoint except those given again, and refuses new
    values for FIXED_ON_RESUME; `--init_from resume --max_iters 4000` extends a run.
    """
    explicit = read_overrides(TorchTrainConfig, argv, description, "python -m torch_impl.train")
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
        raise UserError(f"a resume continues the saved run; it cannot change {', '.join(changed)}")
    return TorchTrainConfig(**{**saved, **explicit}), checkpoint
