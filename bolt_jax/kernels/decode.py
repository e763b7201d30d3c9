"""Decode attention: one new query per row against a KV cache, with per-row lengths.

Why a kernel: a decode step is bandwidth-bound and most of its bytes are the KV cache. The XLA path reads the whole
cache buffer every step (prompt + max_new_tokens positions) and runs the two products as batched matmuls with 8
query rows; the Pallas kernel reads only the first `lengths[b]` positions of each row, each KV head's blocks once for
its whole query group, and keeps the softmax online in fp32.

Layout: q [B, 1, H, D]; caches [B, T, K, D]; kv_segment_ids [B, T] (0 = not a key: left padding, unwritten slots);
lengths [B] (positions [0, lengths[b]) may hold keys). The query group of a KV head (H / K rows, padded to 16 for the
tensor-core tile) is one block: grid (B, K).

Status: checked against the XLA reference in interpret mode on CPU (tests/test_kernels_decode.py, which on a GPU
compiles it for real); on an H100 it took the sampler from 41.4k to 57.3k decoded tokens/s at batch 256
(BENCHMARKS.md), but its outputs have not been compared with the XLA path on a GPU yet.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bolt_jax.kernels.xla import xla_attention

NEG = -1e30
MIN_ROWS = 16  # the smallest M of a tensor-core dot in the Triton lowering


def xla_decode_attention(q_Bx1xHxD, k_cache_BxTxKxD, v_cache_BxTxKxD, *, kv_segment_ids_BxT, lengths_B,
                         sm_scale: float | None = None):
    """The reference: attends over the whole buffer, masking unwritten positions and segment 0."""
    t = k_cache_BxTxKxD.shape[1]
    visible = (kv_segment_ids_BxT != 0) & (jnp.arange(t)[None, :] < lengths_B[:, None])
    q_seg = jnp.ones(q_Bx1xHxD.shape[:2], jnp.int32)
    return xla_attention(q_Bx1xHxD, k_cache_BxTxKxD, v_cache_BxTxKxD, q_segment_ids_BxS=q_seg,
                         kv_segment_ids_BxT=visible.astype(jnp.int32), causal=False, sm_scale=sm_scale)


def _decode_kernel(len_ref, q_ref, k_ref, v_ref, seg_ref, o_ref, *, scale: float, block: int):
    q = q_ref[...]  # [G, D], the group's query heads
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
    _, l, acc = jax.lax.fori_loop(0, (length + block - 1) // block, body, init)
    o_ref[...] = (acc / jnp.where(l == 0.0, 1.0, l)[:, None]).astype(o_ref.dtype)


def pallas_decode_attention(q_Bx1xHxD, k_cache_BxTxKxD, v_cache_BxTxKxD, *, kv_segment_ids_BxT, lengths_B,
                            sm_scale: float | None = None, block: int = 128, interpret: bool | None = None,
                            num_warps: int = 4, num_stages: int = 2):
    b, one, h, d = q_Bx1xHxD.shape
    t, kvh = k_cache_BxTxKxD.shape[1], k_cache_BxTxKxD.shape[2]
    if one != 1:
        raise ValueError(f"decode attention takes one query per row, got q of shape {q_Bx1xHxD.shape}")
    block = min(block, t)
    if t % block:
        raise ValueError(f"decode attention: the cache length {t} must be a multiple of the block ({block}); the "
                         "sampler allocates its cache rounded up")
    group = h // kvh
    rows = max(group, MIN_ROWS)
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret
    scale = sm_scale if sm_scale is not None else d ** -0.5
    q_BxKxGxD = q_Bx1xHxD.reshape(b, kvh, group, d)
    if rows > group:
        q_BxKxGxD = jnp.pad(q_BxKxGxD, ((0, 0), (0, 0), (0, rows - group), (0, 0)))
    params = None
    if not interpret:
        from jax.experimental.pallas import triton as pltriton
        params = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    out = pl.pallas_call(
        functools.partial(_decode_kernel, scale=scale, block=block),
        grid=(b, kvh),
        in_specs=[pl.BlockSpec((1,), lambda bi, ki: (bi,)),
                  pl.BlockSpec((None, None, rows, d), lambda bi, ki: (bi, ki, 0, 0)),
                  pl.BlockSpec((None, t, None, d), lambda bi, ki: (bi, 0, ki, 0)),
                  pl.BlockSpec((None, t, None, d), lambda bi, ki: (bi, 0, ki, 0)),
                  pl.BlockSpec((None, t), lambda bi, ki: (bi, 0))],
        out_specs=pl.BlockSpec((None, None, rows, d), lambda bi, ki: (bi, ki, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((b, kvh, rows, d), q_Bx1xHxD.dtype),
        interpret=interpret, compiler_params=params, name="bolt_decode_attention",
    )(lengths_B.astype(jnp.int32), q_BxKxGxD, k_cache_BxTxKxD, v_cache_BxTxKxD, kv_segment_ids_BxT.astype(jnp.int32))
    return out[:, :, :group].reshape(b, 1, h, d)
