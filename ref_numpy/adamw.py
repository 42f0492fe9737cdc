"""AdamW with decoupled weight decay on the 2-D parameters only, and global-norm clipping.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", Algorithm 2) shrinks the
parameters directly instead of adding wd * p to the gradient, where Adam's division by
sqrt(v_hat) would rescale the decay of each coordinate by its gradient history (an L2 penalty
under Adam is not weight decay). How much it shrinks per step is a convention:

- Loshchilov & Hutter: theta <- theta - eta_t (alpha * m_hat / (sqrt(v_hat) + eps) + lambda
  theta), eta_t the schedule multiplier and alpha the base step size; the decay per step is
  eta_t * lambda, scaled by the schedule but not by alpha.
- torch.optim.AdamW, nanoGPT and this module: p <- p (1 - lr * wd), lr the current learning
  rate (alpha * eta_t in the paper's terms); the decay per step is scaled by the learning rate
  itself, so torch's wd equals the paper's lambda / alpha, and a weight_decay of 0.1 at lr 6e-4
  is the paper's lambda = 6e-5.

nanoGPT decays only tensors with ndim >= 2 (the matmul and embedding weights); biases and
LayerNorm gains are 1-D, and pulling them toward 0 would fight the scale and shift the network
needs, with no capacity to regularise in return. The arithmetic below is torch.optim.AdamW's,
operation for operation, so the two agree to float64 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def split_decay(params: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Names of the parameters that decay (ndim >= 2) and of those that do not (ndim < 2)."""
    decay = [name for name, p in params.items() if p.ndim >= 2]
    no_decay = [name for name, p in params.items() if p.ndim < 2]
    return decay, no_decay


class AdamW:
    """Updates a dict of NumPy parameters in place, like torch.optim.AdamW on two groups."""

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        decay_names: Iterable[str] | None = None,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"invalid AdamW hyperparameters lr={lr} betas={betas} eps={eps} wd={weight_decay}"
            )
        self.params = params
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.decay_names = set(split_decay(params)[0] if decay_names is None else decay_names)
        unknown = self.decay_names - set(params)
        if unknown:
            raise ValueError(f"decay_names not among the parameters: {sorted(unknown)}")
        self.t = 0  # steps taken
        self.m = {name: np.zeros_like(p) for name, p in params.items()}  # first moment m_t
        self.v = {name: np.zeros_like(p) for name, p in params.items()}  # second moment v_t

    def step(self, grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        """One update with gradients `grads`; `lr` overrides the learning rate (a schedule)."""
        lr = self.lr if lr is None else lr
        beta1, beta2 = self.betas
        self.t += 1
        bias_correction1 = 1 - beta1**self.t
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.t)
        step_size = lr / bias_correction1
        for name, p in self.params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            if name in self.decay_names:
                # decoupled decay, before the Adam step, scaled by lr (torch's convention)
                p *= 1 - lr * self.weight_decay
            m += (1 - beta1) * (g - m)  # m_t = beta1 m_{t-1} + (1 - beta1) g_t, as torch's lerp
            v *= beta2
            v += (1 - beta2) * (g * g)  # v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
            # p -= lr * mhat / (sqrt(vhat) + eps), with mhat = m / (1 - beta1^t) folded into
            # step_size and vhat = v / (1 - beta2^t) under the square root
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            p -= step_size * (m / denom)

    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "m": {k: a.copy() for k, a in self.m.items()},
            "v": {k: a.copy() for k, a in self.v.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if set(state["m"]) != set(self.params) or set(state["v"]) != set(self.params):
            raise ValueError("optimizer state does not match the parameters")
        self.t = int(state["t"])
        for name in self.params:
            self.m[name][...] = state["m"][name]
            self.v[name][...] = state["v"][name]


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their joint L2 norm is at most max_norm; return the norm.

    Like torch.nn.utils.clip_grad_norm_: the factor min(1, max_norm / (norm + 1e-6)) is applied
    always (1 when the norm is small), the 1e-6 guarding against a zero norm.
    """
    total_norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    clip_coef = min(max_norm / (total_norm + 1e-6), 1.0)
    for g in grads.values():
        g *= clip_coef
    return total_norm
