"""Every command in the README runs as written, after the set-up that `make train` / `make test`
does, at a tiny size.

The commands are read from the README itself (its ```bash blocks and its inline code that starts
with `make ` or `.venv/bin/`), so a command added there without a way to run it here fails
`test_every_readme_command_is_exercised`. They run in a scratch copy of the repository (its
`.venv` linked, the corpus prepared), so they write nothing into this checkout: each command as
written, plus flags that make it tiny (through `ARGS` for make), in the README's order where one
needs another's output (`make sample` needs the run of `make train`).
"""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import REPO, TINY

README = REPO / "README.md"
VENV = REPO / ".venv"

# How each README command is made tiny: extra flags for the program (via ARGS for make), and
# substitutions of the README's real-size values. A command mapped to None is not run, for the
# reason given; `make -n` checks that its target exists.
DATA = ["--data_dir", "data/shakespeare_char"]
TRAIN = [*TINY, *DATA]
RUNS: dict[str, dict | None] = {
    "make train": {"flags": TRAIN},
    'make train ARGS="--max_iters 500 --n_layer 2"': {"flags": TRAIN},
    "make sample": {"flags": ["--max_new_tokens", "20", "--num_samples", "1"]},
    "make sample OUT=out-2": {"flags": ["--max_new_tokens", "20", "--num_samples", "1"]},
    "make train-numpy": {"flags": TRAIN},
    ".venv/bin/python -m ref_numpy.train": {"flags": TRAIN},
    ".venv/bin/python -m torch_impl.train": {"flags": [*TRAIN, "--device", "cpu"]},
    ".venv/bin/python -m torch_impl.train --init_from resume --out_dir out": {"flags": []},
    ".venv/bin/python -m torch_impl.train --init_from resume --out_dir out --max_iters 4000": {
        "replace": {"4000": "6"}
    },
    ".venv/bin/python -m torch_impl.sample --out_dir out": {
        "flags": ["--max_new_tokens", "20", "--num_samples", "1"]
    },
    ".venv/bin/torchrun --standalone --nproc_per_node=8 -m torch_impl.train --config "
    "configs/gpt2_124m.toml": {
        "replace": {"--nproc_per_node=8": "--nproc_per_node=2"},
        "flags": [*TRAIN, "--device", "cpu", "--gradient_accumulation_steps", "2"],
    },
    "make bench": {"flags": ["--device", "cpu", "--quick", "--sections", "adamw"]},
    'make bench ARGS="--sections roofline"': {"flags": ["--device", "cpu", "--quick"]},
    "make gpu-cross-check": {"flags": ["--device", "cpu", "--steps", "2", "--seeds", "0"]},
    "make data": {"flags": []},
    # token data: a BPE of a small text (this README, 300 tokens) in place of the plays' 4096;
    # for nanoGPT's OpenWebText, the prepared corpus folder (its bins read as GPT-2 token ids)
    ".venv/bin/python -m ref_numpy.data --tokenizer bpe --vocab_size 4096": {
        "replace": {"4096": "300"},
        "flags": ["--text", "README.md"],
    },
    ".venv/bin/python -m torch_impl.train --tokenizer bpe --vocab_size 4096 --block_size 21 "
    "--out_dir out-bpe": {
        "replace": {"4096": "300"},
        "flags": [*TINY, "--device", "cpu", "--text", "README.md"],
    },
    '.venv/bin/python -m torch_impl.sample --out_dir out-bpe --start "ROMEO:"': {
        "flags": ["--max_new_tokens", "20", "--num_samples", "1"]
    },
    ".venv/bin/python -m torch_impl.train --config configs/gpt2_124m.toml --dataset "
    "../nanoGPT/data/openwebtext": {
        "replace": {"../nanoGPT/data/openwebtext": "data/shakespeare_char"},
        "flags": [*TINY, "--device", "cpu"],
    },
    'make test ARGS="-k gpt"': {"flags": ["--collect-only", "-q"]},
    "make test": None,  # this very suite: CI runs it; here only `make -n test`
    "make notebooks": None,  # executes every notebook (minutes); tests/test_notebooks.py does
    "make gpu-report": None,  # tests/test_gpu_report.py runs its CPU dry run (about a minute)
}
ORDER = list(RUNS)  # the order above: make train first, its sample and resumes after it


def readme_commands(text: str) -> list[str]:
    """The commands a reader would copy: lines of ```bash blocks (comments dropped) and inline
    code that starts with `make ` or `.venv/bin/`, whitespace normalised."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    prose = re.sub(r"```.*?```", " ", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if span.startswith(("make ", ".venv/bin/")) and not span.endswith("..."):
            commands.append(span)
    return list(dict.fromkeys(commands))


def test_every_readme_command_is_exercised():
    commands = readme_commands(README.read_text())
    unknown = [c for c in commands if c not in RUNS]
    assert not unknown, f"README commands with no tiny run in this test: {unknown}"
    stale = [c for c in RUNS if c not in commands]
    assert not stale, f"commands this test runs that the README no longer has: {stale}"


def test_no_readme_command_needs_an_activated_environment():
    """`python -m ...` or `torchrun` as written would miss the project's .venv on a fresh clone."""
    text = README.read_text()
    spans = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", " ", text, flags=re.S))
    lines = [ln for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for ln in b.split("\n")]
    bare = [s for s in [*spans, *lines] if re.match(r"\s*(python3?|torchrun|pytest)\b", s)]
    assert not bare, f"write these as make targets or with .venv/bin/: {bare}"


def test_readme_command_extraction():
    text = "Run `make sample\nOUT=out-2` then\n```bash\nmake train   # trains\n```\n`python x`"
    assert readme_commands(text) == ["make train", "make sample OUT=out-2"]


@pytest.fixture(scope="module")
def workspace(corpus_dir, tmp_path_factory):
    """A scratch copy of the repository, with the project's .venv and the corpus prepared."""
    if shutil.which("make") is None or not (VENV / ".installed").exists():
        pytest.skip("needs make and the project's .venv (made by `make test`)")
    copy = tmp_path_factory.mktemp("readme") / "repo"
    ignored = shutil.ignore_patterns(
        ".venv", ".git", "data", "out*", ".pytest_cache", "__pycache__"
    )
    shutil.copytree(REPO, copy, ignore=ignored)  # copy2 keeps mtimes: .venv stays up to date
    (copy / ".venv").symlink_to(VENV)
    shutil.copytree(corpus_dir, copy / "data" / "shakespeare_char")
    return copy


def as_run(command: str) -> list[str]:
    """The README command with its tiny flags: through ARGS for make, appended otherwise."""
    spec = RUNS[command]
    for old, new in spec.get("replace", {}).items():
        command = command.replace(old, new)
    argv = shlex.split(command)
    flags = spec.get("flags", [])
    if argv[0] != "make":
        return argv + flags
    given = [a for a in argv if a.startswith("ARGS=")]
    extra = " ".join(shlex.quote(f) for f in flags)
    args = f"{given[0].removeprefix('ARGS=')} {extra}".strip() if given else extra
    return [a for a in argv if not a.startswith("ARGS=")] + ([f"ARGS={args}"] if args else [])


def run_in(workspace: Path, argv: list[str]) -> subprocess.CompletedProcess:
    # Run from `make test ARGS=...`, this process inherits make's command-line variables (in the
    # environment and in MAKEFLAGS); a make started here would take that ARGS (pytest's flags)
    # for the command's own. The Makefile's variables (ARGS, OUT, TEXT) are the README's to set.
    made = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "OUT", "TEXT")
    env = {k: v for k, v in os.environ.items() if k not in made}
    return subprocess.run(argv, cwd=workspace, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_each_readme_command_runs_as_written(workspace):
    for command in ORDER:
        if RUNS[command] is None:
            target = command.split()[1]
            dry = run_in(workspace, ["make", "-n", target])
            assert dry.returncode == 0, f"{command}: {dry.stderr}"
            continue
        result = run_in(workspace, as_run(command))
        assert result.returncode == 0, f"{command} -> {as_run(command)}:\n{result.stderr[-3000:]}"
        if command == "make train":
            assert "---- sample ----" in result.stdout
            assert (workspace / "out" / "ckpt.pt").exists()
        if command.startswith('make train ARGS="--max_iters 500'):  # the repeat: out-2, not out
            assert "this run writes to 'out-2'" in result.stdout
        if command.startswith("make sample"):
            assert result.stdout.strip(), "no sample printed"
