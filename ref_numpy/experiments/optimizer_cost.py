"""Which parameters AdamW decays, what decaying all of them does, how decoupled decay differs
from an L2 penalty under Adam, and what one step costs in memory.

nanoGPT decays the tensors with ndim >= 2 (matmul and embedding weights) and leaves the 1-D ones
(biases, LayerNorm gains) alone. For GPT-2 124M that is 50 tensors holding 124,354,560 parameters
against 98 tensors holding only 121,344 (`decay_report`), not the "about 85M decayed and 39M not"
often repeated; the 38,633,472-parameter token embedding is 2-D and decayed. AdamW is elementwise
and memory-bound: `adamw_multi_pass` does this project's AdamW (`ref_numpy.adamw`) one operation
per pass, as separate kernels would, and counts the bytes; for float32 that is 14 passes and 132
bytes per decayed parameter (124 without decay), against 28 for a fused kernel that reads p, g,
m, v once and writes p, m, v once (`adamw_single_pass`): 4.7x (4.4x). Every number in this
paragraph is a count, pinned exactly by `tests/test_optimizer_cost.py`. "Fused AdamW cuts
traffic 3-4x" is a count of passes, and depends on the unfused version: one built from compound
kernels (lerp, addcmul, addcdiv, as torch's foreach path) does fewer passes and gains less from
fusion. The training comparisons (`decay_groups_over_seeds`) print their own numbers in
`notebooks/03_weight_decay_groups.ipynb`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ref_numpy.adamw import AdamW, split_decay
from ref_numpy.config import GPTConfig
from ref_numpy.data import get_batch
from ref_numpy.gpt import backward, forward, init_params
from ref_numpy.schedule import get_lr
from ref_numpy.step import estimate_loss

SMALL_CONFIG = GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=32)


def _shape_of(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def decay_report(params_or_shapes: dict) -> dict:
    """Per group ("decay": ndim >= 2, "no_decay": ndim < 2): tensors, parameters and names.

    Accepts a dict of arrays or of shapes (`ref_numpy.gpt.param_shapes`), so a large model is
    counted without allocating it.
    """
    report = {group: {"tensors": 0, "params": 0, "names": []} for group in ("decay", "no_decay")}
    for name, value in params_or_shapes.items():
        shape = _shape_of(value)
        group = report["decay" if len(shape) >= 2 else "no_decay"]
        group["tensors"] += 1
        group["params"] += math.prod(shape)
        group["names"].append(name)
    return report


def _layernorm_and_bias_summary(params: dict[str, np.ndarray]) -> dict:
    gains = [p for name, p in params.items() if ".ln_" in name and name.endswith(".weight")]
    biases = [p for name, p in params.items() if name.endswith(".bias")]
    gain = np.concatenate(gains)  # every LayerNorm weight, init 1
    return {
        "layernorm_gain_mean": float(np.mean(gain)),
        "layernorm_gain_mean_distance_from_1": float(np.mean(np.abs(gain - 1))),
        "bias_mean_abs": float(np.mean(np.abs(np.concatenate(biases)))) if biases else 0.0,
    }


def decay_everything_vs_2d(
    steps: int,
    cfg: GPTConfig | None = None,
    data: np.ndarray | None = None,
    batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    seed: int = 0,
    val_data: np.ndarray | None = None,
    eval_every: int = 100,
    eval_batches: int = 8,
) -> dict:
    """Train the same NumPy GPT twice, decaying the 2-D tensors only ("decay_2d") or every tensor
    ("decay_all"), from the same init on the same batches. Each run: its loss curve and, at the
    end, the LayerNorm gains' mean and mean |gain - 1| and the biases' mean |value|. With
    `val_data`, also the validation loss every `eval_every` steps and after the last one
    ("val_steps", "val_losses"), on the same `eval_batches` batches for both runs.

    `data`: a 1-D array of token ids; random tokens of `cfg.vocab_size` if None.
    """
    cfg = SMALL_CONFIG if cfg is None else cfg
    if data is None:
        data = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=50 * cfg.block_size)
    val_batches = []
    if val_data is not None:  # fixed batches: every evaluation of every run sees the same tokens
        val_rng = np.random.default_rng(10_000)  # the same for every seed
        val_batches = [
            get_batch(val_data, cfg.block_size, batch_size, val_rng, "val")
            for _ in range(eval_batches)
        ]
    eval_steps = sorted({*range(eval_every, steps, eval_every), steps}) if val_batches else []
    results = {}
    for label in ("decay_2d", "decay_all"):
        params = init_params(cfg, seed=seed)
        decay_names = split_decay(params)[0] if label == "decay_2d" else list(params)
        optimizer = AdamW(
            params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, decay_names=decay_names
        )
        batch_rng = np.random.default_rng(seed + 1)  # the same batches for both runs
        losses, val_losses = [], []
        for step in range(1, steps + 1):
            x, y = get_batch(data, cfg.block_size, batch_size, batch_rng)
            _, loss, cache = forward(params, cfg, x, y)
            optimizer.step(backward(cache))
            losses.append(loss)
            if step in eval_steps:
                val_losses.append(estimate_loss(params, cfg, {"val": val_batches})["val"])
        results[label] = {"losses": np.array(losses), **_layernorm_and_bias_summary(params)}
        if val_batches:
            results[label] |= {
                "val_steps": np.array(eval_steps),
                "val_losses": np.array(val_losses),
            }
    return results


def decay_groups_over_seeds(seeds: Sequence[int], steps: int, **options) -> dict:
    """`decay_everything_vs_2d` once per seed (a new init and new batches each), stacked.

    Per run ("decay_2d", "decay_all"): "val_losses" [n_seeds, n_evals], "final_val_loss",
    "layernorm_gain_mean" and "bias_mean_abs" [n_seeds]; "val_steps" [n_evals]. `options` go to
    `decay_everything_vs_2d` and must include `val_data`. Both runs of a seed share init and
    batches, so their difference is paired: "paired_final_difference" [n_seeds] is decay-all's
    final validation loss minus decay-2-D's.
    """
    if options.get("val_data") is None:
        raise ValueError("decay_groups_over_seeds compares validation losses: give val_data")
    per_seed = [decay_everything_vs_2d(steps, seed=seed, **options) for seed in seeds]
    out: dict = {"seeds": np.array(seeds), "val_steps": per_seed[0]["decay_2d"]["val_steps"]}
    for label in ("decay_2d", "decay_all"):
        stacked = {
            key: np.array([run[label][key] for run in per_seed])
            for key in ("val_losses", "layernorm_gain_mean", "bias_mean_abs")
        }
        out[label] = stacked | {"final_val_loss": stacked["val_losses"][:, -1]}
    out["paired_final_difference"] = (
        out["decay_all"]["final_val_loss"] - out["decay_2d"]["final_val_loss"]
    )
    return out


# ----------------------------------------------------------------------------- decay under Adam
def decay_under_adam(
    gradient_scales: Sequence[float],
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    steps: int = 1000,
    betas: tuple[float, float] = (0.9, 0.95),
) -> dict:
    """How far weight decay moves a weight under Adam, decoupled (AdamW) or as an L2 penalty.

    One weight per entry of `gradient_scales`, each starting at 1, gets a loss gradient that
    flips sign every step, s, -s, s, ... (no pull either way on average). Three runs of
    `ref_numpy.adamw.AdamW` on the same gradients: no decay; decoupled decay, p <- p (1 - lr wd)
    before the Adam step; and L2, the gradient of (wd / 2) ||p||^2 added to the loss gradient
    (wd * p, as torch.optim.Adam's `weight_decay` does), so the penalty goes through Adam's
    division by sqrt(v). Returns the final weights of each run and the decay's effect, each
    decayed run minus the run without decay ("shift_decoupled", "shift_l2").
    """
    scales = np.asarray(gradient_scales, dtype=np.float64)
    final = {}
    for mode in ("none", "decoupled", "l2"):
        params = {"w": np.ones((scales.size, 1))}  # 2-D, so in the decay group
        decoupled = weight_decay if mode == "decoupled" else 0.0
        optimizer = AdamW(params, lr=lr, betas=betas, weight_decay=decoupled)
        for t in range(steps):
            grad = scales[:, None] * (-1.0) ** t
            if mode == "l2":
                grad = grad + weight_decay * params["w"]
            optimizer.step({"w": grad})
        final[mode] = params["w"][:, 0].copy()
    return {
        "gradient_scales": scales,
        "final": final,
        "shift_decoupled": final["decoupled"] - final["none"],
        "shift_l2": final["l2"] - final["none"],
        "decoupled_prediction": (1 - lr * weight_decay) ** steps - 1,  # (1 - lr wd)^steps - 1
    }


def decay_shrink_factor(
    weight_decay: float,
    learning_rate: float,
    max_iters: int,
    warmup_iters: int = 0,
    lr_decay_iters: int | None = None,
    min_lr: float | None = None,
) -> dict:
    """What AdamW's decoupled decay does to a weight with no gradient over a whole run of
    nanoGPT's schedule (`ref_numpy.schedule.get_lr`; constant when `min_lr` is None): the sum of
    the learning rates, "eta_lambda_steps" = weight_decay * sum_t lr_t, and "shrink_factor" =
    prod_t (1 - lr_t * weight_decay), which is about exp(-eta_lambda_steps)."""
    decay_lr = min_lr is not None
    lr_decay_iters = max_iters if lr_decay_iters is None else lr_decay_iters
    rates = [
        get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr or 0.0, decay_lr)
        for it in range(max_iters)
    ]
    log_shrink = math.fsum(math.log1p(-rate * weight_decay) for rate in rates)
    return {
        "sum_lr": math.fsum(rates),
        "eta_lambda_steps": weight_decay * math.fsum(rates),
        "shrink_factor": math.exp(log_shrink),
    }


# ----------------------------------------------------------------------------- memory traffic
class _TrafficCounter:
    """Runs one elementwise operation as one pass and adds up the bytes it moves.

    A pass reads each distinct array operand once (g * g reads g once) and writes its output
    once; Python scalars are kernel arguments and move no memory.
    """

    def __init__(self) -> None:
        self.bytes_read = 0
        self.bytes_written = 0
        self.passes = 0

    def __call__(self, operation: Callable, *operands, out: np.ndarray | None = None) -> np.ndarray:
        arrays = {id(a): a for a in operands if isinstance(a, np.ndarray)}
        result = operation(*operands) if out is None else operation(*operands, out=out)
        self.bytes_read += sum(a.nbytes for a in arrays.values())
        self.bytes_written += result.nbytes
        self.passes += 1
        return result


def new_adamw_state(params: dict[str, np.ndarray]) -> dict:
    """Empty AdamW state in the layout both step functions take: t and the moments m, v."""
    return {
        "t": 0,
        "m": {name: np.zeros_like(p) for name, p in params.items()},
        "v": {name: np.zeros_like(p) for name, p in params.items()},
    }


def _step_constants(state: dict, lr: float, betas: tuple[float, float]) -> tuple[float, float]:
    state["t"] += 1
    bias_correction2_sqrt = math.sqrt(1 - betas[1] ** state["t"])
    step_size = lr / (1 - betas[0] ** state["t"])
    return step_size, bias_correction2_sqrt


def _traffic(counts: tuple[int, int, int], n_params: int) -> dict:
    bytes_read, bytes_written, passes = counts
    return {
        "bytes_read": bytes_read,
        "bytes_written": bytes_written,
        "bytes": bytes_read + bytes_written,
        "passes": passes,
        "bytes_per_param": (bytes_read + bytes_written) / n_params,
    }


def adamw_multi_pass(
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    state: dict,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    decay_names: list[str] | None = None,
) -> dict:
    """`AdamW.step`'s arithmetic, one NumPy pass per operation; returns the bytes moved (and
    "passes": the passes over all tensors).

    Updates `params` and `state` ({"t", "m", "v"}) in place. Per tensor: 14 passes with decay
    (13 without); see the comments for what each reads and writes.
    """
    beta1, beta2 = betas
    decay = set(split_decay(params)[0] if decay_names is None else decay_names)
    step_size, bias_correction2_sqrt = _step_constants(state, lr, betas)
    run = _TrafficCounter()
    for name, p in params.items():
        g, m, v = grads[name], state["m"][name], state["v"][name]
        if name in decay:
            run(np.multiply, p, 1 - lr * weight_decay, out=p)  # read p, write p
        difference = run(np.subtract, g, m)  # read g, m; write
        run(np.multiply, 1 - beta1, difference, out=difference)  # read, write
        run(np.add, m, difference, out=m)  # read m, difference; write m
        run(np.multiply, v, beta2, out=v)  # read v, write v
        squared = run(np.multiply, g, g)  # read g; write
        run(np.multiply, 1 - beta2, squared, out=squared)  # read, write
        run(np.add, v, squared, out=v)  # read v, squared; write v
        denom = run(np.sqrt, v)  # read v; write
        run(np.divide, denom, bias_correction2_sqrt, out=denom)  # read, write
        run(np.add, denom, eps, out=denom)  # read, write
        update = run(np.divide, m, denom)  # read m, denom; write
        run(np.multiply, step_size, update, out=update)  # read, write
        run(np.subtract, p, update, out=p)  # read p, update; write p
    n_params = sum(p.size for p in params.values())
    return _traffic((run.bytes_read, run.bytes_written, run.passes), n_params)


def adamw_single_pass(
    params: dict[str, np.ndarray],
    grads: dict[str, np.ndarray],
    state: dict,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    decay_names: list[str] | None = None,
    chunk: int = 4096,
) -> dict:
    """`AdamW.step`'s arithmetic fused: each chunk of p, g, m, v is read once, updated in
    registers (here: small temporaries), and p, m, v written once: 4 reads + 3 writes per element.

    Updates `params` and `state` in place (one pass per tensor); the same operations in the same
    order as `AdamW.step`, so the results are bitwise equal.
    """
    beta1, beta2 = betas
    decay = set(split_decay(params)[0] if decay_names is None else decay_names)
    step_size, bias_correction2_sqrt = _step_constants(state, lr, betas)
    bytes_read = bytes_written = 0
    for name, p in params.items():
        # flat views (the arrays are contiguous), so writing a tile writes the parameter
        p_flat, g_flat = p.reshape(-1), grads[name].reshape(-1)
        m_flat, v_flat = state["m"][name].reshape(-1), state["v"][name].reshape(-1)
        for start in range(0, p.size, chunk):
            tile = slice(start, start + chunk)
            p_i, g_i = p_flat[tile].copy(), g_flat[tile].copy()  # read p, g once
            m_i, v_i = m_flat[tile].copy(), v_flat[tile].copy()  # read m, v once
            bytes_read += p_i.nbytes + g_i.nbytes + m_i.nbytes + v_i.nbytes
            if name in decay:
                p_i *= 1 - lr * weight_decay
            m_i += (1 - beta1) * (g_i - m_i)
            v_i *= beta2
            v_i += (1 - beta2) * (g_i * g_i)
            p_i -= step_size * (m_i / (np.sqrt(v_i) / bias_correction2_sqrt + eps))
            p_flat[tile], m_flat[tile], v_flat[tile] = p_i, m_i, v_i  # write p, m, v once
            bytes_written += p_i.nbytes + m_i.nbytes + v_i.nbytes
    n_params = sum(p.size for p in params.values())
    return _traffic((bytes_read, bytes_written, len(params)), n_params)


def adamw_traffic_per_param(dtype=np.float32, decay: bool = True, size: int = 1024) -> dict:
    """Bytes per parameter of one AdamW step, multi-pass and fused, and their ratio, counted by
    running both on one random tensor of `size` elements in `dtype`."""
    rng = np.random.default_rng(0)
    counts = {}
    for label, step in (("multi_pass", adamw_multi_pass), ("single_pass", adamw_single_pass)):
        params = {"w": rng.standard_normal((size, 1) if decay else size).astype(dtype)}
        grads = {"w": rng.standard_normal(params["w"].shape).astype(dtype)}
        counts[label] = step(params, grads, new_adamw_state(params))
    return {
        "multi_pass_bytes_per_param": counts["multi_pass"]["bytes_per_param"],
        "multi_pass_passes": counts["multi_pass"]["passes"],
        "single_pass_bytes_per_param": counts["single_pass"]["bytes_per_param"],
        "ratio": counts["multi_pass"]["bytes_per_param"] / counts["single_pass"]["bytes_per_param"],
    }
