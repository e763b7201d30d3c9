"""Prefix sharing's prompt entries: how busy the decode slots stay, and what that predicts with the compiler's bytes.

    python bench/prefix_entries.py                       # 64 slots, K=4, entries 16 / 24 / 32, three seeds (~5 min CPU)
    python bench/prefix_entries.py --aot 0=bench/results/aot_prefix_sharing_False-v5p_2x2x1-2026-12-06.json ...

With prefix sharing a prompt holds its entry until its last sample ends; with E entries for S slots and K samples per
prompt, E = S / K leaves no spare entry (a slot whose next prompt finds none waits), E = 2 S / K (the default) rarely
waits but every decode step reads and scores all E x K member places. Which one pays is a product of two figures:

- **useful slot occupancy** (slot-steps that decoded a live sample / all slot-steps): a scheduling statistic, the same
  on any device, measured here on the real engine (`generate(scheduler="continuous")`) with the bootstrap's length
  distribution: a tiny model with its LM head zeroed draws every token uniformly, and `--stops` ids out of `--vocab`
  end a thought, so lengths are geometric with mean vocab / stops (300), capped at `--new` (1024); prompts are short
  because the schedule does not depend on their length;
- **bytes per decode chunk** from an ahead-of-time compile (`--config.aot_topology`, bolt_jax.aot) at each entry
  count, given as `--aot ENTRIES_PER_DEVICE=report.json` (0 = no sharing): the predicted sampled tokens/s per device
  is occupancy x slots x steps / the roofline time of one chunk (its min and max).

Printed and written to bench/results/prefix_entries-<date>.{json,md}: occupancy min / median / max over the seeds,
decode steps, entry waits, and the prediction where a report is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import numpy as np
from common import Samples, header, write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """The long-tailed thought workload both occupancy benches use (see the module docstring)."""
    p.add_argument("--slots", type=int, default=64, help="decode slots (one device's share at the E-step's defaults)")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--prompt_len", type=int, default=16)
    p.add_argument("--new", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=3000)
    p.add_argument("--stops", type=int, default=10, help="stop ids among the vocabulary: mean length vocab / stops")
    p.add_argument("--steps_per_sync", type=int, default=16)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))


def model_and_prompts(a):
    import jax.numpy as jnp
    from flax import nnx

    from bolt_jax.model import Llama, preset
    cfg = preset("tiny", vocab_size=a.vocab, max_position_embeddings=a.prompt_len + a.new + 16)
    model = Llama(cfg, nnx.Rngs(0))
    model.lm_head.kernel[...] = jnp.zeros_like(model.lm_head.kernel[...])  # every next token equally likely
    rng = np.random.default_rng(0)
    prompts = [rng.integers(a.stops, a.vocab, size=a.prompt_len).tolist() for _ in range(a.prompts)]
    return model, prompts


def run(model, prompts, a, entries: int, seed: int) -> dict:
    from bolt_jax.sampling import generate
    t0 = time.perf_counter()
    out = generate(model, prompts, n=a.k, max_new_tokens=a.new, temperature=1.0, stop_token_ids=list(range(a.stops)),
                   seed=seed, scheduler="continuous", decode_slots=a.slots, steps_per_sync=a.steps_per_sync,
                   prefix_sharing=entries > 0, prompt_entries=entries or None)
    return {"entries": entries, "seed": seed, "seconds": time.perf_counter() - t0,
            "occupancy": out.stats["slot_occupancy"], "decode_steps": out.stats["decode_steps"],
            "entry_waits": out.stats.get("entry_waits", 0), "sampled_tokens": int(out.lengths.sum()),
            "mean_length": float(out.lengths.mean())}


def predicted(aot_path: str, occupancy: dict, slots_per_device: int) -> dict:
    """Sampled tokens/s per device: occupancy x slots x steps per chunk / the chunk's roofline time."""
    if not os.path.isabs(aot_path) and not os.path.exists(aot_path):
        aot_path = os.path.join(ROOT, aot_path)  # a path from the repository root
    with open(aot_path) as f:
        report = json.load(f)
    decode = next(f for f in report["functions"] if f["name"] == "decode")
    roof = decode["roofline"]
    steps = decode["tokens"] / (slots_per_device * report["chips"])
    per_chunk = slots_per_device * steps
    return {"report": os.path.relpath(aot_path, ROOT), "what": decode["what"],
            "hbm_gb_per_chunk": decode["hbm_bytes_per_chip"] / 1e9,
            "ring_gb_per_chunk": decode["ring_bytes_per_chip"] / 1e9,
            "chunk_ms": {"min": roof["step_s_min"] * 1e3, "max": roof["step_s_max"] * 1e3},
            "tokens_per_s": {k: occupancy[k] * per_chunk / roof["step_s_max" if k == "min" else "step_s_min"]
                             for k in ("min", "median", "max")}}


def markdown(a, rows: list[dict], summary: dict) -> str:
    lines = [header(), "", f"Prefix sharing's prompt entries: {a.slots} slots, K={a.k}, {a.prompts} prompts, "
             f"thoughts geometric with mean {a.vocab / a.stops:.0f} capped at {a.new}, chunks of {a.steps_per_sync} "
             f"steps, seeds {a.seeds}.", "",
             "| entries | occupancy min / median / max | decode steps (median) | entry waits (median) | "
             "predicted tokens/s per device (min / median / max) |", "|---|---|---|---|---|"]
    for key, s in summary.items():
        o = s["occupancy"]
        p = s.get("predicted", {}).get("tokens_per_s")
        pred = f"{p['min']:,.0f} / {p['median']:,.0f} / {p['max']:,.0f}" if p else "(no AOT report)"
        name = "none (unshared)" if key == 0 else str(key)
        lines.append(f"| {name} | {o['min']:.3f} / {o['median']:.3f} / {o['max']:.3f} | {s['decode_steps']:.0f} | "
                     f"{s['entry_waits']:.0f} | {pred} |")
    lines += ["", "Occupancy: slot-steps that decoded a live sample over all slot-steps (the real engine, any device). "
              "Predicted: occupancy x slots x steps per chunk / the roofline time of one decode chunk from the "
              "ahead-of-time compile named in the JSON (every slot live; the min uses the slower bound)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(p)
    p.add_argument("--entries", default="0,16,24,32", help="prompt entries to compare (0 = no prefix sharing)")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--aot", action="append", default=[], help="ENTRIES=report.json (entries as in --entries)")
    a = p.parse_args()
    entries = [int(x) for x in a.entries.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    aot = dict(item.split("=", 1) for item in a.aot)
    model, prompts = model_and_prompts(a)
    rows = []
    for seed in seeds:
        for e in entries:
            rows.append(run(model, prompts, a, e, seed))
            r = rows[-1]
            print(f"entries {e:3d} seed {seed}: occupancy {r['occupancy']:.3f}, {r['decode_steps']} steps, "
                  f"{r['entry_waits']} entry waits, mean length {r['mean_length']:.0f}, {r['seconds']:.1f} s",
                  flush=True)
    summary = {}
    for e in entries:
        mine = [r for r in rows if r["entries"] == e]
        summary[e] = {"occupancy": Samples.of([r["occupancy"] for r in mine]).summary(),
                      "decode_steps": statistics.median(r["decode_steps"] for r in mine),
                      "entry_waits": statistics.median(r["entry_waits"] for r in mine)}
        if str(e) in aot:
            summary[e]["predicted"] = predicted(aot[str(e)], summary[e]["occupancy"], a.slots)
    text = markdown(a, rows, summary)
    print(text)
    stem = os.path.join(a.out, f"prefix_entries-{datetime.date.today().isoformat()}")
    write_results(stem, {"args": vars(a), "runs": rows, "summary": summary}, text)


if __name__ == "__main__":
    main()
