"""Decode attention: one new query per row against a KV cache, with per-row lengths.

Why a kernel: a decode step is bandwidth-bound and most of its bytes are the KV cache. The XLA path reads the whole
cache buffer every step (prompt + max_new_tokens positions) and runs the two products as batched matmuls with 8
query rows; the Pallas kernel reads only the first `lengths[b]` positions of each row, each KV head's blocks once for
its whole query group, and keeps the softmax online in fp32.

Layout: q [B, Q, H, D] (Q = 1 for a row's own cache; Q = the samples that share a prompt when the continuous engine
reads a shared prompt once for all of them); caches [B, T, K * D], a position's KV heads side by side (on a TPU the
heads then fill the 128 lanes that one head of 64 would leave half empty; elsewhere the same bytes as [B, T, K, D],
which the XLA path views them as); kv_segment_ids [B, T] (0 = not a key: left padding, unwritten slots); lengths [B]
(positions [0, lengths[b]) may hold keys). The Q x H / K queries of a KV head (padded to 16 rows for the tensor-core
tile) are one block: grid (B, K). With `return_lse` the kernels also return each query's log-sum-exp, so two partial
attentions (prompt and own tokens) merge exactly (`merge_attention`). The TPU kernel is `decode_tpu`.

Status: checked against the XLA reference in interpret mode on CPU (tests/test_kernels_decode.py, which on a GPU
compiles it for real); on an H100 it took the sampler from 41.4k to 57.3k decoded tokens/s at batch 256
(BENCHMARKS.md), but its outputs have not been compared with the XLA path on a GPU yet. Its memory access is the same
over [B, T, K * D] caches as over the [B, T, K, D] ones it was measured on (a block of KV head k is its D lanes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bolt_jax.kernels.platform import target_platform
from bolt_jax.kernels.xla import xla_attention

NEG = -1e30
MIN_ROWS = 16  # the smallest M of a tensor-core dot in the Triton lowering (rows are padded to a power of two)


def heads_of(x_BxTxKD, head_dim: int):
    """A cache [B, T, K * D] viewed as [B, T, K, D] (a bitcast where the layout is row-major: CPU, GPU)."""
    b, t, kd = x_BxTxKD.shape
    if kd % head_dim:
        raise ValueError(f"decode attention: a cache of width {kd} does not hold whole heads of {head_dim}")
    return x_BxTxKD.reshape(b, t, kd // head_dim, head_dim)


def xla_decode_attention(q_Bx1xHxD, k_cache_BxTxKD, v_cache_BxTxKD, *, kv_segment_ids_BxT, lengths_B,
                         sm_scale: float | None = None):
    """The reference: attends over the whole buffer, masking unwritten positions and segment 0."""
    d = q_Bx1xHxD.shape[-1]
    k_cache_BxTxKxD, v_cache_BxTxKxD = heads_of(k_cache_BxTxKD, d), heads_of(v_cache_BxTxKD, d)
    t = k_cache_BxTxKxD.shape[1]
    visible = (kv_segment_ids_BxT != 0) & (jnp.arange(t)[None, :] < lengths_B[:, None])
    q_seg = jnp.ones(q_Bx1xHxD.shape[:2], jnp.int32)
    return xla_attention(q_Bx1xHxD, k_cache_BxTxKxD, v_cache_BxTxKxD, q_segment_ids_BxS=q_seg,
                         kv_segment_ids_BxT=visible.astype(jnp.int32), causal=False, sm_scale=sm_scale)


def xla_decode_attention_lse(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD, *, kv_segment_ids_BxT, lengths_B,
                             sm_scale: float | None = None):
    """Each of a row's Q queries attends that row's visible keys (no causality among them); also returns the
    log-sum-exp of the scores, so that attention over two sets of keys (a shared prompt and a row's own tokens) can
    be merged exactly (`merge_attention`). Returns (out [B, Q, H, D] fp32, lse [B, Q, H] fp32; NEG without keys)."""
    b, nq, h, d = q_BxQxHxD.shape
    k_cache_BxTxKxD, v_cache_BxTxKxD = heads_of(k_cache_BxTxKD, d), heads_of(v_cache_BxTxKD, d)
    t, kvh = k_cache_BxTxKxD.shape[1], k_cache_BxTxKxD.shape[2]
    scale = sm_scale if sm_scale is not None else d ** -0.5
    q_BxQxKxGxD = q_BxQxHxD.reshape(b, nq, kvh, h // kvh, d)
    s_BxKxGxQxT = jnp.einsum("bqkgd,btkd->bkgqt", q_BxQxKxGxD, k_cache_BxTxKxD,
                             preferred_element_type=jnp.float32) * scale
    visible_BxT = (kv_segment_ids_BxT != 0) & (jnp.arange(t)[None, :] < lengths_B[:, None])
    visible = visible_BxT[:, None, None, None, :]
    s_BxKxGxQxT = jnp.where(visible, s_BxKxGxQxT, NEG)
    m = s_BxKxGxQxT.max(axis=-1)
    p = jnp.where(visible, jnp.exp(s_BxKxGxQxT - m[..., None]), 0.0)
    l_BxKxGxQ = p.sum(axis=-1)
    out = jnp.einsum("bkgqt,btkd->bqkgd", p.astype(v_cache_BxTxKxD.dtype), v_cache_BxTxKxD,
                     preferred_element_type=jnp.float32)
    out = out / jnp.where(l_BxKxGxQ == 0, 1.0, l_BxKxGxQ).transpose(0, 3, 1, 2)[..., None]
    lse = jnp.where(l_BxKxGxQ > 0, m + jnp.log(jnp.where(l_BxKxGxQ > 0, l_BxKxGxQ, 1.0)), NEG)
    return out.reshape(b, nq, h, d), lse.transpose(0, 3, 1, 2).reshape(b, nq, h)


def merge_attention(out_a, lse_a, out_b, lse_b, dtype=None):
    """Attention over the union of two disjoint key sets from each set's normalized output and log-sum-exp:
    the softmax's weights split as exp(lse_a) : exp(lse_b). out [..., D], lse [...] (NEG: that set was empty)."""
    m = jnp.maximum(lse_a, lse_b)
    w_a, w_b = jnp.exp(lse_a - m), jnp.exp(lse_b - m)
    out = (out_a.astype(jnp.float32) * w_a[..., None] + out_b.astype(jnp.float32) * w_b[..., None]) \
        / (w_a + w_b)[..., None]
    return out.astype(dtype or out_a.dtype)


def _decode_kernel(len_ref, q_ref, k_ref, v_ref, seg_ref, o_ref, *lse_ref, scale: float, block: int):
    q = q_ref[...]  # [G, D], the group's query heads (times the row's queries)
    length = len_ref[0]

    def body(j, carry):
        m, l, acc = carry
        span = pl.ds(j * block, block)
        k, v = k_ref[span, :], v_ref[span, :]
        s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale  # [G, block]
        pos = j * block + jnp.arange(block)
        valid = (seg_ref[span] != 0) & (pos < length)
        s = jnp.where(valid[None, :], s, NEG)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.where(valid[None, :], jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        acc = alpha[:, None] * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return m_new, alpha * l + p.sum(axis=-1), acc

    g, d = q_ref.shape
    init = (jnp.full((g,), NEG, jnp.float32), jnp.zeros((g,), jnp.float32), jnp.zeros((g, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, (length + block - 1) // block, body, init)
    o_ref[...] = (acc / jnp.where(l == 0.0, 1.0, l)[:, None]).astype(o_ref.dtype)
    if lse_ref:
        lse_ref[0][...] = jnp.where(l > 0.0, m + jnp.log(jnp.where(l > 0.0, l, 1.0)), NEG)


def pallas_decode_attention(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD, *, kv_segment_ids_BxT, lengths_B,
                            sm_scale: float | None = None, block: int = 128, interpret: bool | None = None,
                            num_warps: int = 4, num_stages: int = 2, return_lse: bool = False):
    """The kernel: grid (rows, KV heads); each program reads its row's written blocks of one KV head once for all the
    query heads of that KV head and all the row's Q queries (Q > 1: the samples that share a prompt, read once).
    With `return_lse`: (out, lse [B, Q, H] fp32), as `xla_decode_attention_lse`."""
    b, nq, h, d = q_BxQxHxD.shape
    t, kvh = k_cache_BxTxKD.shape[1], heads_of(k_cache_BxTxKD, d).shape[2]
    block = min(block, t)
    if t % block:
        raise ValueError(f"decode attention: the cache length {t} must be a multiple of the block ({block}); the "
                         "sampler allocates its cache rounded up")
    group = h // kvh
    used = nq * group
    rows = max(1 << (used - 1).bit_length(), MIN_ROWS)  # Triton blocks are powers of two
    interpret = target_platform() != "gpu" if interpret is None else interpret
    scale = sm_scale if sm_scale is not None else d ** -0.5
    q_BxKxRxD = q_BxQxHxD.reshape(b, nq, kvh, group, d).transpose(0, 2, 1, 3, 4).reshape(b, kvh, used, d)
    if rows > used:
        q_BxKxRxD = jnp.pad(q_BxKxRxD, ((0, 0), (0, 0), (0, rows - used), (0, 0)))
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as pltriton
        params = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    out_specs = [pl.BlockSpec((None, None, rows, d), lambda bi, ki: (bi, ki, 0, 0))]
    out_shape = [jax.ShapeDtypeStruct((b, kvh, rows, d), q_BxQxHxD.dtype)]
    if return_lse:
        out_specs.append(pl.BlockSpec((None, None, rows), lambda bi, ki: (bi, ki, 0)))
        out_shape.append(jax.ShapeDtypeStruct((b, kvh, rows), jnp.float32))
    outs = pl.pallas_call(
        functools.partial(_decode_kernel, scale=scale, block=block),
        grid=(b, kvh),
        in_specs=[pl.BlockSpec((1,), lambda bi, ki: (bi,)),
                  pl.BlockSpec((None, None, rows, d), lambda bi, ki: (bi, ki, 0, 0)),
                  pl.BlockSpec((None, t, d), lambda bi, ki: (bi, 0, ki)),  # KV head ki's D lanes
                  pl.BlockSpec((None, t, d), lambda bi, ki: (bi, 0, ki)),
                  pl.BlockSpec((None, t), lambda bi, ki: (bi, 0))],
        out_specs=out_specs, out_shape=out_shape,
        interpret=interpret, compiler_params=params, name="bolt_decode_attention",
    )(lengths_B.astype(jnp.int32), q_BxKxRxD, k_cache_BxTxKD, v_cache_BxTxKD, kv_segment_ids_BxT.astype(jnp.int32))
    out = outs[0][:, :, :used].reshape(b, kvh, nq, group, d).transpose(0, 2, 1, 3, 4).reshape(b, nq, h, d)
    if not return_lse:
        return out
    lse = outs[1][:, :, :used].reshape(b, kvh, nq, group).transpose(0, 2, 1, 3).reshape(b, nq, h)
    return out, lse
