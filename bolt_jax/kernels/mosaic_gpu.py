"""Flash-attention forward for Hopper in Mosaic GPU (wgmma + TMA, warp-specialized), with GQA and packed documents.

Why a second GPU kernel: the Triton lowering of Pallas is deprecated from jax 0.11; Mosaic GPU is the Hopper path
(FlashAttention-3's structure, written in Pallas). The layout of the work, per CTA of `2 * block_q` query rows of
one (batch, query head):

- three warpgroups: two compute warpgroups take `block_q` rows each; the memory warpgroup streams K and V blocks
  of the query head's KV head (GQA by indexing, nothing repeated) into a ring of `stages` SMEM slots with TMA, and
  refills a slot once both compute warpgroups have released it (one "consumed" barrier per slot and operand).
  `MosaicBlocks(compute_wgs=1)` runs one compute warpgroup of `block_q` rows instead (decode, whose rows are few);
- the KV blocks visited are [lo, hi) from a per-tile table computed outside the kernel: the causal bound and, for
  packed documents, the blocks where the tile's segment ids occur (`pallas_gpu.occurrence_range`). Other documents'
  blocks are never loaded;
- QK^T and PV run on the tensor cores (wgmma, bf16 in, fp32 accumulators); the softmax keeps its running max in log2
  units so each probability is one FMA and one exp2; the two compute warpgroups take turns on the tensor cores (a
  shared "schedule" barrier, FA3's ping-pong);
- masking (segment ids and causality) sets masked scores to a finite -1e30, so a row whose first visited block is
  all masked gives a block whose weight the next real maximum multiplies by 0, never NaN.

The backward is `mosaic_gpu_bwd.py` (or, with `MosaicBlocks(backward=False)`, the Triton-lowered Pallas backward
of `pallas_gpu`, which takes the same residuals: natural-log log-sum-exp, [B, H, S]). `pure_jax_twin` is the same
algorithm (same tiles, same range table, same log2-domain online softmax and masking) in plain JAX, so the algorithm
is tested on CPU; the kernel itself is lowered to Mosaic GPU on CPU in the tests (`jax.export` for the cuda
platform), run in jax 0.12.1's Mosaic GPU interpreter on CPU against the twin (tests/test_kernels_mosaic.py; 0.12.0's
interpreter cannot lower it), and was compiled and checked against an fp32 oracle on an H100 (`bench/attention.py`;
BENCHMARKS.md: forward 0.30 ms with 4 documents per row, 0.47 ms plain causal).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

NEG = -1e30
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class MosaicBlocks:
    """Tiles of the Mosaic GPU forward: each CTA holds compute_wgs * block_q query rows (block_q per compute
    warpgroup). Attention takes two compute warpgroups (FA3's layout, what was measured); decode, whose few query rows
    fill one warpgroup's 64 at most, takes one, so no second warpgroup multiplies padding rows."""
    block_q: int = 64
    block_kv: int = 128
    stages: int = 2
    schedule_barrier: bool = False  # FA3's ping-pong; measured slower at head dim 64 (BENCHMARKS.md)
    compute_wgs: int = 2  # 1 or 2 compute warpgroups beside the memory one (the forward only)
    backward: bool = True  # the Mosaic GPU backward (mosaic_gpu_bwd.py); False: the Triton-lowered Pallas one
    bwd_block: int = 64  # rows per compute warpgroup in both backward kernels (query and key blocks alike)
    bwd_stages: int = 2

    def __post_init__(self):
        if self.block_q % 64 or self.block_kv % 64 or self.bwd_block % 64:
            raise ValueError(f"mosaic_gpu: block_q ({self.block_q}), block_kv ({self.block_kv}) and bwd_block "
                             f"({self.bwd_block}) must be multiples of 64 (wgmma tiles)")
        if self.stages < 2 or self.bwd_stages < 2:
            raise ValueError(f"mosaic_gpu: stages and bwd_stages must be >= 2, got {self.stages}, {self.bwd_stages}")
        if self.compute_wgs not in (1, 2) or (self.schedule_barrier and self.compute_wgs != 2):
            raise ValueError(f"mosaic_gpu: compute_wgs must be 1 or 2 (2 for schedule_barrier, a ping-pong between "
                             f"two), got {self.compute_wgs}")

    @property
    def tile_q(self) -> int:
        return self.compute_wgs * self.block_q


def wgmma_takes(dtype, head_dim: int) -> bool:
    """Whether the Mosaic GPU kernels (attention and decode) take inputs of this dtype and head dim: wgmma's bf16 /
    fp16 operands and head tiles of 64. What `auto` checks before picking them."""
    return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 64 == 0


def ptxas_miscompiles_causal() -> bool:
    """CUDA runtimes 12.8.0 to 12.9.0 miscompile Mosaic GPU's causal attention (ptxas; jax's own FA3 example
    refuses them). Checked so that `auto` avoids them and an explicit `mosaic_gpu` fails loudly, never silently."""
    try:
        from jax._src.lib import cuda_versions
    except ImportError:
        return False
    if cuda_versions is None:
        return False
    return 12080 <= cuda_versions.cuda_runtime_get_version() < 12091


def kv_block_ranges(q_lo_BxS, q_hi_BxS, *, tile_q: int, block_kv: int, n_kv_blocks: int, causal: bool):
    """Per query tile of `tile_q` rows, the KV blocks [lo, hi) it must visit: where its rows' segment ids occur
    (q_lo / q_hi: each row's occurrence range), cut at the causal diagonal. [B, S / tile_q, 2] int32."""
    b, s = q_lo_BxS.shape
    tiles = s // tile_q
    lo = q_lo_BxS.reshape(b, tiles, tile_q).min(axis=-1) // block_kv
    hi = -(-q_hi_BxS.reshape(b, tiles, tile_q).max(axis=-1) // block_kv)
    hi = jnp.minimum(hi, n_kv_blocks)
    if causal:
        diagonal = -(-(jnp.arange(tiles) + 1) * tile_q // block_kv)
        hi = jnp.minimum(hi, diagonal[None, :])
    return jnp.stack([lo, hi], axis=-1).astype(jnp.int32)


def _check_shapes(q, k, blocks: MosaicBlocks):
    b, s, h, d = q.shape
    t, kvh = k.shape[1], k.shape[2]
    if d % 64:
        raise ValueError(f"mosaic_gpu: head dim {d} must be a multiple of 64")
    if s % blocks.tile_q or t % blocks.block_kv:
        raise ValueError(f"mosaic_gpu: S ({s}) must be a multiple of 2 * block_q ({blocks.tile_q}) and T ({t}) of "
                         f"block_kv ({blocks.block_kv}); the dispatch entry pads")
    return b, s, h, d, t, kvh


def mosaic_forward(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, q_seg_BxS, kv_seg_BxT, ranges_BxNx2, *, scale: float,
                   causal: bool, segments: bool, blocks: MosaicBlocks = MosaicBlocks()):
    """Returns (out [B, S, H, D], lse [B, H, S] natural log). `segments=False` skips the segment compare."""
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    b, s, h, d, t, kvh = _check_shapes(q_BxSxHxD, k_BxTxKxD, blocks)
    group = h // kvh
    dtype = q_BxSxHxD.dtype
    if dtype not in (jnp.bfloat16, jnp.float16) or k_BxTxKxD.dtype != dtype or v_BxTxKxD.dtype != dtype:
        raise ValueError(f"mosaic_gpu: q, k, v must all be bf16 or fp16 (wgmma operands), got {dtype}, "
                         f"{k_BxTxKxD.dtype}, {v_BxTxKxD.dtype}")
    block_q, block_kv, stages, wgs = blocks.block_q, blocks.block_kv, blocks.stages, blocks.compute_wgs
    scale_log2 = scale * LOG2E
    wgmma_layout = plgpu.Layout.WGMMA
    row_layout, col_layout = wgmma_layout.reduce(1), wgmma_layout.reduce(0)

    def kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, range_ref, o_ref, lse_ref, scoped):
        (qo_smem2, k_smem, v_smem, lse_smem2, qseg_smem2, kseg_smem), ready, (k_free, v_free), turn = scoped
        k_ready, v_ready, q_ready, qseg_ready, kseg_ready = ready
        batch, head = lax.axis_index("batch"), lax.axis_index("heads")
        tile = (s // blocks.tile_q - 1) - lax.axis_index("q_tile")  # causal: the longest tiles first (less tail)
        wg = lax.axis_index("wg")
        lo, hi = range_ref[batch, tile, 0], range_ref[batch, tile, 1]
        n_steps = hi - lo

        def take_turn():
            if blocks.schedule_barrier:
                plgpu.barrier_arrive(turn)
                plgpu.barrier_wait(turn)

        @pl.when(wg < wgs)
        def _compute():
            plgpu.set_max_registers(232, action="increase")
            qo_smem, lse_smem = qo_smem2.at[wg], lse_smem2.at[wg]
            q_base = tile * blocks.tile_q + wg * block_q
            plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(q_base, block_q), head], qo_smem, q_ready.at[wg])
            q_seg = None
            if segments:  # Mosaic GPU loads register tiles from SMEM only (jax 0.11): segment ids go through TMA
                plgpu.copy_gmem_to_smem(qseg_ref.at[batch, pl.ds(q_base, block_q)], qseg_smem2.at[wg],
                                        qseg_ready.at[wg])
                plgpu.barrier_wait(qseg_ready.at[wg])
                q_seg = plgpu.load(qseg_smem2.at[wg], layout=row_layout)
            plgpu.barrier_wait(q_ready.at[wg])

            m = plgpu.layout_cast(jnp.full((block_q,), -jnp.inf, jnp.float32), row_layout)
            l = plgpu.layout_cast(jnp.full((block_q,), 0, jnp.float32), row_layout)
            acc = plgpu.layout_cast(jnp.full((block_q, d), 0, jnp.float32), wgmma_layout)

            @pl.when(n_steps > 0)
            def _():
                plgpu.barrier_wait(k_ready.at[0])

            pl.when(wg == 1)(take_turn)

            def step(j, carry, masked: bool):
                acc, m, l = carry
                slot = lax.rem(j, jnp.int32(stages))
                kv_start = (lo + j) * block_kv

                def qk_scope(acc_ref):
                    plgpu.wgmma(acc_ref, qo_smem, k_smem.at[slot].transpose((1, 0)))
                    take_turn()
                    return acc_ref[...]

                qk = pl.run_scoped(qk_scope, plgpu.ACC((block_q, block_kv), jnp.float32))
                if segments:  # the slot's segment ids ride with its K block (same "free" barrier)
                    plgpu.barrier_wait(kseg_ready.at[slot])
                    k_seg = plgpu.load(kseg_smem.at[slot], layout=col_layout)
                plgpu.barrier_arrive(k_free.at[slot])
                scores = qk * scale_log2
                if masked:
                    shape = (block_q, block_kv)
                    valid = None
                    if segments:
                        valid = (lax.broadcast_in_dim(q_seg, shape, [0])
                                 == lax.broadcast_in_dim(k_seg, shape, [1]))
                    if causal:
                        rows = plgpu.broadcasted_iota(jnp.int32, shape, 0, layout=wgmma_layout)
                        cols = plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=wgmma_layout)
                        below = rows + q_base >= cols + kv_start
                        valid = below if valid is None else valid & below
                    scores = jnp.where(valid, scores, NEG)
                m_new = jnp.maximum(m, scores.max(axis=1))
                alpha = jnp.exp2(m - m_new)
                p = jnp.exp2(scores - lax.broadcast_in_dim(m_new, scores.shape, [0]))
                acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
                l = l * alpha + p.sum(axis=1)
                p16 = p.astype(dtype)
                acc, l, m_new, p16 = lax.optimization_barrier((acc, l, m_new, p16))
                if blocks.schedule_barrier:
                    plgpu.barrier_arrive(turn)
                plgpu.barrier_wait(v_ready.at[slot])
                if blocks.schedule_barrier:
                    plgpu.barrier_wait(turn)

                def pv(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
                    nxt = j + 1

                    @pl.when(nxt < n_steps)
                    def _():
                        plgpu.barrier_wait(k_ready.at[lax.rem(nxt, jnp.int32(stages))])

                acc = pl.run_state(pv)(plgpu.ACC.init(acc))
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l

            carry = (acc, m, l)
            if segments:  # any block may hold another document's keys
                carry = lax.fori_loop(0, n_steps, lambda j, c: step(j, c, True), carry)
            elif causal:  # only the blocks that cross the diagonal need the mask
                unmasked = jnp.clip(tile * blocks.tile_q // block_kv - lo, 0, n_steps)
                carry = lax.fori_loop(0, unmasked, lambda j, c: step(j, c, False), carry)
                carry = lax.fori_loop(unmasked, n_steps, lambda j, c: step(j, c, True), carry)
            else:
                carry = lax.fori_loop(0, n_steps, lambda j, c: step(j, c, False), carry)
            acc, m, l = carry
            pl.when(wg == 0)(take_turn)

            l_safe = jnp.where(l == 0.0, 1.0, l)
            qo_smem[...] = (acc / lax.broadcast_in_dim(l_safe, (block_q, d), [0])).astype(dtype)
            lse_smem[...] = (m + jnp.log2(l_safe)) * LN2
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(qo_smem, o_ref.at[batch, pl.ds(q_base, block_q), head])
            plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[batch, head, pl.ds(q_base, block_q)])
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == wgs)
        def _memory():
            stream_kv((k_ref, v_ref, kseg_ref), (k_smem, v_smem, kseg_smem), (k_ready, v_ready, kseg_ready),
                      (k_free, v_free), batch=batch, head=head, group=group, first_block=lo,
                      block=block_kv, n_steps=n_steps, stages=stages, segments=segments)

    def entry(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, range_ref, o_ref, lse_ref):
        swizzled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
        smem = (plgpu.SMEM((wgs, block_q, d), dtype, transforms=swizzled),
                plgpu.SMEM((stages, block_kv, d), dtype, transforms=swizzled),
                plgpu.SMEM((stages, block_kv, d), dtype, transforms=swizzled),
                plgpu.SMEM((wgs, block_q), jnp.float32),
                plgpu.SMEM((wgs, block_q), jnp.int32) if segments else None,
                plgpu.SMEM((stages, block_kv), jnp.int32) if segments else None)
        ready = (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
                 plgpu.Barrier(num_barriers=wgs), plgpu.Barrier(num_barriers=wgs) if segments else None,
                 plgpu.Barrier(num_barriers=stages) if segments else None)
        free = (plgpu.Barrier(num_arrivals=wgs, num_barriers=stages),) * 2  # released by every compute warpgroup
        pl.run_scoped(lambda *scoped: kernel(q_ref, k_ref, v_ref, qseg_ref, kseg_ref, range_ref, o_ref, lse_ref,
                                             scoped),
                      smem, ready, free, plgpu.Barrier(num_arrivals=2), collective_axes="wg")

    out, lse = plgpu.kernel(
        entry,
        out_type=[jax.ShapeDtypeStruct(q_BxSxHxD.shape, dtype), jax.ShapeDtypeStruct((b, h, s), jnp.float32)],
        grid=(h, s // blocks.tile_q, b), grid_names=("heads", "q_tile", "batch"),
        num_threads=wgs + 1, thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
    )(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, q_seg_BxS, kv_seg_BxT, ranges_BxNx2)
    return out, lse


def ring_producer(n_steps, stages: int, streams) -> None:
    """The memory warpgroup's loop: fill the `stages` slots, then refill slot j % stages with step j + stages as soon
    as every compute warpgroup has released it (the free barrier counts them). `streams`: (free barrier,
    fetch(step, slot)) per operand.

    Before a refill, a proxy fence (`commit_smem`, PTX's fence.proxy.async): the compute warpgroups read some slots
    through the generic proxy (`plgpu.load` of segment ids, lse, delta) and TMA overwrites them through the async
    proxy, which PTX's memory model orders only across such a fence. jax's Mosaic GPU interpreter models exactly that
    and, without the fence, reports a race on those slots (tests/test_kernels_mosaic.py)."""
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    for i in range(stages):
        @pl.when(i < n_steps)
        def _(i=i):
            for _, fetch in streams:
                fetch(i, i)

    @pl.loop(0, jnp.maximum(n_steps - stages, 0))
    def _(j):
        slot = lax.rem(j, jnp.int32(stages))
        for free, fetch in streams:
            plgpu.barrier_wait(free.at[slot])
            plgpu.commit_smem()
            fetch(j + stages, slot)


def stream_kv(gmem, smem, ready, free, *, batch, head, group: int, first_block, block: int, n_steps, stages: int,
              segments: bool) -> None:
    """The memory warpgroup of the kernels that walk KV blocks (the forward, dQ): K (with its segment ids) and V of
    blocks first_block, first_block + 1, ... of the query head's KV head into the SMEM ring, each slot refilled once
    every compute warpgroup released it."""
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    (k_ref, v_ref, kseg_ref), (k_smem, v_smem, kseg_smem) = gmem, smem
    (k_ready, v_ready, kseg_ready), (k_free, v_free) = ready, free
    plgpu.set_max_registers(40, action="decrease")
    kv_head = lax.div(head, jnp.int32(group))  # GQA: the query head's KV head

    def fetch_k(j, slot):
        rows = pl.ds((first_block + j) * block, block)
        plgpu.copy_gmem_to_smem(k_ref.at[batch, rows, kv_head], k_smem.at[slot], k_ready.at[slot])
        if segments:
            plgpu.copy_gmem_to_smem(kseg_ref.at[batch, rows], kseg_smem.at[slot], kseg_ready.at[slot])

    def fetch_v(j, slot):
        rows = pl.ds((first_block + j) * block, block)
        plgpu.copy_gmem_to_smem(v_ref.at[batch, rows, kv_head], v_smem.at[slot], v_ready.at[slot])

    ring_producer(n_steps, stages, [(k_free, fetch_k), (v_free, fetch_v)])


def pure_jax_twin(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, q_seg_BxS, kv_seg_BxT, ranges_BxNx2, *, scale: float,
                  causal: bool, segments: bool, blocks: MosaicBlocks = MosaicBlocks()):
    """The kernel's algorithm in plain JAX, tile for tile: per query tile, the KV blocks [lo, hi) of the range table,
    scores in log2 units, finite masking, the online softmax in fp32, operands in their own dtype, and the natural-log
    lse. Slow (a Python loop over tiles); for tests on CPU."""
    b, s, h, d, t, kvh = _check_shapes(q_BxSxHxD, k_BxTxKxD, blocks)
    group = h // kvh
    block_q, block_kv, tile_q = blocks.block_q, blocks.block_kv, blocks.tile_q
    q_seg = q_seg_BxS if segments else jnp.zeros((b, s), jnp.int32)
    kv_seg = kv_seg_BxT if segments else jnp.zeros((b, t), jnp.int32)
    k_BxTxHxD = jnp.repeat(k_BxTxKxD, group, axis=2)  # the kernel indexes the KV head; here clarity wins
    v_BxTxHxD = jnp.repeat(v_BxTxKxD, group, axis=2)

    def one_tile(bi, tile, wg):
        q_base = tile * tile_q + wg * block_q
        q = lax.dynamic_slice_in_dim(q_BxSxHxD[bi], q_base, block_q)  # [block_q, H, D]
        qs = lax.dynamic_slice_in_dim(q_seg[bi], q_base, block_q)
        lo, hi = ranges_BxNx2[bi, tile, 0], ranges_BxNx2[bi, tile, 1]

        def step(j, carry):
            acc, m, l = carry
            kv_start = (lo + j) * block_kv
            k = lax.dynamic_slice_in_dim(k_BxTxHxD[bi], kv_start, block_kv)
            v = lax.dynamic_slice_in_dim(v_BxTxHxD[bi], kv_start, block_kv)
            ks = lax.dynamic_slice_in_dim(kv_seg[bi], kv_start, block_kv)
            qk = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32)
            scores = qk * (scale * LOG2E)
            valid = qs[:, None] == ks[None, :]
            if causal:
                valid = valid & (q_base + jnp.arange(block_q)[:, None] >= kv_start + jnp.arange(block_kv)[None, :])
            scores = jnp.where(valid[None], scores, NEG)
            m_new = jnp.maximum(m, scores.max(axis=-1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(scores - m_new[..., None])
            acc = acc * alpha[..., None] + jnp.einsum("hqk,khd->hqd", p.astype(v.dtype), v,
                                                      preferred_element_type=jnp.float32)
            return acc, m_new, l * alpha + p.sum(axis=-1)

        init = (jnp.zeros((h, block_q, d), jnp.float32), jnp.full((h, block_q), -jnp.inf, jnp.float32),
                jnp.zeros((h, block_q), jnp.float32))
        acc, m, l = lax.fori_loop(0, hi - lo, step, init)
        l_safe = jnp.where(l == 0.0, 1.0, l)
        return (acc / l_safe[..., None]).astype(q_BxSxHxD.dtype), (m + jnp.log2(l_safe)) * LN2

    tiles = [[one_tile(bi, tile, wg) for tile in range(s // tile_q) for wg in range(blocks.compute_wgs)]
             for bi in range(b)]
    out = jnp.stack([jnp.concatenate([o for o, _ in row], axis=1) for row in tiles])  # [B, H, S, D]
    lse = jnp.stack([jnp.concatenate([x for _, x in row], axis=1) for row in tiles])  # [B, H, S]
    return out.transpose(0, 2, 1, 3), lse
