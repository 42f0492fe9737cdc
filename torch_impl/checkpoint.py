"""Checkpoints of the torch trainer: what one holds, written so a crash never tears it, read back
with one-line errors.

A checkpoint is a dict saved by `torch.save`, with nanoGPT's keys (so nanoGPT's own tools read
it, and `--init_from` reads nanoGPT's) plus what nanoGPT leaves out and an exact resume needs.
`capture` writes these keys and `restore` reads them back, side by side below:

    format          FORMAT: marks a checkpoint of this trainer, which a resume can continue
    model           state_dict of the bare model (never the `_orig_mod.` keys of a compiled one)
    optimizer       AdamW state_dict (moments and step counts)
    scaler          GradScaler state_dict (float16 training) or None
    model_args      GPTConfig of the model as saved (n_layer, n_head, n_embd, block_size, bias,
                    vocab_size, dropout, gelu)
    iter_num        the number of optimizer steps taken
    best_val_loss   the lowest validation loss of the evaluations so far
    config          the training options (TorchTrainConfig as a dict)
    rng             per rank: torch CPU and CUDA generator states (dropout masks)
    sampler         per gradient-accumulation slot: the NumPy generator state of its batch stream
    data            what the samplers index: corpus source, tokenizer, vocabulary, split lengths
    meta            the tokenizer (`ref_numpy.tokenizer`: its kind and its characters or its
                    BPE's tokenizer.json), so sampling needs no data folder

The model's weights are loaded when the model is built (`load_model_state`), before the
optimizer that holds its parameters; `restore` puts back everything else.
Reading uses `weights_only=True`: a checkpoint is data, and loading one must not run code.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ref_numpy.config import GPTConfig
from ref_numpy.errors import UserError
from ref_numpy.files import atomic_write
from ref_numpy.tokenizer import same_tokenizer
from ref_numpy.train.batches import MicroBatchStreams, TrainingData
from ref_numpy.train.loop import LoopState

FORMAT = "gpt-math-checkpoint/1"  # marks checkpoints written by this trainer


class CheckpointError(UserError):
    """A checkpoint that is missing, torn, foreign or does not fit the run (a one-line message)."""


# ----------------------------------------------------------------------------- what it holds
def data_fingerprint(data: TrainingData) -> dict[str, Any]:
    """What the batch streams index into: resuming on other data would not be the same run."""
    return {
        "source": data.meta["source"],
        "tokenizer": data.tokenizer.kind,
        "vocab_size": data.vocab_size,
        "n_train": len(data.train),
        "n_val": len(data.val),
    }


def rank_state(streams: MicroBatchStreams, device: torch.device) -> dict[str, Any]:
    """One process's share of a checkpoint: its batch streams and its RNG (dropout masks)."""
    return {
        "sampler": streams.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
    }


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    state: LoopState,
    config: Any,
    rank_states: list[dict[str, Any]],
    data: TrainingData,
) -> dict[str, Any]:
    """Everything an exact resume needs; `rank_states` holds every rank's `rank_state`."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),  # the bare model: no `_orig_mod.`, no `module.`
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "model_args": model.config.to_dict(),  # as saved: after any crop of the context
        "iter_num": state.iter_num,
        "best_val_loss": state.best_val_loss,
        "config": dataclasses.asdict(config),
        "rng": [rank["rng"] for rank in rank_states],
        "sampler": {j: s for rank in rank_states for j, s in rank["sampler"].items()},
        "data": data_fingerprint(data),
        "meta": {**data.tokenizer.meta(), "source": data.meta["source"]},
    }


def restore(
    checkpoint: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    streams: MicroBatchStreams,
    rank: int,
    world_size: int,
    device: torch.device,
) -> LoopState:
    """Put back what `capture` saved, but the weights; return where the run stands.

    The RNG comes back only under the world size it was saved with: under another, each rank's
    dropout stream starts afresh (the batches, which live in the streams, still continue).
    """
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and checkpoint.get("scaler") is not None:
            scaler.load_state_dict(checkpoint["scaler"])
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"'{checkpoint['path']}' has an optimizer state that does not fit: {error}"
        ) from None
    streams.load_state_dict(checkpoint["sampler"])
    rng = checkpoint.get("rng") or []
    if len(rng) == world_size:
        torch.set_rng_state(rng[rank]["torch"])
        if device.type == "cuda" and rng[rank].get("cuda") is not None:
            torch.cuda.set_rng_state(rng[rank]["cuda"], device)
    return LoopState(
        iter_num=int(checkpoint["iter_num"]),
        best_val_loss=float(checkpoint.get("best_val_loss", math.inf)),
        last_saved_iter=int(checkpoint["iter_num"]),
    )


# ----------------------------------------------------------------------------- files
def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """torch.save to `path` atomically (`ref_numpy.files.atomic_write`): never torn."""
    atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint of this trainer or of nanoGPT; CheckpointError names the file if not."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at '{path}'")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: the error below says it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a torn zip, pickle garbage, a text file fail in many ways
        raise CheckpointError(unreadable(path, error)) from None
    if not isinstance(checkpoint, dict) or not {"model", "model_args"} <= checkpoint.keys():
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"'{path}' is not a GPT checkpoint: it lacks 'model' and 'model_args' (found {found})"
        )
    checkpoint["path"] = str(path)
    return checkpoint


def unreadable(path: Path, error: Exception) -> str:
    """Why torch.load refused `path`, in words that do not pass on torch's advice to retry with
    weights_only=False: that would run whatever code a file from anywhere holds."""
    forbidden = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if forbidden:
        return (
            f"'{path}' is not a checkpoint this trainer reads: it holds an object of class "
            f"{forbidden[1]}, and a checkpoint holds only tensors and plain data (loading any "
            f"other object can run code from the file)"
        )
    return f"'{path}' is not a readable checkpoint (truncated, or not a file torch.save wrote)"


def is_full_checkpoint(checkpoint: dict[str, Any]) -> bool:
    """True for this trainer's checkpoints, which hold everything an exact resume needs."""
    return checkpoint.get("format") == FORMAT


# ----------------------------------------------------------------------------- the model in it
def config_from_checkpoint(checkpoint: dict[str, Any]) -> GPTConfig:
    """The GPTConfig of a checkpoint's `model_args` (nanoGPT's have no `gelu`: its GELU is erf)."""
    names = {f.name for f in dataclasses.fields(GPTConfig)}
    args = {k: v for k, v in dict(checkpoint["model_args"]).items() if k in names}
    try:
        return GPTConfig(**args)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"'{checkpoint.get('path', 'checkpoint')}' has unusable model_args: {error}"
        ) from None


def checked_model_config(
    checkpoint: dict[str, Any], data: TrainingData, block_size: int, resume: bool
) -> GPTConfig:
    """The GPTConfig of the checkpoint's model, refused if it cannot train on this run's data
    (a smaller or different vocabulary; for a resume, other data) or with `block_size`."""
    cfg = config_from_checkpoint(checkpoint)
    where = checkpoint["path"]
    if cfg.vocab_size < data.vocab_size:
        raise CheckpointError(
            f"'{where}' has a vocabulary of {cfg.vocab_size}, smaller than the data's "
            f"{data.vocab_size}"
        )
    meta = checkpoint.get("meta")
    difference = same_tokenizer(meta, data.tokenizer) if isinstance(meta, dict) else None
    if difference is not None:
        raise CheckpointError(
            f"'{where}' was trained with {difference}; train on the data it was trained on "
            f"(--tokenizer, --vocab_size, --text, --data_dir or --dataset as it was)"
        )
    if block_size > cfg.block_size:
        raise CheckpointError(
            f"--block_size {block_size} is longer than the context of '{where}' ({cfg.block_size})"
        )
    # keys a checkpoint from before the tokenizer choice lacks are left to the meta check above
    saved, current = checkpoint.get("data"), data_fingerprint(data)
    other_data = not isinstance(saved, dict) or any(
        saved[key] != value for key, value in current.items() if key in saved
    )
    if resume and is_full_checkpoint(checkpoint) and other_data:
        raise CheckpointError(
            f"'{where}' was trained on other data ({checkpoint.get('data')}); resume it "
            f"with the same --text / --data_dir / --dataset"
        )
    return cfg


def load_model_state(model: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """Load the checkpoint's weights into `model` (GPT.load_state_dict strips `_orig_mod.`)."""
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(
            f"'{checkpoint.get('path', 'checkpoint')}' does not fit the model: "
            f"{state_dict_mismatch(str(error))}"
        ) from None


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
    r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)"
)


def state_dict_mismatch(message: str, shown: int = 3) -> str:
    """torch's many-line load_state_dict error in one line: the missing and unexpected keys and
    the size mismatches (name, shapes), the first `shown` of each and how many there are. A line
    in another form than torch's (or GPT.load_state_dict's own ValueError) is kept as it is."""
    lines = [line.strip() for line in message.strip().splitlines()]
    if lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    missing, unexpected, sizes, other = [], [], [], []
    for line in lines:
        size = _SIZE_MISMATCH.match(line)
        if line.startswith("Missing key(s)"):
            missing += re.findall(r'"([^"]+)"', line)
        elif line.startswith("Unexpected key(s)"):
            unexpected += re.findall(r'"([^"]+)"', line)
        elif size:
            file_shape, model_shape = (shape.replace(" ", "") for shape in size.group(2, 3))
            sizes.append(f"{size[1]} {file_shape} in the file, {model_shape} in the model")
        else:
            other.append(line)

    def listed(what: str, items: list[str]) -> list[str]:
        more = f" and {len(items) - shown} more" if len(items) > shown else ""
        return [f"{what} {len(items)}: {', '.join(items[:shown])}{more}"] if items else []

    parts = listed("missing keys", missing) + listed("unexpected keys", unexpected)
    return "; ".join(parts + listed("tensors of another shape", sizes) + other)
