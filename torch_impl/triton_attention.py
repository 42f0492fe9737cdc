"""FlashAttention-2 in Triton: the tiled forward and backward of `ref_numpy.flash_attention`
as GPU kernels, with its loops, names and line numbers (Dao 2023, "FlashAttention-2",
Algorithm 1 (forward) and Algorithm 2 (backward)).

Read it beside `ref_numpy/flash_attention.py`. There, Python loops walk the blocks; here one
Triton program owns one block of one (batch, head), its rows in registers, and runs the NumPy
inner loop over the other blocks. Three departures, each for speed, none changing the math:
- Scores are kept in base 2: S_ij carries 1/sqrt(d) times log2(e), so exp(x) becomes exp2, the
  GPU's native exponential. m_i and the stored L are in those units too, so that the backward
  recomputes P_ij = exp2(S_ij - L_i) from the very numbers the forward rounded (the L that
  `flash_attention_forward` hands out is in natural units, as NumPy's lse).
- The scale is applied inside the exponent. S_ij = (Q_i K_j^T) qk_scale is never stored:
  the row max is taken of the raw products QK_ij and scaled once per row (rounding is monotonic
  and qk_scale > 0, so that is the max of the scaled scores, to the bit), and the exponent
  S_ij - m_i is one fused multiply-add per element, QK_ij * qk_scale - m_i, as in Triton's
  fused-attention tutorial, where a multiply and a subtraction were two instructions. The
  FMA rounds once where those rounded twice (the interpreter, without FMA, rounds as before).
  Folding the scale into Q_i once instead would round Q_i * qk_scale to Q's dtype: a rounding
  of every 16-bit input that plain attention does not make, which the tests' 2x rule need not
  allow for.
- The key loop runs in two parts: blocks wholly below the diagonal (and, without the causal
  mask, every complete block) with no mask, then the blocks crossing the diagonal, or the
  partial last block, masked elementwise (`_visited` of the NumPy code, decided per loop).
- dQ has a kernel of its own. Algorithm 2 adds dS_ij K_j into dQ_i in slow memory from every key
  block j (line 14), which in parallel means atomic adds; here a program per query block loops
  over the key blocks instead, recomputing S_ij and dP_ij (two more matmuls per tile), so dQ is
  summed in registers, in a fixed order, and the gradients are deterministic.
Inputs float32, bfloat16 or float16, (B, H, T, d) with any strides, d up to 128; every
accumulation (S, m, l, O, dQ, dK, dV) is float32. Without a GPU the kernels run under Triton's
interpreter (slowly: for the tests).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch.nn import functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernels below then stay plain functions that nothing launches
    triton = tl = None

TRITON_AVAILABLE = triton is not None

# Triton decides between compiling a kernel and interpreting it (NumPy on the CPU, one program
# after another) when triton.jit wraps the function, reading TRITON_INTERPRET at that moment
# (as `triton.knobs.runtime.interpret`, in Triton 3.6 and 3.7). A machine without a GPU can
# only interpret, so there this module wraps its kernels with the variable set and restores it
# straight after. The choice is made here, once, at import: the tests need no set-up (started
# with or without TRITON_INTERPRET=1, they interpret on a CPU and compile on a GPU), no other
# code sees the environment changed, and no subprocess is needed. One catch: Triton's own
# tl.zeros, tl.sum, tl.max are jit functions too, wrapped when triton was first imported
# (perhaps by torch.compile, before this module), and an interpreted kernel cannot call a
# compiled-mode one; so the kernels call only Triton's builtins and this file's jit functions
# (`_row_max` and `_row_sum` in place of tl.max and tl.sum, tl.full in place of tl.zeros).
INTERPRETED = TRITON_AVAILABLE and (triton.knobs.runtime.interpret or not torch.cuda.is_available())
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOG2_E = math.log2(math.e)  # exp(x) = exp2(x log2 e): the kernels' scores are in base 2
LN_2 = math.log(2.0)  # log(x) = log2(x) ln 2
MAX_HEAD_DIM = 128  # Q_i, dK_j and dV_j live in registers: d = 256 no longer fits there

# Block sizes the autotuner times on a GPU, per (T, d, causal, dtype): (BLOCK_M, BLOCK_N,
# num_warps, num_stages). BLOCK_M is always a block of queries (B_r), BLOCK_N of keys (B_c);
# the block a program owns is a multiple of the one it loops over, so the diagonal falls on
# loop-block boundaries. A config whose tiles overflow shared memory is skipped (one that spills
# registers is only slow). The last of each list has the smallest tiles, float32's only ones.
# The lists follow the configurations Triton's fused-attention tutorial publishes for Hopper:
# forward 128 x 64 and 128 x 128 tiles, 3 or 4 stages (the loads of the next key blocks in
# flight while this one is multiplied); backward the tutorial's 5 stages on a thin looped-over
# block against a wide owned one (32 queries under 128 keys for dK, dV; 128 queries over 32 keys
# for dQ). Its 4 warps on those wide blocks spill registers here at d = 128 (dK_j and dV_j, or
# O_i, [128, d] float32 each, with Q_i or K_j, V_j beside them), so they take 8. float32's tiles
# are smaller still: its products run on the CUDA cores, whose operands are held in registers.
# `python -m torch_impl.triton_aot` compiles every one of them for sm_90 and records registers,
# spills and shared memory in results/triton_sm90.json; tests/test_triton_aot.py keeps every
# config the autotuner may time free of spills. 128 x 128 with 4 stages is over sm_90's shared
# memory at d = 128, where the autotuner skips it.
FORWARD_CONFIGS = [
    (128, 128, 8, 4),
    (128, 128, 8, 3),
    (128, 64, 8, 4),
    (128, 64, 8, 3),
    (64, 64, 4, 3),
    (32, 16, 8, 2),
]
DK_DV_CONFIGS = [
    (32, 128, 8, 5),
    (32, 128, 8, 3),
    (32, 64, 4, 5),
    (32, 64, 4, 3),
    (16, 32, 8, 2),
]
DQ_CONFIGS = [
    (128, 32, 8, 5),
    (128, 32, 8, 3),
    (128, 64, 8, 2),
    (64, 32, 4, 5),
    (64, 32, 4, 3),
    (32, 16, 4, 2),
]
# Under the interpreter: one small config, so that the tests' short sequences span several blocks.
INTERPRETER_CONFIGS = {"forward": (32, 16), "dk_dv": (16, 32), "dq": (32, 16)}


@contextlib.contextmanager
def _interpret_while_wrapping():
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _jit(fn):
    """triton.jit, or the interpreter's wrapper where INTERPRETED; fn itself without Triton."""
    if not TRITON_AVAILABLE:
        return fn
    if not INTERPRETED:
        return triton.jit(fn)
    with _interpret_while_wrapping():
        return triton.jit(fn)


def _autotuned(name: str, gpu_configs: list[tuple[int, int, int, int]]):
    """_jit, then the autotuner over `gpu_configs` (one fixed config under the interpreter)."""

    def wrap(fn):
        if not TRITON_AVAILABLE:
            return fn
        if INTERPRETED:
            block_m, block_n = INTERPRETER_CONFIGS[name]
            configs = [triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n})]
        else:
            configs = [
                triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
                for m, n, warps, stages in gpu_configs
            ]
        return triton.autotune(
            configs=configs,
            key=["T_BUCKET", "HEAD_DIM", "CAUSAL"],  # and the dtypes, which Triton adds
            prune_configs_by={"early_config_prune": _float32_takes_the_smallest},
        )(_jit(fn))

    return wrap


def _float32_takes_the_smallest(configs, named_args, **kwargs):
    """float32 inputs run on the CUDA cores (true float32 products, no tensor cores): a path for
    checking, not for speed, so only the smallest tiles, which fit at any d, are compiled."""
    return configs[-1:] if named_args["Q"].dtype == torch.float32 else configs


# ----------------------------------------------------------------------------- tile helpers
@_jit
def _row_max(x):
    """max over axis 1: tl.max's own reduction, written out (see the interpreter note above).
    The interpreter recognises Triton's combine function and runs NumPy's max."""
    return tl.reduce(x, 1, tl.standard._elementwise_max)


@_jit
def _row_sum(x):
    """sum over axis 1: tl.sum's own reduction, written out, as `_row_max`."""
    return tl.reduce(x, 1, tl.standard._sum_combine)


@_jit
def _load_rows(X, rows, stride_t, T, HEAD_DIM: tl.constexpr):
    """Rows `rows` of one (batch, head) slice X [T, d]; rows past T read as 0 (partial block)."""
    offs_d = tl.arange(0, HEAD_DIM)
    return tl.load(
        X + rows[:, None] * stride_t + offs_d[None, :], mask=rows[:, None] < T, other=0.0
    )


@_jit
def _store_rows(X, rows, stride_t, T, values, HEAD_DIM: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    ptrs = X + rows[:, None] * stride_t + offs_d[None, :]
    tl.store(ptrs, values.to(X.dtype.element_ty), mask=rows[:, None] < T)


@_jit
def _key_block_bounds(
    start_m, T, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """For the query block starting at start_m: keys [0, full_end) are visited with no mask,
    keys [full_end, visited_end) with one; later keys are skipped (`_visited` in NumPy)."""
    if CAUSAL:
        # keys before start_m lie at or below the diagonal for every query of the block;
        # start_m is a multiple of BLOCK_N, so they make whole key blocks
        full_end = start_m
        visited_end = tl.minimum(start_m + BLOCK_M, T)  # the block's last query sees no further
    else:
        full_end = (T // BLOCK_N) * BLOCK_N  # the complete key blocks; a partial last one masked
        visited_end = T
    return full_end, visited_end


@_jit
def _visible(offs_m, offs_n, T, CAUSAL: tl.constexpr):
    """[B_r, B_c]: query offs_m sees key offs_n (key < T, and key <= query when causal)."""
    visible = offs_n[None, :] < T
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None])
    return visible


# ----------------------------------------------------------------------------- forward
@_jit
def _forward_key_blocks(
    O_i, l_i, m_i, Q_i, offs_m, K, V, stride_kt, stride_vt, lo, hi, T, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Lines 6-11 of Algorithm 1 over the key blocks starting in [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):  # line 6: for each key block j
        offs_n = start_n + tl.arange(0, BLOCK_N)
        K_j = _load_rows(K, offs_n, stride_kt, T, HEAD_DIM)  # line 7: load K_j, V_j   [B_c, d]
        V_j = _load_rows(V, offs_n, stride_vt, T, HEAD_DIM)
        # line 8: S_ij = QK_ij qk_scale, the scale applied in the exponent (module docstring)
        QK_ij = tl.dot(Q_i, tl.trans(K_j), input_precision=DOT_PRECISION)
        if MASKED:
            QK_ij = tl.where(_visible(offs_m, offs_n, T, CAUSAL), QK_ij, float("-inf"))
        # line 9: new running max; P_ij relative to it; the old sum rescaled to the new max.
        # The first visited block holds key 0, seen by every query, so m_new is finite.
        m_new = tl.maximum(m_i, _row_max(QK_ij) * qk_scale)
        P_ij = tl.math.exp2(QK_ij * qk_scale - m_new[:, None])  # exp2(-inf) = 0 where masked
        rescale = tl.math.exp2(m_i - m_new)  # [B_r]; 0 when m_i = -inf
        l_i = rescale * l_i + _row_sum(P_ij)
        # line 10: O_i = rescale O_i + P_ij V_j, P_ij rounded to V's dtype as the matmul input
        O_i = tl.dot(P_ij.to(V_j.dtype), V_j, rescale[:, None] * O_i, input_precision=DOT_PRECISION)
        m_i = m_new
    return O_i, l_i, m_i


@_autotuned("forward", FORWARD_CONFIGS)
def _forward_kernel(
    Q, K, V, O, L,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
    H, T, T_BUCKET, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Algorithm 1 for one query block i (program_id(0)) of (batch, head) = program_id(1)."""
    # line 3: this program's query block i, the last first: under the causal mask the last blocks
    # visit the most key blocks, and starting them first leaves the short ones for the last wave
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "key blocks must tile a query block")
    bh = tl.program_id(1)
    batch, head = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    Q += batch * stride_qb + head * stride_qh  # the (batch, head) slices [T, d]
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    O += batch * stride_ob + head * stride_oh
    offs_m = start_m + tl.arange(0, BLOCK_M)  # the rows of Q_i
    Q_i = _load_rows(Q, offs_m, stride_qt, T, HEAD_DIM)  # line 4: load Q_i   [B_r, d]
    O_i = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)  # line 5: O_i = 0
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)  # l_i = 0
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # m_i = -inf
    full_end, visited_end = _key_block_bounds(start_m, T, CAUSAL, BLOCK_M, BLOCK_N)
    O_i, l_i, m_i = _forward_key_blocks(
        O_i, l_i, m_i, Q_i, offs_m, K, V, stride_kt, stride_vt, 0, full_end, T, qk_scale,
        HEAD_DIM, CAUSAL, False, DOT_PRECISION, BLOCK_N,
    )  # fmt: skip
    O_i, l_i, m_i = _forward_key_blocks(
        O_i, l_i, m_i, Q_i, offs_m, K, V, stride_kt, stride_vt, full_end, visited_end, T,
        qk_scale, HEAD_DIM, CAUSAL, True, DOT_PRECISION, BLOCK_N,
    )  # fmt: skip
    _store_rows(O, offs_m, stride_ot, T, O_i / l_i[:, None], HEAD_DIM)  # lines 12, 14: write O_i
    L_i = m_i + tl.math.log2(l_i)  # lines 13, 15: write L_i (base 2, as S_ij)
    tl.store(L + bh.to(tl.int64) * T + offs_m, L_i, mask=offs_m < T)


# ----------------------------------------------------------------------------- backward
# With P_ij = exp(S_ij - L_i) recomputed from the stored L (no T x T matrix is kept; here
# exp2 of base-2 S_ij and L_i, which gives the same P_ij):
#   dV_j = sum_i P_ij^T dO_i,  dP_ij = dO_i V_j^T,  dS_ij = P_ij * (dP_ij - D_i),
#   dQ_i = scale sum_j dS_ij K_j,  dK_j = scale sum_i dS_ij^T Q_i,  D = rowsum(dO * O).
# dS is the gradient of the natural-unit score, whatever base the exponential is taken in.
# Rows past T are read as zeros (Q_i, dO_i, L_i, D_i): there P_ij^T dO_i = 0 and dP_ij = D_i = 0,
# so dS_ij = 0, and a partial last query block adds nothing to dK_j, dV_j without a mask.
@_jit
def _backward_preprocess(
    O, dO, D, stride_ob, stride_oh, stride_ot, stride_dob, stride_doh, stride_dot, H, T,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Line 3: D_i = rowsum(dO_i * O_i) in float32, for one query block of one (batch, head)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1)
    batch, head = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    O_i = _load_rows(O + batch * stride_ob + head * stride_oh, offs_m, stride_ot, T, HEAD_DIM)
    dO_i = _load_rows(dO + batch * stride_dob + head * stride_doh, offs_m, stride_dot, T, HEAD_DIM)
    D_i = _row_sum(dO_i.to(tl.float32) * O_i.to(tl.float32))
    tl.store(D + bh.to(tl.int64) * T + offs_m, D_i, mask=offs_m < T)


@_jit
def _dk_dv_query_blocks(
    dK_j, dV_j, K_j, V_j, offs_n, Q, dO, L, D, stride_qt, stride_dot, lo, hi, T, qk_scale,
    HEAD_DIM: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Lines 7-15 of Algorithm 2 over the query blocks starting in [lo, hi), less line 14 (dQ).
    Tiles are held transposed, [B_c, B_r] (P_ij^T, written PT_ij), so that P_ij^T dO_i and
    dS_ij^T Q_i are plain matmuls."""
    for start_m in range(lo, hi, BLOCK_M):  # line 7: for each query block i
        offs_m = start_m + tl.arange(0, BLOCK_M)
        Q_i = _load_rows(Q, offs_m, stride_qt, T, HEAD_DIM)  # line 8: load Q_i, dO_i, L_i, D_i
        dO_i = _load_rows(dO, offs_m, stride_dot, T, HEAD_DIM)
        L_i = tl.load(L + offs_m, mask=offs_m < T, other=0.0)
        D_i = tl.load(D + offs_m, mask=offs_m < T, other=0.0)
        QKT_ij = tl.dot(K_j, tl.trans(Q_i), input_precision=DOT_PRECISION)  # line 9, unscaled
        if MASKED:  # causal: key n is seen by queries m >= n only
            QKT_ij = tl.where(offs_m[None, :] >= offs_n[:, None], QKT_ij, float("-inf"))
        # line 10: exact probabilities, from L_i, the scale in the exponent's FMA as forward
        PT_ij = tl.math.exp2(QKT_ij * qk_scale - L_i[None, :])
        dV_j = tl.dot(PT_ij.to(dO_i.dtype), dO_i, dV_j, input_precision=DOT_PRECISION)  # line 11
        dPT_ij = tl.dot(V_j, tl.trans(dO_i), input_precision=DOT_PRECISION)  # line 12
        dST_ij = PT_ij * (dPT_ij - D_i[None, :])  # line 13
        dK_j = tl.dot(dST_ij.to(Q_i.dtype), Q_i, dK_j, input_precision=DOT_PRECISION)  # line 15
    return dK_j, dV_j


@_autotuned("dk_dv", DK_DV_CONFIGS)
def _backward_dk_dv_kernel(
    Q, K, V, dO, L, D, dK, dV,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, T, T_BUCKET, qk_scale, scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Algorithm 2 for key block j = program_id(0) of (batch, head) = program_id(1): dK_j, dV_j."""
    start_n = tl.program_id(0) * BLOCK_N  # line 4: this program's key block j
    tl.static_assert(BLOCK_N % BLOCK_M == 0, "query blocks must tile a key block")
    bh = tl.program_id(1)
    batch, head = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    Q += batch * stride_qb + head * stride_qh
    dO += batch * stride_dob + head * stride_doh
    L += bh.to(tl.int64) * T
    D += bh.to(tl.int64) * T
    offs_n = start_n + tl.arange(0, BLOCK_N)
    K_j = _load_rows(K + batch * stride_kb + head * stride_kh, offs_n, stride_kt, T, HEAD_DIM)
    V_j = _load_rows(V + batch * stride_vb + head * stride_vh, offs_n, stride_vt, T, HEAD_DIM)
    dK_j = tl.full([BLOCK_N, HEAD_DIM], 0.0, tl.float32)  # line 6: dK_j = 0, dV_j = 0
    dV_j = tl.full([BLOCK_N, HEAD_DIM], 0.0, tl.float32)
    if CAUSAL:
        # queries before start_n see none of these keys (skipped); those in the block's own
        # span cross the diagonal (masked); every later query sees every key of the block
        diagonal_end = tl.minimum(start_n + BLOCK_N, T)
        dK_j, dV_j = _dk_dv_query_blocks(
            dK_j, dV_j, K_j, V_j, offs_n, Q, dO, L, D, stride_qt, stride_dot, start_n,
            diagonal_end, T, qk_scale, HEAD_DIM, True, DOT_PRECISION, BLOCK_M,
        )  # fmt: skip
        dK_j, dV_j = _dk_dv_query_blocks(
            dK_j, dV_j, K_j, V_j, offs_n, Q, dO, L, D, stride_qt, stride_dot, diagonal_end,
            T, T, qk_scale, HEAD_DIM, False, DOT_PRECISION, BLOCK_M,
        )  # fmt: skip
    else:
        dK_j, dV_j = _dk_dv_query_blocks(
            dK_j, dV_j, K_j, V_j, offs_n, Q, dO, L, D, stride_qt, stride_dot, 0, T, T,
            qk_scale, HEAD_DIM, False, DOT_PRECISION, BLOCK_M,
        )  # fmt: skip
    # line 16: write dK_j (the 1/sqrt(d) of line 15, applied once), dV_j
    _store_rows(
        dK + batch * stride_dkb + head * stride_dkh, offs_n, stride_dkt, T, dK_j * scale, HEAD_DIM
    )
    _store_rows(dV + batch * stride_dvb + head * stride_dvh, offs_n, stride_dvt, T, dV_j, HEAD_DIM)


@_jit
def _dq_key_blocks(
    dQ_i, Q_i, dO_i, L_i, D_i, offs_m, K, V, stride_kt, stride_vt, lo, hi, T, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Line 14 of Algorithm 2, dQ_i += dS_ij K_j, over the key blocks starting in [lo, hi),
    with S_ij, P_ij, dP_ij, dS_ij recomputed as in lines 9-13."""
    for start_n in range(lo, hi, BLOCK_N):  # line 4, turned inside out: each key block j
        offs_n = start_n + tl.arange(0, BLOCK_N)
        K_j = _load_rows(K, offs_n, stride_kt, T, HEAD_DIM)  # line 5: load K_j, V_j
        V_j = _load_rows(V, offs_n, stride_vt, T, HEAD_DIM)
        QK_ij = tl.dot(Q_i, tl.trans(K_j), input_precision=DOT_PRECISION)  # line 9, unscaled
        if MASKED:
            QK_ij = tl.where(_visible(offs_m, offs_n, T, CAUSAL), QK_ij, float("-inf"))
        P_ij = tl.math.exp2(QK_ij * qk_scale - L_i[:, None])  # line 10, as forward
        dP_ij = tl.dot(dO_i, tl.trans(V_j), input_precision=DOT_PRECISION)  # line 12
        dS_ij = P_ij * (dP_ij - D_i[:, None])  # line 13
        dQ_i = tl.dot(dS_ij.to(K_j.dtype), K_j, dQ_i, input_precision=DOT_PRECISION)  # line 14
    return dQ_i


@_autotuned("dq", DQ_CONFIGS)
def _backward_dq_kernel(
    Q, K, V, dO, L, D, dQ,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    H, T, T_BUCKET, qk_scale, scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """dQ_i of Algorithm 2 for a query block i (program_id(0)) of (batch, head) = program_id(1)."""
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # the last first, as forward
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "key blocks must tile a query block")
    bh = tl.program_id(1)
    batch, head = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    K += batch * stride_kb + head * stride_kh
    V += batch * stride_vb + head * stride_vh
    offs_m = start_m + tl.arange(0, BLOCK_M)
    Q_i = _load_rows(Q + batch * stride_qb + head * stride_qh, offs_m, stride_qt, T, HEAD_DIM)
    dO_i = _load_rows(dO + batch * stride_dob + head * stride_doh, offs_m, stride_dot, T, HEAD_DIM)
    L_i = tl.load(L + bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    D_i = tl.load(D + bh.to(tl.int64) * T + offs_m, mask=offs_m < T, other=0.0)
    dQ_i = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    full_end, visited_end = _key_block_bounds(start_m, T, CAUSAL, BLOCK_M, BLOCK_N)
    dQ_i = _dq_key_blocks(
        dQ_i, Q_i, dO_i, L_i, D_i, offs_m, K, V, stride_kt, stride_vt, 0, full_end, T,
        qk_scale, HEAD_DIM, CAUSAL, False, DOT_PRECISION, BLOCK_N,
    )  # fmt: skip
    dQ_i = _dq_key_blocks(
        dQ_i, Q_i, dO_i, L_i, D_i, offs_m, K, V, stride_kt, stride_vt, full_end, visited_end,
        T, qk_scale, HEAD_DIM, CAUSAL, True, DOT_PRECISION, BLOCK_N,
    )  # fmt: skip
    # write dQ_i, with the 1/sqrt(d) of line 14 applied once
    _store_rows(
        dQ + batch * stride_dqb + head * stride_dqh, offs_m, stride_dqt, T, dQ_i * scale, HEAD_DIM
    )


# ----------------------------------------------------------------------------- launchers
def _checked(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors, each with unit stride along d (copied if not), after checking what the
    kernels need: Triton present, (B, H, T, d) alike, a supported dtype, d a power of two
    16..128 (`triton_attention` pads any other d), CUDA unless interpreted."""
    _require_triton()
    first = tensors[0]
    if first.dim() != 4 or any(t.shape != first.shape for t in tensors):
        shapes = [tuple(t.shape) for t in tensors]
        raise ValueError(f"need (batch, heads, time, head_dim) tensors of one shape, got {shapes}")
    if first.dtype not in SUPPORTED_DTYPES or any(t.dtype != first.dtype for t in tensors):
        raise ValueError(f"need one dtype of {SUPPORTED_DTYPES}, got {[t.dtype for t in tensors]}")
    d = first.shape[-1]
    if d not in (16, 32, 64, 128):
        raise ValueError(f"the kernels take head_dim 16, 32, 64 or 128, got {d}")
    if any(t.device != first.device for t in tensors) or (
        first.device.type != "cuda" and not INTERPRETED
    ):
        raise ValueError(
            "Triton attention runs on CUDA tensors (all on one device), or on any device under "
            f"Triton's interpreter (TRITON_INTERPRET=1); got {[str(t.device) for t in tensors]}"
        )
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs: true float32 products ("ieee"), not TF32, so that float32 attention is as
    # exact as a plain float32 one; 16-bit inputs are exact in any case
    return "ieee" if dtype == torch.float32 else "tf32"


def _length_bucket(T: int) -> int:
    """The autotuner's key for T: the next power of two, so that nearby lengths share a tuning
    (each new key times every config once)."""
    return 1 << (T - 1).bit_length()


def _device_context(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def _forward(q, k, v, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch Algorithm 1: O (B, H, T, d) in q's dtype, L (B, H, T) float32 in base 2."""
    B, H, T, d = q.shape
    O = torch.empty_like(q, memory_format=torch.contiguous_format)
    L = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    with _device_context(q):
        _forward_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](
            q, k, v, O, L, *_strides(q), *_strides(k), *_strides(v), *_strides(O),
            H, T, _length_bucket(T), scale * LOG2_E,
            HEAD_DIM=d, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype),
        )  # fmt: skip
    return O, L


def _backward(q, k, v, o, L, do, causal: bool, scale: float) -> tuple[torch.Tensor, ...]:
    """Launch Algorithm 2 (D, then dK and dV, then dQ) with L in base 2, as `_forward` made it."""
    B, H, T, d = q.shape
    D = torch.empty_like(L)
    dq, dk, dv = (torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))
    common = dict(HEAD_DIM=d, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype))
    inputs = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    with _device_context(q):
        preprocess_block = 64
        _backward_preprocess[(triton.cdiv(T, preprocess_block), B * H)](
            o, do, D, *_strides(o), *_strides(do), H, T, HEAD_DIM=d, BLOCK_M=preprocess_block
        )
        _backward_dk_dv_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * H)](
            q, k, v, do, L, D, dk, dv, *inputs, *_strides(dk), *_strides(dv),
            H, T, _length_bucket(T), scale * LOG2_E, scale, **common,
        )  # fmt: skip
        _backward_dq_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](
            q, k, v, do, L, D, dq, *inputs, *_strides(dq),
            H, T, _length_bucket(T), scale * LOG2_E, scale, **common,
        )  # fmt: skip
    return dq, dk, dv


# ----------------------------------------------------------------------------- the operator
# torch.compile sees the kernels as two operators of the torch library, `nanogpt::flash_forward`
# (O and the base-2 L) and `nanogpt::flash_backward` (dQ, dK, dV), joined by a registered
# autograd formula. Dynamo records each as one node of the graph, as it records a matmul: it does
# not trace into the launchers (Triton's autotuner and grid lambdas are Python that a graph
# cannot hold), and it need not break the graph around them either, which an
# autograd.Function under torch.compiler.disable did, once per layer. The "fake" functions
# give compile the outputs' shapes and dtypes without running a kernel. One operator for every
# device: CUDA tensors on a GPU, CPU tensors under the interpreter (`_checked` refuses the rest).
# (torch.library.triton_op would let inductor see into the kernels, but it wraps Triton's
# compiled kernels, not the interpreter's; the kernels gain nothing from being inlined.)
if TRITON_AVAILABLE:  # registered once, with the kernels (a second registration is an error)

    @torch.library.custom_op("nanogpt::flash_forward", mutates_args=())
    def _forward_op(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = _checked(q, k, v)
        return _forward(q, k, v, causal, scale)

    @_forward_op.register_fake
    def _(q, k, v, causal, scale):
        B, H, T, _ = q.shape
        O = torch.empty_like(q, memory_format=torch.contiguous_format)
        return O, q.new_empty((B, H, T), dtype=torch.float32)

    @torch.library.custom_op("nanogpt::flash_backward", mutates_args=())
    def _backward_op(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        o: torch.Tensor,
        L: torch.Tensor,
        do: torch.Tensor,
        causal: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, o, do = _checked(q, k, v, o, do)
        return _backward(q, k, v, o, L, do, causal, scale)

    @_backward_op.register_fake
    def _(q, k, v, o, L, do, causal, scale):
        return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))

    def _save_for_backward(ctx, inputs, output):
        q, k, v, causal, scale = inputs
        o, L = output
        ctx.save_for_backward(q, k, v, o, L)  # L in base 2, exactly as the forward rounded it
        ctx.causal, ctx.scale = causal, scale
        ctx.mark_non_differentiable(L)  # a statistic for the backward, not an output to train

    def _backward_formula(ctx, do, dL):
        q, k, v, o, L = ctx.saved_tensors
        return (*_backward_op(q, k, v, o, L, do, ctx.causal, ctx.scale), None, None)

    _forward_op.register_autograd(_backward_formula, setup_context=_save_for_backward)


def _require_triton() -> None:
    if not TRITON_AVAILABLE:
        raise ValueError(
            "Triton attention needs the triton package: pip install -r requirements-triton.txt"
        )


def flash_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """O (B, H, T, d) in q's dtype and L = logsumexp of the scaled scores per row (B, H, T),
    float32, natural log: the outputs of NumPy's `flash_attention_forward`."""
    _require_triton()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    o, L = _forward_op(q, k, v, causal, scale)
    return o, L * LN_2


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV of sum(O * dO), recomputing each tile's probabilities from L = lse (natural
    log, as `flash_attention_forward` returns it)."""
    _require_triton()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _backward_op(q, k, v, o, (lse * LOG2_E).float().contiguous(), do, causal, scale)


def triton_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale, causal mask) v on (B, H, T, d) tensors, differentiable, and
    traceable by torch.compile (one graph node per direction, see the operator above).

    scale defaults to 1/sqrt(d). A head dim that is not 16, 32, 64 or 128 (up to 128) is padded
    with zero columns to the next of them: zeros add nothing to q.k and give zero output columns,
    which are cut off (at the cost of a padded copy of q, k, v). bfloat16 and float16 run on the
    tensor cores; float32 takes true float32 products, exact and slow (a path for checking).
    """
    _require_triton()
    d = q.shape[-1]
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be in [1, {MAX_HEAD_DIM}], got {d}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    d_kernel = max(16, 1 << (d - 1).bit_length())
    if d_kernel != d:
        q, k, v = (F.pad(x, (0, d_kernel - d)) for x in (q, k, v))
    o, _ = _forward_op(q, k, v, causal, scale)
    return o[..., :d] if d_kernel != d else o


def chosen_configs() -> dict[str, list[dict]]:
    """The configuration the autotuner chose for each key it has timed, per kernel: what ran,
    to read beside `results/triton_sm90.json`'s registers and spills. Empty before any launch."""
    chosen = {}
    for name, kernel in (
        ("forward", _forward_kernel),
        ("dk_dv", _backward_dk_dv_kernel),
        ("dq", _backward_dq_kernel),
    ):
        cache = getattr(kernel, "cache", None) or {}  # the Autotuner's key -> Config
        chosen[name] = [
            {
                "key": [str(part) for part in key],
                "BLOCK_M": config.kwargs.get("BLOCK_M"),
                "BLOCK_N": config.kwargs.get("BLOCK_N"),
                "num_warps": config.num_warps,
                "num_stages": config.num_stages,
            }
            for key, config in cache.items()
        ]
    return chosen


__all__ = [
    "INTERPRETED",
    "TRITON_AVAILABLE",
    "chosen_configs",
    "flash_attention_backward",
    "flash_attention_forward",
    "triton_attention",
]
