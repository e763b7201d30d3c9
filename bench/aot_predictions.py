"""Predicted step times of TinyLlama's train step and E-step sampler on clusters, from ahead-of-time compiles on this
CPU machine (bolt_jax.aot): 8 x H100 (h100:8, XLA's GPU compiler through jax's CUDA plugin), a v5e-64 slice
(v5e:8x8), a v5p-128 slice (v5p:4x4x8); `--only 8xH100-cpu` the older stand-in, 8 CPU devices with the H100's
figures. Roofline bounds from the compiled programs, not measurements.

    python bench/aot_predictions.py                          # all three, one after another (minutes each)
    python bench/aot_predictions.py --only v5e-64 --timeout 3600
    python bench/aot_predictions.py --only v5e-64,v5p-128 --decode_slots_per_chip 256 --tag slots256
    python bench/aot_predictions.py --only v5e-64,v5p-128 --decode_slots_per_chip 256 --prefix_sharing \
        --tag slots256_shared

Each cluster runs `python -m bolt_jax.main --config configs/train_synthetic.py:tinyllama_1.1b_bolt
--config.dry_run=True --config.aot_topology=...` in its own process with a timeout (fsdp over every chip, no
gradient accumulation, seq 2048 with 4 documents per row as BENCHMARKS.md's headline), keeping its console output
and JSON report, and writes bench/results/aot_predictions-<date>.{json,md}: per cluster and function the memory per
chip, the collectives' ring bytes, the roofline step time range and the tokens/s and MFU at both ends, then the raw
output.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1024 ** 3

# name -> (topology, chip, micro-batch per chip, remat, why)
CLUSTERS = {
    "8xH100": ("h100:8", "", 16, "none",
               "as measured on one H100 in BENCHMARKS.md (57 GiB at micro-batch 16, which the GPU compiler predicts "
               "without a GPU: bench/gpu_aot_memory.py); our GPU kernels, compiled without autotuning"),
    "1xH100": ("h100:1", "", 16, "none", "the headline's train step (measured: 78.5k tokens/s), and the E-step's "
               "sampler on one GPU, the shape of issue 18's target"),
    "8xH100-cpu": ("cpu:8", "h100", 16, "none",
                   "the stand-in used before GPU topologies: the CPU compiler's memory, with the XLA reference "
                   "attention, does not apply to the GPUs"),
    "v5e-64": ("v5e:8x8", "", 8, "full", "16 GiB per chip, so full remat"),
    "v5p-128": ("v5p:4x4x8", "", 8, "dots", "95 GiB per chip, so only the matmul outputs are kept"),
}


def command(topology: str, chip: str, micro_batch: int, remat: str, chips: int, report: str,
            decode_slots_per_chip: int = 0, prefix_sharing: bool = False) -> list[str]:
    slots = [f"--config.estep.decode_slots={decode_slots_per_chip * chips}"] if decode_slots_per_chip else []
    slots += ["--config.estep.prefix_sharing=True"] if prefix_sharing else []
    return [sys.executable, "-m", "bolt_jax.main", "--config", "configs/train_synthetic.py:tinyllama_1.1b_bolt",
            "--config.dry_run=True", f"--config.aot_topology={topology}", f"--config.aot_chip={chip}",
            "--config.data.seq_len=2048", "--config.data.synthetic_docs_per_row=4",
            f"--config.train.global_batch_size={micro_batch * chips}", f"--config.model.remat_policy={remat}",
            f"--config.aot_report={report}", f"--config.run_dir={os.path.dirname(report)}/run"] + slots


def run_one(name: str, timeout: int, decode_slots_per_chip: int = 0, prefix_sharing: bool = False) -> dict:
    from bolt_jax.aot.topology import parse_target
    topology, chip, micro_batch, remat, why = CLUSTERS[name]
    chips = parse_target(topology, chip).num_devices
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "report.json")
        cmd = command(topology, chip, micro_batch, remat, chips, report_path, decode_slots_per_chip, prefix_sharing)
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            output, rc = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            output, rc = f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout} s", None
        wall = time.perf_counter() - t0
        report = json.load(open(report_path)) if os.path.exists(report_path) else None
    print(f"{name}: exit {rc}, {wall:.0f} s", flush=True)
    return {"name": name, "topology": topology, "chip": chip, "micro_batch_per_chip": micro_batch, "remat": remat,
            "why": why, "command": " ".join(cmd[1:]), "exit": rc, "wall_s": wall, "report": report,
            "output": output}


def _ms(x: float) -> str:
    return f"{x * 1e3:,.1f}"


def _loop_steps(f: dict) -> int:
    """The decode chunk's steps (its loop's trip count as taken), so its row shows one decode step."""
    return f["unknown_loops_taken_as"] if f.get("loops_of_unknown_trip_count") else 1


def table(runs: list[dict]) -> str:
    head = ("| cluster | function | memory per chip | fits | ring bytes per chip | compute / memory / interconnect "
            "(ms) | step (ms), overlapped .. not | tokens/s | MFU | compile |\n" + "|---" * 10 + "|")
    rows = []
    for run in runs:
        if run["report"] is None:
            rows.append(f"| {run['name']} | (no report: exit {run['exit']}) | | | | | | | | |")
            continue
        for f in run["report"]["functions"]:
            mem = f.get("memory_bytes") or {}
            r = f.get("roofline")
            fits = {True: "yes", None: "not judged (CPU compiler)"}.get(f["fits"], f"no: {f.get('does_not_fit')}")
            memory = f"{mem['total'] / GIB:.1f} GiB" if mem else "-"
            if r is None:
                rows.append(f"| {run['name']} | {f['name']} | {memory} | {fits} | | | | | | {f['compile_s']:.0f} s |")
                continue
            n = _loop_steps(f)
            rows.append(
                f"| {run['name']} | {f['name']}{' step' if n > 1 else ''} | {memory} | {fits} | "
                f"{f['ring_bytes_per_chip'] / n / 1e9:.2f} GB | "
                f"{_ms(r['compute_s'] / n)} / {_ms(r['memory_s'] / n)} / {_ms(r['comm_s'] / n)} | "
                f"{_ms(r['step_s_min'] / n)} .. {_ms(r['step_s_max'] / n)} | "
                f"{r['tokens_per_s_min']:,.0f} .. {r['tokens_per_s_max']:,.0f} | "
                f"{r['mfu_min']:.0%} .. {r['mfu_max']:.0%} | {f['compile_s']:.0f} s |")
    return head + "\n" + "\n".join(rows)


def markdown(runs: list[dict], commit: str) -> str:
    out = [f"# Predicted step times on clusters (ahead-of-time compile), {datetime.date.today()}, commit {commit}",
           "", "Roofline bounds from programs compiled on a 2-core CPU machine for each topology, not measurements: "
           "compute = our FLOP count / bf16 peak, memory = HBM bytes of the compiled HLO / HBM bandwidth, "
           "interconnect = ring bytes of its collectives / one-way interconnect bandwidth (bolt_jax/aot). "
           "Train step: one optimizer step (no accumulation); prefill: one E-step group of prompts; decode step: one "
           "step of every slot, from a chunk of 16 with every slot live (tokens/s: decoded tokens of all slots). "
           "The train step: fsdp over every chip; the E-step's sampler: on `sampling_mesh` (data parallel, bf16 "
           "weights in full on every chip), at the E-step's default slots (64 per chip).", "", table(runs), ""]
    for run in runs:
        out += [f"## {run['name']}: {run['topology']}, micro-batch {run['micro_batch_per_chip']} per chip, "
                f"remat {run['remat']}", "", f"Why: {run['why']}.", "",
                f"`python {run['command']}` (exit {run['exit']}, {run['wall_s']:.0f} s)", "",
                "```", run["output"].strip(), "```", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="8xH100,v5e-64,v5p-128", help=f"comma list of {', '.join(CLUSTERS)}")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cluster")
    parser.add_argument("--decode_slots_per_chip", type=int, default=0,
                        help="the E-step's decode slots per chip (0: the E-step's default, 64 at this shape)")
    parser.add_argument("--prefix_sharing", action="store_true", help="the E-step's sampler with prefix sharing")
    parser.add_argument("--tag", default="", help="appended to the results' file name (another setting, same day)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CLUSTERS]
    if unknown:
        parser.error(f"unknown cluster(s) {unknown}; choose from {list(CLUSTERS)}")
    sys.path.insert(0, ROOT)
    from bench.common import commit
    runs = [run_one(name, args.timeout, args.decode_slots_per_chip, args.prefix_sharing) for name in names]
    stem = f"aot_predictions{args.tag and '_' + args.tag}-{datetime.date.today()}"
    out = os.path.join(ROOT, "bench", "results", stem)
    with open(out + ".json", "w") as f:
        json.dump({"commit": commit(), "runs": runs}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(runs, commit()))
    print(table(runs))
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
