"""The error function erf(x), vectorised, for the exact GELU 0.5*x*(1 + erf(x/sqrt(2))).

NumPy has no erf, so this evaluates the piecewise scheme of Sun's fdlibm `s_erf.c`, which glibc's
`erf` (hence `math.erf` on Linux) uses, in the same order of float operations; it agrees with
`math.erf` bit for bit on nearly every input and within 1 ulp on all of them.
The ranges exist because no one rational function is accurate to 1 ulp over all of [0, 6): below
0.84375, erf(x) = x + x*R(x^2) keeps the leading term x exact; on [0.84375, 1.25) a fit about
erf(1) takes over; from 1.25 erf is 1 minus a tail smaller than 0.08, so the tail,
erfc(x) = exp(-x^2 - 0.5625 + R(1/x^2)/S(1/x^2)) / x, is what gets approximated (two fits, split
at 1/0.35); from 6 on, erf rounds to +-1.
exp turns an absolute error in its argument into the same relative error in its result, and
x*x rounded is off by up to x^2 * 2^-53 (36 * 2^-53 at x = 6: tens of ulps once through exp),
so x is split as z + (x - z) with z keeping only the top 21 bits of x's significand: z*z is then
exact, and -x^2 = -z*z + (z - x)*(z + x) goes into exp as two pieces.

Reference: fdlibm s_erf.c, Sun Microsystems 1993 (the coefficients below), as kept in glibc
sysdeps/ieee754/dbl-64/s_erf.c.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Coefficients from fdlibm s_erf.c, Sun Microsystems 1993 (their names, in ascending powers).
# |x| < 0.84375: erf(x) = x + x * PP(x^2) / QQ(x^2).
_PP = (
    1.28379167095512558561e-01,
    -3.25042107247001499370e-01,
    -2.84817495755985104766e-02,
    -5.77027029648944159157e-03,
    -2.37630166566501626084e-05,
)
_QQ = (
    1.0,
    3.97917223959155352819e-01,
    6.50222499887672944485e-02,
    5.08130628187576562776e-03,
    1.32494738004321644526e-04,
    -3.96022827877536812320e-06,
)
# |x| < 2**-28: erf(x) = x + EFX * x, EFX = 2/sqrt(pi) - 1.
_EFX = 1.28379167095512586316e-01
# 0.84375 <= |x| < 1.25: erf(x) = ERX + PA(s) / QA(s), s = |x| - 1, ERX = erf(1) rounded to float32.
_ERX = 8.45062911510467529297e-01
_PA = (
    -2.36211856075265944077e-03,
    4.14856118683748331666e-01,
    -3.72207876035701323847e-01,
    3.18346619901161753674e-01,
    -1.10894694282396677476e-01,
    3.54783043256182359371e-02,
    -2.16637559486879084300e-03,
)
_QA = (
    1.0,
    1.06420880400844228286e-01,
    5.40397917702171048937e-01,
    7.18286544141962662868e-02,
    1.26171219808761642112e-01,
    1.36370839120290507362e-02,
    1.19844998467991074170e-02,
)
# 1.25 <= |x| < 1/0.35: the tail's correction RA(t) / SA(t), t = 1/x^2.
_RA = (
    -9.86494403484714822705e-03,
    -6.93858572707181764372e-01,
    -1.05586262253232909814e01,
    -6.23753324503260060396e01,
    -1.62396669462573470355e02,
    -1.84605092906711035994e02,
    -8.12874355063065934246e01,
    -9.81432934416914548592e00,
)
_SA = (
    1.0,
    1.96512716674392571292e01,
    1.37657754143519042600e02,
    4.34565877475229228821e02,
    6.45387271733267880336e02,
    4.29008140027567833386e02,
    1.08635005541779435134e02,
    6.57024977031928170135e00,
    -6.04244152148580987438e-02,
)
# 1/0.35 <= |x| < 6: the same correction, RB(t) / SB(t).
_RB = (
    -9.86494292470009928597e-03,
    -7.99283237680523006574e-01,
    -1.77579549177547519889e01,
    -1.60636384855821916062e02,
    -6.37566443368389627722e02,
    -1.02509513161107724954e03,
    -4.83519191608651397019e02,
)
_SB = (
    1.0,
    3.03380607434824582924e01,
    3.25792512996573918826e02,
    1.53672958608443695994e03,
    3.19985821950859553908e03,
    2.55305040643316442583e03,
    4.74528541206955367215e02,
    -2.24409524465858183362e01,
)

# Range boundaries on |x|. fdlibm compares the high 32 bits of x, so its 1/0.35 is the double
# with high word 0x4006DB6E and low word 0: 2.8571434..., just above 1/0.35 = 2.8571428...
_TINY = 2.0**-28
_SMALL = 0.84375
_MIDDLE = 1.25
_TAIL_SPLIT = float.fromhex("0x1.6db6ep+1")
_SATURATED = 6.0  # erf(6) = 1 - 2e-17 rounds to 1
# Keeps the sign, the exponent and the top 20 stored bits of the significand.
_HIGH_WORD = np.uint64(0xFFFFFFFF00000000)
_HIGH_BITS_32 = np.uint32(0xFFFFF000)  # float32: keeps 12 of the 24 significand bits
# Elements per block: a block's temporaries stay in cache and are reused by the allocator.
_BLOCK = 65536


def _even_powers(t: np.ndarray, count: int) -> list[np.ndarray]:
    """[t^2, t^4, ..., t^(2*count)], formed as fdlibm forms them: t^6 = t^4 t^2, t^8 = t^4 t^4."""
    powers = [t * t]
    for n in range(2, count + 1):
        powers.append(powers[n // 2 - 1] * powers[n - n // 2 - 1])
    return powers


def _pairwise(
    t: np.ndarray, powers: list[np.ndarray], coefficients: tuple[float, ...]
) -> np.ndarray:
    """sum_k c_k t^k as (c0 + c1 t) + t^2 (c2 + c3 t) + t^4 (c4 + c5 t) + ..., left to right.

    This is fdlibm's order of operations, so every result rounds exactly as glibc's does."""
    total = t * coefficients[1]  # [n]
    total += coefficients[0]
    term = np.empty_like(t)  # [n], reused for each t^2k (c_2k + c_2k+1 t)
    for k in range(2, len(coefficients), 2):
        if k + 1 < len(coefficients):
            np.multiply(t, coefficients[k + 1], out=term)
            term += coefficients[k]
            term *= powers[k // 2 - 1]
        else:
            np.multiply(powers[k // 2 - 1], coefficients[k], out=term)
        total += term
    return total


def _erf_small(ax: np.ndarray) -> np.ndarray:
    """|x| < 0.84375: x + x * PP(x^2)/QQ(x^2); below 2**-28, x + EFX*x."""
    z = ax * ax  # [n]
    powers = _even_powers(z, 2)
    ratio = _pairwise(z, powers, _PP)  # [n]
    ratio /= _pairwise(z, powers, _QQ)
    ratio *= ax
    ratio += ax
    tiny = ax < _TINY
    if tiny.any():
        # Scaled by 16 so that EFX*x stays off the subnormal grid; exact for normal x.
        index = np.flatnonzero(tiny)
        x_tiny = ax[index]
        ratio[index] = 0.0625 * (16.0 * x_tiny + (16.0 * _EFX) * x_tiny)
    return ratio


def _erf_middle(ax: np.ndarray) -> np.ndarray:
    """0.84375 <= |x| < 1.25: ERX + PA(s)/QA(s), s = |x| - 1 (exact)."""
    s = ax - 1.0  # [n]
    powers = _even_powers(s, 3)
    result = _pairwise(s, powers, _PA)  # [n]
    result /= _pairwise(s, powers, _QA)
    result += _ERX
    return result


def _tail_correction(
    t: np.ndarray, numerator: tuple[float, ...], denominator: tuple[float, ...]
) -> np.ndarray:
    """R(t)/S(t), t = 1/x^2."""
    powers = _even_powers(t, (len(denominator) - 1) // 2)
    correction = _pairwise(t, powers, numerator)  # [n]
    correction /= _pairwise(t, powers, denominator)
    return correction


def _erf_tail(ax: np.ndarray) -> np.ndarray:
    """1.25 <= |x| < 6: 1 - exp(-x^2 - 0.5625 + R/S) / x, with t = 1/x^2 and x^2 split exactly."""
    t = ax * ax  # [n]
    np.divide(1.0, t, out=t)
    near = ax < _TAIL_SPLIT
    if near.all():  # the common case: normal activations rarely pass 2.86
        exponent = _tail_correction(t, _RA, _SA)  # [n]
    else:
        exponent = np.empty_like(t)
        near_index, far_index = np.flatnonzero(near), np.flatnonzero(~near)
        exponent[near_index] = _tail_correction(t[near_index], _RA, _SA)
        exponent[far_index] = _tail_correction(t[far_index], _RB, _SB)
    # z: x with the low half of its significand zeroed, so z*z is exact;
    # -x^2 = -z*z + (z - x)*(z + x).
    if ax.dtype == np.float32:
        z = (ax.view(np.uint32) & _HIGH_BITS_32).view(np.float32)  # [n]
    else:
        z = (ax.view(np.uint64) & _HIGH_WORD).view(np.float64)  # [n]
    exponent += (z - ax) * (z + ax)
    np.exp(exponent, out=exponent)
    z *= z
    z += 0.5625
    np.negative(z, out=z)
    np.exp(z, out=z)
    z *= exponent  # x * erfc(x)
    z /= ax
    np.subtract(1.0, z, out=z)
    return z


def _erf_of_magnitude(ax: np.ndarray, out: np.ndarray) -> None:
    """out = erf(ax) for ax = |x| >= 0 (or nan), each element computed by its range only."""
    small = ax < _SMALL
    below_middle = ax < _MIDDLE
    below_saturated = ax < _SATURATED
    for in_range, branch in (
        (small, _erf_small),
        (below_middle ^ small, _erf_middle),
        (below_saturated ^ below_middle, _erf_tail),
    ):
        index = np.flatnonzero(in_range)
        if index.size:
            out[index] = branch(ax[index])
    if not below_saturated.all():  # |x| >= 6, inf, nan
        index = np.flatnonzero(~below_saturated)
        out[index] = np.where(np.isnan(ax[index]), np.nan, 1.0)


def erf(x: ArrayLike) -> np.ndarray:
    """erf(x) elementwise, equal to math.erf to within 1 ulp (identical for nearly all x).

    Accepts any shape; float32 and float64 keep their dtype (float32 runs the same formulas in
    float32 arithmetic, within 1 float32 ulp of math.erf rounded, and about twice as fast as
    float64: the NumPy trainer's GELU calls it on every activation), anything else is computed
    and returned as float64. A 0-d input gives a 0-d
    array. erf(+-0) = +-0, erf(+-inf) = +-1, erf(nan) = nan.
    """
    x = np.asarray(x)
    out_dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    ax = np.abs(x, dtype=out_dtype).ravel()  # |x| as a fresh contiguous array, [n]
    result = np.empty_like(ax)  # [n]
    for start in range(0, ax.size, _BLOCK):
        _erf_of_magnitude(ax[start : start + _BLOCK], result[start : start + _BLOCK])
    np.copysign(result, x.ravel(), out=result)  # erf is odd
    return result.reshape(x.shape)
