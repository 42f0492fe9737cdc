"""ref_numpy.erf against Python's math.erf (glibc's fdlibm erf on Linux), counted in ulps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ref_numpy.erf import erf

# Where erf switches formula (fdlibm's 1/0.35 is the double just above it), where it saturates,
# and where its tiny-x form starts.
BOUNDARIES = (0.84375, 1.25, 1 / 0.35, float.fromhex("0x1.6db6ep+1"), 6.0, 2.0**-28)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many representable floats lie between a and b (0: identical), for float32 or float64.

    The bit patterns, read as sign-magnitude integers and mapped to one ordered integer line."""
    signed = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}[a.dtype]
    lowest = np.iinfo(signed).min

    def ordered(values: np.ndarray) -> np.ndarray:
        bits = values.view(signed).astype(np.int64)
        return np.where(bits < 0, lowest - bits, bits)

    return np.abs(ordered(a) - ordered(b))


def neighbours(center: float, count: int) -> np.ndarray:
    """center and the `count` floats on each side of it, one ulp apart."""
    steps = np.arange(-count, count + 1)
    return np.array([center], np.float64).view(np.int64)[0] + steps


def sweep_points(rng: np.random.Generator) -> np.ndarray:
    """A dense grid on [-7, 7], random normals, the floats next to every boundary, tiny values."""
    near_boundaries = [neighbours(b, 500).view(np.float64) for b in BOUNDARIES]
    bands = [b * (1 + np.linspace(-1e-3, 1e-3, 2001)) for b in BOUNDARIES]
    tiny = np.concatenate(
        [
            [5e-324, 1e-310, 2.0**-1022, 2.0**-1015, 1e-300, 1e-100, 1e-10],
            10.0 ** rng.uniform(-323, -1, 5000),
        ]
    )
    magnitudes = np.concatenate(
        [np.linspace(0, 7, 100_001), np.abs(rng.standard_normal(20_000)), tiny]
        + near_boundaries
        + bands
    )
    return np.concatenate([magnitudes, -magnitudes])


def test_float64_matches_math_erf_within_one_ulp(rng):
    x = sweep_points(rng)
    reference = np.array([math.erf(value) for value in x])
    distance = ulp_distance(erf(x), reference)
    exact = float(np.mean(distance == 0))
    print(f"float64: {x.size} points, max {distance.max()} ulp, {exact:.4%} identical")
    assert distance.max() <= 1
    # glibc evaluates the same scheme; differences come only from np.exp vs libm exp in the tail.
    assert exact > 0.9


def test_float32_within_one_float32_ulp(rng):
    x = np.concatenate(
        [
            np.linspace(-7, 7, 100_001),
            rng.standard_normal(20_000),
            np.array(BOUNDARIES) * (1 + np.linspace(-1e-4, 1e-4, 201))[:, None],
            [1e-45, 1e-40, 1e-20],
        ],
        axis=None,
    ).astype(np.float32)
    reference = np.array([math.erf(float(value)) for value in x], np.float32)
    result = erf(x)
    assert result.dtype == np.float32
    distance = ulp_distance(result, reference)
    exact = float(np.mean(distance == 0))
    print(f"float32: {x.size} points, max {distance.max()} ulp, {exact:.4%} identical")
    assert distance.max() <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    largest = np.finfo(dtype).max
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6.0, -6.0, largest, -largest], dtype)
    result = erf(x)
    assert result[0] == 0 and not np.signbit(result[0])
    assert result[1] == 0 and np.signbit(result[1])
    np.testing.assert_array_equal(result[2:4], [1.0, -1.0])
    assert np.isnan(result[4])
    np.testing.assert_array_equal(result[5:], [1.0, -1.0, 1.0, -1.0])


def test_odd_exactly(rng):
    x = sweep_points(rng)
    np.testing.assert_array_equal(erf(-x), -erf(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_and_shape_preserved(rng, dtype):
    cube = rng.standard_normal((3, 4, 5)).astype(dtype)
    result = erf(cube)
    assert result.dtype == dtype and result.shape == (3, 4, 5)
    np.testing.assert_array_equal(result, erf(cube.ravel()).reshape(3, 4, 5))
    # A strided view gives the same values as its contiguous copy.
    np.testing.assert_array_equal(erf(cube.transpose(2, 0, 1)), result.transpose(2, 0, 1))

    zero_d = erf(np.array(0.3, dtype))
    assert zero_d.dtype == dtype and zero_d.shape == ()
    assert zero_d == erf(np.array([0.3], dtype))[0]


def test_python_scalars_and_integers():
    assert erf(0.5).shape == () and erf(0.5) == math.erf(0.5)
    integers = erf(np.array([-2, 0, 3]))
    assert integers.dtype == np.float64
    np.testing.assert_array_equal(integers, [math.erf(-2), 0.0, math.erf(3)])
    assert erf(np.empty((0, 4))).shape == (0, 4)
