"""Sampler benchmark: output tokens/s of bolt_jax.sampling.generate, against the memory-bandwidth bound of decoding.

    python bench/sampler.py                       # TinyLlama (bf16 weights), batch 256, 512 prompt + 512 new tokens
    python bench/sampler.py --batch 64,256 --new 512 --decode xla,pallas_gpu
    python bench/sampler.py --profile /tmp/prof && python bench/trace_summary.py /tmp/prof   # where decode time goes
    python bench/sampler.py --smoke               # tiny shapes on CPU

Each decode step must read every weight once and the KV cache written so far: the bound on steps/s is
bandwidth / (weight bytes + mean cache bytes), and output tokens/s = batch x steps/s. `out tok/s` is end to end
(prefill included); `decode tok/s` subtracts the time of the same call with one new token (prefill, first sample,
host work) and is the figure the bound speaks of. Median of several runs after a warm-up; device, jax, commit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from common import header, median_seconds

HBM_BYTES_PER_S = {"h100": 3.35e12, "h200": 4.8e12, "a100": 2.0e12, "b200": 8.0e12}



def bandwidth() -> float | None:
    kind = jax.devices()[0].device_kind.lower()
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in kind), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b_bolt")
    p.add_argument("--batch", default="256")
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--decode", default="auto", help="comma list of decode attention impls (auto, xla, pallas_gpu)")
    p.add_argument("--profile", default="", help="write a profiler trace of one generate call per batch size here "
                                                  "(read it with bench/trace_summary.py)")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    from bolt_jax import parallel
    from bolt_jax.model import create_model, preset
    from bolt_jax.sampling import generate

    if a.smoke:
        a.preset, a.batch, a.prompt, a.new, a.runs = "tiny", "8", 16, 16, 2
    cfg = preset(a.preset, param_dtype="bfloat16", compute_dtype="bfloat16")
    mesh = parallel.make_mesh()
    model = create_model(cfg, mesh, seed=0)
    weight_bytes = cfg.num_params() * 2
    rows = []
    from bolt_jax import kernels
    for decode_impl, batch in ((d, int(b)) for d in a.decode.split(",") for b in a.batch.split(",")):
        if decode_impl != "auto":  # `auto` resolves per backend at trace time: pin it, and retrace
            kernels.DECODE_AUTO[jax.default_backend()] = decode_impl
            jax.clear_caches()
        rng = np.random.default_rng(0)
        prompts = [rng.integers(3, cfg.vocab_size, a.prompt).tolist() for _ in range(batch)]
        kw = dict(max_new_tokens=a.new, temperature=1.0, mesh=mesh, batch_bucket=batch)
        generate(model, prompts, **kw)  # compile + warm-up
        times = []
        for r in range(a.runs):
            t0 = time.perf_counter()
            out = generate(model, prompts, seed=r, **kw)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        # the same call with one new token: prefill + first sample + host work, to separate decoding from it
        kw1 = dict(kw, max_new_tokens=1)
        t1 = median_seconds(lambda: generate(model, prompts, **kw1), runs=a.runs)
        if a.profile:
            with jax.profiler.trace(f"{a.profile}/batch{batch}", create_perfetto_trace=True):
                generate(model, prompts, **kw)
        new_tokens = int(out.lengths.sum())
        cache_bytes = 2 * cfg.num_hidden_layers * batch * (a.prompt + a.new / 2) * cfg.kv_size * 2
        bw = bandwidth()
        bound = batch * bw / (weight_bytes + cache_bytes) if bw else float("nan")
        decode = (new_tokens - batch) / max(t - t1, 1e-9)
        rows.append((decode_impl, batch, t, t1, new_tokens / t, decode, bound))
    print(f"\nsampler: {a.preset} bf16, prompt {a.prompt}, new {a.new}, {header()}, median of {a.runs}")
    print(f"{'decode attn':>11} {'batch':>6} {'seconds':>8} {'prefill s':>9} {'out tok/s':>10} {'decode tok/s':>12} "
          f"{'bw bound tok/s':>15} {'decode/bound':>12}")
    for decode_impl, batch, t, t1, tps, decode, bound in rows:
        frac = f"{decode / bound:.1%}" if bound == bound else "-"
        print(f"{decode_impl:>11} {batch:6d} {t:8.2f} {t1:9.2f} {tps:10,.0f} {decode:12,.0f} {bound:15,.0f} {frac:>12}")


if __name__ == "__main__":
    main()
