"""Attention benchmark: each implementation, forward and forward+backward, at TinyLlama's shape; one table.

    python bench/attention.py                      # B=8, S=2048, H=32, K=4, D=64, bf16, causal, 4 documents per row
    python bench/attention.py --sweep              # also the Pallas GPU kernel over tile sizes / warps / stages
    python bench/attention.py --mosaic_sweep       # also the Mosaic GPU (Hopper) forward over block_kv / stages
    python bench/attention.py --smoke              # tiny shapes on CPU (Pallas in interpret mode)

Every implementation is first checked against the XLA reference computed in fp32 on the same bf16 inputs
(relative error of the output and of dq, dk, dv). Timing: median of several runs after warm-up; TFLOP/s counts the
causal half of the 4 B S^2 H D dense matmuls (x3.5 with the backward). `cudnn` applies the document mask (a dense
[B, 1, S, S] boolean mask). A `_causal` suffix (`cudnn_causal`, `mosaic_gpu_causal`) runs the kernel on the same
rows as one plain causal stream (no documents), checked against the plain-causal oracle: the cost of packing.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from common import header, median_seconds


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def make_fns(impl: str, blocks=None):
    from bolt_jax import kernels
    from bolt_jax.kernels.pallas_gpu import pallas_gpu_attention

    def attend(q, k, v, s):
        if impl.endswith("_causal"):  # the same kernel on plain causal rows (no documents)
            return kernels.attention(q, k, v, segment_ids=None, impl=impl.removesuffix("_causal"))
        if blocks is not None:
            s = None if impl.endswith("_causal") else s
            return pallas_gpu_attention(q, k, v, q_segment_ids_BxS=s, kv_segment_ids_BxT=s, blocks=blocks)
        return kernels.attention(q, k, v, segment_ids=s, impl=impl)

    fwd = jax.jit(attend)
    # a loss with a non-trivial cotangent (not all ones), so a wrong dO indexing shows
    loss = lambda q, k, v, s, w: jnp.sum(attend(q, k, v, s).astype(jnp.float32) * w)  # noqa: E731
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return fwd, bwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=4)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--impls", default="")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--inner", type=int, default=10, help="calls per timed sample")
    p.add_argument("--sweep", action="store_true", help="Pallas GPU tiles x warps x stages")
    p.add_argument("--mosaic_sweep", action="store_true", help="Mosaic GPU kernels: tiles, stages, ping-pong")
    p.add_argument("--mosaic_variants", default="",
                   help="instead of the sweep's list: MosaicBlocks fields per variant, e.g. 'block_q=128;block_kv=64'")
    p.add_argument("--mosaic_rows", default="mosaic_gpu,mosaic_gpu_causal", help="rows the Mosaic variants run on")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    from bolt_jax.kernels.mosaic_gpu import MosaicBlocks
    from bolt_jax.kernels.pallas_gpu import Blocks
    from bolt_jax.kernels.xla import xla_attention

    if a.smoke:
        a.batch, a.seq, a.heads, a.kv_heads, a.head_dim, a.runs, a.inner = 1, 256, 4, 2, 64, 2, 1
    backend = jax.default_backend()
    impls = a.impls.split(",") if a.impls else (["cudnn_causal", "cudnn", "pallas_gpu", "mosaic_gpu",
                                                  "mosaic_gpu_causal", "tokamax", "xla"]
                                                if backend == "gpu"
                                                else ["pallas_tpu", "xla"] if backend == "tpu"
                                                else ["pallas_gpu", "xla"])
    rng = np.random.default_rng(0)
    dtype = jnp.bfloat16
    q = jnp.asarray(rng.normal(size=(a.batch, a.seq, a.heads, a.head_dim)), dtype)
    k = jnp.asarray(rng.normal(size=(a.batch, a.seq, a.kv_heads, a.head_dim)), dtype)
    v = jnp.asarray(rng.normal(size=(a.batch, a.seq, a.kv_heads, a.head_dim)), dtype)
    w = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    seg = jnp.asarray(np.repeat((np.arange(a.seq) * a.docs // a.seq + 1)[None], a.batch, 0).astype(np.int32))

    # the oracle: the XLA reference in fp32 on the same (bf16-rounded) inputs
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))

    def ref_attend(q, k, v, s):
        return xla_attention(q, k, v, q_segment_ids_BxS=s, kv_segment_ids_BxT=s)

    ref_grad = jax.jit(jax.grad(lambda q, k, v, s, w: jnp.sum(ref_attend(q, k, v, s) * w), argnums=(0, 1, 2)))
    oracle = {False: (jax.jit(ref_attend)(q32, k32, v32, seg), ref_grad(q32, k32, v32, seg, w))}
    ones = jnp.ones_like(seg)  # one document per row: the plain-causal oracle for the *_causal rows
    oracle[True] = (jax.jit(ref_attend)(q32, k32, v32, ones), ref_grad(q32, k32, v32, ones, w))
    flops_fwd = 4 * a.batch * a.seq * a.seq * a.heads * a.head_dim / 2

    candidates = [(impl, None) for impl in impls]
    if a.sweep:  # one factor at a time around the defaults: tiles of the forward, of the backward, then launch
        d = Blocks()
        variants = [dict(fwd_q=fq, fwd_k=fk) for fq, fk in ((128, 64), (128, 32), (64, 32))]
        variants += [dict(bwd_q=bq, bwd_k=bk) for bq, bk in ((64, 64), (128, 32), (64, 128))]
        variants += [dict(num_warps=nw, num_stages=ns) for nw, ns in ((4, 2), (4, 4), (8, 3))]
        candidates += [("pallas_gpu", dataclasses.replace(d, **kw)) for kw in variants]
    if a.mosaic_sweep or a.mosaic_variants:
        variants = [dict(backward=False), dict(schedule_barrier=True), dict(block_kv=64), dict(stages=3),
                    dict(bwd_stages=3), dict(bwd_stages=4)]
        if a.mosaic_variants:
            variants = [{k: int(x) for k, x in (kv.split("=") for kv in v.split(","))}
                        for v in a.mosaic_variants.split(";")]
        candidates += [(impl, Blocks(mosaic=MosaicBlocks(**kw))) for impl in a.mosaic_rows.split(",")
                       for kw in variants]
    rows = []
    for impl, blocks in candidates:
        name = impl if blocks is None else (f"pg f{blocks.fwd_q}x{blocks.fwd_k} b{blocks.bwd_q}x{blocks.bwd_k} "
                                            f"w{blocks.num_warps}s{blocks.num_stages}")
        if blocks is not None and blocks.mosaic is not None:
            m = blocks.mosaic
            name = (f"mgpu q{m.tile_q} kv{m.block_kv} s{m.stages}{' pp' if m.schedule_barrier else ''} "
                    f"{f'b{m.bwd_block}s{m.bwd_stages}' if m.backward else 'bwd=pallas'}"
                    f"{' causal' if impl.endswith('_causal') else ''}")
        fwd, bwd = make_fns(impl, blocks)
        try:
            o = fwd(q, k, v, seg)
            g = bwd(q, k, v, seg, w)
            ref_o, ref_g = oracle[impl.endswith("_causal")]
            err = max([rel_err(o, ref_o)] + [rel_err(x, y) for x, y in zip(g, ref_g)])
            # each sample: `inner` calls back to back, then one wait (a sub-ms kernel timed alone is mostly jitter)
            t_f = median_seconds(lambda: jax.block_until_ready([fwd(q, k, v, seg) for _ in range(a.inner)]),
                                 runs=a.runs) / a.inner
            t_b = median_seconds(lambda: jax.block_until_ready([bwd(q, k, v, seg, w) for _ in range(a.inner)]),
                                 runs=a.runs) / a.inner
            rows.append((name, err, t_f, t_b))
        except Exception as e:  # noqa: BLE001 - a refused shape or a failed compile is a row, not the end
            rows.append((name, str(e).splitlines()[0][:90] if str(e) else type(e).__name__))
        print(rows[-1], flush=True)
    base = next((r[3] for r in rows if r[0] == "cudnn" and len(r) == 4), None)
    print(f"\nattention B={a.batch} S={a.seq} H={a.heads} K={a.kv_heads} D={a.head_dim} bf16 causal, "
          f"{a.docs} docs/row; {header()}, median of {a.runs}")
    print(f"{'impl':>28} {'max rel err':>11} {'fwd ms':>8} {'fwd TF/s':>9} {'f+b ms':>8} {'f+b TF/s':>9} "
          f"{'f+b vs cuDNN':>12}")
    for r in rows:
        if len(r) == 2:
            print(f"{r[0]:>28}  failed: {r[1]}")
            continue
        name, err, t_f, t_b = r
        rel = f"{base / t_b:.2f}x" if base else "-"
        print(f"{name:>28} {err:11.2e} {t_f * 1e3:8.2f} {flops_fwd / t_f / 1e12:9.1f} {t_b * 1e3:8.2f} "
              f"{3.5 * flops_fwd / t_b / 1e12:9.1f} {rel:>12}")


if __name__ == "__main__":
    main()
