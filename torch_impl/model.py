"""A GPT in PyTorch with nanoGPT's architecture, parameter names and initialisation.

The fast mirror of `ref_numpy`: the same `GPTConfig`, the same parameter names and shapes (so a
NumPy parameter dict and a nanoGPT checkpoint both load), and the same arithmetic, proven equal
by the tests. Attention runs either through `F.scaled_dot_product_attention` (a fused kernel,
flash attention on a GPU, or held to cuDNN's fused attention), as the materialised masked softmax
that spells the math out, or through the project's own FlashAttention-2 kernels
(`torch_impl.triton_attention`, optional).
References: nanoGPT (Karpathy), GPT-2 (Radford et al. 2019).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ref_numpy.config import GPTConfig
from ref_numpy.errors import UserError
from torch_impl.kv_cache import KVCache

# sdpa: torch's choice of fused kernel (flash on a GPU); cudnn: SDPA held to cuDNN's attention,
# CUDA only (on Hopper, with a recent cuDNN, often the fastest); manual: the masked softmax
# spelled out; triton: the project's FlashAttention-2 kernels
ATTENTION_BACKENDS = ("sdpa", "cudnn", "manual", "triton")

# Keys of a nanoGPT checkpoint that this model does not store: the causal-mask buffer of older
# nanoGPT (saved when it had no flash attention); the mask here is rebuilt, never saved.
_NANOGPT_MASK_KEY = re.compile(r"transformer\.h\.\d+\.attn\.bias")
# torch.compile wraps the model, and a state_dict saved from the wrapper prefixes every key.
_COMPILED_PREFIX = "_orig_mod."


def _checked_attention(attention: str) -> str:
    if attention not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
    if attention == "triton":
        # imported only when asked for: triton is an optional dependency, and a slow import
        from torch_impl.triton_attention import TRITON_AVAILABLE

        if not TRITON_AVAILABLE:  # a missing package, not a wrong argument: the user installs it
            raise UserError(
                "attention='triton' needs the triton package: "
                "pip install -r requirements-triton.txt, or use attention='sdpa'"
            )
    return attention


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be left out (nn.LayerNorm had no bias=False before torch 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, eps=1e-5)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t only sees positions <= t."""

    def __init__(self, config: GPTConfig, attention: str = "sdpa") -> None:
        super().__init__()
        # the query, key and value projections of all heads, as one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attention = _checked_attention(attention)
        # Only the "manual" path reads the mask. Non-persistent: it is a function of block_size,
        # so it stays out of state_dict and a checkpoint never depends on it.
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        # split channels into heads, heads become a batch dimension: (B, T, C) -> (B, nh, T, hs)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        if self.attention == "sdpa":
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif self.attention == "cudnn":
            if q.device.type != "cuda":
                raise UserError("attention='cudnn' runs on a CUDA GPU only; use 'sdpa' here")
            dropout_p = self.dropout if self.training else 0.0
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):  # that kernel or an error, no other
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif self.attention == "triton":
            if self.training and self.dropout > 0:
                raise ValueError(
                    "attention='triton' has no attention dropout; use dropout=0.0 or 'sdpa'"
                )
            from torch_impl.triton_attention import triton_attention  # optional dependency

            y = triton_attention(q, k, v, causal=True)  # FlashAttention-2 kernels, (B, nh, T, hs)
        else:
            y = self._manual_attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def _manual_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T, head_size = q.size(-2), q.size(-1)
        # q.k sums head_size products of roughly unit-variance terms, so its variance grows like
        # head_size; 1/sqrt(head_size) brings the scores back to unit variance, where the softmax
        # is not yet saturated (a one-hot softmax passes almost no gradient).
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(head_size))  # (B, nh, T, T)
        scores = scores.masked_fill(~self.causal_mask[:T, :T], float("-inf"))
        weights = self.attn_dropout(F.softmax(scores, dim=-1))
        return weights @ v  # (B, nh, T, hs)

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """forward() for new rows x (B, T_new, C) that continue the sequence held in `cache`.

        The rows sit at positions start .. start+T_new-1 (start = cache.length). Their keys and
        values join the cache, and each new query is scored against the keys up to its own
        position. For one new token at position t that is one query row against t+1 keys: its
        attention costs O(t*C) per layer, where recomputing the whole sequence's costs O(t^2*C).
        The math is every backend's softmax(q k^T / sqrt(hs)) v, here always through SDPA.
        """
        B, T_new, C = x.shape
        start = cache.length
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T_new, C)
        q, k, v = (
            z.view(B, T_new, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v)
        )  # 3 x (B, nh, T_new, hs)
        k, v = cache.append(k, v)  # (B, nh, start+T_new, hs)
        if T_new == 1:
            mask = None  # the newest position sees every position before it: nothing to mask
        else:
            # Query row i is position start+i and sees keys j <= start+i, i.e. j - i <= start: the
            # lower triangle shifted right by `start`. (is_causal=True would pin the triangle to
            # the top-left corner, which is right only when start == 0.)
            mask = torch.ones(T_new, start + T_new, dtype=torch.bool, device=x.device)
            mask = mask.tril(diagonal=start)  # (T_new, start+T_new), True = may attend
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T_new, C)  # (B, T_new, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: widen 4x, GELU, project back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm block: each sublayer reads a normalised copy of the stream and adds to it."""

    def __init__(self, config: GPTConfig, attention: str = "sdpa") -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, attention)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """forward() for new rows only; LayerNorm and MLP act on each position alone."""
        x = x + self.attn.forward_cached(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


@functools.cache
def fused_adamw_available(device_type: str) -> bool:
    """Whether this torch has a fused AdamW kernel for `device_type`, found by taking one step."""
    try:
        param = torch.zeros(1, device=device_type, requires_grad=True)
        param.grad = torch.ones_like(param)
        torch.optim.AdamW([param], fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


class GPT(nn.Module):
    """Token and position embeddings, n_layer blocks, a final LayerNorm, and the tied lm_head."""

    def __init__(self, config: GPTConfig, attention: str = "sdpa") -> None:
        super().__init__()
        _checked_attention(attention)
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList([Block(config, attention) for _ in range(config.n_layer)]),
                "ln_f": LayerNorm(config.n_embd, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): reading a token in and scoring it out use one matrix.
        # It saves V*C parameters; named_parameters() lists it once, as transformer.wte.weight.
        self.transformer.wte.weight = self.lm_head.weight

        # The same modules are built and initialised in the same order as in nanoGPT, so that
        # after the same torch.manual_seed both models hold the same numbers.
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # Each block adds two contributions (attention, MLP) to the residual stream, whose
                # variance therefore grows with the 2*n_layer terms summed; dividing their std by
                # sqrt(2*n_layer) keeps the stream's variance at the scale of one term (GPT-2).
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def attention(self) -> str:
        """The attention backend of every block; assign to switch (one of ATTENTION_BACKENDS)."""
        return self.transformer.h[0].attn.attention

    @attention.setter
    def attention(self, attention: str) -> None:
        _checked_attention(attention)
        for block in self.transformer.h:
            block.attn.attention = attention

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; with `non_embedding` without wpe (wte stays: it is also lm_head)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) int64 -> (logits, loss).

        With targets (B, T): logits (B, T, V) and the mean cross-entropy over targets != -1.
        Without: the last position's logits only, (B, 1, V), and loss None (all sampling needs).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds block_size {self.config.block_size}; "
                "crop the input to the last block_size tokens"
            )
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, V)
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def new_kv_caches(self) -> list[KVCache]:
        """One empty KVCache per layer, each with room for block_size positions."""
        return [KVCache(self.config.block_size) for _ in self.transformer.h]

    def forward_cached(self, idx: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """Logits (B, T_new, V) of tokens idx (B, T_new) that continue the sequence in `caches`.

        The tokens take positions caches[0].length onward, and every layer appends their keys and
        values to its cache. Fed a sequence in pieces (a prompt, then one token at a time), this
        returns at each position the logits forward() gives for the whole sequence, while each
        call computes only the new rows: a token at position t costs O(C^2) for the projections
        and MLP plus O(t*C) for its attention row, where forward() over t+1 tokens costs
        O(t*C^2 + t^2*C).
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        if len(caches) != len(self.transformer.h):
            raise ValueError(f"need a KVCache per layer ({self.config.n_layer}), got {len(caches)}")
        start, T_new = caches[0].length, idx.size(1)
        if start + T_new > self.config.block_size:
            raise ValueError(
                f"positions up to {start + T_new} exceed block_size {self.config.block_size}; "
                "past it, crop the context and run forward() instead"
            )
        pos = torch.arange(start, start + T_new, dtype=torch.long, device=idx.device)  # (T_new,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T_new, C)
        x = self.transformer.drop(x)
        for block, cache in zip(self.transformer.h, caches):
            x = block.forward_cached(x, cache)
        return self.lm_head(self.transformer.ln_f(x))  # (B, T_new, V)

    def crop_block_size(self, block_size: int) -> None:
        """Shrink the context (e.g. a 1024-token checkpoint for a smaller experiment)."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(
                f"block_size must be in [1, {self.config.block_size}] to crop, got {block_size}"
            )
        self.config = dataclasses.replace(self.config, block_size=block_size)
        wpe = self.transformer.wpe
        wpe.weight = nn.Parameter(wpe.weight.detach()[:block_size].clone())
        wpe.num_embeddings = block_size
        for block in self.transformer.h:
            block.attn.causal_mask = block.attn.causal_mask[:block_size, :block_size]

    def configure_optimizers(
        self,
        weight_decay: float,
        learning_rate: float,
        betas: tuple[float, float],
        device_type: str,
        fused: bool | None = None,
    ) -> torch.optim.AdamW:
        """AdamW that decays the matrices (matmul weights, embeddings) and not biases or LN gains.

        Decay pulls weights towards zero; for a gain or a bias, zero is no natural resting point,
        so they are left out. `fused=None` uses the fused kernel where this torch has one for
        `device_type`; `fused=False` uses the foreach implementation.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if fused is None:
            fused = fused_adamw_available(device_type)
        implementation = {"fused": True} if fused else {"foreach": True}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **implementation)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        kv_cache: bool = True,
    ) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to idx (B, T); call model.eval() first.

        With `kv_cache` the prompt runs once through forward_cached, filling every layer's cache,
        and each new token then costs one query row against the cached keys and values: O(T) per
        token rather than the O(T^2) of re-running the whole context. That holds while the
        sequence fits in block_size. Past it, the context is cropped to the last block_size tokens,
        which moves every token to a new position; the position embedding enters below every
        layer, so no cached key or value is valid any more, and each token costs a full forward()
        over block_size tokens, exactly as without the cache. Both paths compute the same logits
        (up to rounding) and draw from `generator` in the same order, so a seed gives the same
        tokens either way.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use top_k=1 for greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None or >= 1, got {top_k}")
        block_size = self.config.block_size
        caches = None
        for _ in range(max_new_tokens):
            if not kv_cache or idx.size(1) > block_size:
                logits, _ = self(idx[:, -block_size:])  # at most block_size tokens: (B, 1, V)
            elif caches is None:
                caches = self.new_kv_caches()
                logits = self.forward_cached(idx, caches)  # the whole prompt, once: (B, T, V)
            else:
                logits = self.forward_cached(idx[:, -1:], caches)  # the newest token: (B, 1, V)
            logits = logits[:, -1, :] / temperature  # (B, V)
            if top_k is not None:
                kth_largest = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth_largest, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """Load a state_dict of this model or of nanoGPT, including checkpoints of compiled models.

        Strips the `_orig_mod.` prefix that torch.compile adds, drops nanoGPT's causal-mask buffers,
        and checks that lm_head.weight, if present, is the tied wte matrix.
        """
        cleaned = {}
        for key, value in state_dict.items():
            key = key.removeprefix(_COMPILED_PREFIX)
            if not _NANOGPT_MASK_KEY.fullmatch(key):
                cleaned[key] = value
        wte, lm_head = cleaned.get("transformer.wte.weight"), cleaned.get("lm_head.weight")
        if wte is not None and lm_head is not None and not torch.equal(wte, lm_head):
            raise ValueError(
                "state_dict has lm_head.weight different from transformer.wte.weight, "
                "but this model ties them; it is not a checkpoint of this architecture"
            )
        result = super().load_state_dict(cleaned, strict=strict, assign=assign)
        # assign=True replaces both Parameter objects; bind lm_head to wte again.
        self.lm_head.weight = self.transformer.wte.weight
        return result
