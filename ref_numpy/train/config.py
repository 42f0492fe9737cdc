"""The training options both trainers read: nanoGPT's names, checked before any work starts.

Defaults train a small GPT on the character corpus in minutes on a 2-core CPU; the torch trainer
adds its own options and GPU-sized defaults (`torch_impl.train.TorchTrainConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ref_numpy.config import GPTConfig
from ref_numpy.data import default_data_dir
from ref_numpy.errors import UserError
from ref_numpy.schedule import get_lr


@dataclass
class TrainConfig:
    """nanoGPT's training options (same names), sized to train in minutes on a 2-core CPU."""

    # I/O
    out_dir: str = "out"
    eval_interval: int = 250
    log_interval: int = 10
    eval_iters: int = 10  # batches per split per evaluation
    eval_only: bool = False  # evaluate once (e.g. a loaded checkpoint) and stop
    # data: the Shakespeare corpus unless `text` names a UTF-8 file
    text: str | None = None
    data_dir: str | None = None  # default: data/shakespeare_char or data/<text stem>_char
    gradient_accumulation_steps: int = 1
    batch_size: int = 32
    block_size: int = 64
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    gelu: str = "erf"
    # AdamW
    learning_rate: float = 2e-3
    max_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # learning-rate schedule
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: max_iters
    min_lr: float = 2e-4
    # the rest
    seed: int = 1337
    sample_tokens: int = 300  # characters generated at the end (0: none)
    temperature: float = 0.8
    top_k: int | None = None

    def __post_init__(self) -> None:
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters
        positive = (
            "eval_interval",
            "log_interval",
            "eval_iters",
            "gradient_accumulation_steps",
            "batch_size",
            "block_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "sample_tokens", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must not be negative, got {getattr(self, name)}")
        if (
            self.learning_rate <= 0
            or self.min_lr < 0
            or self.weight_decay < 0
            or self.grad_clip < 0
        ):
            raise UserError(
                "--learning_rate must be positive; --min_lr, --weight_decay, --grad_clip >= 0"
            )
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top_k must be at least 1, got {self.top_k}")
        self.model_config(vocab_size=1)  # n_embd % n_head, gelu, dropout: fail before any work

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig these options describe, for a vocabulary of `vocab_size` tokens."""
        try:
            return GPTConfig(
                block_size=self.block_size,
                vocab_size=vocab_size,
                n_layer=self.n_layer,
                n_head=self.n_head,
                n_embd=self.n_embd,
                dropout=self.dropout,
                bias=self.bias,
                gelu=self.gelu,
            )
        except ValueError as error:  # GPTConfig checks the model's shape; here it came from flags
            raise UserError(str(error)) from None

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir is not None else default_data_dir(self.text)

    def lr_at(self, it: int) -> float:
        """The learning rate of iteration `it`: warmup, then cosine decay (`schedule.get_lr`)."""
        return get_lr(
            it,
            self.learning_rate,
            self.warmup_iters,
            self.lr_decay_iters,
            self.min_lr,
            self.decay_lr,
        )
