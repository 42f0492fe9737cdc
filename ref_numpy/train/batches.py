"""The data of a training run: the splits, the training batch streams, the fixed evaluation
batches and the unigram baseline.

The splits come from a prepared data folder (characters or a BPE, `ref_numpy.data`) or from a
nanoGPT folder read as it is (`--dataset`, `ref_numpy.nanogpt_data`); their ids are checked
against the vocabulary on a sample before any work. Every batch comes from a seeded
`ref_numpy.data.BatchSampler`, so the NumPy and the torch trainers, and any number of
data-parallel ranks, see the same tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ref_numpy import nanogpt_data
from ref_numpy.data import (
    TOKENIZER_FILE,
    BatchSampler,
    DataError,
    ensure_prepared,
    load_split,
    read_tokenizer_file,
)
from ref_numpy.tokenizer import Tokenizer, tokenizer_from_meta
from ref_numpy.train.config import TrainConfig

EVAL_SEED_OFFSET = 10_000  # evaluation batches use their own stream, apart from training's
UNIGRAM_MAX_TOKENS = 1 << 24  # the baseline counts at most this many tokens of a split


@dataclass
class TrainingData:
    train: np.ndarray  # [n_train] token ids
    val: np.ndarray  # [n_val] token ids
    meta: dict  # the data folder's meta.json: tokenizer, vocabulary, source, split lengths

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary: the tokenizer's, padded for GPT-2's as nanoGPT pads it."""
        return int(self.meta.get("model_vocab_size", self.meta["vocab_size"]))

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        where = self.meta.get("tokenizer_file")
        where = f"'{where}'" if where else f"the data of '{self.meta['source']}'"
        return tokenizer_from_meta(self.meta, where)

    @property
    def characters_per_token(self) -> float | None:
        """Characters per token over the val split, where known: what turns a loss per token
        into a loss per character, the one measure that compares tokenizers."""
        n_val_chars = self.meta.get("n_val_chars")
        if n_val_chars is None and self.meta["tokenizer"] == "char":
            n_val_chars = self.meta["n_val"]
        return None if n_val_chars is None else n_val_chars / self.meta["n_val"]

    def bits_per_character(self, loss: float) -> float | None:
        """A loss in nats per token as bits per character: loss * tokens / (characters * ln 2)."""
        per_token = self.characters_per_token
        return None if per_token is None else loss / (per_token * math.log(2))

    def describe(self) -> str:
        per_token = self.characters_per_token
        rate = "" if per_token is None else f", {per_token:.2f} characters per val token"
        return (
            f"data: {self.meta['source']}, {self.tokenizer.describe()}, {len(self.train):,} train "
            f"and {len(self.val):,} val tokens{rate}"
        )


def load_training_data(config: TrainConfig) -> TrainingData:
    """The run's data: a nanoGPT folder (`--dataset`) or a prepared data folder, prepared first
    if need be. Fails early if a split is too short or holds ids outside the vocabulary."""
    if config.dataset is not None:
        train, val, meta = nanogpt_data.load_folder(config.dataset)
        data, fix = TrainingData(train, val, meta), nanogpt_data.id_fix(meta)
        where = {split: f"'{Path(config.dataset) / f'{split}.bin'}'" for split in ("train", "val")}
    else:
        data_dir = config.resolved_data_dir()
        meta = ensure_prepared(
            data_dir, config.text, config.tokenizer, config.vocab_size, progress=True
        )
        if meta["tokenizer"] == "bpe":
            tokenizer_file = str(data_dir / TOKENIZER_FILE)
            meta = {**meta, "tokenizer_json": read_tokenizer_file(data_dir)}
            meta["tokenizer_file"] = tokenizer_file
        data = TrainingData(load_split(data_dir, "train"), load_split(data_dir, "val"), meta)
        fix = f"the bins and meta.json of '{data_dir}' do not belong together; prepare it again"
        where = {split: f"'{data_dir / f'{split}.bin'}'" for split in ("train", "val")}
    # the tokenizer loads here, so that a tokenizer file that does not is refused before any work
    if data.tokenizer.vocab_size != data.meta["vocab_size"]:
        raise DataError(
            f"the tokenizer of {data.meta['source']} has {data.tokenizer.vocab_size} tokens, its "
            f"meta {data.meta['vocab_size']}; {fix}"
        )
    for name in ("train", "val"):
        check_token_ids(getattr(data, name), data.meta["vocab_size"], where[name], fix)
        BatchSampler(getattr(data, name), config.block_size, config.batch_size, 0, name)
    return data


ID_CHECK_WINDOWS = 64  # the token-id check reads this many evenly spaced windows of a split,
ID_CHECK_WINDOW = 16384  # of this many ids each: at most 1 Mi ids, milliseconds for any size


def check_token_ids(ids: np.ndarray, vocab_size: int, where: str, fix: str) -> None:
    """Every id of a sample of `ids` (all of a split of up to 1 Mi ids) is below `vocab_size`;
    else a DataError naming the first id found outside, its position and `where`."""
    n = len(ids)
    if n <= ID_CHECK_WINDOWS * ID_CHECK_WINDOW:
        starts = [0] if n else []
        width = n
    else:
        starts = np.linspace(0, n - ID_CHECK_WINDOW, ID_CHECK_WINDOWS).astype(np.int64).tolist()
        width = ID_CHECK_WINDOW
    for start in starts:
        window = np.asarray(ids[start : start + width])
        outside = window >= vocab_size
        if outside.any():
            offset = int(np.argmax(outside))
            raise DataError(
                f"{where} holds token id {int(window[offset])} at position {start + offset:,}, "
                f"at or beyond the vocabulary of {vocab_size} tokens; {fix}"
            )


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
    """Cross-entropy on val of the best model that ignores context: train token frequencies.

    A trained model must beat it; it is the loss of predicting every token from its frequency
    alone. Of a split longer than UNIGRAM_MAX_TOKENS, evenly spaced windows of that many tokens
    in all are counted: a 9-billion-token OpenWebText is not read whole at start.
    """
    train, val = _spread_sample(data.train), _spread_sample(data.val)
    counts = np.bincount(train, minlength=data.vocab_size).astype(np.float64) + 1.0  # add-one
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[val].mean())


def _spread_sample(ids: np.ndarray, windows: int = 256) -> np.ndarray:
    """All of `ids`, or `windows` evenly spaced windows of UNIGRAM_MAX_TOKENS tokens in all."""
    if len(ids) <= UNIGRAM_MAX_TOKENS:
        return np.asarray(ids)
    width = UNIGRAM_MAX_TOKENS // windows
    starts = np.linspace(0, len(ids) - width, windows).astype(np.int64)
    return np.concatenate([np.asarray(ids[start : start + width]) for start in starts])


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
