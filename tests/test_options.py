"""The options of the training programs: each has its help line, each mistake names its flag.

`ref_numpy.train.options` reads the flags of both trainers into their dataclasses
(`TrainConfig`, `NumpyTrainConfig`, `TorchTrainConfig`), whose checks refuse a bad value
before any work; here in this process, the programs themselves in test_cli.py.
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from ref_numpy.errors import UserError
from ref_numpy.train.config import TrainConfig
from ref_numpy.train.numpy_trainer import NumpyTrainConfig
from ref_numpy.train.options import read_overrides
from torch_impl.model import ATTENTION_BACKENDS
from torch_impl.runtime import DTYPES
from torch_impl.train_config import TorchTrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [TrainConfig, NumpyTrainConfig, TorchTrainConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_every_option_has_a_help_line_that_explains_none(cls):
    for field in dataclasses.fields(cls):
        help_line = field.metadata.get("help", "")
        assert help_line.strip() and "\n" not in help_line, field.name
        if field.default is None:  # what the option does when left at none
            assert "none:" in help_line, field.name


def test_torch_help_lists_the_choices_and_both_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "torch_impl.train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m torch_impl.train ")
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line[:4] == "  --"}
    names = {f"--{f.name}" for f in dataclasses.fields(TorchTrainConfig)}
    assert names | {"--config"} == lines.keys()
    assert all("(default: " in lines[name] for name in names)  # one line each, never wrapped
    for choice in ["auto", "cpu", "cuda", "cuda:N", "mps"]:
        assert choice in lines["--device"]
    assert all(dtype in lines["--dtype"] for dtype in DTYPES)
    assert all(backend in lines["--attention"] for backend in ATTENTION_BACKENDS)
    assert "(default: 4; GPU: 12)" in lines["--n_layer"]
    assert "(default: none)" in lines["--compile"] and "none: on for CUDA" in lines["--compile"]
    assert "GPU:" not in lines["--max_iters"]  # the same on every device


def test_numpy_help_names_its_program_and_dtypes(capsys):
    from ref_numpy.train.numpy_trainer import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith("usage: python -m ref_numpy.train ")
    assert "float32 or float64" in out and "GPU:" not in out


def test_a_bool_option_alone_means_true():
    flags = ["--compile", "--overwrite", "--bias", "false", "--fused_adamw", "--eval_only=no"]
    assert read_overrides(TorchTrainConfig, flags, "") == {
        "compile": True,
        "overwrite": True,
        "bias": False,
        "fused_adamw": True,
        "eval_only": False,
    }
    assert read_overrides(TorchTrainConfig, ["--compile", "false"], "") == {"compile": False}
    assert read_overrides(TorchTrainConfig, ["--compile", "none"], "") == {"compile": None}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch_size", "abc"], "--batch_size must be an integer, got 'abc'"),
        (["--top_k=x"], "--top_k must be an integer or none, got 'x'"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number, got 'nan'"),
        (["--compile", "maybe"], "--compile must be true or false or none, got 'maybe'"),
        (["--min_lr", "-1e-4"], "--min_lr needs a value; write --min_lr=VALUE for a value that"),
        (
            ["--max_itrs", "3"],
            "unknown option --max_itrs (did you mean --max_iters?); "
            "see python -m torch_impl.train --help",
        ),
        (["--no_such_flag", "1"], "unknown option --no_such_flag; see"),
        (["stray"], "unexpected value 'stray': options are written --name value; see"),
    ],
)
def test_a_flag_mistake_is_one_line_naming_the_flag(argv, message):
    with pytest.raises(UserError) as error:
        read_overrides(TorchTrainConfig, argv, "", "python -m torch_impl.train")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"learning_rate": 0.0}, "--learning_rate must be positive, got 0.0"),
        ({"min_lr": -1e-4}, "--min_lr must be 0 or more, got -0.0001"),
        ({"weight_decay": -0.1}, "--weight_decay must be 0 or more, got -0.1"),
        ({"grad_clip": -1.0}, "--grad_clip must be 0 (no clipping) or more, got -1.0"),
        ({"seed": -1}, "--seed must be 0 or more, got -1"),
        ({"seed": 2**64}, "--seed must be below 2**63"),
        (
            {"learning_rate": 1e-3, "min_lr": 1e-2},
            "--min_lr 0.01 is above --learning_rate 0.001: the cosine decay (--decay_lr true)",
        ),
    ],
)
def test_each_optimizer_option_has_its_own_message(options, message):
    with pytest.raises(UserError) as error:
        TrainConfig(**options)
    assert str(error.value).startswith(message)


def test_min_lr_above_the_learning_rate_is_fine_without_the_decay():
    config = TrainConfig(learning_rate=1e-3, min_lr=1e-2, decay_lr=False)
    assert config.lr_at(0) == config.lr_at(10**6) == 1e-3


def test_accumulation_defaults_to_one_micro_batch_per_process(monkeypatch):
    assert TorchTrainConfig().gradient_accumulation_steps == 1
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert TorchTrainConfig().gradient_accumulation_steps == 4
    assert TorchTrainConfig(gradient_accumulation_steps=8).gradient_accumulation_steps == 8
    assert NumpyTrainConfig().gradient_accumulation_steps == 1  # always one process
