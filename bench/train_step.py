"""Train-step benchmark: TinyLlama-1.1B (or any preset), bf16 compute, random tokens; one table.

    python bench/train_step.py                                   # TinyLlama, seq 2048, largest micro-batch that fits
    python bench/train_step.py --micro_batches 8,12,16 --remat dots_no_batch,none
    python bench/train_step.py --smoke                           # tiny shapes on CPU (checks the script)

Measures after warm-up, reports the median step time of several runs, tokens/s, and MFU with the spec's FLOP count
(6 N_nonembed + 3.5 * 4 L S D / 2 per token) against the device's bf16 peak; names the device, jax and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
from common import header


def build_config(preset: str, seq_len: int, batch: int, remat: str, attention: str, steps: int, scan: bool = True,
                 docs: int = 1):
    import ml_collections

    from bolt_jax.config import base_config, model_config_dict
    from bolt_jax.train.loop import default_train_config
    from bolt_jax.train.optim import default_optim_config

    c = base_config()
    c.workflow = "train"
    c.model = model_config_dict(preset)
    c.model.remat_policy = remat
    c.model.attention_impl = attention
    c.model.scan_layers = scan
    c.train = default_train_config()
    c.train.global_batch_size = batch
    c.train.steps = steps
    c.optim = default_optim_config()
    c.optim.warmup_steps = 1
    c.data = ml_collections.ConfigDict({"source": "synthetic", "seq_len": seq_len, "synthetic_docs_per_row": docs})
    return c


def bench_one(preset: str, seq_len: int, batch: int, remat: str, attention: str, warmup: int, runs: int,
              profile_dir: str = "", scan: bool = True, docs: int = 1) -> dict:
    from bolt_jax import parallel
    from bolt_jax.data.sources import SyntheticBatches
    from bolt_jax.train.loop import TrainSetup
    from bolt_jax.train.metrics import device_peak_flops

    c = build_config(preset, seq_len, batch, remat, attention, steps=warmup + runs + 10, scan=scan, docs=docs)
    setup = TrainSetup(c)
    state = setup.init_state()
    src = SyntheticBatches(rows=batch, seq_len=seq_len, vocab_size=setup.model_cfg.vocab_size, seed=0,
                           docs_per_row=docs)
    batches = [parallel.shard_batch(next(src), setup.mesh) for _ in range(2)]
    times = []
    with setup.mesh_context():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            state, metrics = setup.train_step(state, batches[i % 2])
            jax.block_until_ready(metrics["loss"])
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    if profile_dir:
        profile_steps(setup, state, batches[0],
                      os.path.join(profile_dir, f"{remat}_{attention}_b{batch}_{'scan' if scan else 'unrolled'}"))
    step = statistics.median(times)
    tokens = batch * seq_len / step
    peak = device_peak_flops()
    flops = setup.model_cfg.flops_per_token(seq_len)
    mfu = flops * tokens / (peak * jax.device_count()) if peak else None
    mem = jax.devices()[0].memory_stats() or {}
    return {"batch": batch, "remat": remat, "attention": attention, "layers": "scan" if scan else "unrolled",
            "step_s": step, "tokens_per_s": tokens,
            "mfu": mfu, "peak_mem_gib": mem.get("peak_bytes_in_use", 0) / 2**30,
            "loss": float(metrics["loss"]), "mfu_flops_per_token": flops}


def profile_steps(setup, state, batch, out_dir: str, steps: int = 3) -> None:
    """A jax profiler trace of a few steps (perfetto JSON too), for bench/trace_summary.py."""
    with setup.mesh_context(), jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = setup.train_step(state, batch)
        jax.block_until_ready(metrics["loss"])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def run_child(a, batch: int, remat: str, attention: str, layers: str) -> dict:
    """One configuration in its own process, so memory peaks and OOMs do not leak between rows."""
    cmd = [sys.executable, __file__, "--child", "--preset", a.preset, "--seq_len", str(a.seq_len),
           "--micro_batches", str(batch), "--remat", remat, "--attention", attention, "--warmup", str(a.warmup),
           "--runs", str(a.runs), "--layers", layers, "--docs", str(a.docs)] + (
               ["--profile", a.profile] if a.profile else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    msg = next((ln for ln in err if "RESOURCE_EXHAUSTED" in ln or "Error" in ln), err[-1] if err else "no output")
    return {"batch": batch, "remat": remat, "attention": attention, "layers": layers, "error": msg.strip()[:100]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b_bolt")
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--micro_batches", default="8,16", help="comma list; OOM entries are reported and skipped")
    p.add_argument("--remat", default="none", help="comma list of remat policies")
    p.add_argument("--attention", default="auto", help="comma list of attention impls")
    p.add_argument("--layers", default="unrolled", help="comma list: scan (lax.scan over stacked layers) or unrolled")
    p.add_argument("--docs", type=int, default=1,
                   help="documents per row: 1 is the original's concat packing (plain causal, no segment ids); more "
                        "packs documents (attention masked per document)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--profile", default="", help="write a profiler trace of 3 steps per configuration here")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, for CPU")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.smoke:
        a.preset, a.seq_len, a.micro_batches, a.remat, a.warmup, a.runs = "tiny", 64, "8", "none", 1, 2
    if a.child:
        r = bench_one(a.preset, a.seq_len, int(a.micro_batches), a.remat, a.attention, a.warmup, a.runs,
                      profile_dir=a.profile, scan=a.layers == "scan", docs=a.docs)
        print(json.dumps(r))
        return
    rows = []
    for layers in a.layers.split(","):
        for attention in a.attention.split(","):
            for remat in a.remat.split(","):
                for batch in (int(b) for b in a.micro_batches.split(",")):
                    rows.append(run_child(a, batch, remat, attention, layers))
                    print(rows[-1], flush=True)
    print(f"\ntrain step: {a.preset}, seq {a.seq_len}, {a.docs} document(s) per row, {header()}, "
          f"median of {a.runs} after {a.warmup} warm-up")
    print(f"{'batch':>5} {'remat':>14} {'attn':>10} {'layers':>8} {'step ms':>9} {'tokens/s':>10} {'MFU':>6} "
          f"{'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['batch']:5d} {r['remat']:>14} {r['attention']:>10} {r['layers']:>8}  failed: {r['error']}")
        else:
            print(f"{r['batch']:5d} {r['remat']:>14} {r['attention']:>10} {r['layers']:>8} {r['step_s'] * 1e3:9.1f} "
                  f"{r['tokens_per_s']:10,.0f} {_pct(r['mfu']):>6} {r['peak_mem_gib']:9.2f}")


if __name__ == "__main__":
    main()
