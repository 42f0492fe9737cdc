"""Speed figures a user can believe: the machine's load checked at start, and an MFU whose
measured denominator is re-measured rather than trusted when it is exceeded.

A measured matmul ceiling (the MFU denominator on a CPU, where no datasheet peak applies) is
only as good as the moment it was taken: measured while other processes competed for the cores,
it comes out low, and the MFU computed against it can pass 100%, which no run can reach. So the
ceiling is measured again once the run's first steps are done (caches and thread pools warm) and
again whenever an MFU above 100% shows it was too low, keeping the highest value seen. If MFU is
still above 100% after that, the figure is not reported at all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def load_warning(load: float | None = None, cores: int | None = None) -> str | None:
    """A warning when the machine's load (1-minute average) exceeds its cores, else None."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return None
    cores = cores or os.cpu_count() or 1
    if load <= cores:
        return None
    return (
        f"warning: this machine's load ({load:.1f}) exceeds its {cores} cores: other processes "
        f"compete for them, so steps will be slower and tokens/s and MFU noisier than on a "
        f"quiet machine; where threads fight for cores, fewer help (OMP_NUM_THREADS=1)"
    )


def warn_if_loaded() -> None:
    """Print `load_warning`, once, at the start of a run."""
    warning = load_warning()
    if warning is not None:
        print(warning, file=sys.stderr)


class MeasuredPeak:
    """The MFU denominator from a measurement (`measure()` returns FLOP/s), kept honest.

    `mfu_of(flops_per_second)` is the achieved FLOP/s over the highest ceiling measured so far;
    it re-measures after `warmup_steps` calls and whenever the result exceeds 1, and returns
    None (with `unreliable` set) if even the re-measured ceiling is exceeded.
    """

    def __init__(self, measure: Callable[[], float], first: float, warmup_steps: int = 5) -> None:
        self.measure = measure
        self.peak = first
        self.measured = [first]
        self.steps = 0
        self.warmup_steps = warmup_steps
        self.unreliable = False

    def remeasure(self) -> None:
        value = self.measure()
        self.measured.append(value)
        self.peak = max(self.peak, value)

    def mfu_of(self, flops_per_second: float) -> float | None:
        self.steps += 1
        if self.steps == self.warmup_steps:
            self.remeasure()
        if self.unreliable:
            return None
        if flops_per_second > self.peak:
            self.remeasure()
            if flops_per_second > self.peak:
                self.unreliable = True
                measured = ", ".join(f"{m / 1e12:.3g}" for m in self.measured)
                print(
                    f"\nnote: MFU is no longer shown: this run's FLOP/s "
                    f"({flops_per_second / 1e12:.3g} T) exceed every matmul ceiling measured "
                    f"({measured} TFLOP/s), so the machine's speed is changing under other load",
                    file=sys.stderr,
                )
                return None
        return flops_per_second / self.peak
