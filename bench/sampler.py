"""Sampler benchmark: output tokens/s of bolt_jax.sampling.generate, against the memory-bandwidth bound of decoding.

    python bench/sampler.py                       # TinyLlama (bf16 weights), batch 256, 512 prompt + 512 new tokens
    python bench/sampler.py --batch 256,1024 --prompt_min 512,128  # batch 1024 with ragged prompts of 128-512
    python bench/sampler.py --batch 64,256 --new 512 --decode xla,pallas_gpu
    python bench/sampler.py --decode pallas_gpu,mosaic_gpu   # the Triton kernel and its Mosaic GPU successor
    python bench/sampler.py --check_decode_kernel  # also: max |each GPU decode kernel - XLA decode|, same inputs
    python bench/sampler.py --profile /tmp/prof && python bench/trace_summary.py /tmp/prof   # where decode time goes
    python bench/sampler.py --smoke               # tiny shapes on CPU

Each decode step must read every weight once and the KV cache written so far: the bound on steps/s is
bandwidth / (weight bytes + mean cache bytes), and output tokens/s = batch x steps/s. `out tok/s` is end to end
(prefill included); `decode tok/s` subtracts the time of the same call with one new token (prefill, first sample,
host work; the median of `--prefill_runs` calls) from each full call, and is the figure the bound speaks of.
min / median / max over `--runs` calls after a warm-up; device, jax, commit. Ragged prompts (`--prompt_min`, one
value or one per batch size) are left-padded to the longest in one static batch, as the sampler does.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import Samples, header, run_info, smoke_defaults, time_samples, write_json

from bolt_jax.runtime.chips import HBM_BYTES_PER_S, for_device_kind


def bandwidth() -> float | None:
    """The HBM bandwidth of the device this runs on (datasheet, bolt_jax.runtime.chips), None where unknown."""
    return for_device_kind(HBM_BYTES_PER_S, jax.devices()[0].device_kind)


def make_prompts(cfg, batch: int, longest: int, shortest: int, seed: int = 0) -> list[list[int]]:
    """Random token ids; lengths uniform in [shortest, longest] (all `longest` when equal)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, longest + 1, batch) if shortest < longest else [longest] * batch
    return [rng.integers(3, cfg.vocab_size, n).tolist() for n in lengths]


GPU_DECODE_KERNELS = ("pallas_gpu", "mosaic_gpu")


def decode_step_inputs(cfg, batch: int, time_len: int, seed: int = 0):
    """One decode step's attention inputs at the model's head shape, bf16, as in the sampler's cache: q [B, 1, H, D],
    K and V caches [B, T, K * D] (T: `time_len` rounded up to 128), ragged lengths uniform in [1, T], left padding
    (segment 0) below each length and an unwritten tail. Returns (q, k, v, keyword arguments of decode_attention)."""
    rng = np.random.default_rng(seed)
    t = math.ceil(time_len / 128) * 128
    h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size
    q = jnp.asarray(rng.normal(size=(batch, 1, h, d)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(batch, t, kvh * d)), jnp.bfloat16) for _ in range(2))  # heads side by side
    lengths = rng.integers(1, t + 1, batch)
    pad = rng.integers(0, lengths)  # left padding of each row, below its length
    seg = ((np.arange(t)[None] >= pad[:, None]) & (np.arange(t)[None] < lengths[:, None])).astype(np.int32)
    return q, k, v, dict(kv_segment_ids_BxT=jnp.asarray(seg), lengths_B=jnp.asarray(lengths, jnp.int32))


def decode_kernel_error(cfg, batch: int, time_len: int, impl: str, seed: int = 0) -> dict:
    """Max |the decode kernel `impl` - xla_decode_attention| on the same inputs (`decode_step_inputs`). On a CPU the
    Triton kernel runs in Pallas interpret mode and the Mosaic GPU one as its pure-JAX twin (smoke)."""
    from bolt_jax import kernels
    q, k, v, kw = decode_step_inputs(cfg, batch, time_len, seed)
    t, h, kvh, d = k.shape[1], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size
    got, want = (jax.jit(lambda q, k, v, i=i: kernels.decode_attention(q, k, v, impl=i, **kw))(q, k, v)
                 for i in (impl, "xla"))
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return {"impl": impl, "max_abs_err": float(np.abs(got - want).max()), "max_abs_ref": float(np.abs(want).max()),
            "shape": {"batch": batch, "time": t, "heads": h, "kv_heads": kvh, "head_dim": d},
            "interpret": jax.default_backend() != "gpu"}


def bench_batch(model, cfg, mesh, *, batch: int, prompt: int, prompt_min: int, new: int, runs: int,
                prefill_runs: int, profile: str = "") -> dict:
    """One batch size: the full calls, the one-token calls, and decode tokens/s per full call."""
    from bolt_jax.sampling import generate
    prompts = make_prompts(cfg, batch, prompt, prompt_min)
    kw = dict(max_new_tokens=new, temperature=1.0, mesh=mesh, batch_bucket=batch)
    generate(model, prompts, **kw)  # compile + warm-up
    times, new_tokens = [], []
    for r in range(runs):
        t0 = time.perf_counter()
        out = generate(model, prompts, seed=r, **kw)
        times.append(time.perf_counter() - t0)
        new_tokens.append(int(out.lengths.sum()))
    # the same call with one new token: prefill + first sample + host work, to separate decoding from it
    kw1 = dict(kw, max_new_tokens=1)
    t1 = time_samples(lambda: generate(model, prompts, **kw1), runs=prefill_runs)
    if profile:
        with jax.profiler.trace(f"{profile}/batch{batch}", create_perfetto_trace=True):
            generate(model, prompts, **kw)
    decode = Samples.of((n - batch) / max(t - t1.median, 1e-9) for n, t in zip(new_tokens, times))
    end_to_end = Samples.of(n / t for n, t in zip(new_tokens, times))
    mean_prompt = float(np.mean([len(p) for p in prompts]))
    cache_bytes = 2 * cfg.num_hidden_layers * batch * (prompt + new / 2) * cfg.kv_size * 2  # padded to `prompt`
    bw = bandwidth()
    bound = batch * bw / (cfg.num_params() * 2 + cache_bytes) if bw else None
    return {"batch": batch, "prompt": prompt, "prompt_min": prompt_min, "mean_prompt": mean_prompt, "new": new,
            "seconds": Samples.of(times).summary(), "prefill_seconds": t1.summary(), "new_tokens": new_tokens,
            "out_tokens_per_s": end_to_end.summary(), "decode_tokens_per_s": decode.summary(),
            "bandwidth_bound_tokens_per_s": bound}


def print_rows(a, rows: list[dict]) -> None:
    print(f"\nsampler: {a.preset} bf16, prompts of at most {a.prompt} tokens, new {a.new}, {header()}; min / median "
          f"/ max of {a.runs} calls (prefill: median of {a.prefill_runs})"
          + ("; SMOKE: CPU figures, meaningless" if a.smoke else ""))
    print(f"{'decode attn':>11} {'batch':>6} {'prompts':>9} {'seconds':>20} {'prefill s':>9} {'out tok/s':>26} "
          f"{'decode tok/s':>26} {'bw bound tok/s':>15} {'decode/bound':>12}")
    for r in rows:
        decode = Samples.of(r["decode_tokens_per_s"]["samples"])
        bound = r["bandwidth_bound_tokens_per_s"]
        frac = f"{decode.median / bound:.1%}" if bound else "-"
        prompts = f"{r['prompt_min']}-{r['prompt']}"
        seconds, out = (Samples.of(r[k]["samples"]) for k in ("seconds", "out_tokens_per_s"))
        print(f"{r['decode_impl']:>11} {r['batch']:6d} {prompts:>9} {seconds.fmt('.3g'):>20} "
              f"{r['prefill_seconds']['median']:9.2f} {out.fmt(',.0f'):>26} {decode.fmt(',.0f'):>26} "
              f"{bound or float('nan'):15,.0f} {frac:>12}")


def overrides(text: str) -> dict:
    """`--model_overrides`: k=v pairs, numbers as numbers."""
    out = {}
    for item in filter(None, text.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    return out


def parser() -> argparse.ArgumentParser:
    """This script's arguments (bench/gpu_preflight.py parses the headline's with it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b_bolt")
    p.add_argument("--batch", default="256")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (the longest, with --prompt_min)")
    p.add_argument("--prompt_min", default="0", help="ragged prompts: lengths uniform in [this, --prompt]; one "
                                                      "value, or a comma list aligned with --batch (0: --prompt)")
    p.add_argument("--new", type=int, default=512)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--prefill_runs", type=int, default=3, help="one-token calls timed to subtract the prefill")
    p.add_argument("--decode", default="auto", help="comma list of decode attention impls (model.decode_impl: auto, "
                                                     "xla, pallas_gpu, mosaic_gpu), measured side by side")
    p.add_argument("--check_decode_kernel", action="store_true",
                   help="max |each GPU decode kernel - XLA decode attention| on the model's head shape (the Mosaic "
                        "GPU one where the head dim is a multiple of 64)")
    p.add_argument("--model_overrides", default="", help="LlamaConfig fields over the preset, e.g. hidden_size=128,"
                                                          "num_attention_heads=2 (a smoke model with 64-wide heads)")
    p.add_argument("--profile", default="", help="write a profiler trace of one generate call per batch size here "
                                                  "(read it with bench/trace_summary.py)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (explicit arguments win)")
    p.add_argument("--json", default="", help="write the rows, with every sample, to this JSON file")
    return p


def main() -> None:
    p = parser()
    a = p.parse_args()
    from bolt_jax import kernels, parallel
    from bolt_jax.kernels.mosaic_gpu import wgmma_takes
    from bolt_jax.model import create_model, preset

    if a.smoke:
        smoke_defaults(a, p, preset="tiny", batch="8", prompt=16, new=16)
    try:
        cfg = preset(a.preset, param_dtype="bfloat16", compute_dtype="bfloat16", **overrides(a.model_overrides))
    except (TypeError, ValueError, KeyError) as e:
        p.error(f"--preset / --model_overrides: {e}")
    impls = a.decode.split(",")
    unknown = sorted(set(impls) - set(kernels.DECODE_IMPLS))
    if unknown:
        p.error(f"--decode: unknown {unknown}; choose from {kernels.DECODE_IMPLS}")
    if "mosaic_gpu" in impls and not wgmma_takes(cfg.compute_dtype, cfg.head_size):
        p.error(f"--decode mosaic_gpu: the Mosaic GPU kernel takes heads of a multiple of 64 (this model's are "
                f"{cfg.head_size}); --model_overrides can widen them")
    mesh = parallel.make_mesh()
    model = create_model(cfg, mesh, seed=0)
    checks = {}
    if a.check_decode_kernel:  # first: quick, and then in every partial JSON
        for impl in GPU_DECODE_KERNELS:
            if impl == "mosaic_gpu" and not wgmma_takes(cfg.compute_dtype, cfg.head_size):
                checks[impl] = {"impl": impl, "skipped": f"head dim {cfg.head_size} is not a multiple of 64"}
                continue
            c = checks[impl] = decode_kernel_error(cfg, int(a.batch.split(",")[0]), a.prompt + a.new, impl)
            print(f"decode kernel check, {c['shape']}{' (interpreted)' if c['interpret'] else ''}: max |{impl} - xla| "
                  f"= {c['max_abs_err']:.3g} (outputs up to {c['max_abs_ref']:.3g}, bf16)", flush=True)
    rows = []
    batches = [int(b) for b in a.batch.split(",")]
    shortest = [int(x) or a.prompt for x in a.prompt_min.split(",")]
    shortest = dict(zip(batches, shortest if len(shortest) == len(batches) else shortest[:1] * len(batches)))
    for decode_impl, batch in ((d, b) for d in impls for b in batches):
        model.config = dataclasses.replace(cfg, decode_impl=decode_impl)  # static: a new program per impl
        row = bench_batch(model, cfg, mesh, batch=batch, prompt=a.prompt, prompt_min=shortest[batch], new=a.new,
                          runs=a.runs, prefill_runs=a.prefill_runs, profile=a.profile)
        rows.append({"decode_impl": decode_impl, **row})
        if a.json:  # after every row: a run stopped by its time limit still leaves the rows it finished
            write_json(a.json, {**run_info(), "args": vars(a), "smoke": a.smoke, "rows": rows,
                                "decode_kernels": checks})
    print_rows(a, rows)

if __name__ == "__main__":
    main()
