"""Sample text from a trained GPT: `python -m torch_impl.sample`.

Loads a checkpoint (this trainer's, or nanoGPT's with its `meta.pkl`), encodes a prompt with the
checkpoint's tokenizer (characters, a BPE, or GPT-2's: `ref_numpy.tokenizer`) and prints
`--num_samples` continuations, each drawn with temperature and top-k from one generator seeded by
`--seed`, so a seed reproduces them. GPT-2's tokens are printed as text where tiktoken can decode
them, else as ids with a note that says why. Tokens
come from `GPT.generate`, whose KV cache makes a new token cost one attention row against the
cached keys and values instead of a forward pass over the whole context.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ref_numpy.data import TOKENIZER_FILE, load_meta, read_tokenizer_file
from ref_numpy.errors import UserError
from ref_numpy.nanogpt_data import GPT2_PADDED_VOCAB_SIZE, read_meta_pkl
from ref_numpy.tokenizer import GPT2_END_OF_TEXT, GPT2_VOCAB_SIZE, Tokenizer, tokenizer_from_meta
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
def _meta_from_path(path: Path) -> dict[str, Any]:
    """--meta: a nanoGPT meta.pkl, a data folder's meta.json (a BPE's with its tokenizer.json), a
    tokenizer.json, or a folder holding one of them; as a checkpoint's `meta` holds it."""
    if path.is_dir():
        names = ("meta.json", "meta.pkl", TOKENIZER_FILE)
        path = next((path / n for n in names if (path / n).is_file()), path / "meta.pkl")
    if not path.is_file():
        raise UserError(f"--meta: no file at '{path}'")
    if path.name == "meta.json":
        meta = load_meta(path.parent)
        if meta["tokenizer"] == "bpe":
            return {"tokenizer": "bpe", "tokenizer_json": read_tokenizer_file(path.parent)}
        return meta
    if path.suffix == ".pkl":
        return {"tokenizer": "char", "chars": read_meta_pkl(path)}
    if path.suffix == ".json":
        return {"tokenizer": "bpe", "tokenizer_json": read_tokenizer_file(path.parent, path.name)}
    raise UserError(
        f"--meta must name a nanoGPT meta.pkl, a data folder's meta.json or a tokenizer.json: "
        f"'{path}'"
    )


def vocabulary(checkpoint: dict[str, Any], meta_path: str | None, vocab_size: int) -> Tokenizer:
    """The model's tokenizer: from --meta, else the checkpoint's; for a checkpoint without one
    whose vocabulary is GPT-2's (nanoGPT's GPT-2 runs), GPT-2's, as nanoGPT's sample.py does."""
    saved = checkpoint.get("meta")
    if meta_path is not None:
        meta, source = _meta_from_path(Path(meta_path)), f"'{meta_path}'"
    elif isinstance(saved, dict) and ({"chars", "tokenizer"} & saved.keys()):
        meta, source = saved, f"the meta of '{checkpoint['path']}'"
    elif vocab_size in (GPT2_VOCAB_SIZE, GPT2_PADDED_VOCAB_SIZE):
        meta, source = {"tokenizer": "gpt2"}, "GPT-2's BPE"
    else:
        raise UserError(
            f"'{checkpoint['path']}' carries no vocabulary (nanoGPT's checkpoints do not); pass "
            "--meta with a nanoGPT meta.pkl, a data folder's meta.json or tokenizer.json, or the "
            "folder"
        )
    tokenizer = tokenizer_from_meta(meta, source)
    # GPT-2's 50257 tokens may sit in nanoGPT's padded 50304; any other vocabulary is the model's
    if tokenizer.kind == "gpt2":
        fits = tokenizer.vocab_size <= vocab_size
    else:
        fits = tokenizer.vocab_size == vocab_size
    if not fits:
        unit = "characters" if tokenizer.kind == "char" else "tokens"
        raise UserError(
            f"the vocabulary in {source} has {tokenizer.vocab_size} {unit} but the model's "
            f"vocab_size is {vocab_size}; use the meta of the data the model was trained on"
        )
    return tokenizer


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


def encode_prompt(prompt: str, tokenizer: Tokenizer, default: bool) -> np.ndarray:
    """Token ids (int64) of the prompt; a character outside a character vocabulary is a one-line
    error. GPT-2's tokens without tiktoken start the `default` prompt at <|endoftext|>, the token
    that begins each of GPT-2's documents."""
    if tokenizer.kind == "gpt2" and tokenizer.note is not None and default:
        return np.array([GPT2_END_OF_TEXT], dtype=np.int64)
    return tokenizer.encode(prompt)


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
    tokenizer = vocabulary(checkpoint, config.meta, model.config.vocab_size)
    default_start = config.start == SampleConfig.start
    start_ids = encode_prompt(read_prompt(config.start), tokenizer, default_start)
    if tokenizer.note is not None:  # GPT-2's tokens without tiktoken: ids, and why
        print(tokenizer.note, file=sys.stderr)
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
        print(tokenizer.decode(out[0].tolist()))
        print(SEPARATOR, flush=True)


if __name__ == "__main__":
    run_main(main)
