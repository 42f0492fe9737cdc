"""Helpers the tests share: relative error, central finite differences, NumPy <-> torch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def rel_error(candidate, reference) -> float:
    """||a - b|| / ||b||, the error measure of DESIGN.md (b the reference)."""
    candidate, reference = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(candidate - reference) / np.linalg.norm(reference))


def central_difference_grad(f: Callable[[], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """d f / d x by (f(x + h) - f(x - h)) / 2h, one element at a time (x is perturbed in place)."""
    grad = np.empty_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + h
        f_plus = f()
        flat_x[i] = original - h
        f_minus = f()
        flat_x[i] = original
        flat_grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def to_torch(array: np.ndarray, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(array, requires_grad=requires_grad)
