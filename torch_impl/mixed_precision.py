"""The comparisons of `ref_numpy.experiments.mixed_precision` through torch's own autocast on
this CPU: the same initialisation (the NumPy parameters loaded), the same batches, torch's
AdamW with the same groups, so that NumPy's emulated bf16 and torch's bf16 stand side by side."""

from __future__ import annotations

import numpy as np
import torch

from ref_numpy.config import GPTConfig
from ref_numpy.data import get_batch
from ref_numpy.experiments.mixed_precision import errors_against, float64_step
from ref_numpy.gpt import init_params
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _model(cfg: GPTConfig, seed: int) -> GPT:
    model = GPT(cfg)
    load_numpy_params(model, init_params(cfg, seed=seed, dtype=np.float32))
    return model


def step_errors(
    cfg: GPTConfig, idx: np.ndarray, targets: np.ndarray, seed: int, low: str | None
) -> dict[str, float]:
    """Relative errors against the NumPy float64 GPT of one forward and backward of the torch
    model in float32 under CPU autocast to `low` ("bf16", "fp16"; None: plain float32)."""
    model = _model(cfg, seed)
    dtype = DTYPES[low] if low else torch.bfloat16
    with torch.autocast("cpu", dtype=dtype, enabled=low is not None):
        logits, loss = model(torch.from_numpy(idx), torch.from_numpy(targets))
    loss.backward()
    grads = {name: p.grad.double().numpy() for name, p in model.named_parameters()}
    reference = float64_step(cfg, idx, targets, seed)
    return errors_against(reference, logits.float().detach().numpy(), loss.item(), grads)


def train_losses(
    cfg: GPTConfig,
    data: np.ndarray,
    steps: int,
    batch_size: int,
    seed: int,
    bf16: bool,
    lr: float = 1e-3,
) -> np.ndarray:
    """The torch model's training losses in float32, or under CPU bf16 autocast, from the
    NumPy initialisation of `seed` and on the NumPy batch stream of `seed + 1`."""
    model = _model(cfg, seed)
    optimizer = model.configure_optimizers(0.1, lr, (0.9, 0.95), "cpu", fused=False)
    batches = np.random.default_rng(seed + 1)
    losses = []
    for _ in range(steps):
        x, y = (torch.from_numpy(a) for a in get_batch(data, cfg.block_size, batch_size, batches))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return np.array(losses)


def autocast_formats(cfg: GPTConfig, low: str = "bf16", seed: int = 0) -> dict[str, list[str]]:
    """Which format each aten operator of one forward and backward produced under CPU autocast
    to `low`: operator name -> the dtypes of its outputs, as seen by a TorchDispatchMode (views
    and scalars left out). The record of what autocast really runs in low precision."""
    from torch.utils._python_dispatch import TorchDispatchMode

    produced: dict[str, set[str]] = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (list, tuple)) else [out]
            inputs = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            storages = {a.untyped_storage().data_ptr() for a in inputs}
            tensors = [
                o
                for o in outs
                if isinstance(o, torch.Tensor)
                and o.dim() > 0
                and o.untyped_storage().data_ptr() not in storages  # not a view of an input
            ]
            if tensors and tensors[0].is_floating_point():
                name = func._schema.name.removeprefix("aten::")
                produced.setdefault(name, set()).update(
                    str(t.dtype).removeprefix("torch.") for t in tensors
                )
            return out

    model = _model(cfg, seed)
    rng = np.random.default_rng(seed)
    x, y = (torch.from_numpy(rng.integers(0, cfg.vocab_size, (2, cfg.block_size))) for _ in "xy")
    with Record():
        with torch.autocast("cpu", dtype=DTYPES[low]):
            _, loss = model(x, y)
        loss.backward()
    return {name: sorted(dtypes) for name, dtypes in produced.items()}
