"""Every file the project writes goes through `atomic_write`: a reader, or a process killed while
writing, sees the old file or the new one, never half of one.

The bytes go to a temporary file beside the target (same folder, so the same file system), named
for the writing process, are flushed to disk, and the temporary file is renamed over the target:
`os.replace` is atomic on POSIX. If writing fails, the temporary file is removed and the target is
left as it was; one left by a process that was killed is removed by the next writer.

A write that fails for want of storage (a full disk, a quota, a read-only or forbidden folder) is
a `StorageError`: a user's problem, one line naming the file and the cause. Other failures keep
their own type and traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ref_numpy.errors import UserError

# The errors of a write that the user fixes by freeing or choosing storage, not by fixing code.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or process limit",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class StorageError(UserError):
    """A file could not be written for want of storage; the message names the file and cause."""


def storage_error(path: Path, error: OSError) -> StorageError | None:
    """The StorageError of a failed write to `path`, or None if `error` is not about storage."""
    cause = STORAGE_ERRNOS.get(error.errno)
    return None if cause is None else StorageError(f"could not write '{path}': {cause}")


class _RecordingWriter:
    """A file whose first OSError is kept: torch.save, for one, reports a failed write as a
    RuntimeError ("unexpected pos ...") that no longer says the disk was full."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of `path` whose writer no longer runs (killed mid-write)."""
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{prefix}*.tmp"):
        pid = stale.name[len(prefix) : -len(".tmp")]
        if pid.isdigit() and not _process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def staged_file(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Let `write` fill a temporary file beside `path`, flushed to disk; return its path.

    The caller renames it over `path` (`os.replace`) when it is ready, or removes it; a failed
    `write` removes it before the error goes on (as a StorageError where storage failed).
    """
    path = Path(path)
    _remove_stale_temporaries(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = None
    try:
        with open(temporary, "wb") as file:
            writer = _RecordingWriter(file)
            write(writer)
            file.flush()
            os.fsync(file.fileno())
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        failed = writer.error if writer is not None and writer.error is not None else error
        if isinstance(failed, OSError) and (storage := storage_error(path, failed)) is not None:
            raise storage from error
        raise
    return temporary


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(file)`, atomically (see the module docstring)."""
    staged = staged_file(path, write)
    try:
        os.replace(staged, path)
    except OSError as error:
        staged.unlink(missing_ok=True)
        storage = storage_error(path, error)
        if storage is None:
            raise
        raise storage from error


def append_text(path: Path, text: str) -> None:
    """Append `text` to `path` (a log): a storage failure is a StorageError; a line cut short by
    a full disk or a kill is for the reader to skip."""
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        storage = storage_error(path, error)
        if storage is None:
            raise
        raise storage from error


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    atomic_write(path, lambda file: file.write(payload))
