"""Sampling: the KV cache against the full forward pass, then `python -m torch_impl.sample`.

The cached path must compute the same function as the uncached one. In float64 both do the same
arithmetic and differ only in how the matmuls and the softmax group their sums (a (B, 1, C) row
against a (B, T, C) block), so the logits agree to rounding, far inside DESIGN.md's 1e-12; and
with one seed both paths draw the same tokens, also past block_size and with top-k.
The program is run as a user runs it (a subprocess) for reproducibility and for bad input; the
other cases call its `main` through `run_main`, the same path as `__main__`, to stay fast.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ref_numpy.config import GPTConfig
from ref_numpy.gpt import init_params
from ref_numpy.train.options import run_main
from tests.numerics import rel_error
from torch_impl.checkpoint import FORMAT, save_checkpoint
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params
from torch_impl.sample import SEPARATOR, main

REPO = Path(__file__).resolve().parents[1]
CFG = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32)
TEXT = "to be, or not to be: that is the question\n"
CHARS = sorted(set(TEXT))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (conftest.py)


def float64_model(cfg: GPTConfig = CFG, attention: str = "sdpa") -> GPT:
    model = GPT(cfg, attention=attention).to(torch.float64)
    load_numpy_params(model, init_params(cfg, seed=0))
    return model.eval()


def random_tokens(batch: int, time: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.vocab_size, (batch, time), generator=generator)


# --- the KV cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_cached_logits_equal_forward_at_every_position(attention):
    model = float64_model(attention=attention)
    idx = random_tokens(3, CFG.block_size)
    with torch.no_grad():
        full, _ = model(idx, targets=idx)  # (B, T, V): with targets, every position's logits
        caches = model.new_kv_caches()
        # a 5-token prompt, single tokens, then a 4-token piece starting mid-sequence (the mask
        # of a piece whose queries start at position 12 is the shifted triangle)
        pieces = [(0, 5), *((t, t + 1) for t in range(5, 12)), (12, 16)]
        cached = torch.cat([model.forward_cached(idx[:, a:b], caches) for a, b in pieces], dim=1)
    assert cached.shape == full.shape == (3, CFG.block_size, CFG.vocab_size)
    assert all(cache.length == CFG.block_size for cache in caches)
    assert rel_error(cached, full) < 1e-12


def test_forward_cached_refuses_positions_past_block_size():
    model = float64_model()
    caches = model.new_kv_caches()
    model.forward_cached(random_tokens(1, CFG.block_size), caches)
    with pytest.raises(ValueError, match="block_size"):
        model.forward_cached(random_tokens(1, 1), caches)


@pytest.mark.parametrize(
    ("prompt_length", "top_k"),
    [(1, None), (5, 3), (CFG.block_size, None), (CFG.block_size + 4, 10)],
    ids=[
        "one-token prompt",
        "top-k 3",
        "prompt fills the context",
        "prompt longer than the context",
    ],
)
def test_generate_draws_the_same_tokens_with_and_without_the_cache(prompt_length, top_k):
    model = float64_model()
    prompt = random_tokens(2, prompt_length)
    n_new = 2 * CFG.block_size + 3  # runs well past block_size, where the context is cropped
    outputs, generators = [], []
    for kv_cache in (True, False):
        generator = torch.Generator().manual_seed(7)
        outputs.append(model.generate(prompt, n_new, 0.9, top_k, generator, kv_cache=kv_cache))
        generators.append(generator)
    assert outputs[0].shape == (2, prompt_length + n_new)
    assert torch.equal(outputs[0], outputs[1])
    # both paths drew the same random numbers, so the generators end in the same state
    assert torch.equal(generators[0].get_state(), generators[1].get_state())
    assert outputs[0][0].unique().numel() > 1 and not torch.equal(outputs[0][0], outputs[0][1])


# --- the program ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same small model saved as this trainer saves it and as nanoGPT does, with a meta.pkl."""
    folder = tmp_path_factory.mktemp("sample")
    cfg = GPTConfig(block_size=16, vocab_size=len(CHARS), n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    load_numpy_params(model, init_params(cfg, seed=0))
    state = model.state_dict()
    ours = folder / "ckpt.pt"
    meta = {"chars": CHARS, "source": "a line of Hamlet"}
    save_checkpoint(
        ours, {"format": FORMAT, "model": state, "model_args": cfg.to_dict(), "meta": meta}
    )

    # nanoGPT: compiled-model keys, the causal-mask buffers of older versions, no gelu, no meta
    nanogpt_state = {f"_orig_mod.{name}": tensor for name, tensor in state.items()}
    mask = torch.tril(torch.ones(cfg.block_size, cfg.block_size)).view(
        1, 1, cfg.block_size, cfg.block_size
    )
    nanogpt_state["_orig_mod.transformer.h.0.attn.bias"] = mask
    model_args = {k: v for k, v in cfg.to_dict().items() if k != "gelu"}
    nanogpt = folder / "nanogpt.pt"
    torch.save({"model": nanogpt_state, "model_args": model_args, "iter_num": 0}, nanogpt)
    meta_pkl = folder / "meta.pkl"
    vocab = {"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS))}
    vocab["stoi"] = {c: i for i, c in vocab["itos"].items()}
    meta_pkl.write_bytes(pickle.dumps(vocab))
    data_dir = folder / "data"
    data_dir.mkdir()
    meta_json = {**meta, "vocab_size": len(CHARS), "n_train": 100, "n_val": 10}
    (data_dir / "meta.json").write_text(json.dumps(meta_json))
    return {"ours": ours, "nanogpt": nanogpt, "meta.pkl": meta_pkl, "data_dir": data_dir}


def run_programs(*arg_lists: list[str]) -> list[subprocess.CompletedProcess]:
    """Run `python -m torch_impl.sample` once per argument list, all at once (start-up is slow)."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch_impl.sample", "--device", "cpu", *args],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in arg_lists
    ]
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=120)
        results.append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return results


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """main() as `python -m torch_impl.sample` runs it: (exit code, stdout, stderr)."""
    try:
        run_main(lambda: main(["--device", "cpu", *argv]))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def split_samples(stdout: str) -> list[str]:
    """The samples of the program's output: each is printed, then a SEPARATOR line."""
    assert stdout.endswith(f"\n{SEPARATOR}\n")
    return stdout.removesuffix(f"\n{SEPARATOR}\n").split(f"\n{SEPARATOR}\n")


def test_the_program_prints_samples_a_seed_reproduces(checkpoints):
    args = ["--ckpt", str(checkpoints["ours"]), "--num_samples", "2", "--max_new_tokens", "20"]
    first, second = run_programs([*args, "--seed", "1"], [*args, "--seed=1"])
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    samples = split_samples(first.stdout)
    assert len(samples) == 2 and samples[0] != samples[1]
    for sample in samples:
        assert len(sample) == 1 + 20 and sample[0] == "\n"  # the default prompt, then 20 new
        assert set(sample) <= set(CHARS)


def test_the_program_refuses_bad_input_in_one_line(checkpoints, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoints["ours"].read_bytes()[:200])
    cases = {
        "truncated": (["--ckpt", str(truncated)], str(truncated)),
        "unknown character": (["--ckpt", str(checkpoints["ours"]), "--start", "Hamlet"], "'H'"),
        "num_samples": (["--ckpt", str(checkpoints["ours"]), "--num_samples", "0"], "num_samples"),
    }
    results = run_programs(*(args for args, _ in cases.values()))
    for (case, (_, expected)), result in zip(cases.items(), results):
        assert result.returncode == 2, case
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], case


def test_a_prompt_from_a_file(checkpoints, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("to be\n")
    argv = ["--ckpt", str(checkpoints["ours"]), "--start", f"FILE:{prompt}"]
    code, out, err = run_in_process([*argv, "--num_samples", "3", "--max_new_tokens", "8"], capsys)
    assert code == 0, err
    samples = split_samples(out)
    assert len(samples) == 3 and all(s.startswith("to be\n") and len(s) == 6 + 8 for s in samples)


def test_the_cache_does_not_change_the_samples(checkpoints, capsys):
    # float64, 40 new tokens with block_size 16: the cache is filled, then outgrown
    argv = ["--ckpt", str(checkpoints["ours"]), "--dtype", "float64", "--max_new_tokens", "40"]
    outputs = [
        run_in_process([*argv, flag], capsys) for flag in ("--kv_cache=TRUE", "--kv_cache=false")
    ]
    assert outputs[0][0] == 0 and outputs[0] == outputs[1]
    assert run_in_process([*argv, "--seed", "2"], capsys)[1] != outputs[0][1]


@pytest.mark.parametrize("meta", ["meta.pkl", "data_dir"])
def test_a_nanogpt_checkpoint_samples_with_its_meta(checkpoints, meta, capsys):
    """nanoGPT's keys and a separate vocabulary give the same text as our own checkpoint."""
    argv = ["--num_samples", "2", "--max_new_tokens", "30", "--start", "that"]
    code, nanogpt_out, err = run_in_process(
        [*argv, "--ckpt", str(checkpoints["nanogpt"]), "--meta", str(checkpoints[meta])], capsys
    )
    assert code == 0, err
    assert nanogpt_out == run_in_process([*argv, "--ckpt", str(checkpoints["ours"])], capsys)[1]


def test_a_checkpoint_without_vocabulary_asks_for_meta(checkpoints, tmp_path, capsys):
    code, _, err = run_in_process(["--ckpt", str(checkpoints["nanogpt"])], capsys)
    assert code == 2 and "--meta" in err and "Traceback" not in err
    other_meta = tmp_path / "meta.pkl"  # the vocabulary of some other data set
    other_meta.write_bytes(pickle.dumps({"vocab_size": 3, "itos": dict(enumerate("abc"))}))
    argv = ["--ckpt", str(checkpoints["nanogpt"]), "--meta", str(other_meta)]
    code, _, err = run_in_process(argv, capsys)
    assert code == 2 and "has 3 characters but the model's vocab_size is" in err


BAD_INPUTS = {
    "missing checkpoint": (["--ckpt", "/nonexistent/ckpt.pt"], "/nonexistent/ckpt.pt"),
    "unknown prompt character": (["--start", "€"], "U+20AC"),
    "empty prompt": (["--start="], "--start"),
    "missing prompt file": (["--start", "FILE:/nonexistent/prompt.txt"], "prompt file"),
    "num_samples 0": (["--num_samples", "0"], "--num_samples"),
    "max_new_tokens -1": (["--max_new_tokens=-1"], "--max_new_tokens"),
    "temperature 0": (["--temperature", "0"], "--temperature"),
    "top_k 0": (["--top_k", "0"], "--top_k"),
    "unknown device": (["--device", "tpu"], "--device"),
    "unknown dtype": (["--dtype", "float8"], "--dtype"),
    "bad boolean": (["--kv_cache", "maybe"], "true or false"),
    "missing meta file": (["--meta", "/nonexistent/meta.pkl"], "/nonexistent/meta.pkl"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line_and_exit_2(checkpoints, case, capsys):
    flags, expected = BAD_INPUTS[case]
    code, _, err = run_in_process(["--ckpt", str(checkpoints["ours"]), *flags], capsys)
    assert code == 2
    assert "Traceback" not in err
    assert "error:" in err.strip().splitlines()[-1] and expected in err.strip().splitlines()[-1]
