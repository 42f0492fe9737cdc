"""The KV cache of generation: each layer's keys and values of the positions generated so far.

In a causal model the state at position s, in every layer, depends on tokens 0..s only, so a new
token changes no earlier key or value: `GPT.forward_cached` computes them once and keeps them
here, and each new token then costs one query row against the cache instead of a forward pass
over the whole context (`GPT.generate`).
"""

from __future__ import annotations

import torch


class KVCache:
    """The keys and values one attention layer has computed so far, kept for generation.

    In a causal model the state at position s, in every layer, depends on tokens 0..s only, so
    appending a token changes no earlier key or value: they are computed once and kept here.
    Room for `max_length` positions (block_size) is allocated on the first write, in the dtype
    of the keys written (under autocast, the low precision the projections produce).
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.length = 0  # positions 0 .. length-1 are filled
        self.keys: torch.Tensor | None = None  # (B, nh, max_length, hs)
        self.values: torch.Tensor | None = None  # (B, nh, max_length, hs)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T_new, hs) as the next T_new positions; return (B, nh, end, hs)."""
        end = self.length + k.size(2)
        if end > self.max_length:
            raise ValueError(
                f"the KV cache holds {self.max_length} positions, {end} asked for; "
                "beyond block_size the context must be cropped and recomputed"
            )
        if self.keys is None:
            batch, n_head, _, head_size = k.shape
            self.keys = k.new_empty(batch, n_head, self.max_length, head_size)
            self.values = v.new_empty(batch, n_head, self.max_length, head_size)
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]
