"""Ahead-of-time compile of the Triton attention kernels for Hopper (sm_90), with no GPU.

Every autotune configuration of `torch_impl.triton_attention`'s kernels (forward, dK/dV, dQ, and
the backward's preprocess) is compiled for an H100/H200 by Triton's own pipeline, Python to
PTX, then PTX to a cubin by the ptxas Triton ships, and the cubin's resource use is read back:
registers per thread, spilled registers, shared memory per block. Spills and shared memory decide
what the autotuner can run and how fast, and here they are known before a GPU is lent.

    python -m torch_impl.triton_aot     # every configuration -> results/triton_sm90.json

The autotuner times every configuration that fits in shared memory (227 KiB per block on sm_90):
one that does not fit is recorded as such (it would be skipped there), not an error.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

import triton
from triton.backends.compiler import GPUTarget

from torch_impl import triton_attention as ta

TARGET = GPUTarget("cuda", 90, 32)  # Hopper: H100, H200
SHARED_MEMORY_LIMIT = 227 * 1024  # bytes per block (sm_90's opt-in maximum, as Triton reads it)
HEAD_DIMS = (64, 128)  # GPT-2's head dim and the largest the kernels take
RESULTS = Path(__file__).resolve().parent.parent / "results" / "triton_sm90.json"

# kernel -> (its function's name in triton_attention, its autotune configurations); the
# preprocess kernel is not autotuned: one block of 64 rows, Triton's defaults of 4 warps, 3 stages
KERNELS = {
    "forward": ("_forward_kernel", ta.FORWARD_CONFIGS),
    "dk_dv": ("_backward_dk_dv_kernel", ta.DK_DV_CONFIGS),
    "dq": ("_backward_dq_kernel", ta.DQ_CONFIGS),
    "preprocess": ("_backward_preprocess", [(64, None, 4, 3)]),
}
TENSORS_OF_THE_INPUT_DTYPE = {"Q", "K", "V", "O", "dO", "dQ", "dK", "dV"}  # L, D are float32
FLOAT_SCALARS = {"qk_scale", "scale"}


def configurations(dtypes: tuple[str, ...] = ("bf16", "fp16")) -> list[dict]:
    """Everything the autotuner may compile on an H100: per kernel, every config for each 16-bit
    dtype and float32's one (the last: `_float32_takes_the_smallest`), at each head dim, causal
    and not (the autotuner keys on both)."""
    found = []
    for kernel, (_, configs) in KERNELS.items():
        for dtype in (*dtypes, "fp32"):
            chosen = configs if dtype != "fp32" or kernel == "preprocess" else configs[-1:]
            for head_dim in HEAD_DIMS:
                for causal in (None,) if kernel == "preprocess" else (True, False):
                    for block_m, block_n, num_warps, num_stages in chosen:
                        found.append(
                            dict(
                                kernel=kernel, BLOCK_M=block_m, BLOCK_N=block_n,
                                num_warps=num_warps, num_stages=num_stages,
                                head_dim=head_dim, dtype=dtype, causal=causal,
                            )
                        )  # fmt: skip
    return found


def key(config: dict) -> tuple:
    """What names a configuration (the fields that `compile_config` adds left out)."""
    names = ("kernel", "BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "head_dim", "dtype")
    return (*(config[name] for name in names), config["causal"])


# ----------------------------------------------------------------------------- compile mode
def _raw_function(kernel) -> types.FunctionType:
    """The Python function under triton.autotune and triton.jit (or the interpreter's wrapper)."""
    while not isinstance(kernel, types.FunctionType):
        kernel = kernel.fn
    return kernel


@functools.cache
def compile_mode_kernels() -> dict[str, triton.runtime.JITFunction]:
    """Every jit function of `triton_attention`, wrapped again by triton.jit in compile mode.

    On a machine without a GPU that module wraps its functions for Triton's interpreter (which
    triton.jit decides when it wraps), and an interpreted function cannot be compiled. So this
    takes the raw Python functions back out of the wrappers and wraps copies of them with
    TRITON_INTERPRET=0. The copies share one new globals dict, the module's own with each jit
    function's name bound to its compile-mode copy: when the compiler meets `_load_rows(...)`
    inside `_forward_kernel`, it looks the name up in the kernel's globals, and must find a
    function it can compile, not the interpreter's. The module itself is left as it was, so
    its kernels still run under the interpreter in the same process.
    """
    namespace = dict(vars(ta))
    raw = {
        name: _raw_function(value)
        for name, value in vars(ta).items()
        if isinstance(value, triton.runtime.KernelInterface)  # JITFunction, Autotuner, ...
        or type(value).__name__ == "InterpretedFunction"
    }
    with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "0"}):
        for name, fn in raw.items():
            copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__)
            copy.__annotations__ = fn.__annotations__  # tl.constexpr marks travel with them
            copy.__qualname__, copy.__doc__ = fn.__qualname__, fn.__doc__
            namespace[name] = triton.jit(copy)
    return {name: namespace[name] for name in raw}


def signature(fn: triton.runtime.JITFunction, dtype: str) -> tuple[dict, dict]:
    """The argument types Triton would derive at launch, and its specialisations ("attrs"), for
    the launchers' calls on the GPT's tensors: every pointer 16-byte aligned and every stride a
    multiple of 16 elements (the GPT's strides are multiples of d >= 16), so marked divisible by
    16 as the launcher marks them; H and T left general (any count of heads, any length)."""
    types_ = {}
    attrs = {}
    for index, param in enumerate(fn.params):
        name = param.name
        if param.is_constexpr:
            types_[name] = "constexpr"
        elif name in TENSORS_OF_THE_INPUT_DTYPE:
            types_[name] = "*" + dtype
        elif name in ("L", "D"):
            types_[name] = "*fp32"
        elif name in FLOAT_SCALARS:
            types_[name] = "fp32"
        else:
            types_[name] = "i32"
        if types_[name].startswith("*") or name.startswith("stride_"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    return types_, attrs


def compile_config(config: dict) -> dict:
    """Compile one configuration for sm_90; the config with n_regs, n_spills, shared (bytes)
    and fits_shared_memory added. A compilation error is raised, not recorded."""
    name, _ = KERNELS[config["kernel"]]
    fn = compile_mode_kernels()[name]
    types_, attrs = signature(fn, config["dtype"])
    constexprs = {
        "HEAD_DIM": config["head_dim"],
        "BLOCK_M": config["BLOCK_M"],
        "CAUSAL": config["causal"],
        "BLOCK_N": config["BLOCK_N"],
        "DOT_PRECISION": "ieee" if config["dtype"] == "fp32" else "tf32",
    }
    constexprs = {k: v for k, v in constexprs.items() if types_.get(k) == "constexpr"}
    source = triton.compiler.ASTSource(fn=fn, signature=types_, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": config["num_warps"], "num_stages": config["num_stages"]}
    compiled = triton.compile(source, target=TARGET, options=options)
    n_regs, local_bytes = _registers_and_local_memory(compiled.asm["cubin"])
    shared = compiled.metadata.shared
    return {
        **config,
        "n_regs": n_regs,
        "n_spills": local_bytes // 4,  # as Triton's launcher counts them: local bytes / 4
        "shared": shared,
        "fits_shared_memory": shared <= SHARED_MEMORY_LIMIT,
    }


def _registers_and_local_memory(cubin: bytes) -> tuple[int, int]:
    """Registers per thread and local memory per thread (bytes) of the cubin's one kernel, from
    the cuobjdump that Triton ships: REG, and STACK + LOCAL, the stack frame (where ptxas puts
    spilled registers) and other local memory. On a GPU Triton reads the same two numbers from
    the loaded function (cuFuncGetAttribute: NUM_REGS and LOCAL_SIZE_BYTES, the two together)."""
    cuobjdump = triton.knobs.nvidia.cuobjdump.path
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = subprocess.run(
            [cuobjdump, "--dump-resource-usage", str(path)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    if match is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{usage}")
    registers, stack, local = (int(x) for x in match.groups())
    return registers, stack + local


def compile_all(configs: list[dict], workers: int | None = None) -> list[dict]:
    """compile_config over `configs`, in the order given, in parallel processes (Triton's passes
    and ptxas use one core each). The processes are spawned, not forked: a fork of a process
    that has torch's and Triton's threads running may deadlock."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return [compile_config(c) for c in configs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(compile_config, configs))


def results(compiled: list[dict]) -> dict:
    return {
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
        "target": {"backend": TARGET.backend, "arch": TARGET.arch, "warp_size": TARGET.warp_size},
        "shared_memory_limit": SHARED_MEMORY_LIMIT,
        "configs": compiled,
    }


def dumps(recorded: dict) -> str:
    """JSON with one line per configuration, so that a change to the file reads as a diff."""
    head = {k: v for k, v in recorded.items() if k != "configs"}
    lines = [json.dumps(c) for c in recorded["configs"]]
    configs = '"configs": [\n  ' + ",\n  ".join(lines) + "\n ]"
    return json.dumps(head, indent=1)[:-2] + ",\n " + configs + "\n}\n"


def main(argv: list[str] | None = None, print_: Callable = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    args = parser.parse_args(argv)
    compiled = compile_all(configurations(), args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(results(compiled)))
    for c in compiled:
        print_(
            f"{c['kernel']:10} {c['dtype']} d={c['head_dim']:3} causal={c['causal']!s:5} "
            f"{c['BLOCK_M']:3}x{c['BLOCK_N']!s:4} w{c['num_warps']} s{c['num_stages']}: "
            f"{c['n_regs']:3} regs, {c['n_spills']:3} spills, {c['shared']:6} B shared"
            + ("" if c["fits_shared_memory"] else "  (over the limit: skipped)")
        )
    print_(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
