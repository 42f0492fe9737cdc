"""Flash attention: exact attention over tiles, never materialising the T x T matrix.

Softmax can be computed in one streaming pass that keeps a running max m and a running sum l,
rescaling l by exp(m_old - m_new) whenever the max grows (Milakov & Gimelshein 2018, "Online
normalizer calculation for softmax"). Applied to blocks of keys, the same rescaling lets each
block of queries accumulate its output O_i tile by tile and store only O and the row
logsumexp L. The backward pass keeps no T x T matrix either: it recomputes the scores
S_ij = Q_i K_j^T / sqrt(d) from Q and K, and the stored L turns them into the exact probabilities,
P_ij = exp(S_ij - L_i) (Dao 2023, "FlashAttention-2", Algorithm 1 (forward) and Algorithm 2
(backward)). That recomputation is arithmetic the naive backward does not do: hardware FLOPs
beyond the model's (`ref_numpy.flops.model_and_hardware_flops`).

"Flash attention needs O(n) memory" is right about the *extra* memory only: beyond its O(T d)
inputs and outputs it keeps L (T numbers) where the naive path keeps S and P (T^2 each), as
`peak_memory_bytes` measures. It is not O(n) overall (Q, K, V, O are T x d), and its main gain
is slow-memory traffic, not arithmetic: the tiles do the same matmuls (the causal skip saves
about half, and the backward adds a recomputation of S), while `hbm_traffic_bytes` counts, from
the loops (a model of the traffic, not a measurement), 4 T^2 elements of S and P moved by the
naive path against the K, V re-reads of the tiled one.
"""

from __future__ import annotations

import math
import tracemalloc
from typing import NamedTuple

import numpy as np

from ref_numpy.layers import NAIVE_ATTENTION, Attention, attention_forward, causal_mask


# ----------------------------------------------------------------------------- online softmax
def online_softmax_trace(x: np.ndarray, chunk: int) -> tuple[np.ndarray, list[dict]]:
    """softmax(x) of a 1-D x read in chunks, and the running (m, l) after each chunk.

    m is the max seen so far, l = sum_j exp(x_j - m) over the elements seen so far. When a
    chunk raises the max, the old sum was taken relative to the old max, so it is rescaled by
    exp(m_old - m_new) before the chunk's own terms are added (Milakov & Gimelshein, Alg. 3).
    """
    if x.ndim != 1 or chunk < 1:
        raise ValueError(f"need a 1-D vector and chunk >= 1, got shape {x.shape}, chunk {chunk}")
    m, l = -np.inf, x.dtype.type(0)
    trace = []
    for start in range(0, len(x), chunk):
        x_chunk = x[start : start + chunk]
        m_new = max(m, x_chunk.max())
        l = l * np.exp(m - m_new) + np.exp(x_chunk - m_new).sum()  # exp(-inf) = 0 at the start
        m = m_new
        trace.append(dict(chunk=len(trace), end=start + len(x_chunk), m=float(m), l=float(l)))
    return np.exp(x - m) / l, trace  # the normalising pass, with the final m and l


def online_softmax(x: np.ndarray, chunk: int) -> np.ndarray:
    """softmax of a 1-D x, its normaliser found in one pass over chunks (see the trace)."""
    return online_softmax_trace(x, chunk)[0]


# ----------------------------------------------------------------------------- naive reference
def attention_naive(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = True) -> np.ndarray:
    """softmax(Q K^T / sqrt(d)) V with the scores materialised (`layers.attention_forward`, the
    GPT's own attention): the reference the tiles are checked against. q [..., T_q, d], k and v
    [..., T_k, d]; causal needs T_q == T_k."""
    return attention_forward(q, k, v, causal=causal)[0]


def _check_causal(q: np.ndarray, k: np.ndarray) -> None:
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs T_q == T_k, got {q.shape[-2]} and {k.shape[-2]}")


def _tiles(T: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) of each block of rows; the last one is partial when block does not divide T."""
    return [(start, min(start + block, T)) for start in range(0, T, block)]


def _visited(rows: tuple[int, int], cols: tuple[int, int], causal: bool) -> tuple[bool, bool]:
    """(visit the tile at all, mask it elementwise). Causal: a tile whose first key lies after
    its last query is entirely above the diagonal (skipped); one crossing the diagonal is masked."""
    if not causal:
        return True, False
    return cols[0] <= rows[1] - 1, cols[1] - 1 > rows[0]


TILE_SKIPPED, TILE_FULL, TILE_MASKED = 0, 1, 2


def tile_map(T: int, block_q: int = 64, block_k: int = 64, causal: bool = True) -> np.ndarray:
    """What the tiled forward does with each (query block i, key block j): an int array
    [n_query_blocks, n_key_blocks] of TILE_SKIPPED (above the diagonal, never loaded),
    TILE_FULL (computed with no mask) or TILE_MASKED (crosses the diagonal, masked elementwise)."""
    row_tiles, col_tiles = _tiles(T, block_q), _tiles(T, block_k)
    states = np.empty((len(row_tiles), len(col_tiles)), dtype=np.int64)
    for i, rows in enumerate(row_tiles):
        for j, cols in enumerate(col_tiles):
            visit, mask = _visited(rows, cols, causal)
            states[i, j] = TILE_SKIPPED if not visit else TILE_MASKED if mask else TILE_FULL
    return states


def _mask_above_diagonal(S_ij: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    query = np.arange(rows[0], rows[1])[:, None]
    key = np.arange(cols[0], cols[1])[None, :]
    S_ij[..., key > query] = -np.inf  # in place: query t sees keys 0..t only


# ----------------------------------------------------------------------------- forward
def flash_attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    causal: bool = True,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """O [..., T_q, d] and L = logsumexp of the scaled scores per row [..., T_q], tile by tile.

    For query block i, after key block j (m_i = -inf, l_i = 0, O_i = 0 before the first):
        m_i^(j) = max(m_i^(j-1), rowmax S_ij),   P_ij = exp(S_ij - m_i^(j)),
        l_i^(j) = exp(m_i^(j-1) - m_i^(j)) l_i^(j-1) + rowsum P_ij,
        O_i^(j) = exp(m_i^(j-1) - m_i^(j)) O_i^(j-1) + P_ij V_j;
    after the last block, O_i = O_i / l_i and L_i = m_i + log l_i.
    """
    if causal:
        _check_causal(q, k)
    scale = 1.0 / math.sqrt(q.shape[-1])  # folded into S_ij; the paper leaves it out
    lead = q.shape[:-2]  # (batch, head) dims: every tile op is vectorised over them
    O = np.empty(q.shape, dtype=q.dtype)  # line 2: O and L in blocks
    L = np.empty(q.shape[:-1], dtype=q.dtype)
    for rows in _tiles(q.shape[-2], block_q):  # line 3: for each query block i
        Q_i = q[..., rows[0] : rows[1], :]  # line 4: load Q_i   [..., B_r, d]
        n_rows = rows[1] - rows[0]
        O_i = np.zeros((*lead, n_rows, q.shape[-1]), dtype=q.dtype)  # line 5: O_i = 0
        l_i = np.zeros((*lead, n_rows, 1), dtype=q.dtype)  # l_i = 0
        m_i = np.full((*lead, n_rows, 1), -np.inf, dtype=q.dtype)  # m_i = -inf
        for cols in _tiles(k.shape[-2], block_k):  # line 6: for each key block j
            visit, mask = _visited(rows, cols, causal)
            if not visit:
                break  # every later key block lies above the diagonal too
            K_j = k[..., cols[0] : cols[1], :]  # line 7: load K_j, V_j   [..., B_c, d]
            V_j = v[..., cols[0] : cols[1], :]
            S_ij = (Q_i @ np.swapaxes(K_j, -1, -2)) * scale  # line 8   [..., B_r, B_c]
            if mask:
                _mask_above_diagonal(S_ij, rows, cols)
            # line 9: new running max; P_ij relative to it; the old sum rescaled to the new max.
            # The first visited tile holds key 0, seen by every query, so m_new is finite.
            m_new = np.maximum(m_i, S_ij.max(axis=-1, keepdims=True))
            P_ij = np.exp(S_ij - m_new)  # exp(-inf) = 0 at masked entries
            rescale = np.exp(m_i - m_new)  # [..., B_r, 1]; 0 when m_i = -inf
            l_i = rescale * l_i + P_ij.sum(axis=-1, keepdims=True)
            O_i = rescale * O_i + P_ij @ V_j  # line 10   [..., B_r, d]
            m_i = m_new
        O[..., rows[0] : rows[1], :] = O_i / l_i  # lines 12, 14: normalise, write O_i
        L[..., rows[0] : rows[1]] = (m_i + np.log(l_i))[..., 0]  # lines 13, 15: write L_i
    return O, L


# ----------------------------------------------------------------------------- backward
# With S_ij recomputed from Q_i and K_j, and P_ij = exp(S_ij - L_i) from it and the stored L
# (no T x T matrix is kept), the gradients are those of `ref_numpy.layers.attention_backward`,
# summed tile by tile:
#   dV_j = sum_i P_ij^T dO_i,  dP_ij = dO_i V_j^T,  dS_ij = P_ij * (dP_ij - D_i),
#   dQ_i = scale sum_j dS_ij K_j,  dK_j = scale sum_i dS_ij^T Q_i,  D = rowsum(dO * O).
def flash_attention_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    o: np.ndarray,
    lse: np.ndarray,
    do: np.ndarray,
    causal: bool = True,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dQ, dK, dV of sum(O * dO), recomputing each tile's probabilities from L = lse."""
    if causal:
        _check_causal(q, k)
    scale = 1.0 / math.sqrt(q.shape[-1])
    D = (do * o).sum(axis=-1, keepdims=True)  # line 3: D = rowsum(dO * O)   [..., T_q, 1]
    L = lse[..., None]  # [..., T_q, 1]
    dQ = np.zeros(q.shape, dtype=q.dtype)
    dK = np.empty(k.shape, dtype=k.dtype)
    dV = np.empty(v.shape, dtype=v.dtype)
    for cols in _tiles(k.shape[-2], block_k):  # line 4: for each key block j
        K_j = k[..., cols[0] : cols[1], :]  # line 5: load K_j, V_j
        V_j = v[..., cols[0] : cols[1], :]
        dK_j = np.zeros(K_j.shape, dtype=k.dtype)  # line 6: dK_j = 0, dV_j = 0
        dV_j = np.zeros(V_j.shape, dtype=v.dtype)
        for rows in _tiles(q.shape[-2], block_q):  # line 7: for each query block i
            visit, mask = _visited(rows, cols, causal)
            if not visit:
                continue  # this query block ends before key block j starts
            r = slice(rows[0], rows[1])
            Q_i, dO_i = q[..., r, :], do[..., r, :]  # line 8: load Q_i, dO_i, L_i, D_i
            S_ij = (Q_i @ np.swapaxes(K_j, -1, -2)) * scale  # line 9
            if mask:
                _mask_above_diagonal(S_ij, rows, cols)
            P_ij = np.exp(S_ij - L[..., r, :])  # line 10: exact probabilities: S_ij and L_i
            dV_j += np.swapaxes(P_ij, -1, -2) @ dO_i  # line 11
            dP_ij = dO_i @ np.swapaxes(V_j, -1, -2)  # line 12   [..., B_r, B_c]
            dS_ij = P_ij * (dP_ij - D[..., r, :])  # line 13
            dQ[..., r, :] += (dS_ij @ K_j) * scale  # line 14
            dK_j += (np.swapaxes(dS_ij, -1, -2) @ Q_i) * scale  # line 15
        dK[..., cols[0] : cols[1], :] = dK_j  # line 16: write dK_j, dV_j
        dV[..., cols[0] : cols[1], :] = dV_j
    return dQ, dK, dV


# ----------------------------------------------------------------------------- the GPT plug
class FlashCache(NamedTuple):
    """What the tiled backward needs: the inputs, O and the row logsumexp L, no T x T matrix."""

    q: np.ndarray  # [..., T, d]
    k: np.ndarray
    v: np.ndarray
    o: np.ndarray  # [..., T, d]
    lse: np.ndarray  # [..., T]


def flash_attention(block_q: int = 64, block_k: int = 64) -> Attention:
    """A causal `Attention` for `ref_numpy.gpt.forward(..., attention=...)` that runs on tiles."""

    def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, FlashCache]:
        out, lse = flash_attention_forward(q, k, v, True, block_q, block_k)
        return out, FlashCache(q, k, v, out, lse)  # O(T d), where the naive plug saves P (T^2)

    def backward(dout: np.ndarray, cache: FlashCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, k, v, o, lse = cache
        return flash_attention_backward(q, k, v, o, lse, dout, True, block_q, block_k)

    return Attention(forward, backward)


FLASH_ATTENTION = flash_attention()


# ----------------------------------------------------------------------------- memory
def peak_memory_bytes(
    T: int,
    d: int,
    method: str,
    backward: bool = False,
    block_q: int = 64,
    block_k: int = 64,
    seed: int = 0,
) -> int:
    """Peak bytes NumPy allocates during one causal attention call (and its backward), float32.

    batch * heads = 1. The inputs q, k, v (and dout) exist before the measurement starts, so
    the peak counts what the call adds: outputs, cache and temporaries. "naive" is the model's
    `NAIVE_ATTENTION` (its cached causal mask is built beforehand: it is shared by every call);
    "flash" is `flash_attention(block_q, block_k)`.
    """
    plugs = {"naive": NAIVE_ATTENTION, "flash": flash_attention(block_q, block_k)}
    if method not in plugs:
        raise ValueError(f"unknown method {method!r}; use 'naive' or 'flash'")
    attention = plugs[method]
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((1, T, d), dtype=np.float32) for _ in range(4))
    causal_mask(T, np.dtype(np.float32))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        out, cache = attention.forward(q, k, v)
        if backward:
            grads = attention.backward(dout, cache)
            del grads
        del out, cache
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def memory_table(
    Ts: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192), d: int = 64, backward: bool = False
) -> list[dict]:
    """One row per T: peak bytes of naive and flash attention and their ratio (float32).

    The naive rows at large T are large: T = 8192 holds 256 MiB per T x T float32 matrix.
    """
    rows = []
    for T in Ts:
        naive = peak_memory_bytes(T, d, "naive", backward)
        flash = peak_memory_bytes(T, d, "flash", backward)
        rows.append(dict(T=T, naive_bytes=naive, flash_bytes=flash, ratio=naive / flash))
    return rows


# ----------------------------------------------------------------------------- slow-memory traffic
LSE_BYTES = 4  # L is kept in float32 by the kernels, whatever the precision of Q, K, V


def hbm_traffic_bytes(
    T: int,
    d: int,
    method: str,
    block_q: int = 64,
    block_k: int = 64,
    bytes_per_element: int = 2,
    causal: bool = True,
) -> dict[str, int]:
    """Bytes each forward method reads from and writes to slow memory (HBM), by its loops.

    naive (standard attention: S = Q K^T to HBM, P = softmax(S) to HBM, O = P V):
        read Q, K, V (3 T d), write S (T^2), read S (T^2), write P (T^2), read P (T^2),
        write O (T d): 4 T d + 4 T^2 elements, causal or not (the mask does not shrink S).
    flash (Algorithm 1): read Q once (T d, line 4); read K_j, V_j for every visited tile
        (2 d * keys of tile, line 7: T_r * 2 T d without the mask, about half with it); write O
        (T d, line 14) and L (T float32, line 15). S_ij, P_ij, m_i, l_i never leave the chip.
    The T^2 terms decide: naive moves 4 T^2, flash 2 T^2 d / block_q (non-causal), so flash
    wins by about 2 block_q / d at large T, and loses when d > 2 block_q. Its extra storage
    beyond Q, K, V, O is L alone: O(T) where naive's is O(T^2).
    """
    e = bytes_per_element
    if method == "naive":
        parts = dict(
            read_QKV=3 * T * d * e,
            write_S=T * T * e,
            read_S=T * T * e,
            write_P=T * T * e,
            read_P=T * T * e,
            write_O=T * d * e,
        )
    elif method == "flash":
        kv_rows_read = sum(
            cols[1] - cols[0]
            for rows in _tiles(T, block_q)
            for cols in _tiles(T, block_k)
            if _visited(rows, cols, causal)[0]
        )
        parts = dict(
            read_Q=T * d * e,
            read_KV=2 * kv_rows_read * d * e,
            write_O=T * d * e,
            write_L=T * LSE_BYTES,
        )
    else:
        raise ValueError(f"unknown method {method!r}; use 'naive' or 'flash'")
    return dict(parts, total=sum(parts.values()))


__all__ = [
    "FLASH_ATTENTION",
    "TILE_FULL",
    "TILE_MASKED",
    "TILE_SKIPPED",
    "attention_naive",
    "flash_attention",
    "flash_attention_backward",
    "flash_attention_forward",
    "hbm_traffic_bytes",
    "memory_table",
    "online_softmax",
    "online_softmax_trace",
    "peak_memory_bytes",
    "tile_map",
]
