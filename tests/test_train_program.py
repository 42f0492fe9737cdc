"""The torch training program's promises: configuration, exact resume, the kill test, failure
handling and data-parallel equivalence.

Most runs call `torch_impl.train.main` in this process (a torch import per run would cost more
than the run); the kill, signal, DDP and exit-code tests run it as a user does, as a subprocess.
"""

import argparse
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ref_numpy.errors import UserError
from ref_numpy.train.config import TrainConfig
from ref_numpy.train.options import read_config_file, read_overrides
from torch_impl import runtime
from torch_impl.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
)
from torch_impl.model import GPT
from torch_impl.train import main
from torch_impl.train_config import TorchTrainConfig

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--device",
    "cpu",
    "--batch_size",
    "4",
    "--block_size",
    "16",
    "--n_layer",
    "2",
    "--n_head",
    "2",
    "--n_embd",
    "16",
    "--eval_iters",
    "2",
    "--log_interval",
    "1",
    "--warmup_iters",
    "2",
    "--sample_tokens",
    "0",
]


def records(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


def losses(out_dir: Path) -> list[tuple[int, float]]:
    return [(r["iter"], r["loss"]) for r in records(out_dir) if "loss" in r]


def evals(out_dir: Path) -> list[tuple[int, float, float]]:
    return [
        (r["iter"], r["train_loss"], r["val_loss"]) for r in records(out_dir) if "val_loss" in r
    ]


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs
    )


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints' model and optimizer tensors, bit for bit."""
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][key][name]), (key, name)


# ----------------------------------------------------------------------------- configuration
def test_config_file_then_flags_in_both_forms(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('batch_size = 7\nlearning_rate = 1\nbias = false\ntop_k = "none"\n')
    explicit = read_overrides(
        TorchTrainConfig,
        ["--config", str(toml), "--batch_size=9", "--compile", "TRUE", "--fused_adamw=False"],
        "",
    )
    assert explicit == {
        "batch_size": 9,  # the flag wins over the file
        "learning_rate": 1.0,  # an int is a fine float
        "bias": False,
        "top_k": None,
        "compile": True,
        "fused_adamw": False,
    }
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"n_layer": 3, "top_k": None, "gelu": "tanh"}))
    assert read_config_file(TorchTrainConfig, as_json) == {
        "n_layer": 3,
        "top_k": None,
        "gelu": "tanh",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batch_sise = 8\n", "unknown option 'batch_sise'; did you mean 'batch_size'?"),
        ('batch_size = "8"\n', "batch_size must be int, got '8'"),
        ("bias = 1\n", "bias must be bool, got 1"),
        ("max_iters = 2.5\n", "max_iters must be int"),
        ("batch_size = \n", "does not parse"),
    ],
)
def test_config_file_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.toml") as error:
        read_config_file(TorchTrainConfig, path)
    assert message in str(error.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_ready_configs_are_valid(path):
    config = TorchTrainConfig(**read_config_file(TorchTrainConfig, path))
    assert config.n_embd % config.n_head == 0


def test_defaults_are_sized_for_the_device():
    assert TorchTrainConfig.device_defaults("cpu") == {}
    gpu = TorchTrainConfig.device_defaults("cuda")
    assert (gpu["n_layer"], gpu["n_head"], gpu["n_embd"], gpu["block_size"]) == (12, 12, 768, 1024)
    assert TorchTrainConfig.device_defaults("cuda:1") == gpu
    assert TorchTrainConfig.device_defaults("auto") == (gpu if torch.cuda.is_available() else {})


# ----------------------------------------------------------------------------- resume
def test_resume_is_bit_identical_to_a_straight_run(corpus_dir, tmp_path):
    """2N steps straight, and N steps + resume + N steps: the same losses and state, bit for bit.

    Dropout (torch RNG), two accumulation streams (NumPy RNG) and AdamW's moments all have to
    come back exactly for this to hold.
    """
    common = [
        *SMALL,
        "--data_dir",
        str(corpus_dir),
        "--eval_interval",
        "4",
        "--lr_decay_iters",
        "12",
        "--gradient_accumulation_steps",
        "2",
        "--dropout",
        "0.1",
    ]
    main([*common, "--max_iters", "12", "--out_dir", str(tmp_path / "straight")])
    main([*common, "--max_iters", "6", "--out_dir", str(tmp_path / "split")])
    half = load_checkpoint(tmp_path / "split" / "ckpt.pt")
    assert half["iter_num"] == 6
    main(["--init_from", "resume", "--max_iters", "12", "--out_dir", str(tmp_path / "split")])

    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert [i for i, _ in losses(tmp_path / "split")] == list(range(12))
    assert evals(tmp_path / "split") == evals(tmp_path / "straight")
    straight = load_checkpoint(tmp_path / "straight" / "ckpt.pt")
    resumed = load_checkpoint(tmp_path / "split" / "ckpt.pt")
    assert resumed["iter_num"] == straight["iter_num"] == 12
    assert resumed["best_val_loss"] == straight["best_val_loss"]
    assert_same_state(resumed, straight)
    assert resumed["sampler"] == straight["sampler"]
    assert torch.equal(resumed["rng"][0]["torch"], straight["rng"][0]["torch"])


def test_resume_refuses_to_change_the_run(corpus_dir, tmp_path):
    out = tmp_path / "out"
    main([*SMALL, "--data_dir", str(corpus_dir), "--max_iters", "2", "--out_dir", str(out)])
    with pytest.raises(ValueError, match="cannot change --batch_size 8 \\(checkpoint: 4\\)"):
        main(["--init_from", "resume", "--out_dir", str(out), "--batch_size", "8"])


def test_a_garbled_log_line_does_not_stop_a_resume(corpus_dir, tmp_path):
    """A killed process may leave a torn last line in the log, even bytes that are not UTF-8:
    the resume drops it like any line past the checkpoint, and the run goes on."""
    out = tmp_path / "out"
    main([*SMALL, "--data_dir", str(corpus_dir), "--max_iters", "2", "--out_dir", str(out)])
    with open(out / "log.jsonl", "ab") as log:
        log.write(b'{"iter": 2, "loss": \xff\xfe')
    main(["--init_from", "resume", "--max_iters", "4", "--out_dir", str(out)])
    assert [i for i, _ in losses(out)] == [0, 1, 2, 3]


def test_checkpoint_holds_everything_and_no_compile_prefix(corpus_dir, tmp_path):
    out = tmp_path / "out"
    main([*SMALL, "--data_dir", str(corpus_dir), "--max_iters", "3", "--out_dir", str(out)])
    ckpt = load_checkpoint(out / "ckpt.pt")
    for key in ("model", "optimizer", "scaler", "model_args", "iter_num", "best_val_loss"):
        assert key in ckpt
    for key in ("config", "rng", "sampler", "data", "meta"):
        assert ckpt[key], key
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert not (out / "ckpt.pt.tmp").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_compiled_run_checkpoint_has_no_orig_mod_prefix(corpus_dir, tmp_path):
    """torch.compile on the CPU (inductor, ~15 s): the checkpoint holds the bare model's keys."""
    out = tmp_path / "out"
    flags = ["--max_iters", "2", "--compile", "true", "--out_dir", str(out)]
    main([*SMALL, "--data_dir", str(corpus_dir), *flags])
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert set(ckpt["model"]) == set(GPT(ckpt_config(ckpt)).state_dict())


def ckpt_config(ckpt):
    from torch_impl.checkpoint import config_from_checkpoint

    return config_from_checkpoint(ckpt)


# ----------------------------------------------------------------------------- interruptions
KILL_FLAGS = [*SMALL, "--max_iters", "600", "--eval_interval", "50", "--dropout", "0.1"]


@pytest.fixture(scope="module")
def uninterrupted(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    main([*KILL_FLAGS, "--data_dir", str(corpus_dir), "--out_dir", str(out)])
    return out


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_resumes_to_the_uninterrupted_result(
    corpus_dir, tmp_path, uninterrupted, signum
):
    """Kill a training process after its first checkpoint; resuming gives the same run.

    SIGKILL leaves the last periodic checkpoint (and log lines past it, which the resume drops);
    SIGTERM and SIGINT make the program finish its step, save and exit with 128 + the signal.
    """
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "torch_impl.train", *KILL_FLAGS]
        + ["--data_dir", str(corpus_dir), "--out_dir", str(out)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "ckpt.pt").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    process.send_signal(signum)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode in (-signal.SIGKILL, 128 + signum), stderr
    saved = load_checkpoint(out / "ckpt.pt")
    assert 50 <= saved["iter_num"] < 600, "the run ended before the signal; make it longer"
    if signum != signal.SIGKILL:
        assert "Traceback" not in stderr
        assert f"stopped by {signal.Signals(signum).name}" in stderr
        assert saved["iter_num"] == losses(out)[-1][0] + 1  # saved right after its last step

    result = run(["-m", "torch_impl.train", "--init_from", "resume", "--out_dir", str(out)])
    assert result.returncode == 0, result.stderr
    assert losses(out) == losses(uninterrupted)
    assert evals(out) == evals(uninterrupted)
    assert_same_state(load_checkpoint(out / "ckpt.pt"), load_checkpoint(uninterrupted / "ckpt.pt"))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(corpus_dir, tmp_path):
    out = tmp_path / "out"
    main([*SMALL, "--data_dir", str(corpus_dir), "--max_iters", "4", "--out_dir", str(out)])
    before = (out / "ckpt.pt").read_bytes()
    # a learning rate of 1e30 sends the weights past float32's range within a step or two
    result = run(
        ["-m", "torch_impl.train", "--init_from", "resume", "--out_dir", str(out)]
        + ["--max_iters", "20", "--learning_rate", "1e30", "--min_lr", "1e30"]
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "at iteration " in last and "the checkpoint of iteration 4 is kept" in last, last
    assert (out / "ckpt.pt").read_bytes() == before


# ----------------------------------------------------------------------------- bad checkpoints
def test_unreadable_checkpoints_give_one_line_naming_the_file(corpus_dir, tmp_path):
    out = tmp_path / "out"
    main([*SMALL, "--data_dir", str(corpus_dir), "--max_iters", "1", "--out_dir", str(out)])
    path = out / "ckpt.pt"
    whole = path.read_bytes()
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole[: len(whole) // 2])
    for bad, message in [
        (truncated, "not a readable checkpoint"),
        (text, "not a readable checkpoint"),
        (foreign, "not a GPT checkpoint"),
        (tmp_path / "missing.pt", "no checkpoint at"),
    ]:
        with pytest.raises(CheckpointError, match=message) as error:
            load_checkpoint(bad)
        assert str(bad) in str(error.value) and "\n" not in str(error.value)

    path.write_bytes(whole[: len(whole) // 2])  # as the program meets it: exit 2, one line
    result = run(["-m", "torch_impl.train", "--init_from", "resume", "--out_dir", str(out)])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr.strip().splitlines()[-1]


def test_foreign_files_are_refused_without_unsafe_advice(corpus_dir, tmp_path):
    """torch's own error for such a file advises loading it with weights_only=False, which runs
    whatever code an untrusted pickle holds: the message says what the file is instead."""
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(4096))
    a_list = tmp_path / "list.pt"
    torch.save([1, 2, 3], a_list)
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(pickle.dumps({"model": {}, "model_args": {}}))
    forbidden = tmp_path / "namespace.pt"
    torch.save({"model": {}, "model_args": {}, "args": argparse.Namespace(lr=1)}, forbidden)
    unreadable = "is not a readable checkpoint (truncated, or not a file torch.save wrote)"
    for bad, message in [
        (random_bytes, unreadable),
        (plain_pickle, unreadable),
        (a_list, "is not a GPT checkpoint: it lacks 'model' and 'model_args' (found list)"),
        (
            forbidden,
            "is not a checkpoint this trainer reads: it holds an object of class "
            "argparse.Namespace",
        ),
    ]:
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(bad)
        assert f"'{bad}' {message}" in str(error.value)
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)

    flags = ["--init_from", str(random_bytes), "--data_dir", str(corpus_dir)]
    result = run(["-m", "torch_impl.train", *flags, "--out_dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: '{random_bytes}' {unreadable}"]


def test_weights_that_do_not_fit_are_named_in_one_line():
    cfg = TrainConfig(block_size=8, n_layer=2, n_head=2, n_embd=8).model_config(vocab_size=10)
    state = GPT(cfg).state_dict()
    names = list(state)
    for name in names[:5]:
        del state[name]
    state["extra.weight"] = torch.zeros(1)
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as error:
        load_model_state(GPT(cfg), {"model": state, "path": "x.pt"})
    assert str(error.value) == (
        f"'x.pt' does not fit the model: missing keys 5: {names[0]}, {names[1]}, {names[2]} "
        f"and 2 more; unexpected keys 1: extra.weight; tensors of another shape 1: "
        f"transformer.h.1.mlp.c_fc.weight [3,3] in the file, [32,8] in the model"
    )


def nanogpt_checkpoint(model: GPT, path: Path) -> None:
    """A checkpoint as nanoGPT's train.py writes it: a compiled model's keys, old mask buffers,
    model_args without gelu, and no vocabulary, RNG or data state."""
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    T = model.config.block_size
    for i in range(model.config.n_layer):
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(T, T))[None, None]
    args = model.config.to_dict()
    del args["gelu"]
    save_checkpoint(
        path,
        {"model": state, "model_args": args, "iter_num": 100, "best_val_loss": 2.0, "config": {}},
    )


def test_init_from_a_nanogpt_checkpoint(corpus_dir, tmp_path):
    from ref_numpy.data import load_meta
    from ref_numpy.train.config import TrainConfig

    vocab = load_meta(corpus_dir)["vocab_size"]
    cfg = TrainConfig(block_size=32, n_layer=2, n_head=2, n_embd=16).model_config(vocab)
    source = GPT(cfg)
    path = tmp_path / "nanogpt.pt"
    nanogpt_checkpoint(source, path)
    out = tmp_path / "out"
    # no steps: the run's first checkpoint holds the weights it started from (context cropped)
    flags = ["--init_from", str(path), "--max_iters", "0", "--n_layer", "2", "--out_dir", str(out)]
    main([*SMALL, "--data_dir", str(corpus_dir), *flags])
    started = load_checkpoint(out / "ckpt.pt")
    assert started["iter_num"] == 0 and started["config"]["n_layer"] == 2  # the file's shape
    for name, tensor in started["model"].items():
        expected = source.state_dict()[name]
        if name == "transformer.wpe.weight":
            expected = expected[:16]  # --block_size 16 of the file's 32
        assert torch.equal(tensor, expected), name

    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    nanogpt_checkpoint(source, resume_dir / "ckpt.pt")
    with pytest.raises(CheckpointError, match="not written by this trainer"):
        main(["--init_from", "resume", "--out_dir", str(resume_dir)])


def test_a_run_from_a_longer_context_checkpoint_resumes(corpus_dir, tmp_path):
    """--init_from a checkpoint with context 32, trained at --block_size 16: the run's own
    checkpoint describes the cropped model it holds, so it resumes (and MFU counts T = 16)."""
    from ref_numpy.data import load_meta
    from ref_numpy.train.config import TrainConfig

    vocab = load_meta(corpus_dir)["vocab_size"]
    source = GPT(TrainConfig(block_size=32, n_layer=2, n_head=2, n_embd=16).model_config(vocab))
    path = tmp_path / "nanogpt.pt"
    nanogpt_checkpoint(source, path)
    out = tmp_path / "out"
    flags = ["--init_from", str(path), "--max_iters", "2", "--out_dir", str(out)]
    main([*SMALL, "--data_dir", str(corpus_dir), *flags])
    saved = load_checkpoint(out / "ckpt.pt")
    assert saved["model_args"]["block_size"] == 16
    assert saved["model"]["transformer.wpe.weight"].shape[0] == 16
    main(["--init_from", "resume", "--max_iters", "4", "--out_dir", str(out)])
    assert [i for i, _ in losses(out)] == list(range(4))


# ----------------------------------------------------------------------------- data parallel
def test_ddp_two_ranks_equal_one_process_accumulating(corpus_dir, tmp_path):
    """torchrun, 2 CPU processes (gloo) x micro-batch B == 1 process accumulating 2 x B.

    The slots' batch streams make the data identical; the remaining difference is where the
    gradient sum is rounded (all-reduce vs accumulation), ~1e-16 in float64.
    """
    flags = [
        *SMALL,
        "--dtype",
        "float64",
        "--data_dir",
        str(corpus_dir),
        "--gradient_accumulation_steps",
        "2",
        "--eval_interval",
        "3",
        "--lr_decay_iters",
        "10",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [
            "-m",
            "torch_impl.train",
            *flags,
            "--max_iters",
            "5",
            "--out_dir",
            str(tmp_path / "ddp"),
        ],
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    main([*flags, "--max_iters", "5", "--out_dir", str(tmp_path / "single")])
    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert [i for i, _ in ddp] == [i for i, _ in single] == list(range(5))
    assert [v for _, v in ddp] == pytest.approx([v for _, v in single], rel=1e-12, abs=0)
    ddp_evals, single_evals = evals(tmp_path / "ddp"), evals(tmp_path / "single")
    assert [i for i, *_ in ddp_evals] == [i for i, *_ in single_evals] == [0, 3, 5]
    flat = [loss for _, *pair in ddp_evals for loss in pair]
    assert flat == pytest.approx([loss for _, *pair in single_evals for loss in pair], rel=1e-12)
    assert len(load_checkpoint(tmp_path / "ddp" / "ckpt.pt")["rng"]) == 2  # both ranks' RNG

    # rank 0's checkpoint resumes in one process, which continues the single-process run
    main(["--init_from", "resume", "--max_iters", "10", "--out_dir", str(tmp_path / "ddp")])
    main([*flags, "--max_iters", "10", "--out_dir", str(tmp_path / "straight")])
    ddp, straight = losses(tmp_path / "ddp"), losses(tmp_path / "straight")
    assert [i for i, _ in ddp] == list(range(10))
    assert [v for _, v in ddp] == pytest.approx([v for _, v in straight], rel=1e-12, abs=0)


def test_torchrun_with_the_default_accumulation_runs_quietly(corpus_dir, tmp_path):
    """Without --gradient_accumulation_steps each process runs one micro-batch, so any number
    of processes works; the checkpoint keeps the resolved 2, and a resume in one process keeps
    it too. No rank prints a warning (DDP's about its renamed broadcast_buffers)."""
    out = tmp_path / "out"
    result = run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "torch_impl.train", *SMALL, "--max_iters", "2", "--data_dir", str(corpus_dir)]
        + ["--out_dir", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr  # no FutureWarning, UserWarning, ... of Python's
    assert "Warning" not in output and "deprecat" not in output.lower(), output
    assert load_checkpoint(out / "ckpt.pt")["config"]["gradient_accumulation_steps"] == 2
    main(["--init_from", "resume", "--max_iters", "3", "--out_dir", str(out)])
    assert [i for i, _ in losses(out)] == [0, 1, 2]
    resumed = [r for r in records(out) if "config" in r][-1]
    assert resumed["resumed_at"] == 2 and resumed["config"]["gradient_accumulation_steps"] == 2


def test_only_rank_0_reports_accumulation_that_does_not_divide(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "RANK_0_GRACE_S", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_info:
        runtime.distributed_from_env(3)
    assert exit_info.value.code == 2 and capsys.readouterr() == ("", "")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="--gradient_accumulation_steps 3 is not a multiple of"):
        runtime.distributed_from_env(3)


def test_eval_only_evaluates_a_checkpoint_and_writes_nothing(corpus_dir, tmp_path):
    out = tmp_path / "out"
    main([*SMALL, "--data_dir", str(corpus_dir), "--max_iters", "3", "--out_dir", str(out)])
    before = (out / "ckpt.pt").read_bytes()
    last_eval = evals(out)[-1]
    main(["--init_from", "resume", "--eval_only", "true", "--out_dir", str(out)])
    assert (out / "ckpt.pt").read_bytes() == before
    assert evals(out)[-1] == last_eval  # the same weights, the same fixed evaluation batches
    assert records(out)[-2]["resumed_at"] == 3


def test_float16_trains_with_a_grad_scaler_and_resumes(corpus_dir, tmp_path):
    out = tmp_path / "out"
    flags = [*SMALL, "--data_dir", str(corpus_dir), "--dtype", "float16", "--out_dir", str(out)]
    main([*flags, "--max_iters", "3"])
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
    main(["--init_from", "resume", "--max_iters", "5", "--out_dir", str(out)])
    assert [i for i, _ in losses(out)] == list(range(5))
    assert all(math.isfinite(v) for _, v in losses(out))


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_run_with_every_optimization_trains_and_resumes(corpus_dir, tmp_path, dtype):
    """bf16 (or fp16 + GradScaler) autocast, torch.compile, flash attention and fused AdamW."""
    out = tmp_path / "out"
    flags = [
        "--device",
        "cuda",
        "--dtype",
        dtype,
        "--compile",
        "true",
        "--attention",
        "sdpa",
        "--fused_adamw",
        "true",
        "--batch_size",
        "16",
        "--block_size",
        "128",
        "--n_layer",
        "2",
        "--n_head",
        "4",
        "--n_embd",
        "128",
        "--eval_interval",
        "20",
        "--eval_iters",
        "4",
        "--log_interval",
        "1",
        "--learning_rate",
        "2e-3",
        "--min_lr",
        "2e-4",
        "--warmup_iters",
        "5",
        "--lr_decay_iters",
        "60",
        "--sample_tokens",
        "20",
        "--data_dir",
        str(corpus_dir),
        "--out_dir",
        str(out),
    ]
    main([*flags, "--max_iters", "40"])
    ckpt = load_checkpoint(out / "ckpt.pt")
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert ckpt["rng"][0]["cuda"] is not None
    main(["--init_from", "resume", "--max_iters", "60", "--out_dir", str(out)])
    steps, points = losses(out), evals(out)
    assert [i for i, _ in steps] == list(range(60))
    assert all(math.isfinite(v) for _, v in steps)
    assert points[-1][2] < points[0][2] - 0.5  # val loss: from ~4.4 (uniform) well down
    assert any("mfu" in r for r in records(out))
