"""What the NumPy and the torch trainers share: the training configuration and its command line,
the data set-up, the batch streams, the fixed evaluation batches, the JSONL log and the loss-curve
figure, and the training loop. The command line itself is `ref_numpy.options`.

The math of a training step lives in each trainer; everything here is bookkeeping, written once
so that the two trainers cannot drift apart in how they read flags, draw batches or log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from ref_numpy.config import GPTConfig
from ref_numpy.data import BatchSampler, DataError, default_data_dir, ensure_prepared, load_split
from ref_numpy.options import TrainingFailed
from ref_numpy.schedule import get_lr

EVAL_SEED_OFFSET = 10_000  # evaluation batches use their own stream, apart from training's


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
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_iters", "warmup_iters", "sample_tokens", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must not be negative, got {getattr(self, name)}")
        if (
            self.learning_rate <= 0
            or self.min_lr < 0
            or self.weight_decay < 0
            or self.grad_clip < 0
        ):
            raise ValueError(
                "--learning_rate must be positive; --min_lr, --weight_decay, --grad_clip >= 0"
            )
        if self.temperature <= 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top_k must be at least 1, got {self.top_k}")
        self.model_config(vocab_size=1)  # n_embd % n_head, gelu, dropout: fail before any work

    def model_config(self, vocab_size: int) -> GPTConfig:
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

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir) if self.data_dir is not None else default_data_dir(self.text)


# ----------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    train: np.ndarray
    val: np.ndarray
    meta: dict

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


def load_training_data(config: TrainConfig) -> TrainingData:
    data_dir = config.resolved_data_dir()
    meta = ensure_prepared(data_dir, config.text)
    data = TrainingData(load_split(data_dir, "train"), load_split(data_dir, "val"), meta)
    for name in ("train", "val"):  # fails early, with the data error, if a split is too short
        BatchSampler(getattr(data, name), config.block_size, config.batch_size, 0, name)
    return data


def eval_batches(data: TrainingData, config: TrainConfig) -> dict[str, list]:
    """The same `eval_iters` batches of each split at every evaluation: a smooth val curve."""
    batches = {}
    for offset, split in enumerate(("train", "val")):
        sampler = BatchSampler(
            getattr(data, split),
            config.block_size,
            config.batch_size,
            config.seed + EVAL_SEED_OFFSET + offset,
            split,
        )
        batches[split] = [sampler.next_batch() for _ in range(config.eval_iters)]
    return batches


class MicroBatchStreams:
    """The training batches: one seeded stream per gradient-accumulation slot.

    Iteration i's micro-batch j is the i-th draw of stream j, whose seed is `seed + j`. Giving
    each slot its own stream makes the data independent of how the slots are spread over
    processes: one process running all G slots and K data-parallel ranks running G/K slots each
    (rank r the slots r*G/K ... (r+1)*G/K - 1) train on the same batches, and a checkpoint
    holding every stream's state resumes under any number of ranks that divides G.
    """

    def __init__(
        self, data: TrainingData, config: TrainConfig, slots: Sequence[int] | None = None
    ) -> None:
        n_slots = config.gradient_accumulation_steps
        self.slots = list(range(n_slots)) if slots is None else list(slots)
        if any(not 0 <= j < n_slots for j in self.slots):
            raise ValueError(f"micro-batch slots {self.slots} outside 0..{n_slots - 1}")
        self.samplers = {
            j: BatchSampler(
                data.train, config.block_size, config.batch_size, config.seed + j, "train"
            )
            for j in self.slots
        }

    def next_micro_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.samplers[j].next_batch() for j in self.slots]

    def state_dict(self) -> dict[int, dict]:
        return {j: sampler.state_dict() for j, sampler in self.samplers.items()}

    def load_state_dict(self, states: dict[int, dict]) -> None:
        missing = [j for j in self.slots if j not in states]
        if missing:
            raise DataError(
                f"the saved batch streams are for slots {sorted(states)}, not {self.slots}; "
                f"keep --gradient_accumulation_steps as it was"
            )
        for j in self.slots:
            self.samplers[j].load_state_dict(states[j])


# ----------------------------------------------------------------------------- log and figure
class RunLog:
    """Appends one JSON object per line to out_dir/log.jsonl and keeps them for the figure."""

    def __init__(
        self, out_dir: str | Path, config: Any, resume_iter: int | None = None, active: bool = True
    ) -> None:
        """A fresh log, or with `resume_iter` the existing one cut back to the records before
        that iteration (a killed run may have logged past its last checkpoint). An inactive log
        (a data-parallel rank other than 0) writes nothing."""
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "log.jsonl"
        self.records: list[dict] = []
        self.active = active
        if not active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_iter is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by the kill
                    continue
                if record.get("iter", -1) < resume_iter:
                    self.records.append(record)
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())
        header = {"config": dataclasses.asdict(config)}
        if resume_iter is not None:
            header["resumed_at"] = resume_iter
        self.write(header)

    def write(self, record: dict) -> None:
        if not self.active:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, title: str) -> Path:
        """Training loss per iteration and train/val loss at each evaluation, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r for r in self.records if "loss" in r]
        evals = [r for r in self.records if "val_loss" in r]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(
            [r["iter"] for r in steps],
            [r["loss"] for r in steps],
            lw=0.8,
            alpha=0.6,
            label="training batch",
        )
        ax.plot(
            [r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (eval)"
        )
        ax.plot(
            [r["iter"] for r in evals], [r["val_loss"] for r in evals], "s-", label="val (eval)"
        )
        if evals and "unigram_loss" in evals[0]:
            ax.axhline(evals[0]["unigram_loss"], color="gray", ls="--", label="unigram baseline")
        ax.set_xlabel("iteration")
        ax.set_ylabel("cross-entropy loss (nats per character)")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = self.out_dir / "loss.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def unigram_loss(data: TrainingData) -> float:
    """Cross-entropy on val of the best model that ignores context: train character frequencies.

    A trained model must beat it; it is the loss of predicting every character from its
    frequency alone.
    """
    counts = np.bincount(data.train, minlength=data.vocab_size).astype(np.float64) + 1.0  # add-one
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[data.val].mean())


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let `write` fill a temporary file in the same folder, flush it to disk, then rename it
    over `path`. os.replace is atomic on POSIX: a reader, or a run killed mid-write, sees the old
    file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    atomic_write(path, lambda f: f.write(payload))


# ----------------------------------------------------------------------------- the loop
StepFunction = Callable[[list, float], tuple[float, float]]  # (micro-batches, lr) -> (loss, norm)
EstimateFunction = Callable[[dict], dict[str, float]]  # eval batches -> {"train": .., "val": ..}


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint records and a resume restores (with the streams)."""

    iter_num: int = 0  # optimizer steps taken
    best_val_loss: float = math.inf
    last_saved_iter: int | None = None
    stopped: bool = False  # set when a stop request (a signal) ended the loop early


def train_loop(
    config: TrainConfig,
    data: TrainingData,
    log: RunLog,
    step: StepFunction,
    estimate_loss: EstimateFunction,
    desc: str,
    *,
    streams: MicroBatchStreams | None = None,
    state: LoopState | None = None,
    save: Callable[[LoopState], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    mfu: Callable[[float], float | None] | None = None,
    is_master: bool = True,
) -> LoopState:
    """The training loop both trainers run: schedule, batches, evaluation, logging, checkpoints.

    `step` takes the iteration's micro-batches and learning rate and returns the mean loss and
    the gradient norm before clipping; `estimate_loss` returns the mean loss of each split over
    the fixed evaluation batches. Evaluation runs every `eval_interval` iterations and at the
    end, on the master process only.

    The rest serves the torch trainer's checkpoints: `streams` and `state` (restored from a
    checkpoint to resume), `save(state)` called at every evaluation after the first step of this
    run and at the end (on every process: a data-parallel save gathers the ranks' states),
    `stop_requested()` polled after each step (a signal: save, then return with state.stopped),
    and `mfu(tokens_per_second)` for the progress bar and the log.
    """
    streams = streams if streams is not None else MicroBatchStreams(data, config)
    state = state if state is not None else LoopState()
    start_iter = state.iter_num
    if start_iter > config.max_iters:
        raise ValueError(
            f"the checkpoint is at iteration {start_iter}, past --max_iters {config.max_iters}"
        )
    fixed_eval_batches = eval_batches(data, config)
    baseline = unigram_loss(data)
    tokens_per_iter = config.gradient_accumulation_steps * config.batch_size * config.block_size

    def evaluate(it: int) -> None:
        if not is_master:
            return
        losses = estimate_loss(fixed_eval_batches)
        state.best_val_loss = min(state.best_val_loss, losses["val"])
        log.write(
            {
                "iter": it,
                "train_loss": losses["train"],
                "val_loss": losses["val"],
                "unigram_loss": baseline,
            }
        )
        tqdm.write(
            f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
            f"(unigram baseline {baseline:.4f})"
        )

    def checkpoint() -> None:
        if save is not None:
            save(state)
            state.last_saved_iter = state.iter_num

    if config.eval_only:
        evaluate(start_iter)
        return state
    progress = tqdm(
        range(start_iter, config.max_iters),
        desc=desc,
        unit="it",
        initial=start_iter,
        total=config.max_iters,
        disable=not is_master,
    )
    for it in progress:
        if it % config.eval_interval == 0:
            evaluate(it)
            if it > start_iter:  # the state at start_iter is the checkpoint it came from
                checkpoint()
        lr = get_lr(
            it,
            config.learning_rate,
            config.warmup_iters,
            config.lr_decay_iters,
            config.min_lr,
            config.decay_lr,
        )
        start = time.perf_counter()
        loss, grad_norm = step(streams.next_micro_batches(), lr)
        if not math.isfinite(loss):
            kept = (
                f"the checkpoint of iteration {state.last_saved_iter} is kept"
                if state.last_saved_iter is not None
                else "no checkpoint was written in this run"
            )
            raise TrainingFailed(
                f"the loss became {loss} at iteration {it}; training stopped and {kept} "
                f"(try a lower --learning_rate)"
            )
        state.iter_num = it + 1
        tokens_per_second = tokens_per_iter / (time.perf_counter() - start)
        utilisation = mfu(tokens_per_second) if mfu is not None else None
        if it % config.log_interval == 0:
            record = {
                "iter": it,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_second": tokens_per_second,
            }
            if utilisation is not None:
                record["mfu"] = utilisation
            log.write(record)
        postfix = {"loss": f"{loss:.4f}", "tok_s": f"{tokens_per_second:,.0f}"}
        if utilisation is not None:
            postfix["mfu"] = f"{100 * utilisation:.1f}%"
        progress.set_postfix(postfix)
        if stop_requested is not None and stop_requested():
            progress.close()
            checkpoint()
            state.stopped = True
            return state
    evaluate(config.max_iters)
    checkpoint()
    return state
