"""The tokenizer of a run: how its token ids map to text, and what a checkpoint keeps of it.

Three kinds, named in a data folder's meta.json and in a checkpoint's `meta` as `tokenizer`:

    char    one token per character; `chars` lists them, token id i being chars[i]
    bpe     a byte-level BPE trained on the text (`ref_numpy.bpe`); `tokenizer_json` holds it
    gpt2    GPT-2's BPE (50257 tokens), as in nanoGPT's openwebtext and shakespeare folders.
            Decoded with `tiktoken` where it is installed and has its GPT-2 files; otherwise
            samples are printed as token ids, with a `note` that says why

A checkpoint carries `meta()`, so sampling needs no data folder, and a resume or a new run from
a checkpoint is refused on data of another tokenizer (`same_tokenizer`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ref_numpy import bpe, data
from ref_numpy.errors import UserError

GPT2_VOCAB_SIZE = 50257  # GPT-2's BPE: 256 bytes, 50,000 merges and <|endoftext|>
GPT2_END_OF_TEXT = 50256  # <|endoftext|>, which separates GPT-2's documents


class CharTokenizer:
    kind = "char"
    note = None

    def __init__(self, chars: list[str]) -> None:
        # encode() looks characters up by binary search, and one id per character needs no repeats
        if not all(isinstance(c, str) and len(c) == 1 for c in chars) or list(chars) != sorted(
            set(chars)
        ):
            raise UserError("a character vocabulary must be a sorted list of distinct characters")
        self.chars = list(chars)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def describe(self) -> str:
        return f"characters ({self.vocab_size})"

    def encode(self, text: str) -> np.ndarray:
        """Token ids [n] int64; a character outside the vocabulary is a one-line UserError."""
        known = set(self.chars)
        for position, char in enumerate(text):
            if char not in known:
                raise UserError(
                    f"the character {char!r} (U+{ord(char):04X}) at position {position} is not "
                    f"in the vocabulary of {self.vocab_size} characters; leave it out"
                )
        return data.encode(text, self.chars).astype(np.int64)

    def decode(self, ids: Any) -> str:
        return data.decode(ids, self.chars)

    def meta(self) -> dict[str, Any]:
        return {"tokenizer": self.kind, "chars": self.chars}


class BPETokenizer:
    kind = "bpe"
    note = None

    def __init__(self, json_text: str, where: str) -> None:
        self.json_text = json_text
        self._tokenizer = bpe.load_bpe(json_text, where)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def describe(self) -> str:
        return f"byte-level BPE ({self.vocab_size} tokens)"

    def encode(self, text: str) -> np.ndarray:
        return bpe.encode(self._tokenizer, text).astype(np.int64)

    def decode(self, ids: Any) -> str:
        return bpe.decode(self._tokenizer, ids)

    def meta(self) -> dict[str, Any]:
        return {"tokenizer": self.kind, "tokenizer_json": self.json_text}


class GPT2Tokenizer:
    kind = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE

    def describe(self) -> str:
        return f"GPT-2's BPE ({self.vocab_size} tokens)"

    @functools.cached_property
    def _encoding(self) -> tuple[Any, str | None]:
        """(tiktoken's GPT-2 encoding, None), or (None, why there is none)."""
        try:
            import tiktoken
        except ImportError:
            return None, "tiktoken is not installed"
        try:
            return tiktoken.get_encoding("gpt2"), None
        except Exception as error:  # offline, tiktoken fetches its files and fails in many ways
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return None, f"tiktoken could not load its GPT-2 files ({reason[:120]})"

    @property
    def note(self) -> str | None:
        """Why samples are token ids rather than text, or None where tiktoken decodes them."""
        reason = self._encoding[1]
        if reason is None:
            return None
        return (
            f"note: {reason}, so samples are GPT-2 token ids; pip install tiktoken on a machine "
            f"that can fetch its GPT-2 files to read them as text"
        )

    def encode(self, text: str) -> np.ndarray:
        encoding, reason = self._encoding
        if encoding is None:
            raise UserError(
                f"cannot encode the prompt with GPT-2's BPE: {reason}; install tiktoken with its "
                f"GPT-2 files, or leave --start unset to begin at <|endoftext|>"
            )
        ids = encoding.encode(text, allowed_special={"<|endoftext|>"})
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Any) -> str:
        ids = np.asarray(ids).reshape(-1).tolist()
        encoding = self._encoding[0]
        return encoding.decode(ids) if encoding is not None else " ".join(map(str, ids))

    def meta(self) -> dict[str, Any]:
        return {"tokenizer": self.kind}


Tokenizer = CharTokenizer | BPETokenizer | GPT2Tokenizer
KINDS = ("char", "bpe", "gpt2")


def tokenizer_from_meta(meta: dict[str, Any], where: str) -> Tokenizer:
    """The tokenizer a data folder's or a checkpoint's `meta` names (no `tokenizer`: characters,
    as in the meta of the checkpoints and folders from before there was a choice)."""
    kind = meta.get("tokenizer", "char")
    if kind == "char" and "chars" in meta:
        return CharTokenizer(meta["chars"])
    if kind == "bpe" and isinstance(meta.get("tokenizer_json"), str):
        return BPETokenizer(meta["tokenizer_json"], where)
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"the tokenizer in {where} ({kind!r}) is missing or unknown")


def same_tokenizer(meta: dict[str, Any], tokenizer: Tokenizer) -> str | None:
    """None if `meta` (a checkpoint's) names `tokenizer`, else how they differ, in words."""
    kind = meta.get("tokenizer", "char")
    if kind != tokenizer.kind:
        return f"the {kind} tokenizer, not this data's {tokenizer.kind}"
    if any(meta.get(key) != value for key, value in tokenizer.meta().items() if key != "tokenizer"):
        return f"another {kind} vocabulary than this data's"
    return None
