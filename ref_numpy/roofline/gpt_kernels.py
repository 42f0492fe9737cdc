"""The kernels of a GPT's forward and backward pass (`torch_impl.model.GPT`, nanoGPT's model) in
the order eager PyTorch launches them: embedding, per block LayerNorm, c_attn, attention,
c_proj, residual add, LayerNorm, c_fc, GELU, c_proj, residual add; then the final LayerNorm,
the lm_head and the loss, and the backward of each in reverse. `tests/test_roofline.py` checks
every group's bytes against the aten operators of a real step."""

from __future__ import annotations

from ref_numpy.config import GPTConfig
from ref_numpy.roofline.attention_kernels import attention_backward, attention_forward
from ref_numpy.roofline.kernel import INDEX_BYTES, STAT_BYTES, StepBuilder


def _embedding_forward(s: StepBuilder, cfg: GPTConfig, B: int, T: int) -> None:
    C = cfg.n_embd
    s.add("positions", "embedding", {}, {"pos": T * INDEX_BYTES})
    s.add(
        "wte lookup",
        "embedding",
        {"idx": B * T * INDEX_BYTES, "p:transformer.wte.weight": s.act(B * T * C)},
        {"tok_emb": s.act(B * T * C)},
    )
    s.add(
        "wpe lookup",
        "embedding",
        {"pos": T * INDEX_BYTES, "p:transformer.wpe.weight": s.act(T * C)},
        {"pos_emb": s.act(T * C)},
    )
    s.add(
        "wte + wpe",
        "bias/residual",
        {"tok_emb": s.act(B * T * C), "pos_emb": s.act(T * C)},
        {"x0": s.act(B * T * C)},
        flops=B * T * C,
    )


def _layernorm_forward(s: StepBuilder, cfg: GPTConfig, rows: int, name: str, x: str) -> None:
    """y = (x - mean) * rstd * w + b over rows of C; mean and rstd kept for the backward."""
    C = cfg.n_embd
    reads = {x: s.act(rows * C), f"p:{name}.weight": s.act(C)}
    if cfg.bias:
        reads[f"p:{name}.bias"] = s.act(C)
    writes = {name: s.act(rows * C), f"{name}.mean": rows * STAT_BYTES}
    writes[f"{name}.rstd"] = rows * STAT_BYTES
    s.add(
        f"{name} forward",
        "layernorm",
        reads,
        writes,
        flops=8 * rows * C,
        transcendentals={"sqrt": rows},
    )


def _layernorm_backward(
    s: StepBuilder, cfg: GPTConfig, rows: int, name: str, x: str, d_out: str, d_in: str
) -> None:
    """dx from dy, x, mean, rstd and w (b is not read); dw, db summed over the rows."""
    C = cfg.n_embd
    reads = {d_out: s.act(rows * C), x: s.act(rows * C)}
    reads |= {f"{name}.mean": rows * STAT_BYTES, f"{name}.rstd": rows * STAT_BYTES}
    reads[f"p:{name}.weight"] = s.act(C)
    writes = {d_in: s.act(rows * C), f"g:{name}.weight": s.act(C)}
    if cfg.bias:
        writes[f"g:{name}.bias"] = s.act(C)
    s.add(f"{name} backward", "layernorm", reads, writes, flops=14 * rows * C)


def _linear_forward(s, cfg, rows, name, k, n, x, out) -> None:
    bias = f"p:{name}.bias" if cfg.bias else None
    s.matmul(f"{name} forward", "matmul", rows, k, n, x, f"p:{name}.weight", out, bias=bias)


def _linear_backward(s, cfg, rows, name, k, n, x, d_out, d_in) -> None:
    """dx = dy @ W, dW = dy^T @ x, db = sum of dy over the rows (autograd's order)."""
    s.matmul(f"{name} dx", "matmul", rows, n, k, d_out, f"p:{name}.weight", d_in)
    s.matmul(f"{name} dW", "matmul", n, rows, k, d_out, x, f"g:{name}.weight")
    if cfg.bias:
        s.add(
            f"{name} db",
            "bias/residual",
            {d_out: s.act(rows * n)},
            {f"g:{name}.bias": s.act(n)},
            flops=rows * n,
        )


def _residual_add(s: StepBuilder, name: str, a: str, b: str, out: str, elements: int) -> None:
    s.add(
        name,
        "bias/residual",
        {a: s.act(elements), b: s.act(elements)},
        {out: s.act(elements)},
        flops=elements,
    )


def _gelu_transcendentals(cfg: GPTConfig, elements: int, backward: bool) -> dict[str, float]:
    if cfg.gelu == "tanh":
        return {"tanh": elements}
    # x * Phi(x): erf forward; the backward adds the density's exp(-x^2 / 2)
    return {"erf": elements, "exp": elements} if backward else {"erf": elements}


def forward_kernels(s: StepBuilder, cfg: GPTConfig, B: int, T: int, attention: str) -> None:
    C, V, BT = cfg.n_embd, cfg.vocab_size, B * T
    _embedding_forward(s, cfg, B, T)
    for layer in range(cfg.n_layer):
        h, x = f"transformer.h.{layer}", f"x{layer}"
        _layernorm_forward(s, cfg, BT, f"{h}.ln_1", x)
        # q, k, v are views of the c_attn output, a third of it each
        qkv = tuple(f"{h}.{part}" for part in "qkv")
        _linear_forward(s, cfg, BT, f"{h}.attn.c_attn", C, 3 * C, f"{h}.ln_1", qkv)
        y = attention_forward(s, cfg, B, T, h, attention)
        _linear_forward(s, cfg, BT, f"{h}.attn.c_proj", C, C, y, f"{h}.attn_out")
        _residual_add(s, f"{h} residual (attention)", x, f"{h}.attn_out", f"x{layer}a", BT * C)
        _layernorm_forward(s, cfg, BT, f"{h}.ln_2", f"x{layer}a")
        _linear_forward(s, cfg, BT, f"{h}.mlp.c_fc", C, 4 * C, f"{h}.ln_2", f"{h}.fc")
        s.add(
            f"{h} gelu",
            "gelu",
            {f"{h}.fc": s.act(4 * BT * C)},
            {f"{h}.gelu": s.act(4 * BT * C)},
            flops=5 * 4 * BT * C,
            transcendentals=_gelu_transcendentals(cfg, 4 * BT * C, False),
        )
        _linear_forward(s, cfg, BT, f"{h}.mlp.c_proj", 4 * C, C, f"{h}.gelu", f"{h}.mlp_out")
        _residual_add(
            s, f"{h} residual (MLP)", f"x{layer}a", f"{h}.mlp_out", f"x{layer + 1}", BT * C
        )
    _layernorm_forward(s, cfg, BT, "transformer.ln_f", f"x{cfg.n_layer}")
    s.matmul(
        "lm_head forward",
        "matmul",
        BT,
        C,
        V,
        "transformer.ln_f",
        "p:transformer.wte.weight",
        "logits",
    )
    s.add(
        "log_softmax",
        "softmax + cross-entropy",
        {"logits": s.act(BT * V)},
        {"logp": s.act(BT * V)},
        flops=4 * BT * V,
        transcendentals={"exp": BT * V, "log": BT},
    )
    # the loss picks one log-probability per row: it reads BT of them, not the BT x V table
    s.add(
        "nll_loss",
        "softmax + cross-entropy",
        {"targets": BT * INDEX_BYTES, "logp": s.act(BT)},
        {},
        flops=BT,
    )


def backward_kernels(s: StepBuilder, cfg: GPTConfig, B: int, T: int, attention: str) -> None:
    C, V, BT, L = cfg.n_embd, cfg.vocab_size, B * T, cfg.n_layer
    s.phase = "backward"
    # the gradient of the mean loss: zeros with -1/BT at each target (logp is not read)
    s.add(
        "nll_loss backward",
        "softmax + cross-entropy",
        {"targets": BT * INDEX_BYTES},
        {"d:logp": s.act(BT * V)},
    )
    s.add(
        "log_softmax backward",
        "softmax + cross-entropy",
        {"d:logp": s.act(BT * V), "logp": s.act(BT * V)},
        {"d:logits": s.act(BT * V)},
        flops=3 * BT * V,
        transcendentals={"exp": BT * V},
    )
    s.matmul(
        "lm_head dW",
        "matmul",
        V,
        BT,
        C,
        "d:logits",
        "transformer.ln_f",
        "g:transformer.wte.weight(lm_head)",
    )
    s.matmul(
        "lm_head dx",
        "matmul",
        BT,
        V,
        C,
        "d:logits",
        "p:transformer.wte.weight",
        "d:transformer.ln_f",
    )
    _layernorm_backward(s, cfg, BT, "transformer.ln_f", f"x{L}", "d:transformer.ln_f", f"d:x{L}")
    for layer in reversed(range(L)):
        h = f"transformer.h.{layer}"
        _linear_backward(
            s, cfg, BT, f"{h}.mlp.c_proj", 4 * C, C, f"{h}.gelu", f"d:x{layer + 1}", f"d:{h}.gelu"
        )
        s.add(
            f"{h} gelu backward",
            "gelu",
            {f"d:{h}.gelu": s.act(4 * BT * C), f"{h}.fc": s.act(4 * BT * C)},
            {f"d:{h}.fc": s.act(4 * BT * C)},
            flops=8 * 4 * BT * C,
            transcendentals=_gelu_transcendentals(cfg, 4 * BT * C, True),
        )
        _linear_backward(
            s, cfg, BT, f"{h}.mlp.c_fc", C, 4 * C, f"{h}.ln_2", f"d:{h}.fc", f"d:{h}.ln_2"
        )
        _layernorm_backward(
            s, cfg, BT, f"{h}.ln_2", f"x{layer}a", f"d:{h}.ln_2", f"d:x{layer}a(ln_2)"
        )
        _residual_add(
            s,
            f"{h} residual gradient (MLP)",
            f"d:x{layer}a(ln_2)",
            f"d:x{layer + 1}",
            f"d:x{layer}a",
            BT * C,
        )
        _linear_backward(
            s,
            cfg,
            BT,
            f"{h}.attn.c_proj",
            C,
            C,
            f"{h}.yc" if attention == "materialised" else f"{h}.y",
            f"d:x{layer}a",
            f"d:{h}.attn_y",
        )
        attention_backward(s, cfg, B, T, h, attention, f"d:{h}.attn_y")
        _linear_backward(
            s, cfg, BT, f"{h}.attn.c_attn", C, 3 * C, f"{h}.ln_1", f"d:{h}.qkv", f"d:{h}.ln_1"
        )
        _layernorm_backward(
            s, cfg, BT, f"{h}.ln_1", f"x{layer}", f"d:{h}.ln_1", f"d:x{layer}(ln_1)"
        )
        _residual_add(
            s,
            f"{h} residual gradient (attention)",
            f"d:x{layer}(ln_1)",
            f"d:x{layer}a",
            f"d:x{layer}",
            BT * C,
        )
    # x0 = wte[idx] + wpe[pos]: wpe's gradient sums over the batch first; wte's two
    # gradients (lookup and lm_head) are added
    s.add(
        "wpe gradient: sum over batch",
        "embedding",
        {"d:x0": s.act(BT * C)},
        {"d:pos_emb": s.act(T * C)},
        flops=BT * C,
    )
    s.add(
        "wpe lookup backward",
        "embedding",
        {"d:pos_emb": s.act(T * C), "pos": T * INDEX_BYTES},
        {"g:transformer.wpe.weight": s.act(cfg.block_size * C)},
        flops=T * C,
    )
    s.add(
        "wte lookup backward",
        "embedding",
        {"d:x0": s.act(BT * C), "idx": BT * INDEX_BYTES},
        {"g:transformer.wte.weight(lookup)": s.act(V * C)},
        flops=BT * C,
    )
    s.add(
        "wte gradient: lookup + lm_head",
        "embedding",
        {
            "g:transformer.wte.weight(lookup)": s.act(V * C),
            "g:transformer.wte.weight(lm_head)": s.act(V * C),
        },
        {"g:transformer.wte.weight": s.act(V * C)},
        flops=V * C,
    )
