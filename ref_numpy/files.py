"""Every file the project writes goes through `atomic_write`: a reader, or a process killed while
writing, sees the old file or the new one, never half of one.

The bytes go to a temporary file beside the target (same folder, so the same file system), named
for the writing process, are flushed to disk, and the temporary file is renamed over the target:
`os.replace` is atomic on POSIX. If writing fails, the temporary file is removed and the target is
left as it was; one left by a process that was killed is removed by the next writer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


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
    `write` removes it before the error goes on.
    """
    path = Path(path)
    _remove_stale_temporaries(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` through `write(file)`, atomically (see the module docstring)."""
    os.replace(staged_file(path, write), path)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    atomic_write(path, lambda file: file.write(payload))
