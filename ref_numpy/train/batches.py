"""The data of a training run: the splits, the training batch streams, the fixed evaluation
batches and the unigram baseline.

Every batch comes from a seeded `ref_numpy.data.BatchSampler`, so the NumPy and the torch
trainers, and any number of data-parallel ranks, see the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ref_numpy.data import BatchSampler, DataError, ensure_prepared, load_split
from ref_numpy.train.config import TrainConfig

EVAL_SEED_OFFSET = 10_000  # evaluation batches use their own stream, apart from training's


@dataclass
class TrainingData:
    train: np.ndarray  # [n_train] token ids
    val: np.ndarray  # [n_val] token ids
    meta: dict  # the data folder's meta.json: vocabulary, source, split lengths

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


def load_training_data(config: TrainConfig) -> TrainingData:
    """The run's data folder, prepared first if need be; fails early if a split is too short."""
    data_dir = config.resolved_data_dir()
    meta = ensure_prepared(data_dir, config.text)
    data = TrainingData(load_split(data_dir, "train"), load_split(data_dir, "val"), meta)
    for name in ("train", "val"):
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


def unigram_loss(data: TrainingData) -> float:
    """Cross-entropy on val of the best model that ignores context: train character frequencies.

    A trained model must beat it; it is the loss of predicting every character from its
    frequency alone.
    """
    counts = np.bincount(data.train, minlength=data.vocab_size).astype(np.float64) + 1.0  # add-one
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[data.val].mean())


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
