"""Flash-attention backward for Hopper in Mosaic GPU: a dQ kernel and a dK/dV kernel, warp-specialized like the
forward (`mosaic_gpu.py`), with GQA summed inside the kernel and packed-document block skipping.

- dQ: a CTA holds 2 * block query rows of one query head (one compute warpgroup each, Q, dO, lse and delta loaded
  once); the memory warpgroup streams the KV head's K and V blocks over the same range table as the forward.
- dK/dV: a CTA holds 2 * block key rows of one *KV head*; the memory warpgroup streams, for every query head of the
  group in turn, the query blocks that can see those keys (Q, dO, lse, delta, segment ids). dK and dV accumulate over
  the whole group in registers and are written once, in the input dtype: no [B, T, H, D] per-head buffer, no sum.
- P is recomputed from the forward's log-sum-exp in log2 units (one FMA and one exp2); masked entries (other
  documents, above the diagonal) are exactly 0.

`pure_jax_twin_backward` is the same algorithm in plain JAX (same tiles, ranges and step order), tested on CPU; the
kernels are lowered for the cuda platform in the tests, run in jax 0.12.1's Mosaic GPU interpreter against the twin
(tests/test_kernels_mosaic.py), and checked on an H100 by `bench/attention.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from bolt_jax.kernels.mosaic_gpu import LOG2E, NEG, MosaicBlocks, kv_block_ranges, ring_producer, stream_kv


def q_block_ranges(kv_lo_BxT, kv_hi_BxT, *, tile_kv: int, block_q: int, n_q_blocks: int, causal: bool):
    """Per key tile of `tile_kv` rows, the query blocks [lo, hi) that can see it: where its keys' segment ids occur,
    from the causal diagonal down. [B, T / tile_kv, 2] int32."""
    b, t = kv_lo_BxT.shape
    tiles = t // tile_kv
    lo = kv_lo_BxT.reshape(b, tiles, tile_kv).min(axis=-1) // block_q
    hi = jnp.minimum(-(-kv_hi_BxT.reshape(b, tiles, tile_kv).max(axis=-1) // block_q), n_q_blocks)
    if causal:
        lo = jnp.maximum(lo, (jnp.arange(tiles) * tile_kv // block_q)[None, :])
    hi = jnp.maximum(hi, lo)
    return jnp.stack([lo, hi], axis=-1).astype(jnp.int32)


def backward_ranges(spans, s: int, t: int, causal: bool, blocks: MosaicBlocks):
    bb = blocks.bwd_block
    dq = kv_block_ranges(spans.q_lo, spans.q_hi, tile_q=2 * bb, block_kv=bb, n_kv_blocks=t // bb, causal=causal)
    dkdv = q_block_ranges(spans.kv_lo, spans.kv_hi, tile_kv=2 * bb, block_q=bb, n_q_blocks=s // bb, causal=causal)
    return dq, dkdv


def _check(q, k, blocks: MosaicBlocks):
    b, s, h, d = q.shape
    t, kvh = k.shape[1], k.shape[2]
    tile = 2 * blocks.bwd_block
    if d % 64 or s % tile or t % tile:
        raise ValueError(f"mosaic_gpu backward: head dim ({d}) must be a multiple of 64 and S ({s}), T ({t}) of "
                         f"{tile}; the dispatch entry pads")
    return b, s, h, d, t, kvh


def mosaic_backward(q, k, v, q_seg, k_seg, lse, delta, do, dq_ranges, dkdv_ranges, *, scale: float, causal: bool,
                    segments: bool, blocks: MosaicBlocks = MosaicBlocks()):
    """dq [B, S, H, D], dk and dv [B, T, K, D] in the input dtype. lse and delta: [B, H, S] fp32 (natural log)."""
    import jax.experimental.pallas as pl
    import jax.experimental.pallas.mosaic_gpu as plgpu

    b, s, h, d, t, kvh = _check(q, k, blocks)
    group = h // kvh
    dtype = q.dtype
    bb, stages = blocks.bwd_block, blocks.bwd_stages
    c = scale * LOG2E
    wgmma_layout = plgpu.Layout.WGMMA
    row_layout, col_layout = wgmma_layout.reduce(1), wgmma_layout.reduce(0)
    swizzled = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    params = plgpu.CompilerParams(approx_math=True)

    def seg_mask(shape, row_seg, col_seg, row_pos, col_pos, q_on_rows: bool):
        valid = None
        if segments:
            valid = lax.broadcast_in_dim(row_seg, shape, [0]) == lax.broadcast_in_dim(col_seg, shape, [1])
        if causal:
            rows = plgpu.broadcasted_iota(jnp.int32, shape, 0, layout=wgmma_layout) + row_pos
            cols = plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=wgmma_layout) + col_pos
            below = rows >= cols if q_on_rows else cols >= rows
            valid = below if valid is None else valid & below
        return valid

    # ---------------------------------------------------------------------------------------------------- dQ
    def dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, range_ref, dq_ref, scoped):
        (q_smem2, do_smem2, lse_smem2, delta_smem2, qseg_smem2, k_smem, v_smem, kseg_smem), ready, free = scoped
        q_ready, do_ready, lse_ready, delta_ready, qseg_ready, k_ready, v_ready, kseg_ready = ready
        k_free, v_free = free
        batch, head, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
        tile = (s // (2 * bb) - 1) - lax.axis_index("tile")
        lo, hi = range_ref[batch, tile, 0], range_ref[batch, tile, 1]
        n_steps = hi - lo

        @pl.when(wg < 2)
        def _compute():
            plgpu.set_max_registers(232, action="increase")
            q_base = tile * 2 * bb + wg * bb
            rows = (batch, pl.ds(q_base, bb), head)
            q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]
            plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem, q_ready.at[wg])
            plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem, do_ready.at[wg])
            plgpu.copy_gmem_to_smem(lse_ref.at[batch, head, pl.ds(q_base, bb)], lse_smem2.at[wg], lse_ready.at[wg])
            plgpu.copy_gmem_to_smem(delta_ref.at[batch, head, pl.ds(q_base, bb)], delta_smem2.at[wg],
                                    delta_ready.at[wg])
            q_seg = None
            if segments:
                plgpu.copy_gmem_to_smem(qseg_ref.at[batch, pl.ds(q_base, bb)], qseg_smem2.at[wg], qseg_ready.at[wg])
                plgpu.barrier_wait(qseg_ready.at[wg])
                q_seg = plgpu.load(qseg_smem2.at[wg], layout=row_layout)
            for barrier in (q_ready, do_ready, lse_ready, delta_ready):
                plgpu.barrier_wait(barrier.at[wg])
            lse2 = plgpu.load(lse_smem2.at[wg], layout=row_layout) * LOG2E
            delta = plgpu.load(delta_smem2.at[wg], layout=row_layout)
            dq = plgpu.layout_cast(jnp.full((bb, d), 0, jnp.float32), wgmma_layout)

            @pl.when(n_steps > 0)
            def _():
                plgpu.barrier_wait(k_ready.at[0])

            def step(j, dq, masked: bool):
                slot = lax.rem(j, jnp.int32(stages))
                kv_start = (lo + j) * bb

                def s_scope(acc_ref):
                    plgpu.wgmma(acc_ref, q_smem, k_smem.at[slot].transpose((1, 0)))
                    return acc_ref[...]

                scores = pl.run_scoped(s_scope, plgpu.ACC((bb, bb), jnp.float32))
                k_seg = None
                if segments:
                    plgpu.barrier_wait(kseg_ready.at[slot])
                    k_seg = plgpu.load(kseg_smem.at[slot], layout=col_layout)
                logits = scores * c - lax.broadcast_in_dim(lse2, (bb, bb), [0])
                valid = seg_mask((bb, bb), q_seg, k_seg, q_base, kv_start, q_on_rows=True) if masked else None
                p = jnp.exp2(logits if valid is None else jnp.where(valid, logits, NEG))
                plgpu.barrier_wait(v_ready.at[slot])

                def dp_scope(acc_ref):
                    plgpu.wgmma(acc_ref, do_smem, v_smem.at[slot].transpose((1, 0)))
                    return acc_ref[...]

                dp = pl.run_scoped(dp_scope, plgpu.ACC((bb, bb), jnp.float32))
                plgpu.barrier_arrive(v_free.at[slot])
                ds = p * (dp - lax.broadcast_in_dim(delta, (bb, bb), [0]))

                def dq_update(acc_ref):
                    plgpu.wgmma(acc_ref, ds.astype(dtype), k_smem.at[slot])
                    nxt = j + 1

                    @pl.when(nxt < n_steps)
                    def _():
                        plgpu.barrier_wait(k_ready.at[lax.rem(nxt, jnp.int32(stages))])

                dq = pl.run_state(dq_update)(plgpu.ACC.init(dq))
                plgpu.barrier_arrive(k_free.at[slot])
                return dq

            unmasked = 0
            if causal and not segments:  # blocks wholly below the tile's diagonal need no mask
                unmasked = jnp.clip(2 * tile - lo, 0, n_steps)
                dq = lax.fori_loop(0, unmasked, lambda j, x: step(j, x, False), dq)
            dq = lax.fori_loop(unmasked, n_steps, lambda j, x: step(j, x, causal or segments), dq)
            q_smem[...] = (dq * scale).astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[rows])
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == 2)
        def _memory():
            stream_kv((k_ref, v_ref, kseg_ref), (k_smem, v_smem, kseg_smem), (k_ready, v_ready, kseg_ready),
                      (k_free, v_free), batch=batch, head=head, group=group, first_block=lo,
                      block=bb, n_steps=n_steps, stages=stages, segments=segments)

    def dq_entry(*refs):
        seg = segments or None
        smem = (plgpu.SMEM((2, bb, d), dtype, transforms=swizzled), plgpu.SMEM((2, bb, d), dtype, transforms=swizzled),
                plgpu.SMEM((2, bb), jnp.float32), plgpu.SMEM((2, bb), jnp.float32),
                seg and plgpu.SMEM((2, bb), jnp.int32),
                plgpu.SMEM((stages, bb, d), dtype, transforms=swizzled),
                plgpu.SMEM((stages, bb, d), dtype, transforms=swizzled),
                seg and plgpu.SMEM((stages, bb), jnp.int32))
        ready = tuple(plgpu.Barrier(num_barriers=2) for _ in range(4)) + (seg and plgpu.Barrier(num_barriers=2),)
        ready += (plgpu.Barrier(num_barriers=stages), plgpu.Barrier(num_barriers=stages),
                  seg and plgpu.Barrier(num_barriers=stages))
        free = (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2
        pl.run_scoped(lambda *scoped: dq_kernel(*refs, scoped), smem, ready, free, collective_axes="wg")

    # ------------------------------------------------------------------------------------------------ dK / dV
    def dkdv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qseg_ref, kseg_ref, range_ref, dk_ref, dv_ref,
                    scoped):
        (k_smem2, v_smem2, kseg_smem2, q_smem, do_smem, lse_smem, delta_smem, qseg_smem), ready, free = scoped
        k_ready, v_ready, kseg_ready, q_ready, do_ready, lse_ready, delta_ready, qseg_ready = ready
        q_free, do_free = free
        batch, kv_head, wg = lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg")
        tile = lax.axis_index("tile")
        lo, hi = range_ref[batch, tile, 0], range_ref[batch, tile, 1]
        per_head = hi - lo
        n_steps = per_head * group  # step j: query head kv_head * group + j // per_head, block lo + j % per_head

        def head_and_block(j):
            return kv_head * group + lax.div(j, per_head), lo + lax.rem(j, per_head)

        @pl.when(wg < 2)
        def _compute():
            plgpu.set_max_registers(232, action="increase")
            kv_base = tile * 2 * bb + wg * bb
            rows = (batch, pl.ds(kv_base, bb), kv_head)
            k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]
            plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem, k_ready.at[wg])
            plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem, v_ready.at[wg])
            k_seg = None
            if segments:
                plgpu.copy_gmem_to_smem(kseg_ref.at[batch, pl.ds(kv_base, bb)], kseg_smem2.at[wg], kseg_ready.at[wg])
                plgpu.barrier_wait(kseg_ready.at[wg])
                k_seg = plgpu.load(kseg_smem2.at[wg], layout=row_layout)
            plgpu.barrier_wait(k_ready.at[wg])
            plgpu.barrier_wait(v_ready.at[wg])
            zeros = plgpu.layout_cast(jnp.full((bb, d), 0, jnp.float32), wgmma_layout)

            def step(j, carry, masked: bool):
                dk, dv = carry
                slot = lax.rem(j, jnp.int32(stages))
                _, q_block = head_and_block(j)
                plgpu.barrier_wait(q_ready.at[slot])

                def s_scope(acc_ref):
                    plgpu.wgmma(acc_ref, k_smem, q_smem.at[slot].transpose((1, 0)))
                    return acc_ref[...]

                scores_t = pl.run_scoped(s_scope, plgpu.ACC((bb, bb), jnp.float32))  # [keys, queries]
                plgpu.barrier_wait(lse_ready.at[slot])
                lse2 = plgpu.load(lse_smem.at[slot], layout=col_layout) * LOG2E
                q_seg = None
                if segments:
                    plgpu.barrier_wait(qseg_ready.at[slot])
                    q_seg = plgpu.load(qseg_smem.at[slot], layout=col_layout)
                logits = scores_t * c - lax.broadcast_in_dim(lse2, (bb, bb), [1])
                valid = seg_mask((bb, bb), k_seg, q_seg, kv_base, q_block * bb, q_on_rows=False) if masked else None
                p_t = jnp.exp2(logits if valid is None else jnp.where(valid, logits, NEG))
                plgpu.barrier_wait(do_ready.at[slot])

                def dv_dp(refs):
                    dv_ref, dp_ref = refs
                    plgpu.wgmma(dv_ref, p_t.astype(dtype), do_smem.at[slot])
                    plgpu.wgmma(dp_ref, v_smem, do_smem.at[slot].transpose((1, 0)))

                dv, dp_t = pl.run_state(dv_dp)((plgpu.ACC.init(dv), plgpu.ACC.init(
                    plgpu.layout_cast(jnp.full((bb, bb), 0, jnp.float32), wgmma_layout))))
                plgpu.barrier_arrive(do_free.at[slot])
                plgpu.barrier_wait(delta_ready.at[slot])
                delta = plgpu.load(delta_smem.at[slot], layout=col_layout)
                ds_t = p_t * (dp_t - lax.broadcast_in_dim(delta, (bb, bb), [1]))

                def dk_update(acc_ref):
                    plgpu.wgmma(acc_ref, ds_t.astype(dtype), q_smem.at[slot])

                dk = pl.run_state(dk_update)(plgpu.ACC.init(dk))
                plgpu.barrier_arrive(q_free.at[slot])
                return dk, dv

            if causal and not segments:  # per query head: the tile's 2 diagonal blocks masked, the rest not
                def one_head(g, carry):
                    base = g * per_head
                    diagonal = jnp.minimum(per_head, 2)
                    carry = lax.fori_loop(base, base + diagonal, lambda j, x: step(j, x, True), carry)
                    return lax.fori_loop(base + diagonal, base + per_head, lambda j, x: step(j, x, False), carry)

                dk, dv = lax.fori_loop(0, group, one_head, (zeros, zeros))
            else:
                dk, dv = lax.fori_loop(0, n_steps, lambda j, x: step(j, x, causal or segments), (zeros, zeros))
            k_smem[...] = (dk * scale).astype(dtype)
            v_smem[...] = dv.astype(dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[rows])
            plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[rows])
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == 2)
        def _memory():
            plgpu.set_max_registers(40, action="decrease")

            def fetch_q(j, slot):  # Q with what is read alongside it: lse, delta, segment ids
                head, q_block = head_and_block(j)
                rows = pl.ds(q_block * bb, bb)
                plgpu.copy_gmem_to_smem(q_ref.at[batch, rows, head], q_smem.at[slot], q_ready.at[slot])
                plgpu.copy_gmem_to_smem(lse_ref.at[batch, head, rows], lse_smem.at[slot], lse_ready.at[slot])
                plgpu.copy_gmem_to_smem(delta_ref.at[batch, head, rows], delta_smem.at[slot], delta_ready.at[slot])
                if segments:
                    plgpu.copy_gmem_to_smem(qseg_ref.at[batch, rows], qseg_smem.at[slot], qseg_ready.at[slot])

            def fetch_do(j, slot):
                head, q_block = head_and_block(j)
                plgpu.copy_gmem_to_smem(do_ref.at[batch, pl.ds(q_block * bb, bb), head], do_smem.at[slot],
                                        do_ready.at[slot])

            ring_producer(n_steps, stages, [(q_free, fetch_q), (do_free, fetch_do)])

    def dkdv_entry(*refs):
        seg = segments or None
        smem = (plgpu.SMEM((2, bb, d), dtype, transforms=swizzled), plgpu.SMEM((2, bb, d), dtype, transforms=swizzled),
                seg and plgpu.SMEM((2, bb), jnp.int32),
                plgpu.SMEM((stages, bb, d), dtype, transforms=swizzled),
                plgpu.SMEM((stages, bb, d), dtype, transforms=swizzled),
                plgpu.SMEM((stages, bb), jnp.float32), plgpu.SMEM((stages, bb), jnp.float32),
                seg and plgpu.SMEM((stages, bb), jnp.int32))
        ready = (plgpu.Barrier(num_barriers=2), plgpu.Barrier(num_barriers=2), seg and plgpu.Barrier(num_barriers=2))
        ready += tuple(plgpu.Barrier(num_barriers=stages) for _ in range(4))
        ready += (seg and plgpu.Barrier(num_barriers=stages),)
        free = (plgpu.Barrier(num_arrivals=2, num_barriers=stages),) * 2
        pl.run_scoped(lambda *scoped: dkdv_kernel(*refs, scoped), smem, ready, free, collective_axes="wg")

    inputs = (q, k, v, do, lse, delta, q_seg, k_seg)
    dq = plgpu.kernel(dq_entry, out_type=jax.ShapeDtypeStruct(q.shape, dtype), grid=(h, s // (2 * bb), b),
                      grid_names=("heads", "tile", "batch"), num_threads=3, thread_name="wg",
                      compiler_params=params)(*inputs, dq_ranges)
    dk, dv = plgpu.kernel(dkdv_entry, out_type=[jax.ShapeDtypeStruct(k.shape, dtype)] * 2,
                          grid=(kvh, t // (2 * bb), b), grid_names=("heads", "tile", "batch"), num_threads=3,
                          thread_name="wg", compiler_params=params)(*inputs, dkdv_ranges)
    return dq, dk, dv


def pure_jax_twin_backward(q, k, v, q_seg, k_seg, lse, delta, do, dq_ranges, dkdv_ranges, *, scale: float,
                           causal: bool, segments: bool, blocks: MosaicBlocks = MosaicBlocks()):
    """The two kernels' algorithm in plain JAX, tile for tile and step for step (dK/dV walk the group's query heads
    in the kernel's order and accumulate in fp32). Slow; for tests on CPU."""
    b, s, h, d, t, kvh = _check(q, k, blocks)
    group, bb = h // kvh, blocks.bwd_block
    c = scale * LOG2E
    if not segments:
        q_seg, k_seg = jnp.zeros((b, s), jnp.int32), jnp.zeros((b, t), jnp.int32)
    f32 = jnp.float32

    def p_block(q_blk, k_blk, lse_blk, qs, ks, q_pos, k_pos):  # [queries, keys]
        logits = jnp.dot(q_blk, k_blk.T, preferred_element_type=f32) * c - lse_blk[:, None] * LOG2E
        valid = qs[:, None] == ks[None, :]
        if causal:
            valid = valid & (q_pos[:, None] >= k_pos[None, :])
        return jnp.exp2(jnp.where(valid, logits, NEG))

    sl = lax.dynamic_slice_in_dim
    dq_rows = []
    for bi in range(b):
        per_head = []
        for hq in range(h):
            kh = hq // group
            tiles = []
            for tile in range(s // (2 * bb)):
                lo, hi = dq_ranges[bi, tile, 0], dq_ranges[bi, tile, 1]
                for wg in range(2):
                    q0 = tile * 2 * bb + wg * bb
                    qb, dob = sl(q[bi, :, hq], q0, bb), sl(do[bi, :, hq], q0, bb)
                    lse_b, delta_b, qs = sl(lse[bi, hq], q0, bb), sl(delta[bi, hq], q0, bb), sl(q_seg[bi], q0, bb)

                    def step(j, dq, q0=q0, qb=qb, dob=dob, lse_b=lse_b, delta_b=delta_b, qs=qs, lo=lo, kh=kh,
                             bi=bi):
                        k0 = (lo + j) * bb
                        kb, vb = sl(k[bi, :, kh], k0, bb), sl(v[bi, :, kh], k0, bb)
                        p = p_block(qb, kb, lse_b, qs, sl(k_seg[bi], k0, bb), q0 + jnp.arange(bb),
                                    k0 + jnp.arange(bb))
                        ds = p * (jnp.dot(dob, vb.T, preferred_element_type=f32) - delta_b[:, None])
                        return dq + jnp.dot(ds.astype(q.dtype), kb, preferred_element_type=f32)

                    tiles.append(lax.fori_loop(0, hi - lo, step, jnp.zeros((bb, d), f32)) * scale)
            per_head.append(jnp.concatenate(tiles))
        dq_rows.append(jnp.stack(per_head, axis=1))
    dk_rows, dv_rows = [], []
    for bi in range(b):
        dk_heads, dv_heads = [], []
        for kh in range(kvh):
            dk_tiles, dv_tiles = [], []
            for tile in range(t // (2 * bb)):
                lo, hi = dkdv_ranges[bi, tile, 0], dkdv_ranges[bi, tile, 1]
                for wg in range(2):
                    k0 = tile * 2 * bb + wg * bb
                    kb, vb, ks = sl(k[bi, :, kh], k0, bb), sl(v[bi, :, kh], k0, bb), sl(k_seg[bi], k0, bb)

                    def step(j, carry, k0=k0, kb=kb, vb=vb, ks=ks, lo=lo, hi=hi, kh=kh, bi=bi):
                        dk, dv = carry
                        hq = kh * group + j // (hi - lo)
                        q0 = (lo + j % (hi - lo)) * bb
                        qb = sl(lax.dynamic_index_in_dim(q[bi], hq, 1, False), q0, bb)
                        dob = sl(lax.dynamic_index_in_dim(do[bi], hq, 1, False), q0, bb)
                        p = p_block(qb, kb, sl(lse[bi, hq], q0, bb), sl(q_seg[bi], q0, bb), ks,
                                    q0 + jnp.arange(bb), k0 + jnp.arange(bb))
                        dv = dv + jnp.dot(p.astype(q.dtype).T, dob, preferred_element_type=f32)
                        ds = p * (jnp.dot(dob, vb.T, preferred_element_type=f32) - sl(delta[bi, hq], q0, bb)[:, None])
                        return dk + jnp.dot(ds.astype(q.dtype).T, qb, preferred_element_type=f32), dv

                    zeros = jnp.zeros((bb, d), f32)
                    dk, dv = lax.fori_loop(0, (hi - lo) * group, step, (zeros, zeros))
                    dk_tiles.append(dk * scale)
                    dv_tiles.append(dv)
            dk_heads.append(jnp.concatenate(dk_tiles))
            dv_heads.append(jnp.concatenate(dv_tiles))
        dk_rows.append(jnp.stack(dk_heads, axis=1))
        dv_rows.append(jnp.stack(dv_heads, axis=1))
    return (jnp.stack(dq_rows).astype(q.dtype), jnp.stack(dk_rows).astype(k.dtype),
            jnp.stack(dv_rows).astype(v.dtype))
