"""The training program: what the NumPy and the torch trainers share, and the NumPy trainer.

NumPy only (no torch), so that both trainers can use it; the arrows point one way,
`torch_impl` -> `ref_numpy.train` -> the specification (`ref_numpy`).

    options         the command line: flags and TOML/JSON config files read into an options
                    dataclass; `run_main` (one `error:` line, exit code 2, for a user's mistake)
    config          `TrainConfig`, the training options both trainers read
    batches         the data of a run: splits, one batch stream per accumulation slot, the
                    fixed evaluation batches, the unigram baseline
    run_log         `RunLog`: out_dir/log.jsonl and the loss-curve figure
    loop            `train_loop` and the `Trainer` interface it drives; `LoopState`,
                    `TrainingFailed`
    allocator       a glibc setting that keeps NumPy's freed memory for reuse
    numpy_trainer   the NumPy trainer, `python -m ref_numpy.train`

One training step's math is not here: it is `ref_numpy.step` (NumPy) and `torch_impl.step`.
"""
