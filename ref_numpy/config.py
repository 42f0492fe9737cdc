"""The model configuration shared by the NumPy reference and the PyTorch mirror.

Field names and defaults are nanoGPT's `GPTConfig` (GPT-2 small: 12 layers, 12 heads, 768 wide,
a 1024-token context, the vocabulary padded to 50304), plus `gelu`, which picks the activation:
"erf" is the exact GELU that nanoGPT's `nn.GELU()` computes, "tanh" is GPT-2's approximation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GELU_FORMS = ("erf", "tanh")


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    gelu: str = "erf"

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.gelu not in GELU_FORMS:
            raise ValueError(f"GPTConfig.gelu must be one of {GELU_FORMS}, got {self.gelu!r}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)
