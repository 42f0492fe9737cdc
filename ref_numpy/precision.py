"""Low-precision number formats, rounding to them, autocast and loss scaling, spelled out.

A binary floating-point format with p bits of significand (the implicit leading 1 included)
stores every real number x in its range to within a relative error of u = 2^-p, the unit
roundoff, when it rounds to nearest. bf16 keeps float32's 8 exponent bits and so its range
(up to about 3.4e38) with 8 significand bits: u = 2^-8. fp16 has 11 bits, u = 2^-11, but only
5 exponent bits: nothing above 65504 and nothing normal below 2^-14 (6.1e-5; subnormals reach
2^-24, 6.0e-8, with ever fewer bits). TF32 is the tensor cores' format for float32 inputs:
float32's exponent, fp16's 11 significand bits. Rounding here works on the bit pattern, round
to nearest with ties to even, as torch converts float32 to bf16 (c10::BFloat16), and through
NumPy's float16 for fp16, which follows IEEE 754 (subnormals, overflow to inf).

Autocast (torch.autocast, the "autocast" lists of ATen's autocast_mode.cpp, as torch 2.13 runs
them on a CPU with dtype bfloat16, traced in tests/test_precision.py) runs the matmuls (linear,
addmm, mm, bmm, matmul, scaled_dot_product_attention) on operands cast to the low format,
accumulating in float32 and rounding the result once; an operation not on a list runs in the
format of its inputs (GELU on a matmul's bf16 output gives bf16); LayerNorm sees the float32
residual stream; cross-entropy is on the float32 list (the bf16 logits are cast up first); the
residual add of a float32 stream and a bf16 branch gives float32. In the backward each gradient
has its forward tensor's format. Parameters and AdamW's state stay float32 (master weights).
`Autocast` says where the NumPy GPT rounds (`ref_numpy.gpt.forward(..., autocast=)`).

fp16's narrow range underflows small gradients to zero, so fp16 training multiplies the loss
by a scale S before the backward and divides the gradients by S before the step:
`LossScaler` keeps torch.amp.GradScaler's rules (grow S by 2 after `growth_interval` clean
steps, halve it and skip the step when a gradient is inf or nan). bf16 has float32's range,
which is why it trains without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Format(NamedTuple):
    """A binary floating-point format: significand bits (the implicit 1 included), exponent
    bits, and the extremes that follow from them."""

    name: str
    significand_bits: int
    exponent_bits: int

    @property
    def unit_roundoff(self) -> float:
        """The largest relative error of rounding to nearest: 2^-p."""
        return 2.0**-self.significand_bits

    @property
    def largest_normal(self) -> float:
        bias = 2 ** (self.exponent_bits - 1) - 1
        return (2 - 2.0 ** (1 - self.significand_bits)) * 2.0**bias

    @property
    def smallest_normal(self) -> float:
        return 2.0 ** (2 - 2 ** (self.exponent_bits - 1))

    @property
    def smallest_subnormal(self) -> float:
        return self.smallest_normal * 2.0 ** (1 - self.significand_bits)


FORMATS = {
    "fp32": Format("fp32", 24, 8),
    "tf32": Format("tf32", 11, 8),
    "bf16": Format("bf16", 8, 8),
    "fp16": Format("fp16", 11, 5),
}


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def _round_significand(x: np.ndarray, dropped_bits: int) -> np.ndarray:
    """float32 x with its lowest `dropped_bits` significand bits rounded away, to nearest and
    ties to even, on the bit pattern: add half a unit of the last kept bit, minus one unless
    that bit is odd, and clear the dropped bits. A carry runs into the exponent, so the largest
    values round up to inf, as they should; nan stays nan (made quiet)."""
    u = _bits(x).astype(np.uint64)
    keep_lowest = (u >> dropped_bits) & 1
    half = (1 << (dropped_bits - 1)) - 1
    mask = np.uint64(0xFFFFFFFF ^ ((1 << dropped_bits) - 1))
    rounded = ((u + half + keep_lowest) & mask).astype(np.uint32)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    quiet_nan = np.uint32(0x7FC00000)  # what torch's bf16 makes of every nan
    return np.where(nan, quiet_nan, rounded).view(np.float32).reshape(np.shape(x))


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bf16 (8 significand bits), returned as float32."""
    return _round_significand(x, 16)


def round_to_tf32(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32 (11 significand bits), returned as float32. The format,
    rounded to nearest even; a GPU's own conversion may break ties differently."""
    return _round_significand(x, 13)


def round_to_fp16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to fp16 (IEEE half: subnormals below 2^-14, inf above 65504),
    returned as float32."""
    with np.errstate(over="ignore"):  # beyond 65504 the format has inf, as it should
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


ROUND = {"bf16": round_to_bf16, "fp16": round_to_fp16, "tf32": round_to_tf32}


class Autocast(NamedTuple):
    """Where the NumPy GPT rounds to a low format, as torch.autocast does (module docstring):
    `round` is applied to each matmul's operands and result and to the outputs of the
    operations that take them (attention, GELU), forward and backward."""

    format: str = "bf16"

    def round(self, x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else ROUND[self.format](x)


# ----------------------------------------------------------------------------- loss scaling
@dataclass
class LossScaler:
    """Dynamic loss scaling with torch.amp.GradScaler's rules and defaults.

    Per step: multiply the loss by `scale` (`scale_loss`), back-propagate, then `unscale`
    divides the gradients by it (multiplying by its float32 reciprocal, as torch does) and
    reports whether any is inf or nan; `update(found_inf)` halves the scale after such a step
    (which must be skipped) and doubles it after `growth_interval` clean steps in a row.
    """

    scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    growth_tracker: int = 0
    history: list[tuple[float, bool]] = field(default_factory=list)  # (scale, skipped) per step

    def scale_loss(self, loss: float) -> float:
        return loss * self.scale

    def unscale(self, grads: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        inverse = np.float32(1.0) / np.float32(self.scale)
        unscaled = {name: g.astype(np.float32) * inverse for name, g in grads.items()}
        found_inf = not all(np.isfinite(g).all() for g in unscaled.values())
        return unscaled, found_inf

    def update(self, found_inf: bool) -> None:
        self.history.append((self.scale, found_inf))
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.scale *= self.growth_factor
            self.growth_tracker = 0


def flushed_to_zero(values: np.ndarray, format_name: str = "fp16") -> float:
    """The fraction of nonzero values that round to zero in the format."""
    values = np.asarray(values, dtype=np.float32)
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return 0.0
    return float(np.mean(ROUND[format_name](nonzero) == 0))


def below_normal(values: np.ndarray, format_name: str = "fp16") -> float:
    """The fraction of nonzero values below the format's smallest normal number (subnormal or
    zero there: fewer significand bits, or none)."""
    values = np.abs(np.asarray(values, dtype=np.float32))
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return 0.0
    return float(np.mean(nonzero < FORMATS[format_name].smallest_normal))


def relative_error(a: np.ndarray, reference: np.ndarray) -> float:
    """||a - reference|| / ||reference||, in float64."""
    a64, ref64 = np.asarray(a, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(a64 - ref64) / np.linalg.norm(ref64))


def describe_formats() -> list[dict]:
    """Each format's bits, unit roundoff and range, as rows."""
    return [
        {
            "format": f.name,
            "sign/exponent/significand bits": f"1/{f.exponent_bits}/{f.significand_bits - 1}",
            "unit roundoff": f.unit_roundoff,
            "log2 unit roundoff": int(math.log2(f.unit_roundoff)),
            "largest normal": f.largest_normal,
            "smallest normal": f.smallest_normal,
            "smallest subnormal": f.smallest_subnormal,
        }
        for f in FORMATS.values()
    ]
