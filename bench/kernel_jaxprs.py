"""Fingerprints of the GPU kernels' jaxprs (traced on this CPU for the shapes below), so a refactor can show that
the kernels it touched did not change: run it before and after, compare the hashes.

    JAX_PLATFORMS=cpu python bench/kernel_jaxprs.py [--out bench/results/kernel_jaxprs-<date>.json]

Source locations (file:line) are stripped before hashing: moving or re-wrapping code changes them, not the kernel.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re

import jax
import jax.numpy as jnp

SRC_INFO = re.compile(r"\s+at\s+\S+\.py:\d+|/[^\s\"']+\.py:\d+(:\d+)?")


def fingerprint(fn, *args) -> str:
    text = SRC_INFO.sub("", str(jax.make_jaxpr(fn)(*args)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def kernels() -> dict[str, str]:
    from bolt_jax.kernels import decode
    from bolt_jax.kernels.mosaic_gpu import mosaic_forward
    from bolt_jax.kernels.mosaic_gpu_bwd import mosaic_backward
    from bolt_jax.kernels.pallas_gpu import pallas_gpu_attention
    b, s, h, kvh, d = 2, 512, 8, 2, 64
    q = jax.ShapeDtypeStruct((b, s, h, d), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((b, s, kvh, d), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((b, s), jnp.int32)
    rows = jax.ShapeDtypeStruct((b, h, s), jnp.float32)
    ranges = jax.ShapeDtypeStruct((b, s // 128, 2), jnp.int32)
    out = {}
    for causal, segments in ((True, True), (True, False), (False, False)):
        kw = dict(scale=0.125, causal=causal, segments=segments)
        tag = f"causal={causal},segments={segments}"
        out[f"mosaic_forward[{tag}]"] = fingerprint(lambda *a, kw=kw: mosaic_forward(*a, **kw), q, k, k, seg, seg,
                                                    ranges)
        out[f"mosaic_backward[{tag}]"] = fingerprint(lambda *a, kw=kw: mosaic_backward(*a, **kw), q, k, k, seg, seg,
                                                     rows, rows, q, ranges, ranges)

    def pallas_fwd_bwd(q, k, v, seg):
        def loss(q, k, v):
            return jnp.sum(pallas_gpu_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg,
                                                causal=True).astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    out["pallas_gpu_attention[fwd+bwd]"] = fingerprint(pallas_fwd_bwd, q, k, k, seg)
    q1 = jax.ShapeDtypeStruct((8, 1, h, d), jnp.bfloat16)
    cache = jax.ShapeDtypeStruct((8, 1024, kvh * d), jnp.bfloat16)  # a position's KV heads side by side
    out["pallas_decode_attention"] = fingerprint(
        lambda q, kc, vc, sg, ln: decode.pallas_decode_attention(q, kc, vc, kv_segment_ids_BxT=sg, lengths_B=ln),
        q1, cache, cache, jax.ShapeDtypeStruct((8, 1024), jnp.int32), jax.ShapeDtypeStruct((8,), jnp.int32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    prints = kernels()
    for name, h in prints.items():
        print(f"{h}  {name}")
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"date": datetime.date.today().isoformat(), "jax": jax.__version__, "fingerprints": prints}, f,
                      indent=2)


if __name__ == "__main__":
    main()
