"""Flash attention in Pallas for GPUs (the portable, Triton-lowered path): forward and backward, causal, grouped-query,
packed documents.

Layout BSHD: q [B, S, H, D], k/v [B, T, K, D], segment ids [B, S] / [B, T]. GQA without repeating K/V: the block
map of k and v sends query head h to KV head h // (H / K). The forward keeps fp32 running max / sum / accumulator
(online softmax) and writes the log-sum-exp for the backward; causal runs skip every KV block above the diagonal
(and, in the backward, every query block below it). Masking inside a block compares segment ids and positions.
The backward is FlashAttention-2's: one kernel for dK/dV per KV block (per query head, then summed over the group)
and one for dQ per query block, after delta = rowsum(dO * O).

Matmuls take the operands in their own dtype (bf16 in training) with fp32 accumulation, so they run on the tensor
cores; only the softmax statistics and accumulators are fp32.

Packed documents: per block, the kernels visit only the blocks of the other axis where the block's segment ids
occur (`occurrence_range`: first and last index of each id in the row, exact for any id layout), on top of the
causal bound. At 4 documents per row that skips about three quarters of the causal work.

Status: checked in Pallas interpret mode on CPU against the XLA reference (tests/test_kernels.py), and compiled
for real on an H100 (jax 0.11.2, Triton lowering). At TinyLlama's shape with 4 documents per row it matches an fp32
oracle to 3.2e-3 (cuDNN: 3.4e-3); forward+backward 1.24-1.27 ms against 2.71 ms for cuDNN with the same document
mask (BENCHMARKS.md, `python bench/attention.py`). This is the portable GPU path; on Hopper, `Blocks.mosaic` swaps in
the Mosaic GPU kernels (`mosaic_gpu.py`, `mosaic_gpu_bwd.py`; impl `mosaic_gpu`), which share this module's padding,
spans and custom VJP, and whose dK/dV kernel sums the GQA group in registers (here dK/dV still go through an fp32
[B, T, H, D] buffer).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from bolt_jax.kernels import mosaic_gpu, mosaic_gpu_bwd
from bolt_jax.kernels.mosaic_gpu import MosaicBlocks, ptxas_miscompiles_causal
from bolt_jax.kernels.platform import target_platform

NEG = -1e30


def _dot(a, b):
    """Matrix product on the tensor cores: operands in their own dtype (bf16 in training), fp32 accumulation."""
    return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _mask(q_idx, k_idx, q_seg, k_seg, causal: bool):
    m = q_seg[:, None] == k_seg[None, :]
    if causal:
        m = m & (q_idx[:, None] >= k_idx[None, :])
    return m


def _block_range(lo_ref, hi_ref, block: int, n_blocks: int):
    """The blocks [first, last) of the other axis that can hold a visible partner of this block's rows: from the
    smallest first-occurrence to the largest last-occurrence of their segment ids (packed documents skip every
    block of the other documents)."""
    first = jnp.min(lo_ref[...]) // block
    last = jnp.minimum(n_blocks, (jnp.max(hi_ref[...]) + block - 1) // block)
    return first, last


def _fwd_kernel(q_ref, k_ref, v_ref, qs_ref, ks_ref, lo_ref, hi_ref, o_ref, lse_ref, *, scale, causal, block_k,
                seq_k):
    block_q = q_ref.shape[0]
    i = pl.program_id(2)
    q = q_ref[...]
    q_seg = qs_ref[...]
    q_idx = i * block_q + jnp.arange(block_q)
    first, n_blocks = _block_range(lo_ref, hi_ref, block_k, seq_k // block_k)
    if causal:
        n_blocks = jnp.minimum(n_blocks, ((i + 1) * block_q + block_k - 1) // block_k)

    def body(j, carry):
        m, l, acc = carry
        span = pl.ds(j * block_k, block_k)
        k = k_ref[span, :]
        v = v_ref[span, :]
        s = _dot(q, k.T) * scale
        valid = _mask(q_idx, j * block_k + jnp.arange(block_k), q_seg, ks_ref[span], causal)
        s = jnp.where(valid, s, NEG)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.where(valid, jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        return m_new, alpha * l + p.sum(axis=-1), alpha[:, None] * acc + _dot(p.astype(v.dtype), v)

    d = q_ref.shape[-1]
    init = (jnp.full((block_q,), NEG, jnp.float32), jnp.zeros((block_q,), jnp.float32),
            jnp.zeros((block_q, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(first, n_blocks, body, init)
    l_safe = jnp.where(l == 0.0, 1.0, l)  # rows with no visible key (padding) give 0, not NaN
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l_safe)


def _specs(b_h_map_q, b_h_map_kv, block_q, seq_k, d):
    return [
        pl.BlockSpec((None, block_q, None, d), b_h_map_q),
        pl.BlockSpec((None, seq_k, None, d), b_h_map_kv),
        pl.BlockSpec((None, seq_k, None, d), b_h_map_kv),
    ]


def _forward(q, k, v, q_seg, k_seg, spans, *, scale, causal, blocks: Blocks, interpret, segments=True):
    if blocks.mosaic is not None:
        return _mosaic_forward(q, k, v, q_seg, k_seg, spans, scale=scale, causal=causal, blocks=blocks.mosaic,
                               interpret=interpret, segments=segments)
    block_q, block_k = blocks.fwd_q, blocks.fwd_k
    b, s, h, d = q.shape
    t, kvh = k.shape[1], k.shape[2]
    group = h // kvh
    grid = (b, h, s // block_q)
    kernel = functools.partial(_fwd_kernel, scale=scale, causal=causal, block_k=block_k, seq_k=t)
    o, lse = pl.pallas_call(
        kernel, grid=grid,
        in_specs=_specs(lambda bi, hi, i: (bi, i, hi, 0), lambda bi, hi, i: (bi, 0, hi // group, 0), block_q, t, d)
        + [pl.BlockSpec((None, block_q), lambda bi, hi, i: (bi, i)),
           pl.BlockSpec((None, t), lambda bi, hi, i: (bi, 0))]
        + [pl.BlockSpec((None, block_q), lambda bi, hi, i: (bi, i))] * 2,
        out_specs=[pl.BlockSpec((None, block_q, None, d), lambda bi, hi, i: (bi, i, hi, 0)),
                   pl.BlockSpec((None, None, block_q), lambda bi, hi, i: (bi, hi, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, s), jnp.float32)],
        interpret=interpret, compiler_params=_params(blocks, interpret), name="bolt_flash_fwd")(
            q, k, v, q_seg, k_seg, spans.q_lo, spans.q_hi)
    return o, lse


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, lo_ref, hi_ref, dk_ref, dv_ref, *,
                 scale, causal, block_q, seq_q):
    block_k = k_ref.shape[0]
    j = pl.program_id(2)
    k = k_ref[...]
    v = v_ref[...]
    k_seg = ks_ref[...]
    k_idx = j * block_k + jnp.arange(block_k)
    start, stop = _block_range(lo_ref, hi_ref, block_q, seq_q // block_q)
    if causal:
        start = jnp.maximum(start, (j * block_k) // block_q)

    def body(i, carry):
        dk, dv = carry
        span = pl.ds(i * block_q, block_q)
        q = q_ref[span, :]
        do = do_ref[span, :]
        valid = _mask(i * block_q + jnp.arange(block_q), k_idx, qs_ref[span], k_seg, causal)
        s = _dot(q, k.T) * scale
        p = jnp.where(valid, jnp.exp(s - lse_ref[span][:, None]), 0.0)
        dv = dv + _dot(p.astype(do.dtype).T, do)
        ds = p * (_dot(do, v.T) - delta_ref[span][:, None])
        dk = dk + _dot(ds.astype(q.dtype).T, q)
        return dk, dv

    d = k_ref.shape[-1]
    zeros = jnp.zeros((block_k, d), jnp.float32)
    dk, dv = jax.lax.fori_loop(start, stop, body, (zeros, zeros))
    dk_ref[...] = dk * scale
    dv_ref[...] = dv


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref, lo_ref, hi_ref, dq_ref, *, scale,
               causal, block_k, seq_k):
    block_q = q_ref.shape[0]
    i = pl.program_id(2)
    q = q_ref[...]
    do = do_ref[...]
    lse, delta, q_seg = lse_ref[...], delta_ref[...], qs_ref[...]
    q_idx = i * block_q + jnp.arange(block_q)
    first, n_blocks = _block_range(lo_ref, hi_ref, block_k, seq_k // block_k)
    if causal:
        n_blocks = jnp.minimum(n_blocks, ((i + 1) * block_q + block_k - 1) // block_k)

    def body(j, dq):
        span = pl.ds(j * block_k, block_k)
        k = k_ref[span, :]
        v = v_ref[span, :]
        valid = _mask(q_idx, j * block_k + jnp.arange(block_k), q_seg, ks_ref[span], causal)
        s = _dot(q, k.T) * scale
        p = jnp.where(valid, jnp.exp(s - lse[:, None]), 0.0)
        ds = p * (_dot(do, v.T) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(first, n_blocks, body, jnp.zeros(q_ref.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _backward(q, k, v, q_seg, k_seg, spans, o, lse, do, *, scale, causal, blocks: Blocks, interpret):
    block_q, block_k = blocks.bwd_q, blocks.bwd_k
    b, s, h, d = q.shape
    t, kvh = k.shape[1], k.shape[2]
    group = h // kvh
    delta = jnp.einsum("bshd,bshd->bhs", o.astype(jnp.float32), do.astype(jnp.float32))
    row = lambda n: pl.BlockSpec((None, None, n), lambda bi, hi, x: (bi, hi, 0))  # noqa: E731
    full_q = pl.BlockSpec((None, s, None, d), lambda bi, hi, x: (bi, 0, hi, 0))
    dk_h, dv_h = pl.pallas_call(
        functools.partial(_dkdv_kernel, scale=scale, causal=causal, block_q=block_q, seq_q=s),
        grid=(b, h, t // block_k),
        in_specs=[full_q,
                  pl.BlockSpec((None, block_k, None, d), lambda bi, hi, j: (bi, j, hi // group, 0)),
                  pl.BlockSpec((None, block_k, None, d), lambda bi, hi, j: (bi, j, hi // group, 0)),
                  full_q, row(s), row(s),
                  pl.BlockSpec((None, s), lambda bi, hi, j: (bi, 0)),
                  pl.BlockSpec((None, block_k), lambda bi, hi, j: (bi, j))]
        + [pl.BlockSpec((None, block_k), lambda bi, hi, j: (bi, j))] * 2,
        out_specs=[pl.BlockSpec((None, block_k, None, d), lambda bi, hi, j: (bi, j, hi, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct((b, t, h, d), jnp.float32)] * 2,
        interpret=interpret, compiler_params=_params(blocks, interpret), name="bolt_flash_bwd_dkdv")(
            q, k, v, do, lse, delta, q_seg, k_seg, spans.kv_lo, spans.kv_hi)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, causal=causal, block_k=block_k, seq_k=t),
        grid=(b, h, s // block_q),
        in_specs=[pl.BlockSpec((None, block_q, None, d), lambda bi, hi, i: (bi, i, hi, 0)),
                  pl.BlockSpec((None, t, None, d), lambda bi, hi, i: (bi, 0, hi // group, 0)),
                  pl.BlockSpec((None, t, None, d), lambda bi, hi, i: (bi, 0, hi // group, 0)),
                  pl.BlockSpec((None, block_q, None, d), lambda bi, hi, i: (bi, i, hi, 0)),
                  pl.BlockSpec((None, None, block_q), lambda bi, hi, i: (bi, hi, i)),
                  pl.BlockSpec((None, None, block_q), lambda bi, hi, i: (bi, hi, i)),
                  pl.BlockSpec((None, block_q), lambda bi, hi, i: (bi, i)),
                  pl.BlockSpec((None, t), lambda bi, hi, i: (bi, 0))]
        + [pl.BlockSpec((None, block_q), lambda bi, hi, i: (bi, i))] * 2,
        out_specs=pl.BlockSpec((None, block_q, None, d), lambda bi, hi, i: (bi, i, hi, 0)),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=interpret, compiler_params=_params(blocks, interpret), name="bolt_flash_bwd_dq")(
            q, k, v, do, lse, delta, q_seg, k_seg, spans.q_lo, spans.q_hi)
    # GQA: each KV head's gradient is the sum over its group of query heads
    dk = dk_h.reshape(b, t, kvh, group, d).sum(axis=3).astype(k.dtype)
    dv = dv_h.reshape(b, t, kvh, group, d).sum(axis=3).astype(v.dtype)
    return dq, dk, dv


def _mosaic_forward(q, k, v, q_seg, k_seg, spans, *, scale, causal, blocks, interpret, segments):
    """The Hopper forward (Mosaic GPU); on CPU its pure-JAX twin, the same algorithm tile for tile."""
    ranges = mosaic_gpu.kv_block_ranges(spans.q_lo, spans.q_hi, tile_q=blocks.tile_q, block_kv=blocks.block_kv,
                                        n_kv_blocks=k.shape[1] // blocks.block_kv, causal=causal)
    fn = mosaic_gpu.pure_jax_twin if interpret else mosaic_gpu.mosaic_forward
    return fn(q, k, v, q_seg, k_seg, ranges, scale=scale, causal=causal, segments=segments, blocks=blocks)


def _mosaic_backward(q, k, v, q_seg, k_seg, spans, o, lse, do, *, scale, causal, blocks, interpret, segments):
    """The Hopper backward (Mosaic GPU, GQA summed in the kernel); on CPU its pure-JAX twin."""
    delta = jnp.einsum("bshd,bshd->bhs", o.astype(jnp.float32), do.astype(jnp.float32))
    dq_ranges, dkdv_ranges = mosaic_gpu_bwd.backward_ranges(spans, q.shape[1], k.shape[1], causal, blocks)
    fn = mosaic_gpu_bwd.pure_jax_twin_backward if interpret else mosaic_gpu_bwd.mosaic_backward
    return fn(q, k, v, q_seg, k_seg, lse, delta, do.astype(q.dtype), dq_ranges, dkdv_ranges, scale=scale,
              causal=causal, segments=segments, blocks=blocks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _flash(q, k, v, q_seg, k_seg, spans, scale, causal, blocks, interpret, segments):
    return _forward(q, k, v, q_seg, k_seg, spans, scale=scale, causal=causal, blocks=blocks, interpret=interpret,
                    segments=segments)[0]


def _flash_fwd(q, k, v, q_seg, k_seg, spans, scale, causal, blocks, interpret, segments):
    o, lse = _forward(q, k, v, q_seg, k_seg, spans, scale=scale, causal=causal, blocks=blocks, interpret=interpret,
                      segments=segments)
    return o, (q, k, v, q_seg, k_seg, spans, o, lse)


def _flash_bwd(scale, causal, blocks, interpret, segments, res, do):
    q, k, v, q_seg, k_seg, spans, o, lse = res
    if blocks.mosaic is not None and blocks.mosaic.backward:
        return _mosaic_backward(q, k, v, q_seg, k_seg, spans, o, lse, do, scale=scale, causal=causal,
                                blocks=blocks.mosaic, interpret=interpret, segments=segments) + (None, None, None)
    dq, dk, dv = _backward(q, k, v, q_seg, k_seg, spans, o, lse, do, scale=scale, causal=causal, blocks=blocks,
                           interpret=interpret)
    return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


class Spans(NamedTuple):
    """Per row position, the index range [lo, hi) of the other axis where its segment id occurs: queries look only
    at kv blocks overlapping [q_lo, q_hi), keys only at query blocks overlapping [kv_lo, kv_hi)."""
    q_lo: jax.Array  # [B, S]
    q_hi: jax.Array
    kv_lo: jax.Array  # [B, T]
    kv_hi: jax.Array


def occurrence_range(seg_BxS):
    """First index and last index + 1 of each position's segment id in its row, for any layout of the ids (sorted
    by id, stably, the first and the last of each run of equal ids)."""
    b, s = seg_BxS.shape
    order = jnp.argsort(seg_BxS, axis=1, stable=True)
    ids = jnp.take_along_axis(seg_BxS, order, axis=1)
    idx = jnp.broadcast_to(jnp.arange(s), (b, s))
    new_run = jnp.concatenate([jnp.ones((b, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
    run_end = jnp.concatenate([ids[:, 1:] != ids[:, :-1], jnp.ones((b, 1), bool)], axis=1)
    start = jax.lax.cummax(jnp.where(new_run, idx, 0), axis=1)
    end = jax.lax.cummin(jnp.where(run_end, idx, s - 1), axis=1, reverse=True)
    first_sorted = jnp.take_along_axis(order, start, axis=1)
    last_sorted = jnp.take_along_axis(order, end, axis=1)
    rows = jnp.arange(b)[:, None]
    first = jnp.zeros_like(order).at[rows, order].set(first_sorted)
    last = jnp.zeros_like(order).at[rows, order].set(last_sorted)
    return first.astype(jnp.int32), (last + 1).astype(jnp.int32)


def _spans(q_seg, k_seg, self_attention: bool) -> Spans:
    b, s = q_seg.shape
    t = k_seg.shape[1]
    if self_attention:
        lo, hi = occurrence_range(q_seg)
        return Spans(lo, hi, lo, hi)
    zeros = lambda n: jnp.zeros((b, n), jnp.int32)  # noqa: E731
    return Spans(zeros(s), jnp.full((b, s), t, jnp.int32), zeros(t), jnp.full((b, t), s, jnp.int32))


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes and Triton launch parameters. The defaults are the fastest of bench/attention.py's sweep on an H100
    at TinyLlama's shape (BENCHMARKS.md); every field must be a power of two >= 16 (warps and stages excepted)."""
    fwd_q: int = 64
    fwd_k: int = 64
    bwd_q: int = 64
    bwd_k: int = 128
    num_warps: int = 4
    num_stages: int = 3
    mosaic: MosaicBlocks | None = None  # set: the forward is the Mosaic GPU (Hopper) kernel with these tiles

    def clipped(self, s: int, t: int) -> Blocks:
        """Shrinks the tiles to short sequences (a 16-token test needs no 128-row tile)."""
        ps, pt = _pow2(s), _pow2(t)
        return dataclasses.replace(self, fwd_q=min(self.fwd_q, ps), fwd_k=min(self.fwd_k, pt),
                                   bwd_q=min(self.bwd_q, ps), bwd_k=min(self.bwd_k, pt))


DEFAULT_BLOCKS = Blocks()


def _params(blocks: Blocks, interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


def pallas_gpu_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, *, q_segment_ids_BxS=None, kv_segment_ids_BxT=None,
                         causal: bool = True, sm_scale: float | None = None, q_positions_BxS=None,
                         kv_positions_BxT=None, blocks: Blocks | None = None, interpret: bool | None = None):
    """Dispatch entry (bolt_jax.kernels.attention). Pads S and T to the block sizes (pad keys are never visible)."""
    if q_positions_BxS is not None or kv_positions_BxT is not None:
        raise NotImplementedError("pallas_gpu: causality by explicit positions (KV-cache decode) is not supported; "
                                  "decode uses impl='xla'")
    b, s, h, d = q_BxSxHxD.shape
    t = k_BxTxKxD.shape[1]
    if causal and s != t:
        raise NotImplementedError("pallas_gpu: causal attention needs S == T")
    interpret = target_platform() != "gpu" if interpret is None else interpret
    scale = sm_scale if sm_scale is not None else d ** -0.5
    # self-attention over packed documents (one segment-id array for both sides): blocks of other documents are
    # skipped. Separate q / kv ids (or none) visit every block that causality allows.
    self_attention = q_segment_ids_BxS is not None and q_segment_ids_BxS is kv_segment_ids_BxT
    q_seg = jnp.zeros((b, s), jnp.int32) if q_segment_ids_BxS is None else q_segment_ids_BxS.astype(jnp.int32)
    k_seg = jnp.zeros((b, t), jnp.int32) if kv_segment_ids_BxT is None else kv_segment_ids_BxT.astype(jnp.int32)
    blocks = (blocks or DEFAULT_BLOCKS).clipped(s, t)
    # one padding serves both passes: the largest tile along each axis (all are powers of two)
    tile_q, tile_k = (1, 1)
    if blocks.mosaic:
        bwd_tile = 2 * blocks.mosaic.bwd_block if blocks.mosaic.backward else 1
        tile_q, tile_k = max(blocks.mosaic.tile_q, bwd_tile), max(blocks.mosaic.block_kv, bwd_tile)
    s_pad = -s % max(blocks.fwd_q, blocks.bwd_q, blocks.fwd_k if causal else 1, blocks.bwd_k if causal else 1, tile_q,
                     tile_k if causal else 1)
    t_pad = -t % max(blocks.fwd_k, blocks.bwd_k, blocks.fwd_q if causal else 1, blocks.bwd_q if causal else 1, tile_k,
                     tile_q if causal else 1)
    # the segment compare can be left out only when there are no ids and no pad keys to hide
    segments = q_segment_ids_BxS is not None or kv_segment_ids_BxT is not None or t_pad > 0
    if s_pad or t_pad:
        pad = lambda x, n, value=0: jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2),  # noqa: E731
                                            constant_values=value)
        q, k, v = pad(q_BxSxHxD, s_pad), pad(k_BxTxKxD, t_pad), pad(v_BxTxKxD, t_pad)
        q_seg, k_seg = pad(q_seg, s_pad, -1), pad(k_seg, t_pad, -2)
        spans = _spans(q_seg, k_seg, self_attention)  # pad ids never match: their ranges only need to be valid
        return _flash(q, k, v, q_seg, k_seg, spans, scale, causal, blocks, interpret, segments)[:, :s]
    spans = _spans(q_seg, k_seg, self_attention)
    return _flash(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, q_seg, k_seg, spans, scale, causal, blocks, interpret,
                  segments)


def mosaic_gpu_attention(*args, blocks: Blocks | None = None, **kwargs):
    """Dispatch entry for impl='mosaic_gpu': the Mosaic GPU (Hopper: wgmma, TMA) forward with this module's
    backward. On CPU the forward runs as its pure-JAX twin."""
    blocks = blocks or DEFAULT_BLOCKS
    if blocks.mosaic is None:
        blocks = dataclasses.replace(blocks, mosaic=MosaicBlocks())
    interpret = kwargs.get("interpret")
    if kwargs.get("causal", True) and not interpret and target_platform() == "gpu" and ptxas_miscompiles_causal():
        raise ValueError("mosaic_gpu: causal attention is miscompiled by ptxas in CUDA 12.8.0-12.9.0; upgrade CUDA "
                         "(12.9.1 or newer) or use impl='pallas_gpu' or 'cudnn'")
    return pallas_gpu_attention(*args, blocks=blocks, **kwargs)


def _pow2(n: int) -> int:
    return max(16, 1 << math.ceil(math.log2(max(n, 1))))
