"""The kernels of causal self-attention, materialised or flash, forward and backward.

Materialised, as torch.matmul and softmax run it: S = q k^T / sqrt(d) is written to memory,
scaled, masked and softmaxed into P, each a B x H x T x T array written and read back, and the
backward reads P again. Flash (FlashAttention-2, Dao 2023): one kernel per direction keeps S and
P in on-chip tiles, skips the tiles the causal mask empties, and the backward recomputes S from
q, k and the saved log-sum-exp instead of reading P.
"""

from __future__ import annotations

from ref_numpy.config import GPTConfig
from ref_numpy.flops import matmul_flops
from ref_numpy.roofline.kernel import ATTENTION_KINDS, MASK_BYTES, STAT_BYTES, Kernel, StepBuilder


def attention_forward(s, cfg, B, T, h, attention, in_gpt: bool = True) -> str:
    """Causal attention of block prefix h from its q, k, v; returns the output's tensor name.
    `in_gpt`: q, k, v are views of the c_attn output and y is put back in (B, T, C) order, as
    in the GPT; otherwise they are contiguous (B, H, T, d) tensors of their own."""
    C, H, Q = cfg.n_embd, cfg.n_head, cfg.head_size
    BTC, scores = B * T * C, B * H * T * T
    if attention == "flash":
        # one kernel (FlashAttention-2, Algorithm 1): S and P live in on-chip tiles only; the
        # masked tiles are skipped, so half the T x T matmul work and exponentials
        flops = matmul_flops(B * H * T, Q, T)  # S = Q K^T and O = P V, each half of 2*T*T*Q
        s.add(
            f"{h} flash attention forward",
            "attention",
            {f"{h}.q": s.act(BTC), f"{h}.k": s.act(BTC), f"{h}.v": s.act(BTC)},
            {f"{h}.y": s.act(BTC), f"{h}.lse": B * H * T * STAT_BYTES},
            flops=flops,
            transcendentals={"exp": scores / 2},
            tensor_cores=True,
            fusable=False,
        )
        return f"{h}.y"
    # materialised, as torch.matmul and softmax run it: in the GPT q, k^T and v are strided
    # views of the c_attn output, copied contiguous for bmm; S and P are written and read back
    if in_gpt:
        for part in ("q", "k", "v"):
            s.add(
                f"{h} {part} layout copy",
                "attention",
                {f"{h}.{part}": s.act(BTC)},
                {f"{h}.{part}c": s.act(BTC)},
            )
    q, k, v = (f"{h}.{part}c" if in_gpt else f"{h}.{part}" for part in "qkv")
    s.matmul(f"{h} S = q k^T", "attention", T, Q, T, q, k, f"{h}.S", batch=B * H)
    s.add(
        f"{h} scale",
        "attention",
        {f"{h}.S": s.act(scores)},
        {f"{h}.S1": s.act(scores)},
        flops=scores,
    )
    s.add(
        f"{h} mask = ~tril",
        "attention",
        {"causal_mask": T * T * MASK_BYTES},
        {f"{h}.mask": T * T * MASK_BYTES},
    )
    s.add(
        f"{h} masked_fill",
        "attention",
        {f"{h}.S1": s.act(scores), f"{h}.mask": T * T * MASK_BYTES},
        {f"{h}.S2": s.act(scores)},
    )
    s.add(
        f"{h} softmax",
        "attention",
        {f"{h}.S2": s.act(scores)},
        {f"{h}.P": s.act(scores)},
        flops=4 * scores,
        transcendentals={"exp": scores},
    )
    s.matmul(f"{h} y = P v", "attention", T, T, Q, f"{h}.P", v, f"{h}.y", batch=B * H)
    if not in_gpt:
        return f"{h}.y"
    s.add(f"{h} y layout copy", "attention", {f"{h}.y": s.act(BTC)}, {f"{h}.yc": s.act(BTC)})
    return f"{h}.yc"


def attention_backward(s, cfg, B, T, h, attention, d_y, in_gpt: bool = True) -> None:
    """From d_y (the attention output's gradient) to the gradients of q, k and v; in the GPT,
    concatenated into d:{h}.qkv, the c_attn output's gradient."""
    C, H, Q = cfg.n_embd, cfg.n_head, cfg.head_size
    BTC, scores = B * T * C, B * H * T * T
    if attention == "flash":
        # FlashAttention-2, Algorithm 2: recomputes S and P tile by tile from q, k and the
        # log-sum-exp, so five half-size T x T matmuls (S again, dV, dP, dQ, dK)
        s.add(
            f"{h} flash attention backward",
            "attention",
            {
                d_y: s.act(BTC),
                f"{h}.q": s.act(BTC),
                f"{h}.k": s.act(BTC),
                f"{h}.v": s.act(BTC),
                f"{h}.y": s.act(BTC),
                f"{h}.lse": B * H * T * STAT_BYTES,
            },
            {f"d:{h}.q": s.act(BTC), f"d:{h}.k": s.act(BTC), f"d:{h}.v": s.act(BTC)},
            flops=5 * matmul_flops(B * H * T, Q, T) / 2,
            transcendentals={"exp": scores / 2},
            tensor_cores=True,
            fusable=False,
        )
        parts = (f"d:{h}.q", f"d:{h}.k", f"d:{h}.v")
        if not in_gpt:
            return
    else:
        q, k, v = (f"{h}.{part}c" if in_gpt else f"{h}.{part}" for part in "qkv")
        if in_gpt:
            s.add(f"{h} dy layout copy", "attention", {d_y: s.act(BTC)}, {f"d:{h}.y": s.act(BTC)})
            d_y = f"d:{h}.y"
        s.matmul(f"{h} dv = P^T dy", "attention", T, T, Q, f"{h}.P", d_y, f"d:{h}.v", batch=B * H)
        s.matmul(f"{h} dP = dy v^T", "attention", T, Q, T, d_y, v, f"d:{h}.P", batch=B * H)
        s.add(
            f"{h} softmax backward",
            "attention",
            {f"d:{h}.P": s.act(scores), f"{h}.P": s.act(scores)},
            {f"d:{h}.S2": s.act(scores)},
            flops=3 * scores,
        )
        s.add(
            f"{h} masked_fill backward",
            "attention",
            {f"d:{h}.S2": s.act(scores), f"{h}.mask": T * T * MASK_BYTES},
            {f"d:{h}.S1": s.act(scores)},
        )
        s.add(
            f"{h} scale backward",
            "attention",
            {f"d:{h}.S1": s.act(scores)},
            {f"d:{h}.S": s.act(scores)},
            flops=scores,
        )
        s.matmul(f"{h} dk = dS^T q", "attention", Q, T, T, q, f"d:{h}.S", f"d:{h}.k", batch=B * H)
        s.matmul(f"{h} dq = dS k", "attention", T, T, Q, f"d:{h}.S", k, f"d:{h}.q", batch=B * H)
        if not in_gpt:
            return
        # dq and dv leave bmm in (B, H, T, Q) order and are copied to (B, T, H, Q); dk's
        # transposes cancel into a view
        for part in ("q", "v"):
            s.add(
                f"{h} d{part} layout copy",
                "attention",
                {f"d:{h}.{part}": s.act(BTC)},
                {f"d:{h}.{part}c": s.act(BTC)},
            )
        parts = (f"d:{h}.qc", f"d:{h}.k", f"d:{h}.vc")
    s.add(
        f"{h} concatenate dq, dk, dv",
        "attention",
        {part: s.act(BTC) for part in parts},
        {f"d:{h}.qkv": s.act(3 * BTC)},
    )


def attention_kernels(
    batch: int,
    heads: int,
    T: int,
    head_dim: int,
    *,
    dtype_bytes: int = 2,
    attention: str = "flash",
    device_type: str = "cuda",
) -> list[Kernel]:
    """Causal attention alone, forward and backward, on contiguous (B, H, T, d) q, k, v and
    output gradient, as `python -m torch_impl.bench --sections attention` times it. q, k, v are
    leaf tensors there, and a gradient that comes back in another layout is copied into theirs:
    the materialised dk (bmm makes dk^T) on any device, and on a CPU all three of flash
    attention's (its kernel writes them in (B, T, H, d) order, as the CPU trace shows)."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    cfg = GPTConfig(block_size=T, vocab_size=1, n_layer=1, n_head=heads, n_embd=heads * head_dim)
    s = StepBuilder(dtype_bytes)
    attention_forward(s, cfg, batch, T, "attn", attention, in_gpt=False)
    s.phase = "backward"
    attention_backward(s, cfg, batch, T, "attn", attention, "d:attn.y", in_gpt=False)
    copied = "k" if attention == "materialised" else ("qkv" if device_type == "cpu" else "")
    elements = batch * T * heads * head_dim
    for part in copied:
        s.add(
            f"attn d{part} layout copy",
            "attention",
            {f"d:attn.{part}": s.act(elements)},
            {f"d:attn.{part}c": s.act(elements)},
        )
    return s.kernels
