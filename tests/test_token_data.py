"""Token data: the byte-level BPE (exact round trip of the whole corpus, chunked encoding equal to
encoding in one piece, uint32 ids past 65,535 tokens), nanoGPT's folders written here as its
prepare.py scripts write them (a character folder with meta.pkl, a GPT-2 one without), both
trainers on each kind of data with sampling, and every bad input as one `error:` line, exit code
2 and nothing written.

The programs run in this process through `run_main` (the path of their `__main__`): a torch
import per run would cost more than these tiny runs.
"""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ref_numpy import bpe
from ref_numpy import data as data_module
from ref_numpy.data import decode, load_meta, load_split, prepare
from ref_numpy.tokenizer import GPT2_VOCAB_SIZE
from ref_numpy.train import numpy_trainer
from ref_numpy.train.options import run_main
from torch_impl import sample, train
from torch_impl.checkpoint import load_checkpoint

TINY = [
    "--max_iters", "2", "--eval_interval", "2", "--eval_iters", "1", "--log_interval", "1",
    "--batch_size", "2", "--block_size", "8", "--n_layer", "1", "--n_head", "2", "--n_embd", "8",
    "--sample_tokens", "12", "--warmup_iters", "1",
]  # fmt: skip
PROGRAMS = {
    "numpy": numpy_trainer.main,
    "torch": lambda argv: train.main(["--device", "cpu", *argv]),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (conftest.py)


@pytest.fixture(autouse=True)
def no_tiktoken(monkeypatch):
    """GPT-2's samples as ids, whatever this machine has installed (a test below fakes it)."""
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` raises ImportError


def run_program(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a program run as its `__main__` runs it."""
    try:
        run_main(lambda: main(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(result: tuple[int, str, str], fragment: str, out_dir: Path | None) -> None:
    """Exit code 2, one `error:` line holding `fragment`, and no file in `out_dir`."""
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert out_dir is None or not out_dir.exists() or not any(out_dir.iterdir())


# ----------------------------------------------------------------------------- texts and folders
@pytest.fixture(scope="module")
def corpus_text(corpus_dir) -> str:
    """The whole corpus, read back from its prepared character folder."""
    chars = load_meta(corpus_dir)["chars"]
    return decode(np.concatenate([load_split(corpus_dir, s) for s in ("train", "val")]), chars)


@pytest.fixture(scope="module")
def small_bpe(corpus_text):
    """A 384-token BPE learnt from the corpus's first 200,000 characters."""
    return bpe.train_bpe(corpus_text[:200_000], 384)


def write_nanogpt_folder(folder: Path, train_ids, val_ids, meta: dict | None = None) -> Path:
    """As nanoGPT's prepare.py scripts write them: uint16 through a memmap, and meta.pkl."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train.bin", train_ids), ("val.bin", val_ids)):
        memmap = np.memmap(folder / name, dtype=np.uint16, mode="w+", shape=(len(ids),))
        memmap[:] = ids
        memmap.flush()
    if meta is not None:
        (folder / "meta.pkl").write_bytes(pickle.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def folders(corpus_text, tmp_path_factory) -> dict:
    """A nanoGPT character folder, a nanoGPT GPT-2 folder and a prepared BPE folder."""
    root = tmp_path_factory.mktemp("token_data")
    # nanoGPT's data/shakespeare_char/prepare.py: sorted characters, stoi/itos, 90% / 10%
    text = corpus_text[:20_000]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    char_folder = write_nanogpt_folder(root / "shakespeare_char", ids[:18_000], ids[18_000:], meta)
    # GPT-2 token ids (no meta.pkl), the largest id 50256 among them
    rng = np.random.default_rng(0)
    gpt2_ids = rng.integers(0, GPT2_VOCAB_SIZE, size=3000)
    gpt2_ids[17] = GPT2_VOCAB_SIZE - 1
    gpt2_folder = write_nanogpt_folder(root / "openwebtext", gpt2_ids[:2500], gpt2_ids[2500:])
    text_path = root / "hamlet.txt"
    text_path.write_text(corpus_text[:60_000], encoding="utf-8")
    bpe_folder = root / "bpe"
    prepare(bpe_folder, text_path, tokenizer="bpe", vocab_size=300)
    return {
        "char": char_folder,
        "char_text": text,
        "gpt2": gpt2_folder,
        "bpe": bpe_folder,
        "text": text_path,
    }


def data_flags(folders: dict[str, Path], kind: str) -> list[str]:
    if kind == "bpe":
        return ["--data_dir", str(folders["bpe"])]
    return ["--dataset", str(folders[kind])]


# ----------------------------------------------------------------------------- the BPE
def test_bpe_round_trips_the_whole_corpus_exactly(corpus_text, small_bpe):
    ids = bpe.encode(small_bpe, corpus_text)
    assert 0 < ids.max() < small_bpe.get_vocab_size() == 384
    assert len(ids) < len(corpus_text)  # merges happened: fewer tokens than characters
    assert bpe.decode(small_bpe, ids) == corpus_text


def test_chunked_encoding_is_the_encoding_in_one_piece(corpus_text, small_bpe):
    text = corpus_text[300_000:400_000]
    assert len(bpe.chunks(text, 500)) > 150
    whole = small_bpe.encode(text).ids
    assert bpe.encode(small_bpe, text, chunk_characters=500).tolist() == whole


def test_prepare_a_bpe_folder_and_its_command_line(folders, tmp_path, capsys):
    meta = load_meta(folders["bpe"])
    text = folders["text"].read_text(encoding="utf-8")
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("bpe", 300, "uint16")
    assert meta["n_train_chars"] + meta["n_val_chars"] == len(text)
    tokenizer = bpe.load_bpe((folders["bpe"] / "tokenizer.json").read_text(), "tokenizer.json")
    train, val = load_split(folders["bpe"], "train"), load_split(folders["bpe"], "val")
    assert train.dtype == np.uint16 and (len(train), len(val)) == (meta["n_train"], meta["n_val"])
    assert bpe.decode(tokenizer, train) + bpe.decode(tokenizer, val) == text
    # the command line writes the same folder
    out_dir = tmp_path / "cli"
    argv = ["--text", str(folders["text"]), "--tokenizer", "bpe", "--vocab_size", "300"]
    assert data_module.main([*argv, "--out_dir", str(out_dir)]) == 0
    assert "300 byte-level BPE tokens" in capsys.readouterr().out
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (out_dir / name).read_bytes() == (folders["bpe"] / name).read_bytes(), name


def test_a_vocabulary_above_65535_tokens_is_stored_as_uint32(tmp_path):
    # 45,000 random six-letter words: enough distinct pairs for 65,600 tokens of merges
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    text = " ".join("".join(word) for word in rng.choice(letters, size=(45_000, 6)))
    (tmp_path / "words.txt").write_text(text)
    meta = prepare(tmp_path / "out", tmp_path / "words.txt", tokenizer="bpe", vocab_size=65_600)
    assert meta["vocab_size"] == 65_600 and meta["dtype"] == "uint32"
    train, val = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "val")
    assert train.dtype == np.uint32 and train.max() > 65_535
    tokenizer = bpe.load_bpe((tmp_path / "out" / "tokenizer.json").read_text(), "tokenizer.json")
    assert bpe.decode(tokenizer, train) + bpe.decode(tokenizer, val) == text


# ----------------------------------------------------------------------------- training on each
@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_both_trainers_train_on_each_kind_of_data(program, kind, folders, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = [*TINY, *data_flags(folders, kind), "--out_dir", str(out_dir)]
    code, out, err = run_program(PROGRAMS[program], argv, capsys)
    assert code == 0, err
    evaluation = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()][-1]
    # two tiny steps from an init whose logits are near 0: the loss is still about ln(vocabulary)
    model_vocab = {"char": len(set(folders["char_text"])), "gpt2": 50304, "bpe": 300}[kind]
    assert evaluation["iter"] == 2 and abs(evaluation["val_loss"] - np.log(model_vocab)) < 0.1
    sampled = out.split("---- sample ----\n")[1].removesuffix("\n")
    if kind == "gpt2":  # no bits per character without characters; ids, and the note why
        assert "val_bits_per_character" not in evaluation
        assert "note: tiktoken is not installed" in out.split("---- sample ----")[0]
        assert all(0 <= int(i) < 50304 for i in sampled.split()) and len(sampled.split()) == 13
    else:
        chars_per_token = {"char": 1.0, "bpe": None}[kind] or (
            load_meta(folders["bpe"])["n_val_chars"] / load_meta(folders["bpe"])["n_val"]
        )
        expected = evaluation["val_loss"] / (chars_per_token * np.log(2))
        assert evaluation["val_bits_per_character"] == pytest.approx(expected, rel=1e-12)
        if kind == "char":
            assert set(sampled) <= set(folders["char_text"]) and len(sampled) == 13
    if program == "torch":
        meta = load_checkpoint(out_dir / "ckpt.pt")["meta"]
        assert meta["tokenizer"] == kind


@pytest.fixture(scope="module")
def torch_runs(folders, tmp_path_factory) -> dict[str, Path]:
    """A tiny torch run on the BPE folder and one on the GPT-2 folder (their checkpoints)."""
    runs = {}
    for kind in ("bpe", "gpt2"):
        out_dir = tmp_path_factory.mktemp(f"run_{kind}")
        train.main(
            ["--device", "cpu", *TINY, *data_flags(folders, kind), "--out_dir", str(out_dir)]
        )
        runs[kind] = out_dir
    return runs


def test_sampling_a_bpe_run_encodes_any_prompt(torch_runs, capsys):
    argv = ["--device", "cpu", "--out_dir", str(torch_runs["bpe"]), "--max_new_tokens", "10"]
    argv += ["--start", "Wherefore, ’tis €5", "--num_samples", "1"]
    code, out, err = run_program(sample.main, argv, capsys)
    assert code == 0, err
    assert out.startswith("Wherefore, ’tis €5")  # any text: every byte is a token


def test_sampling_gpt2_tokens_prints_ids_or_tiktokens_text(torch_runs, monkeypatch, capsys):
    argv = ["--device", "cpu", "--out_dir", str(torch_runs["gpt2"]), "--max_new_tokens", "5"]
    argv += ["--num_samples", "1"]
    code, out, err = run_program(sample.main, argv, capsys)
    assert code == 0 and "note: tiktoken is not installed" in err
    assert out.split()[0] == "50256"  # begins at <|endoftext|>, then five ids
    assert_refused(run_program(sample.main, [*argv, "--start", "Hi"], capsys), "tiktoken", None)

    class FakeGPT2:  # tiktoken's interface, to see that its text is what gets printed
        def encode(self, text, allowed_special=()):
            return [ord(c) for c in text]

        def decode(self, ids):
            return "".join(f"<{i}>" for i in ids)

    fake = types.SimpleNamespace(get_encoding=lambda name: FakeGPT2())
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    code, out, err = run_program(sample.main, [*argv, "--start", "Hi"], capsys)
    assert code == 0 and not err and out.startswith("<72><105><")


def test_a_resume_or_a_start_on_another_tokenizer_is_refused(torch_runs, folders, tmp_path, capsys):
    bpe_run = str(torch_runs["bpe"])
    resume = ["--device", "cpu", "--init_from", "resume", "--out_dir", bpe_run]
    result = run_program(train.main, [*resume, "--tokenizer", "char"], capsys)
    assert_refused(result, "cannot change --tokenizer char (checkpoint: bpe)", None)
    weights = ["--device", "cpu", "--init_from", str(Path(bpe_run) / "ckpt.pt"), *TINY]
    weights += ["--out_dir", str(tmp_path / "out"), "--dataset", str(folders["char"])]
    result = run_program(train.main, weights, capsys)
    assert_refused(result, "was trained with the bpe tokenizer, not this data's char", None)


# ----------------------------------------------------------------------------- bad input
def bad_folder(tmp_path: Path, case: str, folders: dict[str, Path]) -> list[str]:
    """The flags of a run on one kind of broken data, built in `tmp_path`."""
    ids = np.arange(100) % 50
    chars_meta = {"vocab_size": 50, "itos": {i: chr(65 + i) for i in range(50)}}
    chars_meta["stoi"] = {c: i for i, c in chars_meta["itos"].items()}
    folder = tmp_path / "data"
    if case == "no val.bin":
        write_nanogpt_folder(folder, ids, ids)
        (folder / "val.bin").unlink()
    elif case == "odd size":
        write_nanogpt_folder(folder, ids, ids)
        with open(folder / "train.bin", "ab") as f:
            f.write(b"\0")
    elif case == "gpt2 id too large":
        write_nanogpt_folder(folder, np.r_[ids, [GPT2_VOCAB_SIZE]], ids)
    elif case == "char id too large":
        write_nanogpt_folder(folder, ids, np.r_[ids, [50]], chars_meta)
    elif case == "meta.pkl a list":
        write_nanogpt_folder(folder, ids, ids, ["a", "b"])  # type: ignore[arg-type]
    elif case == "meta.pkl disagrees":
        write_nanogpt_folder(folder, ids, ids, {**chars_meta, "stoi": {"A": 1, "B": 0}})
    elif case == "meta.pkl runs code":
        write_nanogpt_folder(folder, ids, ids)
        (folder / "meta.pkl").write_bytes(pickle.dumps({"itos": Path("x")}))
    elif case == "tokenizer.json broken":
        for name in ("train.bin", "val.bin", "meta.json"):
            (tmp_path / "bpe").mkdir(exist_ok=True)
            (tmp_path / "bpe" / name).write_bytes((folders["bpe"] / name).read_bytes())
        (tmp_path / "bpe" / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
        return ["--data_dir", str(tmp_path / "bpe")]
    return ["--dataset", str(folder)]


BAD_DATA = {
    "no val.bin": "has no val.bin, so it is not a nanoGPT data folder",
    "odd size": "has 201 bytes, not a whole number of uint16 token ids",
    "gpt2 id too large": "train.bin' holds token id 50257 at position 100, at or beyond the "
    "vocabulary of 50257 tokens; these are not GPT-2 token ids",
    "char id too large": "val.bin' holds token id 50 at position 100, at or beyond the vocabulary "
    "of 50 tokens; the bins and meta.pkl do not belong together",
    "meta.pkl a list": "is not nanoGPT's meta.pkl (no itos or stoi in it)",
    "meta.pkl disagrees": "is not nanoGPT's meta.pkl (stoi and itos disagree)",
    "meta.pkl runs code": "is not nanoGPT's meta.pkl (it refers to pathlib",
    "tokenizer.json broken": "is not a tokenizer file that loads",
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_is_one_line_exit_2_and_nothing_written(case, folders, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = [*TINY, *bad_folder(tmp_path, case, folders), "--out_dir", str(out_dir)]
    program = PROGRAMS["torch" if case.startswith("meta") else "numpy"]
    assert_refused(run_program(program, argv, capsys), BAD_DATA[case], out_dir)


BAD_FLAGS = {
    "dataset with text": (["--dataset", "DIR", "--text", "x.txt"], "leave out --text"),
    "vocab_size for characters": (["--vocab_size", "512"], "add --tokenizer bpe"),
    "vocab_size too small": (["--tokenizer", "bpe", "--vocab_size", "200"], "more than 256"),
    "unknown tokenizer": (["--tokenizer", "words"], "--tokenizer must be one of char, bpe"),
    "tokenizer of another folder": (["--data_dir", "BPE", "--tokenizer", "char"], "holds data"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flags_are_one_line_exit_2(case, folders, tmp_path, capsys):
    flags, fragment = BAD_FLAGS[case]
    flags = [{"DIR": str(folders["char"]), "BPE": str(folders["bpe"])}.get(f, f) for f in flags]
    out_dir = tmp_path / "out"
    argv = [*TINY, *flags, "--out_dir", str(out_dir)]
    assert_refused(run_program(PROGRAMS["numpy"], argv, capsys), fragment, out_dir)


def test_the_data_command_refuses_bad_flags_and_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "out"
    for argv, fragment in [
        (["--tokenizer", "bpe", "--vocab_size", "100"], "more than 256"),
        (["--tokenizer", "words"], "--tokenizer must be one of"),
        (["--vocab_size", "512"], "add --tokenizer bpe"),
    ]:
        assert data_module.main([*argv, "--out_dir", str(out_dir)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
        assert not out_dir.exists()
