"""Where the time goes: the device kernels of a jax profiler trace (perfetto JSON), grouped and ranked.

    python bench/trace_summary.py DIR [--top 25]

Reads every `perfetto_trace.json.gz` under DIR (bench/train_step.py --profile writes them), keeps the events of the
GPU streams, and prints total time per kernel name (fusions folded by their leading op), share of device time, and
call count. The first question a slow step asks: is it the matmuls, attention, or the glue between them?
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re


def kernel_group(name: str) -> str:
    """Folds numbered fusions and kernel variants into one row each (`loop_add_fusion.12` -> `loop_add_fusion`)."""
    name = re.sub(r"[._]\d+$", "", name)
    name = re.sub(r"\.\d+", "", name)
    if "bolt_flash" in name:
        return name
    for key in ("gemm", "cutlass", "nvjet", "sm90_xmma", "cudnn", "flash", "triton", "nccl", "memcpy", "memset"):
        if key in name.lower():
            return f"[{key}] {name[:60]}"
    return name[:80]


def summarize(path: str, top: int) -> None:
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name"):
            threads[(e.get("pid"), e.get("tid") if e["name"] == "thread_name" else None)] = e["args"]["name"]
    gpu_pids = {pid for (pid, tid), n in threads.items() if tid is None and ("/device:GPU" in n or "GPU" in n)}
    by_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    total = 0.0
    for e in events:
        if e.get("ph") != "X" or e.get("pid") not in gpu_pids:
            continue
        thread = threads.get((e["pid"], e.get("tid")), "")
        if "Stream" not in thread and "stream" not in thread:
            continue
        dur = float(e.get("dur", 0))
        g = by_name[kernel_group(e["name"])]
        g[0] += dur
        g[1] += 1
        total += dur
    if not total:
        names = sorted({n for (pid, tid), n in threads.items() if tid is None})
        print(f"\n{path}: no GPU stream events; processes in the trace: {names[:12]}")
        return
    print(f"\n{path}: {total / 1e3:.1f} ms of kernels on GPU streams")
    print(f"{'kernel (grouped)':<70} {'ms':>9} {'share':>7} {'calls':>6}")
    for name, (dur, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{name:<70} {dur / 1e3:9.2f} {dur / max(total, 1e-9):7.1%} {n:6d}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    paths = sorted(glob.glob(os.path.join(a.dir, "**", "perfetto_trace.json.gz"), recursive=True))
    if not paths:
        raise SystemExit(f"no perfetto_trace.json.gz under {a.dir}")
    for path in paths:
        summarize(path, a.top)


if __name__ == "__main__":
    main()
