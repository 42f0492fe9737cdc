"""The devices the roofline model (`ref_numpy.roofline`) predicts for: their roofs, with sources.

A device is a handful of rates: peak FLOP/s of its matmul units per precision, of its plain
vector units, its memory bandwidth, the rate of each transcendental function, and what one
kernel launch (or, on a CPU, one operator call) costs on top of the work. GPUs come from their
datasheets (`GPUS`, each rate with its source); this machine is measured (`measure_device`), each
rate by a micro-benchmark of its own, never by the training step the model then predicts.

GPU transcendentals: exp, log, sqrt and tanh are single instructions of the special-function
units, 16 results per clock per SM on compute capability 8.0 and 9.0 (CUDA C++ Programming
Guide, "Arithmetic Instructions" throughput table; tanh since 7.5), so SMs x 16 x boost clock.
erf has no such instruction: CUDA's erff is a polynomial, taken here as 24 FMA-unit FLOPs (an
estimate). The per-launch cost of eager PyTorch on a GPU is an assumption, 5 microseconds of
host time per kernel (no datasheet gives it), to be replaced by a measurement on the device.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ref_numpy.erf import erf
from ref_numpy.flops import PEAK_FLOPS, matmul_ceiling


@dataclass(frozen=True)
class Device:
    """The roofs of one device (rates per second)."""

    name: str
    peak_flops: dict[str, float]  # matmul units, by precision: "bf16", "tf32", "fp32"
    vector_flops: float  # elementwise arithmetic (CUDA cores, a CPU's vector units)
    bandwidth: float  # bytes/s to and from main memory
    transcendentals: dict[str, float]  # evaluations/s of exp, log, erf, tanh, sqrt
    launch_overhead: float  # seconds per kernel launch (or operator call)
    overhead_per: str = "launch"  # "launch": per GPU kernel; "call": per operator dispatched
    # A CPU reads a cache line before it writes into it (write-allocate), so a kernel writing a
    # fresh output moves its bytes twice; an in-place update does not (its lines were read).
    write_allocate: bool = False
    # A working set up to `cache_bytes` is served from the last-level cache at `cache_bandwidth`
    # (0: no cache roof; the GPUs here are given their memory roof only)
    cache_bytes: float = 0.0
    cache_bandwidth: float = 0.0
    sources: dict[str, str] = field(default_factory=dict)

    def ridge_point(self, precision: str = "bf16") -> float:
        """FLOPs per byte above which a matmul kernel is compute-bound."""
        return self.peak_flops[precision] / self.bandwidth


GPU_LAUNCH_OVERHEAD = 5e-6  # assumed, see the module docstring
_ERF_FLOPS = 24  # FMA-unit FLOPs of one erff (estimate)
_SFU_PER_CLOCK = 16  # special-function results per clock per SM (compute capability 8.0, 9.0)


def _gpu(name: str, peaks: str, bandwidth: float, sms: int, boost_hz: float, source: str):
    sfu = sms * _SFU_PER_CLOCK * boost_hz
    fp32 = PEAK_FLOPS[peaks]["fp32"]
    return Device(
        name=name,
        peak_flops={k: v for k, v in PEAK_FLOPS[peaks].items() if v is not None},
        vector_flops=fp32,
        bandwidth=bandwidth,
        transcendentals={
            "exp": sfu,
            "log": sfu,
            "sqrt": sfu,
            "tanh": sfu,
            "erf": fp32 / _ERF_FLOPS,
        },
        launch_overhead=GPU_LAUNCH_OVERHEAD,
        sources={
            "peak_flops": f"{source} (dense, flops.PEAK_FLOPS['{peaks}'])",
            "bandwidth": source,
            "transcendentals": f"{sms} SMs x {_SFU_PER_CLOCK}/clock x {boost_hz / 1e9:.3g} GHz "
            "(CUDA C++ Programming Guide); erf: fp32 rate / 24 (estimate)",
            "launch_overhead": "assumed 5 us per kernel (eager PyTorch's host time), not measured",
        },
    )


GPUS: dict[str, Device] = {
    d.name: d
    for d in (
        _gpu("H100 SXM", "H100 SXM", 3.35e12, 132, 1.98e9, "NVIDIA H100 Tensor Core GPU datasheet"),
        _gpu(
            "H100 PCIe", "H100 PCIe", 2.0e12, 114, 1.755e9, "NVIDIA H100 Tensor Core GPU datasheet"
        ),
        _gpu("H200", "H200", 4.8e12, 132, 1.98e9, "NVIDIA H200 Tensor Core GPU datasheet"),
        # NVL: PCIe cards, 94 GB at 3.9 TB/s and 141 GB at 4.8 TB/s; boost 1.785 GHz (H100 NVL's)
        _gpu("H100 NVL", "H100 NVL", 3.9e12, 132, 1.785e9, "NVIDIA H100 product page (NVL)"),
        _gpu("H200 NVL", "H200 NVL", 4.8e12, 132, 1.785e9, "NVIDIA H200 product page (NVL)"),
        _gpu(
            "A100 40GB",
            "A100 SXM",
            1.555e12,
            108,
            1.41e9,
            "NVIDIA A100 Tensor Core GPU datasheet (SXM)",
        ),
        _gpu(
            "A100 80GB",
            "A100 SXM",
            2.039e12,
            108,
            1.41e9,
            "NVIDIA A100 Tensor Core GPU datasheet (SXM)",
        ),
    )
}


# Substrings of torch.cuda.get_device_name() names, most specific first ("NVIDIA H100 80GB
# HBM3" is the SXM part; "NVIDIA A100-SXM4-80GB" the 80 GB one)
_GPU_PATTERNS = (
    (("H200", "NVL"), "H200 NVL"),
    (("H200",), "H200"),
    (("H100", "NVL"), "H100 NVL"),
    (("H100", "PCIE"), "H100 PCIe"),
    (("H100",), "H100 SXM"),
    (("A100", "80GB"), "A100 80GB"),
    (("A100",), "A100 40GB"),
)


def gpu_for(device_name: str) -> Device | None:
    """The datasheet device of a GPU named as torch.cuda.get_device_name() does; None if none."""
    upper = device_name.upper()
    for substrings, key in _GPU_PATTERNS:
        if all(part in upper for part in substrings):
            return GPUS[key]
    return None


# ----------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class ArrayOps:
    """The operations a device measurement times, from one array library (NumPy here, torch in
    `torch_impl.roofline_check`): each writes into `out`, so no allocation is timed."""

    library: str
    array: Callable[[int], object]  # n random float32 values
    copy: Callable[[object, object], object]  # out <- a
    triad: Callable[[object, object, object], object]  # out <- a + 3 b (STREAM's triad)
    functions: dict[str, Callable[[object, object], object]]  # out <- f(a), by function name
    call_overhead: Callable[[], float]  # seconds one operator call costs beyond its work
    matmul_ceiling: Callable[[], float]  # FLOP/s of a large float32 matmul


def last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    """The largest CPU cache, from Linux's sysfs (`default` where it cannot be read)."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        if text and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=default)


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """The median of `repeats` timed calls, after one untimed."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_bandwidth(ops: ArrayOps, array_bytes: int, repeats: int = 7) -> dict[str, float]:
    """STREAM-style kernels over float32 arrays of `array_bytes` each, bytes counted as the
    kernel reads and writes them / median time: copy (out <- a, 8 bytes per element) and triad
    (out <- a + 3b, 12), each writing a fresh array, and the in-place triad (a <- a + 3b, 12),
    whose written lines were just read. The gap between the two triads is the write-allocate
    read a fresh output costs on a CPU (which the bandwidth roof must not be charged with)."""
    n = array_bytes // 4
    a, b, out = ops.array(n), ops.array(n), ops.array(n)
    return {
        "copy": 8 * n / median_seconds(lambda: ops.copy(a, out), repeats),
        "triad": 12 * n / median_seconds(lambda: ops.triad(a, b, out), repeats),
        "triad_in_place": 12 * n / median_seconds(lambda: ops.triad(a, b, a), repeats),
        "array_bytes": 4 * n,
    }


def measure_transcendentals(ops: ArrayOps, elements: int = 1 << 16, repeats: int = 21) -> dict:
    """Evaluations per second of each function on an array that stays in cache (256 KiB), so
    that the rate is the arithmetic's and not the memory's."""
    a, out = ops.array(elements), ops.array(elements)  # values in [-3, 3)
    return {
        name: elements / median_seconds(lambda f=function: f(a, out), repeats)
        for name, function in ops.functions.items()
    }


def measure_device(ops: ArrayOps, name: str, quick: bool = False) -> Device:
    """This machine's roofs, measured with `ops`: the matmul ceiling (float32), the in-place
    STREAM triad's bandwidth from memory (arrays 4x the last-level cache) and from that cache
    (two arrays filling a quarter of it), each transcendental's in-cache rate, the cost of one
    operator call; write-allocate is counted (a CPU). `quick`: small arrays and few repeats,
    which runs every step in a second but measures the cache, not the memory."""
    cache = last_level_cache_bytes()
    ceiling = ops.matmul_ceiling()
    memory = measure_bandwidth(ops, cache // 4 if quick else 4 * cache, repeats=3 if quick else 7)
    cached = measure_bandwidth(ops, cache // 8, repeats=3 if quick else 51)
    rates = measure_transcendentals(ops, repeats=3 if quick else 21)
    overhead = ops.call_overhead()
    return Device(
        name=name,
        peak_flops={"fp32": ceiling},
        vector_flops=ceiling,
        bandwidth=memory["triad_in_place"],
        transcendentals=rates,
        launch_overhead=overhead,
        overhead_per="call",
        write_allocate=True,
        cache_bytes=cache,
        cache_bandwidth=cached["triad_in_place"],
        sources={
            "peak_flops": f"measured: {ops.library} float32 matmul ceiling",
            "bandwidth": f"measured: {ops.library} in-place STREAM triad, "
            f"{memory['array_bytes'] / 2**20:.0f} MiB arrays (fresh-output triad "
            f"{memory['triad'] / 1e9:.1f} GB/s, copy {memory['copy'] / 1e9:.1f} GB/s)",
            "cache_bandwidth": f"measured: the same, {cached['array_bytes'] / 2**20:.0f} MiB "
            f"arrays, last-level cache {cache / 2**20:.0f} MiB (sysfs)",
            "transcendentals": f"measured: {ops.library}, 65,536 float32 values in cache",
            "launch_overhead": f"measured: {ops.library}, per operator call",
        },
    )


def best_of(devices: list[Device]) -> Device:
    """One device from several measurements of it: the highest of each rate and the lowest
    per-call cost (a roof is the most a machine attains; interference only lowers a reading)."""
    first = devices[0]
    return dataclasses.replace(
        first,
        peak_flops={k: max(d.peak_flops[k] for d in devices) for k in first.peak_flops},
        vector_flops=max(d.vector_flops for d in devices),
        bandwidth=max(d.bandwidth for d in devices),
        transcendentals={
            k: max(d.transcendentals[k] for d in devices) for k in first.transcendentals
        },
        launch_overhead=min(d.launch_overhead for d in devices),
        cache_bandwidth=max(d.cache_bandwidth for d in devices),
        sources=first.sources | {"measured": f"best of {len(devices)} measurements"},
    )


def _numpy_call_overhead(repeats: int = 2001) -> float:
    x, out = np.ones(1, dtype=np.float32), np.empty(1, dtype=np.float32)
    return median_seconds(lambda: np.add(x, x, out=out), repeats)


def _numpy_array(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-3, 3, n).astype(np.float32)


NUMPY_OPS = ArrayOps(
    library="NumPy",
    array=_numpy_array,
    copy=lambda a, out: np.copyto(out, a),
    triad=lambda a, b, out: np.add(a, np.multiply(b, np.float32(3), out=out), out=out),
    functions={
        "exp": lambda a, out: np.exp(a, out=out),
        "log": lambda a, out: np.log(np.abs(a, out=out), out=out),
        "erf": lambda a, out: np.copyto(out, erf(a)),
        "tanh": lambda a, out: np.tanh(a, out=out),
        "sqrt": lambda a, out: np.sqrt(np.abs(a, out=out), out=out),
    },
    call_overhead=_numpy_call_overhead,
    matmul_ceiling=lambda: matmul_ceiling(n=1024),
)


def describe(device: Device, precision: str) -> str:
    """One line: the device's roofs."""
    return (
        f"{device.name}: {device.peak_flops[precision] / 1e12:.3g} TFLOP/s ({precision}), "
        f"{device.bandwidth / 1e9:.4g} GB/s"
        + (f" ({device.cache_bandwidth / 1e9:.4g} GB/s from cache)" if device.cache_bytes else "")
        + f", ridge {device.ridge_point(precision):.3g} FLOP/B, "
        f"exp {device.transcendentals['exp'] / 1e9:.3g} G/s, "
        f"{device.launch_overhead * 1e6:.2g} us per {device.overhead_per}"
    )
