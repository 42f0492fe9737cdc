"""nanoGPT's data folders, read as they are: `--dataset DIR`.

nanoGPT's `data/<name>/prepare.py` scripts write `train.bin` and `val.bin`, the token ids of each
split as raw uint16, and, for a character vocabulary (`shakespeare_char`), `meta.pkl`: a pickled
dict with `vocab_size`, `stoi` (character -> id) and `itos` (id -> character). Without `meta.pkl`
the ids are GPT-2's BPE (`openwebtext`, `shakespeare`): 50257 tokens, which nanoGPT's model pads
to 50304, the next multiple of 64, because matmuls whose sizes are multiples of 64 run faster on
a GPU; the 47 extra rows of the embedding are never a target and only learn to score low.

The splits are memory-mapped (`ref_numpy.data.read_token_file`): a folder larger than memory
trains, each batch reading only its windows.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ref_numpy.data import SPLITS, DataError, read_token_file
from ref_numpy.tokenizer import GPT2_VOCAB_SIZE

GPT2_PADDED_VOCAB_SIZE = 50304  # nanoGPT's model vocabulary for GPT-2's tokens: 64 x 786
META_PKL = "meta.pkl"
PREPARE_HINT = "run nanoGPT's data/<name>/prepare.py, which writes train.bin and val.bin"


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads dicts, strings and numbers; refuses any pickle that would import (and run) code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only plain data is read")


def read_meta_pkl(path: str | Path) -> list[str]:
    """The characters of a nanoGPT meta.pkl in id order (chars[i] is token i); a file that is
    not one is a one-line DataError. nanoGPT writes `stoi` and `itos`; one of them suffices."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            meta = _PlainDataUnpickler(f).load()
        problem = _meta_pkl_problem(meta)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        problem = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if problem is not None:
        raise DataError(
            f"'{path}' is not nanoGPT's meta.pkl ({problem}): it should hold vocab_size, stoi "
            f"and itos as nanoGPT's data/shakespeare_char/prepare.py writes them"
        )
    itos = meta["itos"] if "itos" in meta else {i: c for c, i in meta["stoi"].items()}
    return [itos[i] for i in range(len(itos))]


def _meta_pkl_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict) or not ({"itos", "stoi"} & meta.keys()):
        return "no itos or stoi in it"
    itos = meta.get("itos")
    stoi = meta.get("stoi")
    if stoi is not None:
        if not isinstance(stoi, dict):
            return "stoi is not a dict"
        inverse = {i: c for c, i in stoi.items()}
        if len(inverse) != len(stoi):
            return "stoi gives two characters one id"
        itos = inverse if itos is None else itos
        if itos != inverse:
            return "stoi and itos disagree"
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))):
        return "its ids are not 0 .. vocab_size - 1"
    if not all(isinstance(c, str) and len(c) == 1 for c in itos.values()):
        return "its tokens are not single characters"
    if len(set(itos.values())) != len(itos):
        return "itos repeats a character"
    if meta.get("vocab_size", len(itos)) != len(itos):
        return f"vocab_size {meta['vocab_size']} but {len(itos)} characters"
    return None


def load_folder(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(train ids, val ids, meta) of a nanoGPT data folder; `meta` as a prepared folder's
    meta.json has it: `tokenizer` ("char" with `chars`, or "gpt2"), `vocab_size` (the
    tokenizer's), `model_vocab_size` (the model's, padded for GPT-2), `source`, split lengths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--dataset '{folder}' is not a folder; pass a nanoGPT data folder")
    missing = [f"{split}.bin" for split in SPLITS if not (folder / f"{split}.bin").is_file()]
    if missing:
        raise DataError(
            f"--dataset '{folder}' has no {' or '.join(missing)}, so it is not a nanoGPT data "
            f"folder; {PREPARE_HINT}, or pass the folder that holds them"
        )
    fix = f"{PREPARE_HINT} again"
    train, val = (read_token_file(folder / f"{s}.bin", np.dtype(np.uint16), fix) for s in SPLITS)
    meta: dict[str, Any] = {"source": str(folder.resolve()), "n_train": len(train)}
    meta["n_val"] = len(val)
    if (folder / META_PKL).is_file():
        chars = read_meta_pkl(folder / META_PKL)
        # one token per character: bits per character is the loss in bits
        meta.update(tokenizer="char", chars=chars, vocab_size=len(chars), n_val_chars=len(val))
    else:
        meta.update(
            tokenizer="gpt2", vocab_size=GPT2_VOCAB_SIZE, model_vocab_size=GPT2_PADDED_VOCAB_SIZE
        )
    return train, val, meta


def id_fix(meta: dict[str, Any]) -> str:
    """What to do about a token id outside the vocabulary of a nanoGPT folder."""
    if meta["tokenizer"] == "gpt2":
        return (
            f"these are not GPT-2 token ids: put the {META_PKL} of their vocabulary beside the "
            f"bins, or {PREPARE_HINT} again"
        )
    return f"the bins and {META_PKL} do not belong together; {PREPARE_HINT} again"
