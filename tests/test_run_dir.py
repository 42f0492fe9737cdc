"""The run folder: one trainer at a time, a previous run never destroyed unasked, and storage
that fails (a file where the folder should be, a full disk) answered in one line with nothing lost.

Both trainers are run as a user runs them (a subprocess); the disk fills either by a fault
injected into the one place files are written (`ref_numpy.files`, ENOSPC after the first
checkpoint) or, where this test may mount one (as root), on a real tmpfs too small for two.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch

from ref_numpy.errors import UserError
from ref_numpy.train.run_dir import RunDirBusy, RunDirLock, claim_run_dir
from tests.test_cli import PROGRAMS, REPO, TINY, log_records, run


def flags(corpus_dir, out_dir, *extra):
    return [*TINY, "--data_dir", str(corpus_dir), "--out_dir", str(out_dir), *extra]


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


def assert_one_error_line(result, *expected):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = last_line(result)
    assert line.startswith("error: ")
    for text in expected:
        assert text in line, line


def leftovers(folder):
    """Temporary and lock files a finished trainer must not leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name == ".lock")


# ----------------------------------------------------------------------------- the lock
def hold_lock_in_child(folder):
    """A child process holding the folder's lock until it is killed; returns (process, pid)."""
    code = f"from ref_numpy.train.run_dir import RunDirLock; import time; RunDirLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(600)"  # noqa: E501
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == b"held"
    return child


def test_a_held_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
    child = hold_lock_in_child(tmp_path)
    try:
        with pytest.raises(
            RunDirBusy, match=f"in use by another trainer \\(process {child.pid}\\)"
        ):
            RunDirLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    # the kernel dropped the killed holder's lock; its file, naming it, is taken over
    lock = RunDirLock(tmp_path).acquire()
    assert lock.taken_over == child.pid
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_a_lock_released_normally_leaves_nothing_to_take_over(tmp_path):
    with RunDirLock(tmp_path):
        pass
    with RunDirLock(tmp_path) as lock:
        assert lock.taken_over is None
    assert list(tmp_path.iterdir()) == []


def logged(out_dir):
    """Lines in a running trainer's log so far."""
    log = out_dir / "log.jsonl"
    return len(log.read_bytes().splitlines()) if log.exists() else 0


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the first trainer did not get going")
        time.sleep(0.1)


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_second_trainer_on_a_busy_folder_exits_2_naming_the_first(program, corpus_dir, tmp_path):
    out_dir = tmp_path / "out"
    long_run = flags(corpus_dir, out_dir, "--max_iters", "100000", "--eval_interval", "2")
    first = subprocess.Popen(
        [sys.executable, *PROGRAMS[program], *long_run],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: (
                first.poll() is not None or (out_dir / "ckpt.pt").exists() or logged(out_dir) > 3
            )
        )
        assert first.poll() is None, "the first trainer ended early"
        again = ["--init_from", "resume"] if program == "torch" else []
        second = run([*PROGRAMS[program], *flags(corpus_dir, out_dir, *again)])
        assert_one_error_line(second, f"'{out_dir}' is in use", f"(process {first.pid})")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out_dir / ".lock").read_text().strip() == str(first.pid)  # left by the killed run
    # which the next run of the folder takes over, with a note
    if program == "torch":
        saved_at = torch.load(out_dir / "ckpt.pt", weights_only=True)["iter_num"]
        take_over = ["--init_from", "resume", "--max_iters", str(saved_at + 2)]
    else:
        take_over = ["--overwrite"]
    third = run([*PROGRAMS[program], *flags(corpus_dir, out_dir, *take_over)])
    assert third.returncode == 0, third.stderr
    assert f"note: took over the lock of '{out_dir}' left by process {first.pid}" in third.stdout
    assert leftovers(out_dir) == []


def test_two_trainers_started_together_never_share_a_folder(corpus_dir, tmp_path):
    """Started at once on an empty folder: one trains there, the other is refused (or, if the
    first had already logged, moves to out-2); never two logs in one file."""
    out_dir = tmp_path / "out"
    runs = [
        subprocess.Popen(
            [sys.executable, *PROGRAMS["numpy"], *flags(corpus_dir, out_dir)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(r.wait(timeout=300), *r.communicate()) for r in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for folder in [out_dir, tmp_path / "out-2"]:
        if folder.exists():
            headers = [r for r in log_records(folder) if "config" in r]
            assert len(headers) == 1  # one run's log, not two interleaved
            assert leftovers(folder) == []


# ----------------------------------------------------------------------------- previous runs
@pytest.mark.parametrize("program", PROGRAMS)
def test_a_new_run_never_destroys_the_previous_one(program, corpus_dir, tmp_path):
    out_dir = tmp_path / "out"
    first = run([*PROGRAMS[program], *flags(corpus_dir, out_dir)])
    assert first.returncode == 0, first.stderr
    kept = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    assert "log.jsonl" in kept
    second = run([*PROGRAMS[program], *flags(corpus_dir, out_dir)])
    assert second.returncode == 0, second.stderr
    assert f"note: '{out_dir}' holds a previous run, kept; this run writes to '{out_dir}-2'" in (
        second.stdout
    )
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == kept
    assert (tmp_path / "out-2" / "log.jsonl").exists()
    third = run([*PROGRAMS[program], *flags(corpus_dir, out_dir)])
    assert third.returncode == 0 and (tmp_path / "out-3" / "log.jsonl").exists()
    # asked to, a new run replaces the folder's previous run
    replaced = run([*PROGRAMS[program], *flags(corpus_dir, out_dir, "--overwrite")])
    assert replaced.returncode == 0, replaced.stderr
    assert "holds a previous run" not in replaced.stdout
    assert len([r for r in log_records(out_dir) if "config" in r]) == 1
    assert not (tmp_path / "out-4").exists()


def test_a_resume_continues_in_its_own_folder(corpus_dir, tmp_path):
    out_dir = tmp_path / "out"
    assert run([*PROGRAMS["torch"], *flags(corpus_dir, out_dir)]).returncode == 0
    more = run(
        [
            *PROGRAMS["torch"],
            *flags(corpus_dir, out_dir, "--init_from", "resume", "--max_iters", "6"),
        ]
    )
    assert more.returncode == 0, more.stderr
    assert not (tmp_path / "out-2").exists()
    assert torch.load(out_dir / "ckpt.pt", weights_only=True)["iter_num"] == 6


def test_claim_skips_numbered_folders_in_use(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "log.jsonl").write_text("{}\n")
    (tmp_path / "out-2").mkdir()
    child = hold_lock_in_child(tmp_path / "out-2")
    try:
        with claim_run_dir(tmp_path / "out", new_run=True, overwrite=False) as lock:
            assert lock.folder == tmp_path / "out-3"
    finally:
        child.kill()
        child.wait()


# ----------------------------------------------------------------------------- storage
@pytest.mark.parametrize("program", PROGRAMS)
def test_an_unusable_out_dir_is_refused_before_any_work(program, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    for out_dir, expected in [
        (a_file, f"--out_dir '{a_file}' is a file, not a folder"),
        (a_file / "sub", f"--out_dir '{a_file / 'sub'}' lies inside a file"),
    ]:
        result = run([*PROGRAMS[program], *TINY, "--out_dir", str(out_dir)])
        assert_one_error_line(result, expected)
        assert "parameters" not in result.stdout  # refused before the model was built


FULL_DISK = textwrap.dedent(
    """
    import errno, sys
    import ref_numpy.files as files
    from ref_numpy.train.options import run_main

    # which file fills the disk, after how many writes of it and how many bytes of the last
    target, allowed, room = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    calls = 0

    class FullDisk:
        def __init__(self, file):
            self.file, self.written = file, 0
        def write(self, data):
            data = data if isinstance(data, str) else memoryview(data).cast("B")
            self.written += len(data)
            if self.written > room:
                self.file.write(data[:50])  # part of it lands
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.file.close()
        def __getattr__(self, name):
            return getattr(self.file, name)

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        global calls
        file = open(path, mode, *args, **kwargs)
        if target in str(path) and "r" not in mode:
            calls += 1
            if calls > allowed:
                return FullDisk(file)
        return file

    files.open = open_on_a_filling_disk
    if sys.argv[4] == "torch":
        from torch_impl.train import main
    else:
        from ref_numpy.train.numpy_trainer import main
    sys.argv = sys.argv[4:]
    run_main(lambda: main(sys.argv[1:]))
    """
)


def run_on_a_filling_disk(program, target, allowed, args, room=1000):
    extra = ["--device", "cpu"] if program == "torch" else []
    return run(["-c", FULL_DISK, target, str(allowed), str(room), program, *extra, *args])


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_the_run_resumes(corpus_dir, tmp_path):
    straight = tmp_path / "straight"
    six = ["--max_iters", "6"]
    assert run([*PROGRAMS["torch"], *flags(corpus_dir, straight, *six)]).returncode == 0
    out_dir = tmp_path / "out"
    # checkpoints at iterations 2, 4, 6: the disk is full from the second on
    failed = run_on_a_filling_disk("torch", ".ckpt.pt.", 1, flags(corpus_dir, out_dir, *six))
    assert_one_error_line(
        failed,
        f"could not write '{out_dir / 'ckpt.pt'}': no space left on device",
        f"'{out_dir / 'ckpt.pt'}' (iteration 2) is kept",
        f"continue with --init_from resume --out_dir {out_dir}",
    )
    assert torch.load(out_dir / "ckpt.pt", weights_only=True)["iter_num"] == 2
    assert leftovers(out_dir) == []
    # space freed: the resume ends where the uninterrupted run ended, bit for bit
    resume = flags(corpus_dir, out_dir, "--init_from", "resume", *six)
    resumed = run([*PROGRAMS["torch"], *resume])
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(out_dir / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(straight / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_full_disk_while_logging_is_one_line(corpus_dir, tmp_path):
    out_dir = tmp_path / "out"
    failed = run_on_a_filling_disk("torch", "log.jsonl", 3, flags(corpus_dir, out_dir), room=0)
    assert_one_error_line(failed, f"could not write '{out_dir / 'log.jsonl'}'", "no space left")
    assert leftovers(out_dir) == []


def test_a_full_disk_at_the_numpy_trainers_weights_is_one_line(corpus_dir, tmp_path):
    out_dir = tmp_path / "out"
    failed = run_on_a_filling_disk("numpy", ".params.npz.", 0, flags(corpus_dir, out_dir))
    assert_one_error_line(failed, f"could not write '{out_dir / 'params.npz'}'", "no space left")
    assert leftovers(out_dir) == [] and not (out_dir / "params.npz").exists()


def mount_tmpfs(folder: Path, size_bytes: int, options: str = "") -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size_bytes}{options}",
            f"gpt-test-{uuid.uuid4().hex[:8]}",
            str(folder),
        ],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")


def remount(folder: Path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(folder)], check=True)


def test_a_real_full_disk(corpus_dir, tmp_path):
    """On a tmpfs with room for one checkpoint and its log but not for a second beside it."""
    model = ["--n_layer", "2", "--n_embd", "64", "--max_iters", "6"]
    sized = tmp_path / "sized"
    assert run([*PROGRAMS["torch"], *flags(corpus_dir, sized, *model)]).returncode == 0
    checkpoint = (sized / "ckpt.pt").stat().st_size
    disk = tmp_path / "disk"
    mount_tmpfs(disk, int(1.5 * checkpoint) + 64 * 1024)
    try:
        out_dir = disk / "out"
        failed = run([*PROGRAMS["torch"], *flags(corpus_dir, out_dir, *model)])
        assert_one_error_line(
            failed, "no space left on device", f"'{out_dir / 'ckpt.pt'}' (iteration 2) is kept"
        )
        assert leftovers(out_dir) == []
        remount(disk, 8 * checkpoint + 1024 * 1024)  # space freed
        resume = flags(corpus_dir, out_dir, "--init_from", "resume", *model)
        resumed = run([*PROGRAMS["torch"], *resume])
        assert resumed.returncode == 0, resumed.stderr
        a = torch.load(out_dir / "ckpt.pt", weights_only=True)["model"]
        b = torch.load(sized / "ckpt.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in b)
        # a disk without room for even one checkpoint is refused before training starts
        remount(disk, 64 * 1024 + (out_dir / "ckpt.pt").stat().st_size + 16 * 1024)
        refused = run([*PROGRAMS["torch"], *flags(corpus_dir, disk / "new", *model)])
        assert_one_error_line(refused, f"--out_dir '{disk / 'new'}' has", "a checkpoint takes")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_claim_refuses_a_folder_it_cannot_create(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(UserError, match="is a file, not a folder"):
        claim_run_dir(a_file, new_run=True, overwrite=False)


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_folder_that_cannot_be_written_is_refused_at_once(program, tmp_path):
    locked = tmp_path / "locked"
    if os.geteuid() == 0:  # root writes anywhere permissions allow nothing: a read-only disk
        mount_tmpfs(locked, 1024 * 1024, ",ro")
        cause = "read-only file system"
    else:
        locked.mkdir()
        locked.chmod(0o555)
        cause = "permission denied"
    try:
        result = run([*PROGRAMS[program], *TINY, "--out_dir", str(locked / "out")])
        assert_one_error_line(result, f"--out_dir '{locked / 'out'}'", cause)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=False)
        else:
            locked.chmod(0o755)
