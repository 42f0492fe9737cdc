"""Sample text from a trained GPT: `python -m torch_impl.sample`.

Loads a checkpoint (this trainer's, or nanoGPT's with its `meta.pkl`), encodes a prompt with the
checkpoint's character vocabulary and prints `--num_samples` continuations, each drawn with
temperature and top-k from one generator seeded by `--seed`, so a seed reproduces them. Tokens
come from `GPT.generate`, whose KV cache makes a new token cost one attention row against the
cached keys and values instead of a forward pass over the whole context.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ref_numpy.data import decode, encode, load_meta
from ref_numpy.errors import UserError
from ref_numpy.train.config import option
from ref_numpy.train.options import parse_config, run_main
from torch_impl.checkpoint import config_from_checkpoint, load_checkpoint, load_model_state
from torch_impl.model import ATTENTION_BACKENDS, GPT
from torch_impl.runtime import (
    DTYPES,
    autocast_for,
    parameter_dtype,
    resolve_device,
    resolve_dtype,
)

SEPARATOR = "---------------"  # printed after each sample
PROMPT_FILE_PREFIX = "FILE:"


@dataclass
class SampleConfig:
    """The sampling options; names are nanoGPT's `sample.py` flags where it has them."""

    out_dir: str = option("out", "the run whose out_dir/ckpt.pt is sampled, unless --ckpt")
    ckpt: str | None = option(None, "a checkpoint file to sample; none: out_dir/ckpt.pt")
    meta: str | None = option(
        None,
        "the vocabulary of a checkpoint without one (meta.pkl or meta.json); "
        "none: the checkpoint's own",
    )
    start: str = option("\n", "the prompt; FILE:path reads it from a UTF-8 file")
    num_samples: int = option(10, "samples to print")
    max_new_tokens: int = option(500, "tokens generated per sample")
    temperature: float = option(0.8, "< 1 sharpens the distribution, > 1 flattens it")
    top_k: int | None = option(200, "sample among the k likeliest tokens only; none: all")
    seed: int = option(1337, "seed of the sampling: a seed reproduces the samples")
    device: str = option("auto", "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    dtype: str = option(
        "auto",
        "auto (bfloat16 on a GPU that has it, else float32), float32, float64, bfloat16 or "
        "float16: float32/float64 set the parameters' dtype, bfloat16/float16 autocast the "
        "matmuls over float32 parameters",
    )
    kv_cache: bool = option(True, "keep the keys and values of past tokens (faster, same text)")
    attention: str = option(
        "sdpa",
        "sdpa (torch's fused attention, flash on GPUs), manual (the softmax materialised) or "
        "triton (this project's kernels)",
    )

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise UserError(
                f"--temperature must be positive (--top_k 1 samples greedily), "
                f"got {self.temperature}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top_k must be at least 1 (or none), got {self.top_k}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise UserError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise UserError(
                f"--attention must be one of {ATTENTION_BACKENDS}, got {self.attention!r}"
            )


# ----------------------------------------------------------------------------- the vocabulary
class _PlainDataUnpickler(pickle.Unpickler):
    """Reads dicts, strings and numbers; refuses any pickle that would import (and run) code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only plain data is read")


def _chars_from_meta_pkl(path: Path) -> list[str]:
    """The characters of a nanoGPT meta.pkl ({"itos": {id: char}, "stoi": {char: id}, ...})."""
    try:
        with open(path, "rb") as f:
            meta = _PlainDataUnpickler(f).load()
        itos = meta["itos"] if "itos" in meta else {i: c for c, i in meta["stoi"].items()}
        return [itos[i] for i in range(len(itos))]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"'{path}' is not a nanoGPT meta.pkl with itos/stoi: {reason}") from None


def _chars_from_meta_path(path: Path) -> list[str]:
    """--meta: a meta.pkl, a data folder's meta.json, or a folder holding either."""
    if path.is_dir():
        path = path / "meta.json" if (path / "meta.json").is_file() else path / "meta.pkl"
    if not path.is_file():
        raise UserError(f"--meta: no file at '{path}'")
    if path.name == "meta.json":
        return list(load_meta(path.parent)["chars"])
    if path.suffix == ".pkl":
        return _chars_from_meta_pkl(path)
    raise UserError(f"--meta must name a nanoGPT meta.pkl or a data folder's meta.json: '{path}'")


def vocabulary(checkpoint: dict[str, Any], meta_path: str | None, vocab_size: int) -> list[str]:
    """The model's characters, token id i being chars[i]: from --meta, else from the checkpoint."""
    if meta_path is not None:
        chars, source = _chars_from_meta_path(Path(meta_path)), f"'{meta_path}'"
    elif isinstance(checkpoint.get("meta"), dict) and "chars" in checkpoint["meta"]:
        chars, source = list(checkpoint["meta"]["chars"]), f"the meta of '{checkpoint['path']}'"
    else:
        raise UserError(
            f"'{checkpoint['path']}' carries no vocabulary (nanoGPT's checkpoints do not); "
            "pass --meta with a nanoGPT meta.pkl, a data folder's meta.json, or the folder"
        )
    # encode() looks characters up by binary search, and one id per character needs no repeats
    if not all(isinstance(c, str) and len(c) == 1 for c in chars) or chars != sorted(set(chars)):
        raise UserError(f"the vocabulary in {source} is not a sorted list of distinct characters")
    if len(chars) != vocab_size:
        raise UserError(
            f"the vocabulary in {source} has {len(chars)} characters but the model's vocab_size "
            f"is {vocab_size}; use the meta of the data the model was trained on"
        )
    return chars


# ----------------------------------------------------------------------------- the prompt
def read_prompt(start: str) -> str:
    """--start as given, or the text of the file that `FILE:path` names."""
    if start.startswith(PROMPT_FILE_PREFIX):
        path = Path(start.removeprefix(PROMPT_FILE_PREFIX))
        try:
            start = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UserError(f"cannot read the prompt file '{path}': {error}") from None
    if not start:
        raise UserError("--start is empty; the model needs at least one character to continue")
    return start


def encode_prompt(prompt: str, chars: list[str]) -> np.ndarray:
    """Token ids (int64) of the prompt; a character outside the vocabulary is a one-line error."""
    known = set(chars)
    for position, char in enumerate(prompt):
        if char not in known:
            raise UserError(
                f"the prompt's character {char!r} (U+{ord(char):04X}) at position {position} is "
                f"not in the model's vocabulary of {len(chars)} characters; leave it out"
            )
    return encode(prompt, chars).astype(np.int64)


# ----------------------------------------------------------------------------- sampling
def load_model(
    checkpoint: dict[str, Any], attention: str, device: torch.device, dtype: torch.dtype
) -> GPT:
    """The checkpoint's GPT in eval mode on `device`, parameters in float32 or float64."""
    model = GPT(config_from_checkpoint(checkpoint), attention=attention)
    load_model_state(model, checkpoint)
    return model.to(device=device, dtype=parameter_dtype(dtype)).eval()


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(
        SampleConfig, argv, __doc__.splitlines()[0], "python -m torch_impl.sample"
    )
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    checkpoint = load_checkpoint(config.ckpt if config.ckpt is not None else config.out_dir)
    model = load_model(checkpoint, config.attention, device, dtype)
    chars = vocabulary(checkpoint, config.meta, model.config.vocab_size)
    start_ids = encode_prompt(read_prompt(config.start), chars)
    idx = torch.from_numpy(start_ids).to(device)[None, :]  # (1, T)

    autocast = autocast_for(device, dtype)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    for _ in range(config.num_samples):
        # one generator for all samples: sample i is the same whatever --num_samples is
        with autocast or contextlib.nullcontext():
            out = model.generate(
                idx,
                config.max_new_tokens,
                config.temperature,
                config.top_k,
                generator=generator,
                kv_cache=config.kv_cache,
            )
        print(decode(out[0].tolist(), chars))
        print(SEPARATOR, flush=True)


if __name__ == "__main__":
    run_main(main)
