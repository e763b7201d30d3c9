"""Decode attention on TPU: a Pallas (Mosaic) kernel over caches whose heads share the lane dimension.

Why: a decode step is bandwidth-bound and most of its bytes are the KV cache. The caches are [B, T, K * D]
(`sampling.sampler.cache_layout`: with head_dim 64, one head per [.., K, D] row would fill half of a vreg's 128 lanes;
side by side, TinyLlama's 4 heads fill 256). The XLA attention views them as [B, T, K, D]: when a layer's cache fits
in VMEM the compiler copies it there whole every step, otherwise it writes its fp32 scores to HBM
(bench/decode_layout.py: 0.33-0.48x the bytes with this kernel at 256 slots per chip, a tie at 64 on a v5e). This
kernel reads the caches as they lie, only the blocks a row block has written (block indices are clamped to the last
needed one, so the pipeline fetches nothing past it), and keeps scores and the online softmax in VMEM.

How the heads meet their keys without splitting lanes: each query head's vector is placed in its KV head's D lanes of
a K * D row and zeros elsewhere (block-diagonal q, [R = Q * H, K * D]); then q @ k^T gives every head its own scores
in one matmul, and p @ v gives [R, K * D] of which each head keeps its own KV head's lanes. That multiplies the
matmul work by K (4 for TinyLlama: about 32 FLOPs per cache byte, far under a v5e's 240), which the bandwidth bound
hides.

Status: checked against the XLA reference in the TPU interpreter on CPU (tests/test_kernels_decode.py) and compiled by
the real TPU compiler ahead of time for v5e and v5p slices (bolt_jax.aot); not yet run on a TPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from bolt_jax.kernels.decode import heads_of
from bolt_jax.kernels.platform import target_platform

NEG = -1e30
SUBLANES = 16  # bf16 sublane tile: q's rows are padded to a multiple of it


def _divisor_at_most(n: int, most: int, step: int = 1) -> int:
    """The largest multiple of `step` that divides n and is at most `most`; n itself when there is none (a block
    as long as its dimension is always a legal block)."""
    fits = [c for c in range(step, min(most, n) + 1, step) if n % c == 0]
    return max(fits) if fits else n


KV_VMEM_BUDGET = 8 * 2**20  # the K and V blocks, double-buffered: half of the smallest default scoped VMEM (16 MiB)


def _blocks(b: int, t: int, kd: int, itemsize: int, block_rows: int, block_t: int) -> tuple[int, int]:
    """(rows, positions) per block: at most the asked ones, time in multiples of 128 (the segment ids' lane blocks),
    shrunk (time first, down to 128, then rows) until the double-buffered K and V blocks fit `KV_VMEM_BUDGET`."""
    bb = _divisor_at_most(b, block_rows)
    bt = _divisor_at_most(t, block_t, step=128)
    while 4 * bb * bt * kd * itemsize > KV_VMEM_BUDGET and (bt > 128 or bb > 1):
        if bt > 128 and _divisor_at_most(t, bt - 128, step=128) < bt:
            bt = _divisor_at_most(t, bt - 128, step=128)
        elif bb > 1:
            bb = _divisor_at_most(b, bb - 1)
        else:
            break
    return bb, bt


def _kernel(len_ref, nblk_ref, q_ref, k_ref, v_ref, seg_ref, o_ref, *refs, scale: float, rows: int, block_t: int,
            with_lse: bool):
    """One (row block, time block) step: for each of the block's rows, scores against the time block's keys and
    the online softmax update. Time blocks at or past a row's length are skipped (and not fetched past the row
    block's longest). `refs`: the lse output when `with_lse` (a sampler step asks for none: its [B, R, 1] block
    would be written lane-padded to 128 every step), then the three scratch buffers."""
    lse_ref, (m_sc, l_sc, acc_sc) = (refs[0] if with_lse else None), refs[-3:]
    i, j = pl.program_id(0), pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    for r in range(rows):  # static: each row's products are plain 2-D matmuls
        length = len_ref[i * rows + r]

        @pl.when(j * block_t < length)
        def _row(r=r, length=length):
            q = q_ref[r]  # [R, KD]
            k, v = k_ref[r], v_ref[r]  # [bt, KD]
            s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
            pos = j * block_t + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
            valid = (seg_ref[r] != 0) & (pos < length)  # [1, bt] & [R, bt]
            s = jnp.where(valid, s, NEG)
            m_prev = m_sc[r]  # [R, 1]
            m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
            p = jnp.where(valid, jnp.exp(s - m_new), 0.0)
            alpha = jnp.exp(m_prev - m_new)
            l_sc[r] = alpha * l_sc[r] + p.sum(axis=-1, keepdims=True)
            acc_sc[r] = alpha * acc_sc[r] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
            m_sc[r] = m_new

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        l = l_sc[...]
        o_ref[...] = acc_sc[...] / jnp.where(l == 0.0, 1.0, l)
        if with_lse:
            lse_ref[...] = jnp.where(l > 0.0, m_sc[...] + jnp.log(jnp.where(l > 0.0, l, 1.0)), NEG)


def pallas_tpu_decode_attention(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD, *, kv_segment_ids_BxT, lengths_B,
                                sm_scale: float | None = None, block_rows: int = 8, block_t: int = 512,
                                interpret: bool | None = None, return_lse: bool = False):
    """As `decode.xla_decode_attention_lse` (Q queries per row see the row's keys at positions [0, lengths[b]) with a
    nonzero segment id), on caches [B, T, K * D]. Returns out [B, Q, H, D] in q's dtype, and with `return_lse` also
    the log-sum-exp [B, Q, H] (fp32; NEG for a row without keys)."""
    b, nq, h, d = q_BxQxHxD.shape
    t, kd = k_cache_BxTxKD.shape[1], k_cache_BxTxKD.shape[2]
    kvh = heads_of(k_cache_BxTxKD, d).shape[2]  # refuses a width that holds no whole heads
    if h % kvh:
        raise ValueError(f"decode attention: {h} query heads are not a multiple of the caches' {kvh} KV heads")
    group = h // kvh
    rows_q = nq * h
    r_pad = -(-rows_q // SUBLANES) * SUBLANES
    bb, bt = _blocks(b, t, kd, k_cache_BxTxKD.dtype.itemsize, block_rows, block_t)
    scale = sm_scale if sm_scale is not None else d ** -0.5
    interpret = target_platform() != "tpu" if interpret is None else interpret

    # Block-diagonal queries: head (q, kh, g) keeps its vector in KV head kh's lanes.
    eye_KxK = jnp.eye(kvh, dtype=q_BxQxHxD.dtype)
    q6 = q_BxQxHxD.reshape(b, nq, kvh, group, 1, d) * eye_KxK[None, None, :, None, :, None]
    q_BxRxKD = q6.reshape(b, rows_q, kd)
    if r_pad > rows_q:
        q_BxRxKD = jnp.pad(q_BxRxKD, ((0, 0), (0, r_pad - rows_q), (0, 0)))
    lengths = lengths_B.astype(jnp.int32)
    blocks_needed = jnp.maximum((lengths.reshape(b // bb, bb).max(axis=1) + bt - 1) // bt, 1).astype(jnp.int32)

    def kv_index(i, j, len_ref, nblk_ref):
        return i, jnp.minimum(j, nblk_ref[i] - 1), 0

    def seg_index(i, j, len_ref, nblk_ref):
        return i, 0, jnp.minimum(j, nblk_ref[i] - 1)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b // bb, t // bt),
        in_specs=[pl.BlockSpec((bb, r_pad, kd), lambda i, j, *_: (i, 0, 0)),
                  pl.BlockSpec((bb, bt, kd), kv_index),
                  pl.BlockSpec((bb, bt, kd), kv_index),
                  pl.BlockSpec((bb, 1, bt), seg_index)],
        out_specs=[pl.BlockSpec((bb, r_pad, kd), lambda i, j, *_: (i, 0, 0)),
                   pl.BlockSpec((bb, r_pad, 1), lambda i, j, *_: (i, 0, 0))][:2 if return_lse else 1],
        scratch_shapes=[pltpu.VMEM((bb, r_pad, 1), jnp.float32), pltpu.VMEM((bb, r_pad, 1), jnp.float32),
                        pltpu.VMEM((bb, r_pad, kd), jnp.float32)],
    )
    out_BxRxKD, *lse_BxRx1 = pl.pallas_call(
        functools.partial(_kernel, scale=scale, rows=bb, block_t=bt, with_lse=return_lse),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((b, r_pad, kd), jnp.float32),
                   jax.ShapeDtypeStruct((b, r_pad, 1), jnp.float32)][:2 if return_lse else 1],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret, name="bolt_decode_attention_tpu",
    )(lengths, blocks_needed, q_BxRxKD, k_cache_BxTxKD, v_cache_BxTxKD,
      kv_segment_ids_BxT.astype(jnp.int32).reshape(b, 1, t))
    # Each head keeps its own KV head's lanes: the diagonal of [.., K (query's), .., K (lanes'), D].
    out6 = out_BxRxKD[:, :rows_q].reshape(b, nq, kvh, group, kvh, d)
    out = jnp.einsum("bqkgjd,kj->bqkgd", out6, jnp.eye(kvh, dtype=jnp.float32))
    out = out.reshape(b, nq, h, d).astype(q_BxQxHxD.dtype)
    if not return_lse:
        return out
    return out, lse_BxRx1[0][:, :rows_q, 0].reshape(b, nq, h)
