"""The kernels of one torch.optim.AdamW step: for-loop (a kernel per tensor and pass),
foreach (a pass over all tensors per kernel launch group) or fused (one pass)."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ref_numpy.config import GPTConfig
from ref_numpy.gpt import param_shapes
from ref_numpy.roofline.kernel import STATE_BYTES, StepBuilder

# torch.optim.AdamW's foreach and for-loop paths (torch/optim/adamw.py, torch 2.x): eight passes
# over every tensor (seven without decay), built from compound kernels (lerp, addcmul, addcdiv),
# so fewer than the fourteen one-operation passes of `experiments.optimizer_cost`. Each pass:
# (name, tensors read, tensors written, FLOPs per element, transcendental).
TORCH_ADAMW_PASSES = (
    ("p *= 1 - lr*wd", ("p",), ("p",), 1, None),  # decay group only
    ("m.lerp_(g, 1 - beta1)", ("m", "g"), ("m",), 3, None),
    ("v *= beta2", ("v",), ("v",), 1, None),
    ("v.addcmul_(g, g, 1 - beta2)", ("v", "g"), ("v",), 3, None),
    ("denom = sqrt(v)", ("v",), ("denom",), 0, "sqrt"),
    ("denom /= sqrt(bias_correction2)", ("denom",), ("denom",), 1, None),
    ("denom += eps", ("denom",), ("denom",), 1, None),
    ("p.addcdiv_(m, denom, -step_size)", ("p", "m", "denom"), ("p",), 3, None),
)
# torch's multi_tensor_apply (ATen/native/cuda/MultiTensorApply.cuh): chunks of 65536
# elements, at most 320 blocks and, by the number of tensor lists, this many tensors per launch
_CHUNK, _MAX_BLOCKS, _MAX_TENSORS = 65536, 320, {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}


def multi_tensor_launches(sizes: Iterable[int], lists: int) -> int:
    """CUDA kernel launches of one foreach or fused op over tensors of `sizes` elements, taking
    `lists` tensor lists: a launch whenever its tensors or its chunk blocks are full."""
    launches = tensors = blocks = 0
    for size in sizes:
        tensors += 1
        chunks = -(-size // _CHUNK)
        for chunk in range(chunks):
            blocks += 1
            last_chunk = chunk == chunks - 1
            if blocks == _MAX_BLOCKS or (last_chunk and tensors == _MAX_TENSORS[lists]):
                launches += 1
                blocks = 0
                tensors = 0 if last_chunk else 1  # an unfinished tensor carries over
    return launches + (1 if blocks else 0)


def optimizer_kernels(s: StepBuilder, cfg: GPTConfig, optimizer: str) -> None:
    s.phase = "optimizer"
    shapes = param_shapes(cfg)
    groups = {
        "decay": [n for n, shape in shapes.items() if len(shape) >= 2],
        "no decay": [n for n, shape in shapes.items() if len(shape) < 2],
    }
    for group, names in groups.items():
        sizes = [math.prod(shapes[n]) for n in names]
        elements = sum(sizes)
        per_name = dict(zip(names, sizes))
        if optimizer == "fused":
            # _fused_adamw_: one kernel reads p, g, m, v and writes p, m, v
            reads = {f"{t}:{n}": STATE_BYTES * per_name[n] for t in "pgmv" for n in names}
            writes = {f"{t}:{n}": STATE_BYTES * per_name[n] for t in "pmv" for n in names}
            s.add(
                f"fused AdamW ({group})",
                "optimizer",
                reads,
                writes,
                flops=16 * elements,
                transcendentals={"sqrt": elements},
                launches=multi_tensor_launches(sizes, 4),
                calls=1,
                fusable=False,
            )
            continue
        for pass_name, read, written, flops, function in TORCH_ADAMW_PASSES:
            if pass_name.startswith("p *=") and group == "no decay":
                continue
            reads = {f"{t}:{n}": STATE_BYTES * per_name[n] for t in read for n in names}
            writes = {f"{t}:{n}": STATE_BYTES * per_name[n] for t in written for n in names}
            launches = (
                len(names)
                if optimizer == "for_loop"
                else multi_tensor_launches(sizes, len(set(read) | set(written)))
            )
            s.add(
                f"AdamW {pass_name} ({group})",
                "optimizer",
                reads,
                writes,
                flops=flops * elements,
                transcendentals={function: elements} if function else {},
                launches=launches,
                calls=len(names),
                fusable=False,
            )
