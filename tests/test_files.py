"""ref_numpy.files: every file the project writes is replaced whole or not at all.

And ref_numpy.train.options.run_main: a user's mistake is one `error:` line and exit code 2, a
failed run exit code 1, and anything else (a bug) keeps its traceback.
"""

import os
import subprocess
import sys

import pytest

from ref_numpy.errors import UserError
from ref_numpy.files import atomic_write, atomic_write_bytes, staged_file
from ref_numpy.train.loop import TrainingFailed
from ref_numpy.train.options import run_main


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"old")

    def write_half_then_fail(file):
        file.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_temporary_left_by_a_killed_writer_is_removed_by_the_next(tmp_path):
    path = tmp_path / "ckpt.pt"
    finished = [sys.executable, "-c", "import os; print(os.getpid())"]  # a process now gone
    dead = subprocess.run(finished, capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".ckpt.pt.{dead}.tmp"
    stale.write_bytes(b"torn")
    alive = tmp_path / f".ckpt.pt.{os.getppid()}.tmp"  # a writer that still runs: kept
    alive.write_bytes(b"in progress")
    staged = staged_file(path, lambda file: file.write(b"new"))
    assert staged.name == f".ckpt.pt.{os.getpid()}.tmp" and staged.read_bytes() == b"new"
    assert not stale.exists() and alive.exists()


def run_main_exit(raise_it, capsys):
    def main():
        raise_it()

    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    return exit_info.value.code, capsys.readouterr().err


def test_run_main_turns_a_user_error_into_one_line_and_exit_2(capsys):
    def mistake():
        raise UserError("--batch_size must be at least 1, got 0")

    code, err = run_main_exit(mistake, capsys)
    assert code == 2 and err == "error: --batch_size must be at least 1, got 0\n"


def test_run_main_gives_exit_1_for_a_failed_run(capsys):
    def diverged():
        raise TrainingFailed("the loss became nan at iteration 3")

    code, err = run_main_exit(diverged, capsys)
    assert code == 1 and err.startswith("error: the loss became nan")


def test_run_main_lets_a_bug_keep_its_traceback():
    def bug():
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(ValueError, match="broadcast"):
        run_main(bug)
