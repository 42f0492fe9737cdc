"""How the benchmark sections (`python -m torch_impl.bench`) time calls and measure memory.

Every section compares variants of one computation in one process. Their calls are interleaved
round-robin after a warm-up and each variant reports the median of its calls, so a burst of load
on a shared machine hits all of them alike and one slow call moves no result. On a GPU each timed
stretch starts after a synchronize (nothing queued ahead of it) and is bracketed by CUDA events,
which time the work on the GPU itself; on the CPU by `time.perf_counter`. A call much shorter
than its own Python launch time (attention at small T: the Triton path's four kernel launches)
is timed as `repeat` calls back to back between one pair of events, so that the GPU never waits
for the host between them, and each call is charged the mean.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call(
    call: Callable[[], object], device: torch.device, repeat: int = 1
) -> Callable[[], float]:
    """Run `call` `repeat` times back to back; return a function giving the seconds per call
    (read after a final synchronize)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            call()
        end.record()
        return lambda: start.elapsed_time(end) / 1e3 / repeat  # elapsed_time is in milliseconds
    start_time = time.perf_counter()
    for _ in range(repeat):
        call()
    elapsed = (time.perf_counter() - start_time) / repeat
    return lambda: elapsed


def interleaved_times(
    calls: Mapping[str, Callable[[], object]],
    steps: int,
    warmup: int,
    device: torch.device,
    settle: int = 0,
    repeat: int = 1,
) -> dict[str, list[float]]:
    """Seconds of each of `steps` calls of every entry of `calls`, after `warmup` untimed rounds
    (with `repeat`, each reading is the mean of that many calls back to back).

    Round r calls every entry once, in order; a warm-up round is a round whose times are dropped
    (it compiles, fills caches, lets the allocator settle). With `settle`, each entry first runs
    that many untimed calls in every round: where the entries come from different libraries
    (NumPy's BLAS threads against torch's OpenMP pool on a 2-core CPU), the first call after a
    switch pays for the other library's threads still spinning and its data leaving the caches.
    """
    pending: dict[str, list[Callable[[], float]]] = {name: [] for name in calls}
    for round_index in range(warmup + steps):
        for name, call in calls.items():
            for _ in range(settle):
                call()
            reading = _timed_call(call, device, repeat)
            if round_index >= warmup:
                pending[name].append(reading)
    synchronize(device)
    return {name: [reading() for reading in readings] for name, readings in pending.items()}


def peak_allocated_bytes(call: Callable[[], object], device: torch.device) -> int | None:
    """Bytes `call` allocates at its peak above what was allocated before it; None off CUDA
    (the CPU allocator keeps no such count)."""
    if device.type != "cuda":
        call()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def saved_for_backward_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the tensors autograd keeps from `forward` for the backward pass (on any device).

    Each saved tensor is counted by its storage, once, however many views of it are saved. This
    is the activation memory a training step holds between its forward and backward passes.
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values())
