"""How much of an E-step decode step is spent reading the prompts' KV: the case for prefix sharing (issue 18, item 4).

    python bench/decode_traffic.py                      # TinyLlama in bf16, the bootstrap shape, H100 and H200
    python bench/decode_traffic.py --slots 128,256 --prompt 512,1024 --mean_len 300

A decode step at batch B is memory-bound: it reads every weight once (shared by the B rows) and, per row, the keys and
values of every position the row attends to: its prompt and what it has generated so far. The K = 4 posterior
samples of a chunk attend to the same prompt, so without prefix sharing each of them reads the prompt's KV again;
with it the prompt's KV is read once per chunk. This script is a byte model, not a measurement (no accelerator was
lent when it was written): bytes per step = weights + B x (prompt KV + mean generated KV), at the HBM bandwidth of
each device, for thought lengths drawn as the bench's long-tailed workload (geometric with mean `--mean_len`,
capped at `--new`; a row that has written t tokens reads t generated positions, so a thought of length L reads
L (L + 1) / 2 over its life). It prints and writes bench/results/decode_traffic-<date>.{json,md}: the share of a
step's bytes that is prompt KV, and the bound on the decode speed-up from reading each prompt once instead of K
times. Compute (2 x params FLOPs per token) is checked to stay below the device's peak, so the bound is the byte one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import numpy as np

from bolt_jax.model.config import PRESETS, LlamaConfig
from bolt_jax.runtime.chips import CHIPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINYLLAMA = PRESETS["tinyllama_1.1b_bolt"]  # the BoLT vocabulary (32004)
# HBM bandwidth (bytes/s) and dense bf16 peak (FLOP/s): the datasheet figures of bolt_jax.runtime.chips
DEVICES = {f"{key.upper()} SXM": (CHIPS[key].hbm_bytes_per_s, CHIPS[key].peak_flops) for key in ("h100", "h200")}
BYTES = 2  # bf16 weights and cache


def kv_bytes_per_position(m: LlamaConfig) -> int:
    """Keys and values of one position in every layer."""
    return m.num_hidden_layers * 2 * m.kv_size * BYTES


def mean_generated_positions(mean_len: float, cap: int, rng: np.random.Generator, n: int = 200_000) -> float:
    """The mean number of generated positions a live row attends to, averaged over decode steps: a thought of length
    L is live for L steps and reads 1, 2, ..., L positions, so steps weigh long thoughts more."""
    lengths = np.minimum(rng.geometric(1.0 / mean_len, size=n), cap).astype(np.float64)
    return float((lengths * (lengths + 1) / 2).sum() / lengths.sum())


def step_bytes(m: LlamaConfig, slots: int, prompt: int, generated: float, k: int, shared: bool) -> dict[str, float]:
    """Bytes one decode step reads, split into weights, prompt KV and generated KV."""
    per_position = kv_bytes_per_position(m)
    prompt_reads = slots / k if shared else slots  # rows that read a prompt's KV
    return {"weights": m.num_params() * BYTES, "prompt_kv": prompt_reads * prompt * per_position,
            "generated_kv": slots * generated * per_position}


def table(m: LlamaConfig, slots_list: list[int], prompts: list[int], generated: float, k: int) -> list[dict]:
    rows = []
    for slots in slots_list:
        for prompt in prompts:
            plain = step_bytes(m, slots, prompt, generated, k, shared=False)
            shared = step_bytes(m, slots, prompt, generated, k, shared=True)
            total, total_shared = sum(plain.values()), sum(shared.values())
            row = {"slots": slots, "prompt_tokens": prompt, "step_gb": total / 1e9,
                   "share_weights": plain["weights"] / total, "share_prompt_kv": plain["prompt_kv"] / total,
                   "share_generated_kv": plain["generated_kv"] / total, "speedup_bound": total / total_shared,
                   "cache_gb": slots * (prompt + generated) * kv_bytes_per_position(m) / 1e9}
            for name, (bandwidth, peak) in DEVICES.items():
                step_s = max(total / bandwidth, 2 * m.num_params() * slots / peak)
                row[f"{name} tokens/s"] = slots / step_s
                row[f"{name} tokens/s shared"] = slots / max(total_shared / bandwidth,
                                                              2 * m.num_params() * slots / peak)
            rows.append(row)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, generated: float) -> str:
    lines = [f"# Decode-step bytes at the bootstrap shape (a byte model, {datetime.date.today()})", "",
             f"TinyLlama in bf16 ({TINYLLAMA.num_params() / 1e9:.2f}B parameters, "
             f"{kv_bytes_per_position(TINYLLAMA) / 1024:.1f} KiB of KV per position), K = {args.k}, thoughts "
             f"geometric with mean {args.mean_len} capped at {args.new} (a live row attends to {generated:.0f} "
             "generated positions on average over steps). Shares are of one decode step's HBM bytes; the bound is "
             "the step's bytes without prefix sharing over its bytes with it (each prompt's KV read once per K "
             "samples). Tokens/s are the byte model's ceilings, not measurements.", "",
             "| slots | prompt | step GB | weights | prompt KV | generated KV | sharing bound | KV cache GB | "
             "H100 tok/s (shared) | H200 tok/s (shared) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['slots']} | {r['prompt_tokens']} | {r['step_gb']:.2f} | {r['share_weights']:.0%} | "
                     f"{r['share_prompt_kv']:.0%} | {r['share_generated_kv']:.0%} | {r['speedup_bound']:.2f}x | "
                     f"{r['cache_gb']:.1f} | {r['H100 SXM tokens/s'] / 1e3:.0f}k "
                     f"({r['H100 SXM tokens/s shared'] / 1e3:.0f}k) | {r['H200 SXM tokens/s'] / 1e3:.0f}k "
                     f"({r['H200 SXM tokens/s shared'] / 1e3:.0f}k) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", default="64,128,256,512")
    parser.add_argument("--prompt", default="256,512,1024", help="prompt tokens per chunk (prefix + suffix)")
    parser.add_argument("--mean_len", type=float, default=300.0)
    parser.add_argument("--new", type=int, default=1024)
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args()
    generated = mean_generated_positions(args.mean_len, args.new, np.random.default_rng(0))
    rows = table(TINYLLAMA, [int(s) for s in args.slots.split(",")], [int(p) for p in args.prompt.split(",")],
                 generated, args.k)
    md = markdown(rows, args, generated)
    print(md)
    out = os.path.join(ROOT, "bench", "results", f"decode_traffic-{datetime.date.today()}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump({"model": "tinyllama_1.1b_bolt", "k": args.k, "mean_len": args.mean_len, "new": args.new,
                   "mean_generated_positions": generated, "devices": DEVICES, "rows": rows}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(md)
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
