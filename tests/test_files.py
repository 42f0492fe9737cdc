"""ref_numpy.files: every file the project writes is replaced whole or not at all.

And ref_numpy.train.options.run_main: a user's mistake is one `error:` line and exit code 2, a
failed run exit code 1, and anything else (a bug) keeps its traceback.
"""

import errno
import os
import subprocess
import sys

import pytest

from ref_numpy.errors import UserError
from ref_numpy.files import StorageError, atomic_write, atomic_write_bytes, staged_file
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

    with pytest.raises(StorageError, match=f"could not write '{path}': no space left on device"):
        atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_a_write_torch_reports_as_its_own_error_is_still_a_full_disk(tmp_path, monkeypatch):
    """torch.save turns the OSError of a full disk into "RuntimeError: ... unexpected pos";
    the write it failed on is what the user hears about."""
    import torch

    import ref_numpy.files as files

    class FullAfter:  # a file on a disk that fills after 2000 bytes
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += memoryview(data).nbytes
            if self.written > 2000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(files, "open", lambda *a, **k: FullAfter(open(*a, **k)), raising=False)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(StorageError, match="no space left on device") as info:
        atomic_write(path, lambda f: torch.save({"w": torch.zeros(10_000)}, f))
    assert isinstance(info.value.__cause__, RuntimeError)  # what torch itself raised
    assert list(tmp_path.iterdir()) == []


def test_a_failure_that_is_not_about_storage_keeps_its_type(tmp_path):
    def bug(file):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError, match="Bad file descriptor"):
        atomic_write(tmp_path / "x", bug)
    assert list(tmp_path.iterdir()) == []


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


def test_the_tree_check_sees_a_changed_or_new_file(tmp_path):
    """The session check in conftest.py (tests never write tracked files) can fail."""
    from tests.conftest import tree_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "figure.png").write_bytes(b"committed")
    git("add", "figure.png")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    clean = tree_state(tmp_path)
    assert clean is not None and tree_state(tmp_path) == clean
    (tmp_path / "figure.png").write_bytes(b"rewritten by a test")
    modified = tree_state(tmp_path)
    assert modified != clean
    (tmp_path / "figure.png").write_bytes(b"rewritten again")  # already modified: still seen
    assert tree_state(tmp_path) != modified
    (tmp_path / "figure.png").write_bytes(b"committed")
    (tmp_path / "new.png").write_bytes(b"left behind")
    assert tree_state(tmp_path) != clean
