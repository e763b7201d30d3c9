"""Sampler benchmark: output tokens/s of bolt_jax.sampling.generate, against the memory-bandwidth bound of decoding.

    python bench/sampler.py                       # TinyLlama (bf16 weights), batch 256, 512 prompt + 512 new tokens
    python bench/sampler.py --batch 64,256 --new 512
    python bench/sampler.py --smoke               # tiny shapes on CPU

Each decode step must read every weight once and the KV cache written so far: the bound on steps/s is
bandwidth / (weight bytes + mean cache bytes), and output tokens/s = batch x steps/s. Reports the median of several
runs after a warm-up, with device, jax version and commit.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from common import commit

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
    for batch in (int(b) for b in a.batch.split(",")):
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
        new_tokens = int(out.lengths.sum())
        cache_bytes = 2 * cfg.num_hidden_layers * batch * (a.prompt + a.new / 2) * cfg.kv_size * 2
        bw = bandwidth()
        bound = batch * bw / (weight_bytes + cache_bytes) if bw else float("nan")
        rows.append((batch, t, new_tokens / t, bound))
    print(f"\nsampler: {a.preset} bf16, prompt {a.prompt}, new {a.new}, {jax.device_count()} x "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, commit {commit()}, median of {a.runs}")
    print(f"{'batch':>6} {'seconds':>8} {'out tok/s':>10} {'bw bound tok/s':>15} {'of bound':>8}")
    for batch, t, tps, bound in rows:
        print(f"{batch:6d} {t:8.2f} {tps:10,.0f} {bound:15,.0f} {tps / bound if bound == bound else float('nan'):8.1%}")


if __name__ == "__main__":
    main()
