"""Decode attention on Hopper in Mosaic GPU: the flash forward of `mosaic_gpu.py`, fed a KV head's queries as rows.

Why: the GPU decode kernel in `decode.py` is lowered through Pallas' Triton backend, which jax deprecated in 0.11 and
began removing in 0.12.1 (its Triton example kernels are gone from `jax.experimental.pallas.ops.gpu`). When the
backend goes, `decode_impl="auto"` on a GPU would have no kernel; this is the replacement on the backend jax keeps.

How, without a second kernel: a decode step's queries of one KV head (the Q x H / K query heads of its group, for
all Q queries of the row) become the *rows* of one query tile of the forward kernel, with that KV head as the only
head (GQA group 1). The tile's row range visits the blocks [0, ceil(length / block_kv)) of the row's cache and
nothing past its length; the key mask is the forward's segment compare against a validity id (1 where the position
is below the row's length and its segment id is not 0, else 0). So each CTA reads its KV head's written blocks once,
through the forward's TMA ring, and the softmax is the forward's online fp32 one; lse comes for free
(`return_lse` for `decode.merge_attention`).

The cost of reuse: a warpgroup's tile is 64 query rows (wgmma's M), and a decode group has few (8 for TinyLlama, 32
with four samples sharing a prompt), so most rows are padding. So where a group's rows fit 64 the forward runs with
one compute warpgroup (`MosaicBlocks(compute_wgs=1)`), not attention's two, which would double the padding; more
rows take two (one CTA reading the KV head's blocks once for all of them). At TinyLlama's shape and a 1024-token
cache a CTA then does 16.8 MFLOP of matmuls (2.3 us at an H100's dense bf16 rate per SM) and 64 x 1024 exp2 (about
2.2 us at 16 a clock) while its memory warpgroup reads 262 KB of K and V (10.3 us at the H100's HBM bandwidth per
SM): with two compute warpgroups the padded work came to about 9 of those 10.3 us. By that arithmetic the loads
bound it; not yet measured.

Status: the real kernel runs in jax's Mosaic GPU interpreter on CPU (jax >= 0.12.1) and matches the XLA decode path
(tests/test_kernels_decode.py); lowered for the cuda platform in the same tests; not yet run on a GPU
(`bench/sampler.py --decode pallas_gpu,mosaic_gpu --check_decode_kernel` measures and checks it on one).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from bolt_jax.kernels.decode import NEG, heads_of
from bolt_jax.kernels.mosaic_gpu import MosaicBlocks, mosaic_forward, pure_jax_twin
from bolt_jax.kernels.platform import target_platform

DECODE_BLOCKS = MosaicBlocks(block_q=64, block_kv=128, stages=2)


def validity_ids(kv_segment_ids_BxT, lengths_B):
    """1 where a position may be attended (below the row's length, segment id not 0), else 0: the key side of the
    forward kernel's segment compare (every query row carries 1)."""
    t = kv_segment_ids_BxT.shape[1]
    below = jnp.arange(t, dtype=jnp.int32)[None, :] < lengths_B.astype(jnp.int32)[:, None]
    return ((kv_segment_ids_BxT != 0) & below).astype(jnp.int32)


def written_block_ranges(lengths_B, *, tiles: int, block_kv: int, n_kv_blocks: int):
    """Per row and query tile, the KV blocks [0, ceil(length / block_kv)): the written part of the cache only.
    [B, tiles, 2] int32."""
    hi = jnp.minimum(-(-lengths_B.astype(jnp.int32) // block_kv), n_kv_blocks)
    hi = jnp.broadcast_to(hi[:, None], (lengths_B.shape[0], tiles))
    return jnp.stack([jnp.zeros_like(hi), hi], axis=-1)


def mosaic_decode_attention(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD, *, kv_segment_ids_BxT, lengths_B,
                            sm_scale: float | None = None, return_lse: bool = False,
                            blocks: MosaicBlocks = DECODE_BLOCKS, interpret: bool | None = None,
                            compute_wgs: int | None = None):
    """As `decode.pallas_decode_attention`: out [B, Q, H, D] (and lse [B, Q, H] fp32 with `return_lse`). A cache
    length that is no multiple of `blocks.block_kv` takes blocks of 64 where it is a multiple of 64, else is padded
    to one (a copy of the cache each call: only the shared-prompt entries of 16 or 32 positions are that short; the
    sampler allocates its caches in blocks of 128). `interpret` (default: off a GPU) runs the forward's pure-JAX twin,
    the same algorithm tile for tile. `compute_wgs` (None: one compute warpgroup where a KV head's rows fit
    `blocks.block_q`, two otherwise) forces 1 or 2, for measuring that choice (bench/decode_kernels.py)."""
    b, nq, h, d = q_BxQxHxD.shape
    t = k_cache_BxTxKD.shape[1]
    if t % blocks.block_kv:
        blocks = dataclasses.replace(blocks, block_kv=64)
        if pad := -t % 64:
            k_cache_BxTxKD, v_cache_BxTxKD = (jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
                                              for x in (k_cache_BxTxKD, v_cache_BxTxKD))
            kv_segment_ids_BxT = jnp.pad(kv_segment_ids_BxT, ((0, 0), (0, pad)))  # id 0: never a key
            t += pad
    k_BxTxKxD, v_BxTxKxD = heads_of(k_cache_BxTxKD, d), heads_of(v_cache_BxTxKD, d)
    kvh = k_BxTxKxD.shape[2]
    group = h // kvh
    rows = nq * group
    if compute_wgs is None:  # one compute warpgroup where it holds them all
        compute_wgs = 1 if rows <= blocks.block_q else 2
    blocks = dataclasses.replace(blocks, compute_wgs=compute_wgs)
    tiles = -(-rows // blocks.tile_q)
    # Row r = (query i, head g of the group) of KV head k: [B, Q, K, G, D] -> [B, Q * G, K, D].
    q_BxRxKxD = q_BxQxHxD.reshape(b, nq, kvh, group, d).transpose(0, 1, 3, 2, 4).reshape(b, rows, kvh, d)
    q_BxRxKxD = jnp.pad(q_BxRxKxD, ((0, 0), (0, tiles * blocks.tile_q - rows), (0, 0), (0, 0)))
    q_ids_BxR = jnp.ones(q_BxRxKxD.shape[:2], jnp.int32)
    ranges = written_block_ranges(lengths_B, tiles=tiles, block_kv=blocks.block_kv, n_kv_blocks=t // blocks.block_kv)
    interpret = target_platform() != "gpu" if interpret is None else interpret
    forward = pure_jax_twin if interpret else mosaic_forward
    valid_BxT = validity_ids(kv_segment_ids_BxT, lengths_B)
    out, lse = forward(q_BxRxKxD, k_BxTxKxD, v_BxTxKxD, q_ids_BxR, valid_BxT, ranges,
                       scale=sm_scale if sm_scale is not None else d ** -0.5, causal=False, segments=True,
                       blocks=blocks)
    # A row without a visible key: output 0 and lse NEG, as the other decode paths (the forward kernel, which never
    # meets one in attention, would give the mean of the masked values).
    seen_B = valid_BxT.any(axis=1)
    out = out[:, :rows].reshape(b, nq, group, kvh, d).transpose(0, 1, 3, 2, 4).reshape(b, nq, h, d)
    out = jnp.where(seen_B[:, None, None, None], out, jnp.zeros((), out.dtype))
    if not return_lse:
        return out
    lse_BxQxH = lse[:, :, :rows].reshape(b, kvh, nq, group).transpose(0, 2, 1, 3).reshape(b, nq, h)
    return out, jnp.where(seen_B[:, None, None], lse_BxQxH, NEG)
