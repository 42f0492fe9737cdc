"""What torch.compile's kernel fusion does to a step's kernel list, idealised."""

from __future__ import annotations

from ref_numpy.roofline.kernel import GROUPS, Kernel


def fusable_runs(kernels: list[Kernel]) -> list[list[Kernel]]:
    """The kernels cut into runs: each maximal run of fusable kernels of one phase (the
    elementwise and reduction kernels between two matmuls) is one run; every other kernel is a
    run of its own."""
    runs: list[list[Kernel]] = []
    for kernel in kernels:
        if kernel.fusable and runs and runs[-1][0].fusable and runs[-1][0].phase == kernel.phase:
            runs[-1].append(kernel)
        else:
            runs.append([kernel])
    return runs


def fused_runs(kernels: list[Kernel]) -> list[tuple[list[Kernel], Kernel]]:
    """Each run of `fusable_runs` beside the one kernel it becomes (itself, for a run of one).

    The fused kernel reads each tensor that comes from outside its run once, and writes only
    the tensors that a kernel outside the run reads (parameter gradients, activations the
    backward needs, the next matmul's input); everything else stays in registers. FLOPs and
    transcendentals are the run's sum.
    """
    runs = fusable_runs(kernels)
    readers: dict[str, set[int]] = {}  # tensor -> the runs that read it
    for index, run in enumerate(runs):
        for kernel in run:
            for name in kernel.reads:
                readers.setdefault(name, set()).add(index)
    pairs = []
    for index, run in enumerate(runs):
        if len(run) == 1:
            pairs.append((run, run[0]))
            continue
        written: dict[str, float] = {}
        reads: dict[str, float] = {}
        for kernel in run:
            for name, size in kernel.reads.items():
                if name not in written:
                    reads[name] = max(reads.get(name, 0.0), size)
            written.update(kernel.writes)
        writes = {
            name: size
            for name, size in written.items()
            if readers.get(name, set()) - {index} or name.startswith("g:")
        }
        transcendentals: dict[str, float] = {}
        for kernel in run:
            for function, count in kernel.transcendentals.items():
                transcendentals[function] = transcendentals.get(function, 0.0) + count
        fused = Kernel(
            name="fused: " + " + ".join(k.name for k in run),
            group=max(GROUPS, key=lambda g: sum(k.bytes for k in run if k.group == g)),
            phase=run[0].phase,
            flops=sum(k.flops for k in run),
            reads=reads,
            writes=writes,
            transcendentals=transcendentals,
        )
        pairs.append((run, fused))
    return pairs


def fuse_elementwise(kernels: list[Kernel]) -> list[Kernel]:
    """What torch.compile's fusion does to a step, idealised: every run of `fusable_runs`
    becomes one kernel (`fused_runs`). A lower bound on the traffic: inductor splits a run
    where reductions go along different axes (LayerNorm's dx over a row, its dw over the batch),
    re-reading their input, and it may recompute in the backward what eager mode saves."""
    return [fused for _, fused in fused_runs(kernels)]
