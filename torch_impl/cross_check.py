"""The same training run twice, in the NumPy reference and in torch, compared step by step.

Both sides start from the same parameters (`ref_numpy.gpt.init_params`), draw the same batches
(a `BatchSampler` each, same seed), follow the same warmup + cosine schedule, clip at 1.0 and
decay at 0.1, through the trainers' own `train_step` functions; torch uses SDPA attention and
fused AdamW. In float64 the two loss curves agree to rounding (tests/test_cross_check.py holds
every step under 1e-13; notebook 07 prints the errors); in float32 both NumPy and torch are judged
against the NumPy float64 run. This mirrors tests/test_training_run.py.
"""

from __future__ import annotations

import numpy as np
import torch

from ref_numpy.adamw import AdamW
from ref_numpy.config import GPTConfig
from ref_numpy.data import (
    DEFAULT_DATA_DIR,
    BatchSampler,
    decode,
    encode,
    ensure_prepared,
    load_split,
)
from ref_numpy.gpt import init_params
from ref_numpy.schedule import get_lr
from ref_numpy.step import train_step as numpy_train_step
from torch_impl.model import GPT
from torch_impl.numpy_bridge import load_numpy_params, numpy_params
from torch_impl.step import train_step as torch_train_step

# At learning rate 3e-3 the two float64 runs agree to rounding at every step. At 1e-2 this tiny
# model trains in a chaotic regime: the same rounding differences grow more than 1e4-fold over
# the 50 steps, which would test the dynamics, not the arithmetic (tests/test_cross_check.py
# pins both). MIN_LR is a tenth of the peak rate.
LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, GRAD_CLIP = 3e-3, 3e-4, 10, 0.1, (0.9, 0.95), 1.0


def small_config(vocab_size: int) -> GPTConfig:
    """The test suite's training-run model: 2 layers, 2 heads, 32 wide, context 32."""
    return GPTConfig(block_size=32, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32)


def numpy_run(
    cfg: GPTConfig,
    data: np.ndarray,
    steps: int,
    batch_size: int,
    seed: int,
    dtype,
    accumulation: int = 1,
    *,
    lr: float = LR,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Losses of `steps` NumPy training steps in `dtype`, and the final parameters; each step
    accumulates the gradients of `accumulation` micro-batches. `lr` is the peak learning rate
    (warmup, then cosine decay to a tenth of it)."""
    params = init_params(cfg, seed=seed, dtype=dtype)
    optimizer = AdamW(params, lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
    sampler = BatchSampler(data, cfg.block_size, batch_size, seed=seed)
    losses = []
    for it in range(steps):
        lr_it = get_lr(it, lr, WARMUP, steps, lr * MIN_LR / LR)
        micro = [sampler.next_batch() for _ in range(accumulation)]
        losses.append(numpy_train_step(params, cfg, optimizer, micro, lr_it, GRAD_CLIP)[0])
    return np.array(losses, dtype=np.float64), params


def torch_run(
    cfg: GPTConfig,
    data: np.ndarray,
    steps: int,
    batch_size: int,
    seed: int,
    dtype: torch.dtype,
    accumulation: int = 1,
    *,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
    attention: str = "sdpa",
    fused: bool = True,
    compile_model: bool = False,
    lr: float = LR,
) -> tuple[np.ndarray, GPT]:
    """Losses of `steps` torch training steps (same init and batches as `numpy_run`), and the model.

    The parameters are held in `dtype` on `device`; with `autocast` (torch.bfloat16, say) the
    forward runs under autocast to it, as `torch_impl.train` does on a GPU. `attention` picks the
    model's attention path, `fused` fused AdamW (else foreach), `compile_model` torch.compile;
    `lr` the peak learning rate, as in `numpy_run`.
    The model returned is the uncompiled one (its parameters are the trained ones either way).
    """
    device = torch.device(device)
    model = GPT(cfg, attention=attention).to(device=device, dtype=dtype)
    load_numpy_params(model, init_params(cfg, seed=seed))  # cast to the model's dtype
    optimizer = model.configure_optimizers(WEIGHT_DECAY, lr, BETAS, device.type, fused=fused)
    step_model = torch.compile(model) if compile_model else model
    context = torch.autocast(device.type, dtype=autocast) if autocast is not None else None
    sampler = BatchSampler(data, cfg.block_size, batch_size, seed=seed)
    losses = []
    for it in range(steps):
        lr_it = get_lr(it, lr, WARMUP, steps, lr * MIN_LR / LR)
        micro = [sampler.next_batch() for _ in range(accumulation)]
        losses.append(
            torch_train_step(step_model, optimizer, micro, lr_it, GRAD_CLIP, autocast=context)[0]
        )
    return np.array(losses, dtype=np.float64), model


def flat_params(params: dict[str, np.ndarray]) -> np.ndarray:
    """All parameters as one float64 vector, in name order: one relative error for a model."""
    return np.concatenate([params[n].reshape(-1) for n in sorted(params)]).astype(np.float64)


def _relative(candidate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(candidate - reference) / np.linalg.norm(reference))


def cross_check_runs(
    steps: int = 50,
    seed: int = 0,
    batch_size: int = 8,
    float32: bool = True,
    data_dir=DEFAULT_DATA_DIR,
) -> dict:
    """Run NumPy and torch side by side on the Shakespeare corpus.

    Returns per-step losses ("numpy64", "torch64", and with `float32` "numpy32", "torch32"),
    per-step relative loss differences against the NumPy float64 run ("step_error_torch64",
    "step_error_numpy32", "step_error_torch32": |a - b| / |b|), the final-parameter relative
    errors ("param_error_*"), the float64 torch model ("torch_model"), the vocabulary ("chars"),
    the settings ("steps", "batch_size", "lr", "grad_clip", "weight_decay") and the loss of the
    unigram baseline on the training split ("unigram_loss", `unigram_loss`).
    """
    meta = ensure_prepared(data_dir)
    data = load_split(data_dir, "train")
    cfg = small_config(meta["vocab_size"])
    reference_losses, reference_params = numpy_run(cfg, data, steps, batch_size, seed, np.float64)
    result = {
        "config": cfg,
        "chars": meta["chars"],
        "numpy64": reference_losses,
        "steps": steps,
        "batch_size": batch_size,
        "lr": LR,
        "grad_clip": GRAD_CLIP,
        "weight_decay": WEIGHT_DECAY,
        "unigram_loss": unigram_loss(data, cfg.vocab_size),
    }
    runs = {"torch64": lambda: torch_run(cfg, data, steps, batch_size, seed, torch.float64)}
    if float32:
        runs["numpy32"] = lambda: numpy_run(cfg, data, steps, batch_size, seed, np.float32)
        runs["torch32"] = lambda: torch_run(cfg, data, steps, batch_size, seed, torch.float32)
    for label, run in runs.items():
        losses, final = run()
        if isinstance(final, GPT):
            if label == "torch64":
                result["torch_model"] = final
            final = numpy_params(final)
        result[label] = losses
        result[f"step_error_{label}"] = np.abs(losses - reference_losses) / np.abs(reference_losses)
        result[f"param_error_{label}"] = _relative(
            flat_params(final), flat_params(reference_params)
        )
    return result


def unigram_loss(tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of predicting every token from the tokens' frequencies in
    `tokens` alone, ignoring all context: their entropy. A model must beat it to have learnt
    anything beyond which characters are common."""
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.float64)
    frequencies = counts[counts > 0] / counts.sum()
    return float(-(frequencies * np.log(frequencies)).sum())


def sample_text(
    model: GPT, chars: list[str], n_tokens: int = 200, seed: int = 0, prompt: str = "\n"
) -> str:
    """`n_tokens` characters sampled from `model` (temperature 1) after `prompt`."""
    model.eval()
    parameter = next(model.parameters())
    context = torch.from_numpy(encode(prompt, chars).astype(np.int64))[None].to(parameter.device)
    generator = torch.Generator(device=parameter.device).manual_seed(seed)
    tokens = model.generate(context, n_tokens, generator=generator)
    return decode(tokens[0].tolist(), chars)
