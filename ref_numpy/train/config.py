"""The training options both trainers read: nanoGPT's names, checked before any work starts.

Defaults train a small GPT on the character corpus in minutes on a 2-core CPU; the torch trainer
adds its own options and GPU-sized defaults (`torch_impl.train_config.TorchTrainConfig`).
Each option carries its one-line help (`option`): the `--help` of both programs prints it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ref_numpy.config import GPTConfig
from ref_numpy.data import check_tokenizer_options, default_data_dir
from ref_numpy.errors import UserError
from ref_numpy.schedule import get_lr


def option(default: Any, help: str) -> Any:
    """A dataclass field with its one-line `--help` text, the option's only documentation."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """nanoGPT's training options (same names), sized to train in minutes on a 2-core CPU."""

    # I/O
    out_dir: str = option("out", "folder of the run's log.jsonl, loss.png and weights")
    overwrite: bool = option(
        False,
        "start a new run in --out_dir even if it holds a previous run's checkpoint and log, "
        "replacing them (without it, a new run goes to the first free out_dir-2, out_dir-3, ...)",
    )
    eval_interval: int = option(
        250, "iterations between evaluations (and the torch trainer's checkpoints)"
    )
    log_interval: int = option(10, "iterations between logged training losses")
    eval_iters: int = option(10, "batches per split per evaluation")
    eval_only: bool = option(False, "evaluate once (e.g. a loaded checkpoint) and stop")
    # data
    text: str | None = option(None, "a UTF-8 text file to train on; none: the Shakespeare corpus")
    tokenizer: str | None = option(
        None,
        "char (one token per character) or bpe (a byte-level BPE learnt from the text's train "
        "split, saved as tokenizer.json beside the prepared data); none: what --data_dir holds, "
        "else char",
    )
    vocab_size: int | None = option(
        None, "tokens of the BPE vocabulary, with --tokenizer bpe; none: 4096"
    )
    data_dir: str | None = option(
        None,
        "folder of the prepared data (train.bin, val.bin, meta.json), prepared there if empty; "
        "none: data/shakespeare_char, data/<text stem>_<content key>_char for --text, "
        "_bpe<vocab_size> for a BPE",
    )
    dataset: str | None = option(
        None,
        "a nanoGPT data folder, read as it is: train.bin and val.bin (uint16 token ids) and, for "
        "characters, meta.pkl; without meta.pkl GPT-2's BPE (50257 tokens, 50304 in the model); "
        "none: data prepared from --text or the corpus",
    )
    gradient_accumulation_steps: int | None = option(
        None,
        "micro-batches per optimizer step, shared evenly by the processes of a torchrun job; "
        "none: one per process",
    )
    batch_size: int = option(32, "sequences per micro-batch")
    block_size: int = option(64, "context length in tokens")
    # model
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads per block; must divide --n_embd")
    n_embd: int = option(128, "width of the residual stream")
    dropout: float = option(0.0, "dropout probability (0: none)")
    bias: bool = option(True, "biases in the Linear and LayerNorm layers")
    gelu: str = option("erf", "GELU form: erf (nanoGPT) or tanh (GPT-2's approximation)")
    # AdamW
    learning_rate: float = option(2e-3, "peak learning rate, reached at the end of the warmup")
    max_iters: int = option(2000, "optimizer steps of the whole run")
    weight_decay: float = option(0.1, "AdamW weight decay of the 2-D parameters")
    beta1: float = option(0.9, "AdamW decay rate of the gradient's mean")
    beta2: float = option(0.99, "AdamW decay rate of the gradient's square")
    grad_clip: float = option(1.0, "clip the gradient's global norm to this (0: no clipping)")
    # learning-rate schedule
    decay_lr: bool = option(
        True, "warmup, then cosine decay to --min_lr (false: --learning_rate throughout)"
    )
    warmup_iters: int = option(100, "iterations of linear warmup")
    lr_decay_iters: int | None = option(
        None, "iteration where the cosine decay reaches --min_lr; none: --max_iters"
    )
    min_lr: float = option(2e-4, "learning rate at the end of the decay")
    # the rest
    seed: int = option(1337, "seed of the initial weights, the batches and dropout")
    sample_tokens: int = option(300, "tokens generated at the end (0: none)")
    temperature: float = option(0.8, "temperature of that sample (< 1 sharpens, > 1 flattens)")
    top_k: int | None = option(None, "sample among the k likeliest tokens only; none: all")

    def __post_init__(self) -> None:
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters
        if self.gradient_accumulation_steps is None:  # resolved once, so a checkpoint keeps it
            self.gradient_accumulation_steps = self.process_count()
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
        for name in ("max_iters", "warmup_iters", "sample_tokens", "lr_decay_iters", "seed"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if self.seed >= 2**63:  # torch.manual_seed takes a 64-bit seed (plus the rank)
            raise UserError(f"--seed must be below 2**63, got {self.seed}")
        if not self.learning_rate > 0:
            raise UserError(f"--learning_rate must be positive, got {self.learning_rate}")
        for name in ("min_lr", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--{name} must be 0 or more, got {getattr(self, name)}")
        if not self.grad_clip >= 0:
            raise UserError(f"--grad_clip must be 0 (no clipping) or more, got {self.grad_clip}")
        if self.decay_lr and self.min_lr > self.learning_rate:
            raise UserError(
                f"--min_lr {self.min_lr} is above --learning_rate {self.learning_rate}: the "
                f"cosine decay (--decay_lr true) would raise the learning rate, not lower it; "
                f"lower --min_lr or raise --learning_rate"
            )
        if self.temperature <= 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top_k must be at least 1, got {self.top_k}")
        self.model_config(vocab_size=1)  # n_embd % n_head, gelu, dropout: fail before any work
        self.check_data_options()

    def check_data_options(self) -> None:
        """--dataset reads a nanoGPT folder as it is; the options that prepare data do not apply."""
        check_tokenizer_options(self.tokenizer or "char", self.vocab_size)
        preparing = ("text", "data_dir", "tokenizer", "vocab_size")
        given = [f"--{name}" for name in preparing if getattr(self, name) is not None]
        if self.dataset is not None and given:
            raise UserError(
                f"--dataset reads a nanoGPT folder as it is, with its own tokens; leave out "
                f"{', '.join(given)}, or leave out --dataset to prepare data from a text"
            )

    def process_count(self) -> int:
        """The processes that share an optimizer step: one, as the NumPy trainer runs."""
        return 1

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

    def with_data_tokenizer(self, meta: dict) -> TrainConfig:
        """These options with the tokenizer of the prepared data written in (char, or bpe and its
        size), so that the run's log and checkpoint name it and a resume is held to it. A
        --dataset run keeps these unset: its tokenizer is in the data's meta."""
        if self.dataset is not None:
            return self
        size = meta.get("requested_vocab_size")
        return dataclasses.replace(self, tokenizer=meta["tokenizer"], vocab_size=size)

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir)
        return default_data_dir(self.text, self.tokenizer or "char", self.vocab_size)

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
