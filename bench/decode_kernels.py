"""Decode attention kernels alone: one decode step's attention at a model's head shape, each kernel timed on the same
inputs, checked against XLA's, and set against the bandwidth bound of reading the written KV cache.

    python bench/decode_kernels.py                  # TinyLlama's heads, batch 256, a 1024-position cache
    python bench/decode_kernels.py --batch 256,1024 --time 1024,2048
    python bench/decode_kernels.py --smoke          # tiny shapes on CPU (interpreted kernels: checks the script only)

Why: bench/sampler.py times whole decode steps, where the weights' matmuls take most of the time, so a kernel's
change hides in them; here the attention is all there is. `mosaic_gpu_2wg` is the Mosaic GPU decode with
attention's two compute warpgroups, the layout it had before one warpgroup became its choice wherever a KV head's
rows fit 64 (`decode_mosaic_gpu.mosaic_decode_attention(compute_wgs=2)`): that choice's A/B, side by side.

Inputs (`sampler.decode_step_inputs`): one query per row, lengths uniform in [1, T], left padding below each length,
as in the sampler's cache. Per kernel and shape: microseconds per call (min / median / max over `--runs` samples,
each the mean of `--inner` back-to-back calls after a warm-up), the written KV bytes (sum of lengths x KV heads x
head dim x 2 (K and V) x 2 bytes; XLA's path reads the whole cache, more than that) over the time, as a share of the
device's HBM rate, and max |kernel - XLA|. Writes bench/results/decode_kernels-<date>-<device>.{json,md}
(`--results` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import jax
import numpy as np
from common import Samples, device_kind, header, smoke_defaults, time_samples, write_results
from headline import device_slug
from sampler import bandwidth, decode_step_inputs

IMPLS = ("xla", "pallas_gpu", "mosaic_gpu", "mosaic_gpu_2wg")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def kernel(impl: str, kw: dict):
    """impl -> a jitted f(q, k, v) of one decode step's attention."""
    from bolt_jax import kernels
    from bolt_jax.kernels.decode_mosaic_gpu import mosaic_decode_attention
    if impl.startswith("mosaic_gpu"):
        wgs = 2 if impl == "mosaic_gpu_2wg" else None
        return jax.jit(lambda q, k, v: mosaic_decode_attention(q, k, v, compute_wgs=wgs, **kw))
    return jax.jit(lambda q, k, v: kernels.decode_attention(q, k, v, impl=impl, **kw))


def measure(cfg, batch: int, time_len: int, impls: list[str], *, runs: int, inner: int) -> list[dict]:
    q, k, v, kw = decode_step_inputs(cfg, batch, time_len)
    kv_bytes = float(np.asarray(kw["lengths_B"]).sum()) * cfg.num_key_value_heads * cfg.head_size * 2 * 2
    hbm = bandwidth()
    fns = {impl: kernel(impl, kw) for impl in ["xla", *impls]}
    want = np.asarray(fns["xla"](q, k, v), np.float32)
    rows = []
    for impl in impls:
        fn = fns[impl]
        got = np.asarray(fn(q, k, v), np.float32)  # compiles (XLA's already has); the check's output

        def calls(fn=fn):
            for _ in range(inner):
                out = fn(q, k, v)
            jax.block_until_ready(out)

        seconds = time_samples(calls, runs=runs).map(lambda s: s / inner)
        rate = seconds.map(lambda s: kv_bytes / s)
        rows.append({"impl": impl, "batch": batch, "time": int(k.shape[1]), "seconds": seconds.summary(),
                     "written_kv_bytes": kv_bytes, "bytes_per_s": rate.summary(),
                     "share_of_hbm": rate.map(lambda r: r / hbm).summary() if hbm else None,
                     "max_abs_err_vs_xla": float(np.abs(got - want).max())})
        print(f"  {impl}: {seconds.fmt('.1f', 1e6)} us, max |err| {rows[-1]['max_abs_err_vs_xla']:.3g}", flush=True)
    return rows


def markdown(rows: list[dict], command: str, model: str) -> str:
    lines = ["# Decode attention kernels alone", "",
             f"{header()}: `{command}`; {model}'s heads, one query per row, lengths uniform in [1, T] (bench/"
             f"decode_kernels.py's docstring says how). us per call and the written KV cache's bytes over that time "
             f"(min / median / max); the share of the device's HBM rate by the median.", "",
             "| kernel | batch | T | us per call | written KV GB/s | share of HBM | max abs err vs XLA |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "-" if r["share_of_hbm"] is None else f"{r['share_of_hbm']['median']:.0%}"
        us = Samples.of(r["seconds"]["samples"]).fmt(".1f", 1e6)
        gbs = Samples.of(r["bytes_per_s"]["samples"]).fmt(".3g", 1e-9)
        lines.append(f"| {r['impl']} | {r['batch']} | {r['time']} | {us} | {gbs} | {share} | "
                     f"{r['max_abs_err_vs_xla']:.3g} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b_bolt", help="whose heads (query, KV, head dim)")
    p.add_argument("--batch", default="256", help="comma list of batch sizes")
    p.add_argument("--time", default="1024", help="comma list of cache lengths (rounded up to 128)")
    p.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {IMPLS}")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--inner", type=int, default=20, help="back-to-back calls per sample")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, for CPU (explicit arguments win)")
    p.add_argument("--results", default=RESULTS, help="where decode_kernels-<date>-<device>.{json,md} go")
    return p


def main() -> None:
    from bolt_jax.kernels.mosaic_gpu import wgmma_takes
    from bolt_jax.model import preset
    p = parser()
    a = p.parse_args()
    if a.smoke:
        smoke_defaults(a, p, preset="tiny", batch="4", time="256", runs=3, inner=1)
    impls = [i for i in a.impls.split(",") if i]
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        p.error(f"--impls: unknown {unknown}; choose from {list(IMPLS)}")
    try:
        batches, times = [int(x) for x in a.batch.split(",")], [int(x) for x in a.time.split(",")]
    except ValueError:
        p.error(f"--batch {a.batch!r} and --time {a.time!r} must be comma lists of integers")
    if min(batches + times + [a.runs, a.inner]) < 1:
        p.error("--batch, --time, --runs and --inner must be >= 1")
    small = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1) if a.smoke else {}
    try:
        cfg = preset(a.preset, compute_dtype="bfloat16", **small)
    except (TypeError, ValueError, KeyError) as e:
        p.error(f"--preset: {e}")
    if any(i.startswith("mosaic_gpu") for i in impls) and not wgmma_takes(cfg.compute_dtype, cfg.head_size):
        p.error(f"--preset {a.preset}: head dim {cfg.head_size}; the Mosaic GPU kernel takes multiples of 64 (leave "
                f"it out of --impls)")
    print(f"decode kernels: {a.preset} heads {cfg.num_attention_heads} / {cfg.num_key_value_heads} x "
          f"{cfg.head_size}; {header()}", flush=True)
    rows = []
    for batch in batches:
        for t in times:
            print(f"batch {batch}, cache {t}:", flush=True)
            rows += measure(cfg, batch, t, impls, runs=a.runs, inner=a.inner)
    command = "python bench/decode_kernels.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    text = markdown(rows, command.strip(), a.preset)
    print("\n" + text)
    device = "cpu-smoke" if a.smoke else device_slug(device_kind())
    write_results(os.path.join(a.results, f"decode_kernels-{time.strftime('%Y-%m-%d')}-{device}"),
                  {"command": command.strip(), "preset": a.preset, "rows": rows}, text)


if __name__ == "__main__":
    main()
