"""The training loop both trainers run: schedule, batches, evaluation, logging, checkpoints.

The loop drives a `Trainer`, which holds one implementation's model and optimizer: `step` takes
an iteration's micro-batches and learning rate and returns the mean loss and the gradient norm
before clipping (numbers, or 0-d tensors still on a GPU: the loop reads them back only for the
steps it logs, and all of them before anything is saved, so that a GPU never waits for the host
between steps and no non-finite loss reaches a checkpoint); `estimate_loss` returns each
split's mean loss over the fixed evaluation batches. The rest of the interface has defaults that
fit a single process with nothing to save (the NumPy trainer); the torch trainer overrides them
to write checkpoints, stop on a signal, report MFU and run as one rank of several.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tqdm import tqdm

from ref_numpy.errors import UserError
from ref_numpy.files import StorageError
from ref_numpy.train.batches import MicroBatchStreams, TrainingData, eval_batches, unigram_loss
from ref_numpy.train.config import TrainConfig
from ref_numpy.train.machine import warn_if_loaded
from ref_numpy.train.run_log import RunLog


class TrainingFailed(RuntimeError):
    """Training stopped on its own (a non-finite loss): exit code 1, the last checkpoint kept."""


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint records and a resume restores (with the streams)."""

    iter_num: int = 0  # optimizer steps taken
    best_val_loss: float = math.inf
    last_saved_iter: int | None = None


class Trainer:
    """What `train_loop` drives. Subclasses give `step` and `estimate_loss`."""

    name = "train"  # the progress bar's label
    is_master = True  # the process that evaluates and logs (rank 0 of a data-parallel job)

    def step(self, micro_batches: list, lr: float) -> tuple[float, float]:
        """One optimizer step: (mean loss of the micro-batches, gradient norm before clipping),
        as numbers or as anything float() reads one from (a 0-d tensor)."""
        raise NotImplementedError

    def estimate_loss(self, batches: dict[str, list]) -> dict[str, float]:
        """Each split's mean loss over its batches: {"train": .., "val": ..}."""
        raise NotImplementedError

    def save(self, state: LoopState) -> None:
        """Called at every evaluation after the run's first step, at the end and on a stop, on
        every process (a data-parallel save gathers the ranks' states). Default: nothing."""

    def stop_requested(self) -> bool:
        """Polled after every step; True saves and ends the loop (a signal). Default: never."""
        return False

    def mfu(self, tokens_per_second: float) -> float | None:
        """Model FLOPs utilisation of this throughput, for the log; None where not measured."""
        return None

    def after_storage_failure(self, state: LoopState) -> str:
        """What a user who ran out of storage mid-run still has, and how to go on."""
        return "free some space and start the run again"


class Evaluation:
    """The fixed evaluation batches and the unigram baseline, and each evaluation's record."""

    def __init__(self, config: TrainConfig, data: TrainingData) -> None:
        self.batches = eval_batches(data, config)
        self.baseline = unigram_loss(data)
        self.data = data

    def __call__(self, it: int, trainer: Trainer, state: LoopState, log: RunLog) -> None:
        if not trainer.is_master:
            return
        losses = trainer.estimate_loss(self.batches)
        state.best_val_loss = min(state.best_val_loss, losses["val"])
        record = {"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]}
        record["unigram_loss"] = self.baseline
        bits = self.data.bits_per_character(losses["val"])  # None where characters are unknown
        if bits is not None:
            record["val_bits_per_character"] = bits
        log.write(record)
        tqdm.write(
            f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
            + (f" ({bits:.4f} bits per character)" if bits is not None else "")
            + f" (unigram baseline {self.baseline:.4f})"
        )


def _save(trainer: Trainer, state: LoopState) -> None:
    trainer.save(state)
    state.last_saved_iter = state.iter_num


def _check_finite(loss: float, it: int, state: LoopState) -> None:
    if math.isfinite(loss):
        return
    kept = (
        f"the checkpoint of iteration {state.last_saved_iter} is kept"
        if state.last_saved_iter is not None
        else "no checkpoint was written in this run"
    )
    raise TrainingFailed(
        f"the loss became {loss} at iteration {it}; training stopped and {kept} "
        f"(try a lower --learning_rate)"
    )


def _read_back(unread: list, state: LoopState) -> list[tuple[int, float, float]]:
    """The unread steps' (iteration, loss, gradient norm) as numbers, each loss checked finite in
    order (the first non-finite one ends the run); `unread` is emptied."""
    steps = [(it, float(loss), float(grad_norm)) for it, loss, grad_norm in unread]
    unread.clear()
    for it, loss, _ in steps:
        _check_finite(loss, it, state)
    return steps


def _step_record(
    it: int, loss: float, lr: float, grad_norm: float, tokens_per_second: float, mfu: float | None
) -> dict:
    record = {
        "iter": it,
        "loss": loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_second": tokens_per_second,
    }
    return record if mfu is None else {**record, "mfu": mfu}


def train_loop(
    config: TrainConfig,
    data: TrainingData,
    log: RunLog,
    trainer: Trainer,
    streams: MicroBatchStreams,
    state: LoopState,
) -> bool:
    """Train from `state` (a new run's, or a checkpoint's) to `config.max_iters`.

    Evaluates every `eval_interval` iterations and at the end, saving after each evaluation
    past the starting point (the state at the start is the checkpoint it came from). Returns
    True when the run reached max_iters (or, with eval_only, evaluated once), False when the
    trainer asked it to stop, which it did after saving. Storage that fails mid-run (a full
    disk) ends it with a StorageError that says what was kept and how to go on.
    """
    if trainer.is_master:
        warn_if_loaded()
    with _saying_what_is_kept(trainer, state):
        return _train(config, data, log, trainer, streams, state)


@contextlib.contextmanager
def _saying_what_is_kept(trainer: Trainer, state: LoopState) -> Iterator[None]:
    """A StorageError inside gains what the trainer still has and how to go on."""
    try:
        yield
    except StorageError as error:
        raise StorageError(f"{error}; {trainer.after_storage_failure(state)}") from error


def _train(config, data, log, trainer, streams, state) -> bool:  # train_loop's arguments
    if state.iter_num > config.max_iters:
        raise UserError(
            f"the checkpoint is at iteration {state.iter_num}, past --max_iters {config.max_iters}"
        )
    evaluate = Evaluation(config, data)
    if config.eval_only:
        evaluate(state.iter_num, trainer, state, log)
        return True
    tokens_per_iter = config.gradient_accumulation_steps * config.batch_size * config.block_size
    start_iter = state.iter_num
    progress = tqdm(
        range(start_iter, config.max_iters),
        desc=trainer.name,
        unit="it",
        initial=start_iter,
        total=config.max_iters,
        disable=not trainer.is_master,
    )
    # throughput is measured over the steps between two read-backs (the clock is read after the
    # loss, which waits for the GPU), restarted after each evaluation
    window_start, window_iter = time.perf_counter(), start_iter
    unread: list = []  # (iteration, loss, grad norm) of the steps not yet read back
    for it in progress:
        if it % config.eval_interval == 0:
            _read_back(unread, state)
            evaluate(it, trainer, state, log)
            if it > start_iter:
                _save(trainer, state)
            window_start, window_iter = time.perf_counter(), it
        lr = config.lr_at(it)
        loss, grad_norm = trainer.step(streams.next_micro_batches(), lr)
        state.iter_num = it + 1
        unread.append((it, loss, grad_norm))
        if it % config.log_interval == 0:
            _, loss, grad_norm = _read_back(unread, state)[-1]
            now = time.perf_counter()
            tokens_per_second = tokens_per_iter * (it + 1 - window_iter) / (now - window_start)
            window_start, window_iter = now, it + 1
            mfu = trainer.mfu(tokens_per_second)
            log.write(_step_record(it, loss, lr, grad_norm, tokens_per_second, mfu))
            postfix = {"loss": f"{loss:.4f}", "tok_s": f"{tokens_per_second:,.0f}"}
            mfu_text = {} if mfu is None else {"mfu": f"{100 * mfu:.1f}%"}
            progress.set_postfix({**postfix, **mfu_text})
        if trainer.stop_requested():
            _read_back(unread, state)
            progress.close()
            _save(trainer, state)
            return False
    _read_back(unread, state)
    evaluate(config.max_iters, trainer, state, log)
    _save(trainer, state)
    return True
