"""Train-step benchmark: TinyLlama-1.1B (or any preset), bf16 compute, random tokens; one table.

    python bench/train_step.py                                   # TinyLlama, seq 2048, largest micro-batch that fits
    python bench/train_step.py --micro_batches 8,12,16 --remat dots_no_batch,none
    python bench/train_step.py --micro_batches 16 --docs 4 --mlp_backward custom,autodiff   # the SwiGLU's backwards
    python bench/train_step.py --smoke                           # tiny shapes on CPU (checks the script)

Measures each step after warm-up and reports min / median / max over the runs of step time, tokens/s and MFU (the
project's FLOP convention, `LlamaConfig.flops_per_token`, against the device's bf16 peak; on a CPU against a measured
matmul rate, labelled: bench/common.py `peak_flops`); names the device, jax and commit. `--json PATH` writes every
row with its samples (bench/headline.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
from common import Samples, header, peak_flops, run_info, smoke_defaults, write_json


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
    steps = Samples.of(times)
    tokens = steps.map(lambda t: batch * seq_len / t)
    peak, peak_source = peak_flops()
    flops = setup.model_cfg.flops_per_token(seq_len)
    mfu = tokens.map(lambda x: flops * x / (peak * jax.device_count())) if peak else None
    mem = jax.devices()[0].memory_stats() or {}
    return {"batch": batch, "remat": remat, "attention": attention, "layers": "scan" if scan else "unrolled",
            "docs": docs, "seq_len": seq_len, "step_s": steps.summary(), "tokens_per_s": tokens.summary(),
            "mfu": mfu.summary() if mfu else None, "peak_flops": peak, "peak_flops_source": peak_source,
            "peak_mem_gib": mem.get("peak_bytes_in_use", 0) / 2**30, "loss": float(metrics["loss"]),
            "mfu_flops_per_token": flops,
            "flops_per_token_original": setup.model_cfg.flops_per_token_original(seq_len)}


MLP_BACKWARDS = ("custom", "autodiff")


def use_mlp_backward(which: str) -> None:
    """In this (child) process, the MLP's SwiGLU differentiated by its own backward (`custom`, the model's) or by jax's
    autodiff (`autodiff`, the model before 2026-12-07: its forward also keeps silu(gate), BENCHMARKS.md)."""
    if which == "autodiff":
        from bolt_jax.model import llama
        llama.swiglu = lambda gate, up: jax.nn.silu(gate) * up


def profile_steps(setup, state, batch, out_dir: str, steps: int = 3) -> None:
    """A jax profiler trace of a few steps (perfetto JSON too), for bench/trace_summary.py."""
    with setup.mesh_context(), jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for _ in range(steps):
            state, metrics = setup.train_step(state, batch)
        jax.block_until_ready(metrics["loss"])


def _mmm(figure: dict | None, spec: str, scale: float = 1.0) -> str:
    """min / median / max of a figure's JSON form; '-' when it was not measured (MFU without a known peak)."""
    return "-" if figure is None else Samples.of(figure["samples"]).fmt(spec, scale)


def run_child(a, batch: int, remat: str, attention: str, layers: str, mlp_backward: str = "custom") -> dict:
    """One configuration in its own process, so memory peaks and OOMs do not leak between rows."""
    cmd = [sys.executable, __file__, "--child", "--preset", a.preset, "--seq_len", str(a.seq_len),
           "--micro_batches", str(batch), "--remat", remat, "--attention", attention, "--warmup", str(a.warmup),
           "--runs", str(a.runs), "--layers", layers, "--docs", str(a.docs), "--mlp_backward", mlp_backward] + (
               ["--profile", a.profile] if a.profile else [])
    env = dict(os.environ)
    if a.mem_fraction:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(a.mem_fraction)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    msg = next((ln for ln in err if "RESOURCE_EXHAUSTED" in ln or "Error" in ln), err[-1] if err else "no output")
    return {"batch": batch, "remat": remat, "attention": attention, "layers": layers, "mlp_backward": mlp_backward,
            "error": msg.strip()[:100]}


def parser() -> argparse.ArgumentParser:
    """This script's arguments (bench/gpu_preflight.py parses the headline's with it)."""
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
    p.add_argument("--mem_fraction", type=float, default=0.9,
                   help="the share of the GPU jax's allocator takes in each configuration's process "
                        "(XLA_PYTHON_CLIENT_MEM_FRACTION; TinyLlama's micro-batch 16 needs 57 GiB of an H100's 79.6, "
                        "72%%, within jax's own default 0.75 by 2.6 GiB; the step needed 61 under jax 0.12.1 before "
                        "the SwiGLU had its own backward, bench/gpu_preflight.py); 0 keeps the environment's")
    p.add_argument("--mlp_backward", default="custom",
                   help="comma list of the SwiGLU's backwards: custom (the model's own) or autodiff (jax's, which "
                        "also keeps silu(gate)), to time the one against the other in one run")
    p.add_argument("--profile", default="", help="write a profiler trace of 3 steps per configuration here")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, for CPU (explicit arguments win)")
    p.add_argument("--json", default="", help="write the rows, with every sample, to this JSON file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def main() -> None:
    p = parser()
    a = p.parse_args()
    if not 0 <= a.mem_fraction <= 1:
        p.error(f"--mem_fraction {a.mem_fraction}: a share of the GPU in (0, 1], or 0 for the environment's")
    backwards = a.mlp_backward.split(",")
    if not set(backwards) <= set(MLP_BACKWARDS):
        p.error(f"--mlp_backward {a.mlp_backward}: a comma list of {', '.join(MLP_BACKWARDS)}")
    if a.smoke:
        smoke_defaults(a, p, preset="tiny", seq_len=64, micro_batches="8", warmup=1)
    if a.child:
        use_mlp_backward(a.mlp_backward)
        r = bench_one(a.preset, a.seq_len, int(a.micro_batches), a.remat, a.attention, a.warmup, a.runs,
                      profile_dir=a.profile, scan=a.layers == "scan", docs=a.docs)
        print(json.dumps({**r, "mlp_backward": a.mlp_backward}))
        return
    rows = []
    for layers in a.layers.split(","):
        for attention in a.attention.split(","):
            for remat in a.remat.split(","):
                for batch in (int(b) for b in a.micro_batches.split(",")):
                    for backward in backwards:
                        rows.append(run_child(a, batch, remat, attention, layers, backward))
                        print(rows[-1], flush=True)
    share = a.mem_fraction or os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "jax's default")
    print(f"\ntrain step: {a.preset}, seq {a.seq_len}, {a.docs} document(s) per row, {header()}; min / median / "
          f"max of {a.runs} steps after {a.warmup} warm-up; allocator share of the GPU {share}")
    ok = next((r for r in rows if "error" not in r), None)
    if ok:
        print(f"MFU: {ok['mfu_flops_per_token'] / 1e9:.4g} GFLOP/token (LlamaConfig.flops_per_token; the original's "
              f"count: {ok['flops_per_token_original'] / 1e9:.4g}) against {ok['peak_flops'] or 0:.3g} FLOP/s, "
              f"{ok['peak_flops_source']}")
    print(f"{'batch':>5} {'remat':>14} {'attn':>10} {'layers':>8} {'mlp bwd':>8} {'step ms':>22} {'tokens/s':>26} "
          f"{'MFU':>20} {'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['batch']:5d} {r['remat']:>14} {r['attention']:>10} {r['layers']:>8} {r['mlp_backward']:>8}  "
                  f"failed: {r['error']}")
        else:
            print(f"{r['batch']:5d} {r['remat']:>14} {r['attention']:>10} {r['layers']:>8} {r['mlp_backward']:>8} "
                  f"{_mmm(r['step_s'], '.1f', 1e3):>22} {_mmm(r['tokens_per_s'], ',.0f'):>26} "
                  f"{_mmm(r['mfu'], '.1%'):>20} {r['peak_mem_gib']:9.2f}")
    if a.json:
        write_json(a.json, {**run_info(), "args": vars(a), "rows": rows})


if __name__ == "__main__":
    main()
