"""Keep freed memory in the process, so NumPy's large temporaries do not page-fault afresh.

Every NumPy operation on a large array allocates a new result. glibc's malloc serves big requests
with fresh pages from the kernel and, on free, hands them back (mmap threshold, heap trimming);
the next temporary of the same size then pays a page fault for every 4 KiB page it touches.
On this project's CPU training step that costs about a quarter of the time (measured by
torch_impl.bench.numpy_step). Raising the thresholds keeps the pages for reuse. It changes no
result, only where memory comes from, and does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit machines


def keep_freed_memory() -> bool:
    """Tell glibc malloc to reuse freed memory instead of returning it; True if it took."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, 1 << 30),
            (M_TOP_PAD, 256 << 20),
        )
    )
