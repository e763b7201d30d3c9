"""Attention benchmark: each implementation, forward and forward+backward, at TinyLlama's shape; one table.

    python bench/attention.py                      # B=8, S=2048, H=32, K=4, D=64, bf16, causal, 4 documents per row
    python bench/attention.py --smoke              # tiny shapes on CPU (Pallas in interpret mode)

Reports the median of several runs after warm-up, TFLOP/s (causal: half the 4 B S^2 H D of the dense matmuls, x3.5
with the backward) and each implementation's speed relative to cuDNN measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, *args, runs: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    from bolt_jax import kernels
    if a.smoke:
        a.batch, a.seq, a.heads, a.kv_heads, a.head_dim, a.runs = 1, 256, 4, 2, 64, 2
    backend = jax.default_backend()
    impls = a.impls.split(",") if a.impls else (["cudnn", "pallas_gpu", "xla"] if backend == "gpu" else
                                                ["pallas_tpu", "xla"] if backend == "tpu" else ["pallas_gpu", "xla"])
    rng = np.random.default_rng(0)
    dtype = jnp.bfloat16
    q = jnp.asarray(rng.normal(size=(a.batch, a.seq, a.heads, a.head_dim)), dtype)
    k = jnp.asarray(rng.normal(size=(a.batch, a.seq, a.kv_heads, a.head_dim)), dtype)
    v = jnp.asarray(rng.normal(size=(a.batch, a.seq, a.kv_heads, a.head_dim)), dtype)
    seg = jnp.asarray(np.repeat((np.arange(a.seq) * a.docs // a.seq + 1)[None], a.batch, 0).astype(np.int32))
    flops_fwd = 4 * a.batch * a.seq * a.seq * a.heads * a.head_dim / 2
    rows = {}
    for impl in impls:
        f = jax.jit(lambda q, k, v, s, impl=impl: kernels.attention(q, k, v, segment_ids=s, impl=impl))
        g = jax.jit(jax.grad(lambda q, k, v, s, impl=impl: jnp.sum(
            kernels.attention(q, k, v, segment_ids=s, impl=impl).astype(jnp.float32)), argnums=(0, 1, 2)))
        try:
            rows[impl] = (timed(f, q, k, v, seg, runs=a.runs), timed(g, q, k, v, seg, runs=a.runs))
        except Exception as e:  # noqa: BLE001
            rows[impl] = str(e).splitlines()[0][:70]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\nattention B={a.batch} S={a.seq} H={a.heads} K={a.kv_heads} D={a.head_dim} bf16 causal, {a.docs} docs/row; "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, commit {commit}, median of {a.runs}")
    print(f"{'impl':>11} {'fwd ms':>8} {'fwd TF/s':>9} {'fwd+bwd ms':>11} {'f+b TF/s':>9} {'f+b vs cuDNN':>12}")
    base = rows.get("cudnn") if isinstance(rows.get("cudnn"), tuple) else None
    for impl, r in rows.items():
        if isinstance(r, str):
            print(f"{impl:>11}  failed: {r}")
            continue
        rel = f"{base[1] / r[1]:.2f}x" if base else "-"
        print(f"{impl:>11} {r[0] * 1e3:8.2f} {flops_fwd / r[0] / 1e12:9.1f} {r[1] * 1e3:11.2f} "
              f"{3.5 * flops_fwd / r[1] / 1e12:9.1f} {rel:>12}")


if __name__ == "__main__":
    main()
