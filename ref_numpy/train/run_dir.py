"""The run folder (`--out_dir`): checked before any work, one writer at a time, and a previous
run in it never destroyed unasked.

`claim_run_dir` is the first thing a trainer does after reading its options:

1. **Usable.** The folder is created and a byte is written and flushed there (the lock file), so
   a folder that is a file, cannot be created or is not writable is one `error:` line at once,
   not a traceback after the data and the model are ready.
2. **One writer.** The trainer holds an exclusive lock (`flock`) on `out_dir/.lock` for as long
   as it runs, with its process id written in the file. A second trainer on the same folder exits
   with one line naming that process. The kernel drops the lock when its holder dies, however it
   dies; a holder that ends normally also removes the file, so a file still naming a process
   means that process was killed: the next trainer takes the lock over and says so.
3. **Nothing destroyed.** A new run (not `--init_from resume`) in a folder that holds a previous
   run (`ckpt.pt`, `log.jsonl` or `params.npz`) goes to the first free numbered folder beside it
   (`out` -> `out-2`, `out-3`, ...) and says where; `--overwrite` starts it in the folder itself,
   replacing the previous run's files as it writes its own. So `make train`, repeated, keeps
   every run, and `--init_from resume --out_dir out-2` continues the second one.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
from pathlib import Path

from ref_numpy.errors import UserError
from ref_numpy.files import StorageError, storage_error

LOCK_NAME = ".lock"
RUN_FILES = ("ckpt.pt", "log.jsonl", "params.npz")  # what a run leaves behind
REPLACED_FILES = (*RUN_FILES, "loss.png")  # what --overwrite removes before the new run starts


class RunDirBusy(UserError):
    """Another trainer holds the folder's lock."""


def holds_a_run(folder: Path) -> bool:
    """True if `folder` holds what a previous run wrote."""
    return any((folder / name).exists() for name in RUN_FILES)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(
            f"--out_dir '{folder}' is a file, not a folder; choose another --out_dir"
        ) from None
    except NotADirectoryError:
        raise UserError(
            f"--out_dir '{folder}' lies inside a file, not a folder; choose another --out_dir"
        ) from None
    except OSError as error:
        cause = error.strerror or type(error).__name__
        raise UserError(
            f"cannot create --out_dir '{folder}': {cause.lower()}; choose another --out_dir"
        ) from None


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class RunDirLock:
    """An exclusive lock on a run folder, held from `acquire` until `release` (or the process's
    end, which the kernel sees to). Usable as a context manager."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.taken_over: int | None = None  # the killed process whose lock file this took over

    def acquire(self) -> RunDirLock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise self._unwritable(error) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"process {holder}" if holder is not None else "another process"
                raise RunDirBusy(
                    f"--out_dir '{self.folder}' is in use by another trainer ({who}); wait for "
                    f"it to end or stop it, or choose another --out_dir"
                ) from None
            # The holder we waited on may have removed the file between our open and our lock:
            # then we hold a lock on a file no one else sees, and must start again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        left = _read_pid(fd)
        if left is not None and left != os.getpid():
            self.taken_over = left
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)  # the write test: a full or read-only disk fails here, before any work
        except OSError as error:
            self.release()
            raise self._unwritable(error) from None
        return self

    def _unwritable(self, error: OSError) -> UserError:
        storage = storage_error(self.path, error)
        if storage is not None:
            return StorageError(f"--out_dir '{self.folder}' is not usable: {storage}")
        cause = (error.strerror or type(error).__name__).lower()
        return UserError(f"--out_dir '{self.folder}' is not usable: {cause}")

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order: see `acquire`)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _numbered(folder: Path, n: int) -> Path:
    return folder.with_name(f"{folder.name}-{n}")


def claim_run_dir(out_dir: str | Path, *, new_run: bool, overwrite: bool) -> RunDirLock:
    """Create, write-test and lock the folder this run writes to (held until `release`).

    A new run in a folder holding a previous one moves on to the first free `out_dir-N` (one
    neither holding a run nor in use), unless `overwrite`, which removes the previous run's
    files; a resume stays in `out_dir`, which holds the run it continues. The folder named by
    `out_dir` itself being in use by another trainer is an error in every case.
    """
    folder = Path(out_dir)
    numbered = (_numbered(folder, n) for n in itertools.count(2))
    for candidate in itertools.chain([folder], numbered if new_run and not overwrite else []):
        _make_folder(candidate)
        try:
            lock = RunDirLock(candidate).acquire()
        except RunDirBusy:
            if candidate == folder:
                raise
            continue
        if new_run and not overwrite and holds_a_run(candidate):
            lock.release()
            continue
        if lock.taken_over is not None:
            print(
                f"note: took over the lock of '{candidate}' left by process {lock.taken_over}, "
                f"which no longer runs"
            )
        if new_run and overwrite:
            for name in REPLACED_FILES:
                (candidate / name).unlink(missing_ok=True)
        if candidate != folder:
            print(
                f"note: '{folder}' holds a previous run, kept; this run writes to '{candidate}' "
                f"(--overwrite would replace the previous run instead)"
            )
        return lock
    raise AssertionError("unreachable: a resume returns its folder, a new run a free one")


def check_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """Refuse to start a run whose files will not fit in the space left on `folder`'s disk."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise StorageError(
            f"--out_dir '{folder}' has {free / 2**20:,.1f} MiB free, but {what} takes about "
            f"{needed_bytes / 2**20:,.1f} MiB; free some space or choose another --out_dir"
        )
