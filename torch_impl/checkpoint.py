"""Checkpoints of the torch trainer: written so a crash never tears one, read with one-line errors.

A checkpoint is a dict saved by `torch.save`, with nanoGPT's keys (so nanoGPT's own tools read
it, and `--init_from` reads nanoGPT's) plus what nanoGPT leaves out and an exact resume needs:

    model           state_dict of the bare model (never the `_orig_mod.` keys of a compiled one)
    optimizer       AdamW state_dict (moments and step counts)
    model_args      GPTConfig as a dict (n_layer, n_head, n_embd, block_size, bias, vocab_size,
                    dropout, gelu)
    iter_num        the number of optimizer steps taken
    best_val_loss   the lowest validation loss of the evaluations so far
    config          the training configuration (TorchTrainConfig as a dict)
    scaler          GradScaler state_dict (float16 training) or None
    rng             per rank: torch CPU and CUDA generator states (dropout masks)
    sampler         per gradient-accumulation slot: the NumPy generator state of its batch stream
    data            what the samplers index: corpus source, vocabulary, split lengths
    meta            the vocabulary (characters), so sampling needs no data folder

Reading uses `weights_only=True`: a checkpoint is data, and loading one must not run code.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ref_numpy.config import GPTConfig
from ref_numpy.training import atomic_write

FORMAT = "gpt-math-checkpoint/1"  # marks checkpoints written by this trainer


class CheckpointError(ValueError):
    """A checkpoint that is missing, torn, foreign or does not fit the run (a one-line message)."""


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """torch.save to `path` atomically (`ref_numpy.training.atomic_write`): never torn."""
    atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint of this trainer or of nanoGPT; CheckpointError names the file if not."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, a text file: all the same to us
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"'{path}' is not a readable checkpoint (truncated or not a torch file): {reason}"
        ) from None
    if not isinstance(checkpoint, dict) or not {"model", "model_args"} <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"'{path}' is not a GPT checkpoint: it lacks 'model' and 'model_args' (found {found})"
        )
    checkpoint["path"] = str(path)
    return checkpoint


def is_full_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """True for this trainer's checkpoints, which hold everything an exact resume needs."""
    return checkpoint.get("format") == FORMAT


def config_from_checkpoint(checkpoint: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of a checkpoint's `model_args` (nanoGPT's have no `gelu`: its GELU is erf)."""
    names = {f.name for f in fields(GPTConfig)}
    args = {k: v for k, v in dict(checkpoint["model_args"]).items() if k in names}
    try:
        return GPTConfig(**args)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"'{checkpoint.get('path', 'checkpoint')}' has unusable model_args: {error}"
        ) from None


def load_model_state(model: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Load the checkpoint's weights into `model` (GPT.load_state_dict strips `_orig_mod.`)."""
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"'{checkpoint.get('path', 'checkpoint')}' does not fit the model: {first}"
        ) from None
