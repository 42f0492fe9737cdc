"""The two training programs, run as a user runs them: tiny sizes, then bad input.

A good run exits 0 and writes its log, figure and weights and prints a sample; a bad input
exits 2 with one `error:` line and no traceback.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--max_iters",
    "4",
    "--eval_interval",
    "2",
    "--eval_iters",
    "1",
    "--log_interval",
    "1",
    "--batch_size",
    "2",
    "--block_size",
    "8",
    "--n_layer",
    "1",
    "--n_head",
    "2",
    "--n_embd",
    "8",
    "--sample_tokens",
    "20",
    "--warmup_iters",
    "1",
]
PROGRAMS = {
    "numpy": ["-m", "ref_numpy.train"],
    "torch": ["-m", "torch_impl.train", "--device", "cpu"],
}


def run(args, **kwargs):
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs
    )


def log_records(out_dir):
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("program", PROGRAMS)
def test_tiny_training_run(program, corpus_dir, tmp_path):
    out_dir = tmp_path / "out"
    result = run(
        [*PROGRAMS[program], *TINY, "--data_dir", str(corpus_dir), "--out_dir", str(out_dir)]
    )
    assert result.returncode == 0, result.stderr
    records = log_records(out_dir)
    assert records[0]["config"]["max_iters"] == 4
    assert [r["iter"] for r in records if "loss" in r] == [0, 1, 2, 3]
    assert [r["iter"] for r in records if "val_loss" in r] == [0, 2, 4]
    assert (out_dir / "loss.png").stat().st_size > 0
    assert (out_dir / ("params.npz" if program == "numpy" else "ckpt.pt")).exists()
    sample = result.stdout.split("---- sample ----\n", 1)[1]
    assert len(sample.rstrip("\n")) >= 20
    if program == "torch":  # then sample from its checkpoint, as the README says
        sampled = run(
            ["-m", "torch_impl.sample", "--out_dir", str(out_dir), "--device", "cpu"]
            + ["--start", "ROMEO:", "--num_samples", "2", "--max_new_tokens", "30"]
        )
        assert sampled.returncode == 0, sampled.stderr
        samples = sampled.stdout.split("---------------\n")
        assert len(samples) == 3 and samples[-1] == ""
        assert all(s.startswith("ROMEO:") and len(s.rstrip("\n")) >= 36 for s in samples[:2])


def test_both_programs_log_the_same_losses_in_float64(corpus_dir, tmp_path):
    """Same flags, same seed: same init, batches and schedule, so the same losses."""
    losses = {}
    for program, args in PROGRAMS.items():
        out_dir = tmp_path / program
        result = run(
            [
                *args,
                *TINY,
                "--dtype",
                "float64",
                "--sample_tokens",
                "0",
                "--data_dir",
                str(corpus_dir),
                "--out_dir",
                str(out_dir),
            ]
        )
        assert result.returncode == 0, result.stderr
        losses[program] = [r["loss"] for r in log_records(out_dir) if "loss" in r]
    assert losses["numpy"] == pytest.approx(losses["torch"], rel=1e-12)


BAD_INPUTS = {
    "n_embd not divisible by n_head": (["--n_embd", "10", "--n_head", "3"], "divisible"),
    "batch size 0": (["--batch_size", "0"], "batch_size"),
    "unknown flag": (["--no_such_flag", "1"], "error: unknown option --no_such_flag; see python"),
    "not an integer": (
        ["--batch_size", "abc"],
        "error: --batch_size must be an integer, got 'abc'",
    ),
    "bad boolean": (["--bias", "maybe"], "true or false"),
    "negative grad_clip": (["--grad_clip", "-1"], "error: --grad_clip must be 0 (no clipping) or"),
    "negative seed": (["--seed", "-1"], "error: --seed must be 0 or more, got -1"),
    "min_lr above learning_rate": (
        ["--learning_rate", "1e-3", "--min_lr", "1e-2"],
        "error: --min_lr 0.01 is above --learning_rate 0.001",
    ),
    "missing text file": (["--text", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    "bad gelu": (["--gelu", "relu"], "gelu"),
}


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_and_exit_2(program, case, tmp_path):
    flags, expected = BAD_INPUTS[case]
    result = run([*PROGRAMS[program], *flags, "--out_dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


TORCH_BAD_INPUTS = {
    "unknown device": (["--device", "tpu"], "unknown --device 'tpu'"),
    "unknown attention": (["--attention", "fast"], "--attention must be one of"),
    "cudnn attention on a CPU": (["--attention", "cudnn"], "--attention cudnn runs on a CUDA GPU"),
    "config file with an unknown key": (["--config", "BAD_TOML"], "unknown option 'n_layers'"),
    "missing config file": (["--config", "/nonexistent/run.toml"], "does not exist"),
    "resume without a checkpoint": (["--init_from", "resume"], "no checkpoint at"),
    "accumulation not divisible by ranks": (["--gradient_accumulation_steps", "3"], "multiple"),
}


@pytest.mark.parametrize("case", TORCH_BAD_INPUTS)
def test_torch_bad_input_gives_one_line_and_exit_2(case, tmp_path):
    flags, expected = TORCH_BAD_INPUTS[case]
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("n_layers = 2\n")
    flags = [str(bad_toml) if f == "BAD_TOML" else f for f in flags]
    env = None
    if case == "accumulation not divisible by ranks":  # as torchrun would set it for 2 ranks
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    result = run([*PROGRAMS["torch"], *flags, "--out_dir", str(tmp_path / "out")], env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("program", PROGRAMS)
def test_block_size_longer_than_the_data_is_refused(program, tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("to be or not to be, that is the question\n" * 3)
    result = run(
        [
            *PROGRAMS[program],
            "--text",
            str(text),
            "--block_size",
            "64",
            "--data_dir",
            str(tmp_path / "data"),
            "--out_dir",
            str(tmp_path / "out"),
        ]
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "block_size" in result.stderr.strip().splitlines()[-1]


def test_torch_refuses_a_missing_device(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run(["-m", "torch_impl.train", "--device", "cuda", "--out_dir", str(tmp_path)])
    assert result.returncode == 2 and "CUDA is not available" in result.stderr


def test_readme_train_command_runs(corpus_dir, tmp_path):
    """`make train`, the README's main job, with tiny flags passed through ARGS."""
    if shutil.which("make") is None or not (REPO / ".venv" / ".installed").exists():
        pytest.skip("needs make and the project's .venv (made by `make test`)")
    flags = " ".join([*TINY, "--data_dir", str(corpus_dir), "--out_dir", str(tmp_path / "out")])
    result = subprocess.run(
        ["make", "train", f"ARGS={flags}"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "---- sample ----" in result.stdout
    assert (tmp_path / "out" / "ckpt.pt").exists()
