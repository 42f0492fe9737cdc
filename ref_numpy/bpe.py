"""Byte-level BPE: a tokenizer learnt from the user's own text, as GPT-2's was from WebText.

The text is read as UTF-8 bytes and each of the 256 byte values is a token, so any text at all
can be encoded and decoding gives back the exact bytes. Training then repeats one step until the
vocabulary has `vocab_size` tokens: count every pair of adjacent tokens in the text and merge the
most frequent pair into one new token. Encoding replays the merges in the order they were learnt.
Pairs are only counted inside the pieces of GPT-2's pre-tokenizer regex (a word with its leading
space, a run of digits, of punctuation, of whitespace), so no token spans two words.

The arithmetic is Hugging Face's `tokenizers` (Rust); this module chooses its parts (a BPE model,
the byte-level pre-tokenizer without an added leading space, the byte-level decoder) and feeds it
long texts in chunks cut where the pre-tokenizer cuts anyway (`chunk_starts`), so a chunked
encoding is token for token the encoding of the whole text. Reference: Sennrich et al. 2016,
"Neural Machine Translation of Rare Words with Subword Units"; GPT-2's paper, section 2.2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from ref_numpy.errors import UserError

BYTE_TOKENS = 256  # every byte value is a token before any merge
CHUNK_CHARACTERS = 1 << 16  # characters per chunk handed to the tokenizer (64 Ki: ~20 ms each)
CHUNKS_PER_CALL = 32  # chunks per encode_batch_fast call, which spreads them over the cores
INSTALL_HINT = "install it with: pip install tokenizers"

# A letter or digit followed by a space or a newline. GPT-2's pre-tokenizer never puts a letter or
# digit and the whitespace after it into one piece (letter, digit and punctuation pieces hold no
# whitespace, whitespace pieces nothing else), and none of its patterns looks behind: a cut just
# after such a character ends a piece in the whole text and in the chunk alike.
_SAFE_CUT = re.compile(r"[^\W_](?=[ \n])")


def _tokenizers() -> Any:
    """The `tokenizers` package, imported when a BPE is used: the character data needs none."""
    try:
        import tokenizers
    except ImportError:
        raise UserError(
            f"the BPE tokenizer needs Hugging Face's tokenizers package; {INSTALL_HINT}"
        ) from None
    return tokenizers


def chunk_starts(text: str, chunk_characters: int = CHUNK_CHARACTERS) -> list[int]:
    """Where each chunk of `text` starts (then len(text)): about `chunk_characters` apart, each
    cut at the first safe place (`_SAFE_CUT`) at or after the target; a text without one is one
    chunk."""
    starts = [0]
    while len(text) - starts[-1] > chunk_characters:
        cut = _SAFE_CUT.search(text, starts[-1] + chunk_characters)
        if cut is None:
            break
        starts.append(cut.end())
    return [*starts, len(text)]


def chunks(text: str, chunk_characters: int = CHUNK_CHARACTERS) -> list[str]:
    starts = chunk_starts(text, chunk_characters)
    return [text[a:b] for a, b in zip(starts[:-1], starts[1:])]


def train_bpe(text: str, vocab_size: int, progress: bool = False) -> Any:
    """A byte-level BPE tokenizer (`tokenizers.Tokenizer`) with at most `vocab_size` tokens,
    learnt from `text`. A short text can run out of pairs to merge before reaching it."""
    if vocab_size <= BYTE_TOKENS:
        raise UserError(
            f"--vocab_size must be more than {BYTE_TOKENS} (the byte tokens, before any merge), "
            f"got {vocab_size}"
        )
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=progress,
    )
    pieces = chunks(text)
    tokenizer.train_from_iterator(pieces, trainer, length=len(pieces))
    return tokenizer


def load_bpe(json_text: str, where: str) -> Any:
    """The tokenizer saved as `json_text` (a tokenizer.json); a one-line UserError naming
    `where` (its file, quoted, or where it was kept) if it does not load or is not a byte-level
    BPE."""
    tk = _tokenizers()
    fix = "prepare the data again (python -m ref_numpy.data --tokenizer bpe)"
    try:
        description = json.loads(json_text)
        tokenizer = tk.Tokenizer.from_str(json_text)
    except Exception as error:  # json's ValueError, or the Rust library's plain Exception
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"{where} is not a tokenizer file that loads ({reason}); {fix}") from None
    kinds = (
        (description.get("model") or {}).get("type"),
        (description.get("decoder") or {}).get("type"),
    )
    if kinds != ("BPE", "ByteLevel"):
        raise UserError(
            f"{where} is a {kinds[0]} tokenizer with a {kinds[1]} decoder, not the byte-level "
            f"BPE this project trains; {fix}"
        )
    return tokenizer


def encode(
    tokenizer: Any,
    text: str,
    progress: bool = False,
    what: str = "text",
    chunk_characters: int = CHUNK_CHARACTERS,
) -> np.ndarray:
    """The token ids of `text` [n] uint32, encoded chunk by chunk (the same ids as in one piece),
    with a progress bar in characters where `progress`."""
    parts = chunks(text, chunk_characters)
    ids: list[np.ndarray] = []
    with tqdm(
        total=len(text), unit="char", unit_scale=True, desc=f"BPE {what}", disable=not progress
    ) as bar:
        for group in _groups(parts, CHUNKS_PER_CALL):
            for encoding in tokenizer.encode_batch_fast(group):  # no offsets: ~2x faster
                ids.append(np.asarray(encoding.ids, dtype=np.uint32))
            bar.update(sum(len(part) for part in group))
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.uint32)


def _groups(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def decode(tokenizer: Any, ids: Any) -> str:
    """The text of token ids: their bytes joined, then read as UTF-8 (a cut through a character's
    bytes, possible in a sample, shows the replacement character)."""
    return tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)])
