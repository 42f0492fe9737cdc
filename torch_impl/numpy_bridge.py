"""Parameters between the NumPy GPT and the torch GPT: both name them as nanoGPT does.

A NumPy parameter dict has exactly the keys and shapes of `dict(model.named_parameters())`
(DESIGN.md's numerical contract), so a model can start from `ref_numpy.gpt.init_params` (the
trainer does: both implementations begin from the same numbers) and its trained parameters can
be compared with the NumPy reference's (the cross-checks and tests do).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def load_numpy_params(model: torch.nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Copy a NumPy parameter dict into `model`, which keeps its dtype and device."""
    own = dict(model.named_parameters())
    missing = sorted(own.keys() - params.keys())
    unexpected = sorted(params.keys() - own.keys())
    wrong_shape = [
        f"{name} {tuple(np.shape(params[name]))} != {tuple(own[name].shape)}"
        for name in own.keys() & params.keys()
        if tuple(np.shape(params[name])) != tuple(own[name].shape)
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"NumPy parameters do not match the model: missing {missing}, "
            f"unexpected {unexpected}, wrong shape {sorted(wrong_shape)}"
        )
    with torch.no_grad():
        for name, param in own.items():
            param.copy_(torch.as_tensor(np.asarray(params[name])))


def numpy_params(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as a NumPy dict (copies on the CPU, in the model's dtype)."""
    return {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters()}
