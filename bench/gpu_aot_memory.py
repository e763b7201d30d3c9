"""How far an H100's memory can be known without an H100: the TinyLlama train step compiled by XLA's GPU compiler on
this CPU machine (`--config.aot_topology=h100:1`, bolt_jax.aot: jax's CUDA plugin, no GPU), its per-device memory
from the compiler's buffer assignment, against the peak the same configuration reached on a real H100 on
2026-11-22 (`peak_bytes_in_use` after the timed steps, read here from that day's raw logs in
bench/results/2026-11-22-h100/, never copied by hand).

    python bench/gpu_aot_memory.py                 # every row (about a minute of compile each on 2 cores)
    python bench/gpu_aot_memory.py --rows 0,1
    python bench/gpu_aot_memory.py --sweep h100:16,20,24/h200:16,24,32,40      # predictions only, no measured peak

`--sweep`: the headline's train step (4 documents per row, attention auto, unrolled, remat none) at each micro-batch
on one H100 or H200, predicted memory only, against the device's memory and against the 75% of it that jax's
allocator takes by default (XLA_PYTHON_CLIENT_MEM_FRACTION=0.75): above that a run needs a larger fraction set.
Writes bench/results/gpu_aot_memory_sweep-<date>.{json,md}. `--score ROWS`: the E-step scorer's pass
(`sampling.scorer._score_core`, as bench/score.py's headline step calls it: ROWS rows of 2048 tokens, bf16 weights,
the 32004-entry vocabulary, log-softmax in chunks of 512 positions) on one H100, added to the sweep's rows.

The configurations are those bench/train_step.py measured (`build_config`: seq 2048, remat none, bf16 compute, one
device), compiled as it runs them. Attention `auto` on rows without packed documents is cuDNN's, which compiles
without a GPU where cuDNN's library is installed and jax's XLA emits it deviceless (0.12.0 does, 0.12.1 does not:
bolt_jax.aot.topology.cudnn_compiles; the row is left out, said so, where it does not). The measured peak also
holds what the step does not (the initial state's buffers, two batches), and some rows were measured at older
commits, as each row says. Writes bench/results/gpu_aot_memory-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import sys
import time

from common import commit, write_results

from bolt_jax.runtime.chips import CHIPS, GIB

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MEASURED = os.path.join(RESULTS, "2026-11-22-h100")

# (log file, micro-batch, documents per row, attention as measured, layers): each a row of that log
ROWS = (
    ("run16_train_docs_auto.log", 16, 4, "auto", "unrolled"),
    ("run15_train_concat.log", 16, 1, "auto", "unrolled"),  # cuDNN's attention
    ("run15_train_concat.log", 16, 1, "mosaic_gpu", "unrolled"),
    ("run12_train_docs.log", 16, 4, "pallas_gpu", "unrolled"),
    # an older commit, measured with `--xla_gpu_enable_triton_gemm=false`, the flag bolt_jax.runtime.xla_flags has
    # set since (so in the compile here too); run3_train.log has the same rows with XLA's Triton matmuls
    ("run3_train_notriton.log", 8, 1, "pallas_gpu", "unrolled"),
    ("run3_train_notriton.log", 8, 1, "pallas_gpu", "scan"),
)


def measured(log: str, batch: int, attention: str, layers: str) -> dict:
    """The row of `log` with these settings: its peak GiB and tokens/s, and the log's commit."""
    text = open(os.path.join(MEASURED, log)).read()
    head = re.search(r"commit (\w+)", text)
    for line in text.splitlines():
        if line.startswith("{'batch'"):
            r = ast.literal_eval(line)
            if (r["batch"], r["attention"], r.get("layers")) == (batch, attention, layers):
                return {"peak_gib": r["peak_mem_gib"], "tokens_per_s": r["tokens_per_s"],
                        "commit": head.group(1) if head else "?"}
    raise ValueError(f"{log} has no row for micro-batch {batch}, attention {attention}, layers {layers}")


def predicted(batch: int, docs: int, attention: str, layers: str, devices, *, seq_len: int = 2048,
              remat: str = "none", preset: str = "tinyllama_1.1b_bolt") -> dict:
    """The train step compiled for one GPU without one: the compiler's memory and the compile's seconds."""
    from train_step import build_config

    from bolt_jax.aot.report import memory_bytes
    from bolt_jax.train.loop import TrainSetup
    c = build_config(preset, seq_len, batch, remat, attention, steps=10, scan=layers == "scan", docs=docs)
    t0 = time.perf_counter()
    setup = TrainSetup(c, devices)
    with setup.mesh_context():
        compiled = setup.train_step.lower(setup.abstract_state, setup.abstract_batch).compile()
    return {"memory_bytes": memory_bytes(compiled), "compile_s": time.perf_counter() - t0}


def score_memory(rows: int, devices, *, seq: int = 2048, preset: str = "tinyllama_1.1b_bolt", vocab: int = 0,
                 max_positions: int = 0) -> dict:
    """The scorer's compiled pass for `rows` rows of `seq` tokens on one GPU (`vocab`, `max_positions`: the
    preset's when 0, as bench/score.py takes them): its memory and compile seconds."""
    import jax
    import jax.numpy as jnp

    from bolt_jax import parallel
    from bolt_jax.aot.report import abstract_sampler_model, memory_bytes
    from bolt_jax.model import preset as preset_config
    from bolt_jax.sampling.scorer import _score_core
    overrides = {k: v for k, v in (("vocab_size", vocab), ("max_position_embeddings", max_positions)) if v}
    cfg = preset_config(preset, param_dtype="bfloat16", compute_dtype="bfloat16", **overrides)
    mesh = parallel.make_mesh({}, devices)
    graphdef, params = abstract_sampler_model(cfg, mesh)
    ids = jax.ShapeDtypeStruct((rows, seq), jnp.int32, sharding=parallel.batch_sharding(mesh, 2))
    t0 = time.perf_counter()
    with parallel.use_mesh(mesh):
        compiled = _score_core.lower(graphdef, params, ids, ids, ids, chunk_size=512).compile()
    return {"memory_bytes": memory_bytes(compiled), "compile_s": time.perf_counter() - t0}


def parse_sweep(spec: str) -> list[tuple[str, list[int]]]:
    """`h100:16,20/h200:24` -> [("h100", [16, 20]), ("h200", [24])]; a ValueError in one line otherwise."""
    from bolt_jax.aot.topology import GPUS
    out = []
    for part in [p for p in spec.split("/") if p]:
        kind, _, batches = part.partition(":")
        if kind not in GPUS or not batches or not all(b.strip().isdigit() for b in batches.split(",")):
            raise ValueError(f"--sweep {part!r}: write GPU:MICRO_BATCHES with GPU one of {GPUS}, e.g. h100:16,20")
        out.append((kind, [int(b) for b in batches.split(",")]))
    return out


def _sweep_row(gpu: str, program: str, p_: dict) -> dict:
    from bolt_jax.aot.topology import parse_target
    from bolt_jax.runtime.chips import DEFAULT_GPU_MEM_FRACTION
    total, device = p_["memory_bytes"]["total"], parse_target(f"{gpu}:1").chip.device_memory_bytes
    print(f"{gpu} {program}: {total / GIB:.2f} GiB of {device / GIB:.2f} ({total / device:.0%} of the device; "
          f"compile {p_['compile_s']:.0f} s)", flush=True)
    return {"gpu": gpu, "program": program, "predicted_gib": total / GIB, "device_gib": device / GIB,
            "fits_device": total <= device, "fits_default_fraction": total <= DEFAULT_GPU_MEM_FRACTION * device,
            "mem_fraction_needed": total / device, **p_}


def sweep(plan: list[tuple[str, list[int]]], score_rows: int, command: str) -> None:
    """`--sweep` / `--score`: predicted memory per GPU and program (module docstring), no measured peak."""
    import jax

    from bolt_jax.aot.topology import devices, parse_target
    rows = []
    if score_rows:
        rows.append(_sweep_row("h100", f"scorer, {score_rows} rows x 2048",
                               score_memory(score_rows, devices(parse_target("h100:1")))))
    for gpu, batches in plan:
        target = devices(parse_target(f"{gpu}:1"))
        rows += [_sweep_row(gpu, f"train step, micro-batch {b}", predicted(b, 4, "auto", "unrolled", target))
                 for b in batches]
    lines = [
        "# Memory on one GPU, predicted without one", "",
        f"Commit {commit()}, {time.strftime('%Y-%m-%d')}, jax {jax.__version__}: `{command}`. Train step: TinyLlama, "
        "seq 2048, 4 documents per row, attention auto (Mosaic GPU), unrolled layers, remat none. Scorer: the E-step "
        "scorer's pass (bf16 weights, vocabulary 32004, log-softmax in chunks of 512). Predicted by XLA's GPU compiler "
        "on a CPU machine (the rows of gpu_aot_memory-*.md show it equal to measured peaks). jax's allocator takes 75% "
        "of the device by default: a row above it needs XLA_PYTHON_CLIENT_MEM_FRACTION of at least the share given "
        "(and some headroom).", "",
        "| GPU | program | predicted GiB | device GiB | share of the device | fits the default 75% |",
        "|---|---|---|---|---|---|"]
    lines += [f"| {r['gpu']} | {r['program']} | {r['predicted_gib']:.2f} | {r['device_gib']:.2f} | "
              f"{r['mem_fraction_needed']:.0%} | {'yes' if r['fits_default_fraction'] else 'no'} |" for r in rows]
    write_results(os.path.join(RESULTS, f"gpu_aot_memory_sweep-{time.strftime('%Y-%m-%d')}"),
                  {"command": command, "rows": rows}, "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="", help="comma list of row indices (default: all)")
    p.add_argument("--sweep", default="", help="GPU:micro-batches[/GPU:...]: predictions only (module docstring)")
    p.add_argument("--score", type=int, default=0, help="also the scorer's pass over this many rows on an H100")
    a = p.parse_args()
    import jax
    if jax.default_backend() != "cpu":
        sys.exit("run this on a machine without a GPU (JAX_PLATFORMS=cpu): it compiles for one")
    if a.sweep or a.score:
        try:
            plan = parse_sweep(a.sweep)
        except ValueError as e:
            p.error(str(e))
        sweep(plan, a.score, "python bench/gpu_aot_memory.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
        return
    from bolt_jax.aot.topology import devices, parse_target
    target = devices(parse_target("h100:1"))
    picked = [int(i) for i in a.rows.split(",")] if a.rows else range(len(ROWS))
    rows = []
    from bolt_jax.aot.topology import cudnn_compiles
    for i in picked:
        log, batch, docs, attention, layers = ROWS[i]
        if attention == "auto" and docs == 1 and not cudnn_compiles(CHIPS["h100"]):
            print(f"[{i}] left out: attention auto is cuDNN's here, which this jax cannot compile without the GPU "
                  "(bolt_jax.aot.topology.cudnn_compiles)", flush=True)
            continue
        m = measured(log, batch, attention, layers)
        p_ = predicted(batch, docs, attention, layers, target)
        total = p_["memory_bytes"]["total"] / GIB
        row = {"log": log, "micro_batch": batch, "docs": docs, "attention": attention, "layers": layers,
               "predicted_gib": total, "measured_peak_gib": m["peak_gib"], "ratio": total / m["peak_gib"],
               "measured_commit": m["commit"], "measured_tokens_per_s": m["tokens_per_s"], **p_}
        rows.append(row)
        print(f"[{i}] micro-batch {batch}, {docs} doc(s)/row, {attention}, {layers}: predicted {total:.2f} GiB, "
              f"measured {m['peak_gib']:.2f} GiB (x{row['ratio']:.3f}; compile {p_['compile_s']:.0f} s)", flush=True)
    ratios = [r["ratio"] for r in rows]
    lines = [
        "# H100 memory without an H100: XLA's GPU compiler on a CPU against the measured peak", "",
        f"Commit {commit()}, {time.strftime('%Y-%m-%d')}, jax {jax.__version__}: `python bench/gpu_aot_memory.py` "
        f"(bench/gpu_aot_memory.py's docstring says what is compared). Predicted: the compiled train step's "
        "arguments + outputs - aliased + temporaries, per device. Measured: `peak_bytes_in_use` on one H100 80GB "
        "HBM3 (jax 0.11.2) after the timed steps, from the named log.", "",
        "| micro-batch | docs/row | attention | layers | predicted GiB | measured peak GiB | predicted / measured | "
        "measured at | log |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['micro_batch']} | {r['docs']} | {r['attention']} | {r['layers']} | {r['predicted_gib']:.2f} | "
              f"{r['measured_peak_gib']:.2f} | {r['ratio']:.3f} | {r['measured_commit']} | {r['log']} |" for r in rows]
    if ratios:
        lines += ["", f"Predicted / measured over {len(ratios)} rows: min {min(ratios):.3f}, median "
                      f"{sorted(ratios)[len(ratios) // 2]:.3f}, max {max(ratios):.3f}."]
    write_results(os.path.join(RESULTS, f"gpu_aot_memory-{time.strftime('%Y-%m-%d')}"), {"rows": rows},
                  "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
