"""Statistics over seeds: what every training comparison in the notebooks reports.

A comparison of training runs is decided by several seeds (each its own initialisation and
batches), reported as the mean and its standard error, s / sqrt(n) with s the sample standard
deviation (ddof 1): the spread of the mean itself, which shrinks as seeds are added.
"""

from __future__ import annotations

import math

import numpy as np


def mean_and_standard_error(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean over `axis` (the seeds) and its standard error, sample std / sqrt(n) (0 for n = 1)."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, values.std(axis=axis, ddof=1) / math.sqrt(n)
