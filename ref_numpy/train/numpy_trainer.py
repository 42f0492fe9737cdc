"""Train the NumPy GPT on a CPU: `python -m ref_numpy.train --max_iters 200 ...`.

The reference trainer: the same loop, schedule, clipping and batches as torch_impl's, in the
hand-written NumPy model. Writes out_dir/log.jsonl, out_dir/loss.png and out_dir/params.npz.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ref_numpy.adamw import AdamW
from ref_numpy.config import GPTConfig
from ref_numpy.errors import UserError
from ref_numpy.files import atomic_write_bytes
from ref_numpy.gpt import init_params
from ref_numpy.sample import generate
from ref_numpy.step import estimate_loss, train_step
from ref_numpy.train.allocator import keep_freed_memory
from ref_numpy.train.batches import MicroBatchStreams, load_training_data
from ref_numpy.train.config import TrainConfig, option
from ref_numpy.train.loop import LoopState, Trainer, train_loop
from ref_numpy.train.memory import check_numpy_run
from ref_numpy.train.options import parse_config
from ref_numpy.train.run_dir import check_free_space, claim_run_dir
from ref_numpy.train.run_log import RunLog

DTYPES = {"float64": np.float64, "float32": np.float32}


@dataclass
class NumpyTrainConfig(TrainConfig):
    out_dir: str = option("out-numpy", "folder of the run's log.jsonl, loss.png and params.npz")
    dtype: str = option("float32", "float32 or float64: the parameters' and all arithmetic's")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


class NumpyTrainer(Trainer):
    """The NumPy GPT's parameters and AdamW, stepped by `ref_numpy.step`."""

    name = "numpy"

    def __init__(
        self, params: dict[str, np.ndarray], cfg: GPTConfig, optimizer: AdamW, grad_clip: float
    ) -> None:
        self.params, self.cfg, self.optimizer, self.grad_clip = params, cfg, optimizer, grad_clip

    def step(self, micro_batches: list, lr: float) -> tuple[float, float]:
        return train_step(self.params, self.cfg, self.optimizer, micro_batches, lr, self.grad_clip)

    def estimate_loss(self, batches: dict[str, list]) -> dict[str, float]:
        return estimate_loss(self.params, self.cfg, batches)


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(
        NumpyTrainConfig, argv, __doc__.splitlines()[0], "python -m ref_numpy.train"
    )
    # the run folder first: created, write-tested and locked before any work (run_dir.py)
    with claim_run_dir(config.out_dir, new_run=True, overwrite=config.overwrite) as run_dir:
        train(dataclasses.replace(config, out_dir=str(run_dir.folder)))


def train(config: NumpyTrainConfig) -> None:
    keep_freed_memory()
    data = load_training_data(config)
    config = config.with_data_tokenizer(data.meta)
    cfg = config.model_config(data.vocab_size)
    check_numpy_run(config, cfg, np.dtype(DTYPES[config.dtype]).itemsize)
    params = init_params(cfg, seed=config.seed, dtype=DTYPES[config.dtype])
    optimizer = AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    n_params = sum(p.size for p in params.values())
    check_free_space(Path(config.out_dir), n_params * DTYPES[config.dtype]().itemsize, "params.npz")
    log = RunLog(config.out_dir, config)
    print(f"NumPy GPT, {n_params:,} parameters, {config.dtype}")
    print(data.describe())
    trainer = NumpyTrainer(params, cfg, optimizer, config.grad_clip)
    train_loop(config, data, log, trainer, MicroBatchStreams(data, config), LoopState())

    buffer = io.BytesIO()
    np.savez(buffer, **params)
    atomic_write_bytes(log.out_dir / "params.npz", buffer.getvalue())
    figure = log.plot(f"NumPy GPT on {data.meta['source']}")
    print(f"wrote {log.path}, {figure} and {log.out_dir / 'params.npz'}")
    if config.sample_tokens:
        rng = np.random.default_rng(config.seed)
        start_ids = np.zeros((1, 1), dtype=np.int64)  # token 0: the newline of Shakespeare's chars
        out = generate(
            params, cfg, start_ids, config.sample_tokens, rng, config.temperature, config.top_k
        )
        if data.tokenizer.note is not None:  # GPT-2's tokens without tiktoken: ids, and why
            print(data.tokenizer.note)
        print("---- sample ----")
        print(data.tokenizer.decode(out[0].tolist()))
