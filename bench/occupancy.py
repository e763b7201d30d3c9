"""Useful slot occupancy of the E-step's sampler: one engine stream over many batches against one engine per batch.

    python bench/occupancy.py                  # the E-step defaults: 64 chunks x K=4 per batch, 64 slots, 12 batches
    python bench/occupancy.py --batches 24 --slots 128 --chunks_per_batch 128

Occupancy (slot-steps that decoded a live sample / all slot-steps) is a scheduling statistic: the same on any device
for the same lengths, so the real engine measures it here on a tiny model. Lengths are the bootstrap's: the LM head
is zeroed so every token is equally likely, and `--stops` ids out of `--vocab` end a thought (geometric, mean
vocab / stops = 300, capped at `--new` = 1024). Prompts are short: the schedule does not depend on their length.

- `per_batch`: `generate(scheduler="continuous")` once per batch (the E-step before streaming): every batch ends with
  its slots draining behind its longest thoughts;
- `stream`: `generate_stream` over all batches (the E-step now): the next batch's samples take the freed slots.

Both give the same samples (asserted). Written to bench/results/occupancy-<date>.{json,md}: occupancy and decode
steps per seed, min / median / max over the seeds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import numpy as np
from common import Samples, header, write_results
from prefix_entries import add_workload_arguments, model_and_prompts


def batches_of(prompts: list[list[int]], a, seed: int) -> list[tuple[int, list[list[int]], list[int]]]:
    size = a.chunks_per_batch
    return [(b, prompts[b * size:(b + 1) * size], [seed * 10**6 + b * size + i for i in range(size)])
            for b in range(a.batches)]


def run(model, prompts, a, mode: str, seed: int) -> dict:
    from bolt_jax.sampling import generate, generate_stream
    kw = dict(n=a.k, max_new_tokens=a.new, temperature=1.0, stop_token_ids=list(range(a.stops)),
              scheduler="continuous", decode_slots=a.slots, steps_per_sync=a.steps_per_sync)
    t0 = time.perf_counter()
    tokens, slot_steps, useful, steps = [], 0.0, 0.0, 0
    if mode == "per_batch":
        for _, p, seeds in batches_of(prompts, a, seed):
            r = generate(model, p, prompt_seeds=seeds, **kw)
            tokens += r.tokens
            slot_steps += r.stats["decode_steps"] * r.stats["slots"]
            useful += r.stats["slot_occupancy"] * r.stats["decode_steps"] * r.stats["slots"]
            steps += r.stats["decode_steps"]
    else:
        kw.pop("scheduler")
        for _, r in generate_stream(model, batches_of(prompts, a, seed), **kw):
            tokens += r.tokens
        slot_steps = r.stats["decode_steps"] * r.stats["slots"]
        useful, steps = r.stats["slot_occupancy"] * slot_steps, r.stats["decode_steps"]
    return {"mode": mode, "seed": seed, "seconds": time.perf_counter() - t0, "occupancy": useful / slot_steps,
            "decode_steps": steps, "samples": len(tokens), "mean_length": float(np.mean([len(t) for t in tokens])),
            "tokens_digest": hash(tuple(tuple(t) for t in tokens))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(p)
    p.add_argument("--chunks_per_batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=12)
    a = p.parse_args()
    a.prompts = a.batches * a.chunks_per_batch
    model, prompts = model_and_prompts(a)
    rows = []
    for seed in [int(x) for x in a.seeds.split(",")]:
        pair = [run(model, prompts, a, mode, seed) for mode in ("per_batch", "stream")]
        if pair[0]["tokens_digest"] != pair[1]["tokens_digest"]:
            raise SystemExit(f"seed {seed}: the stream's samples differ from one call per batch")
        for r in pair:
            print(f"{r['mode']:9s} seed {seed}: occupancy {r['occupancy']:.3f}, {r['decode_steps']} decode steps, "
                  f"mean length {r['mean_length']:.0f}, {r['seconds']:.0f} s", flush=True)
        rows += pair
    summary = {mode: {"occupancy": Samples.of([r["occupancy"] for r in rows if r["mode"] == mode]).summary(),
                      "decode_steps": Samples.of([r["decode_steps"] for r in rows if r["mode"] == mode]).summary()}
               for mode in ("per_batch", "stream")}
    ratio = [b["decode_steps"] / s["decode_steps"] for b, s in zip(rows[::2], rows[1::2])]
    summary["per_batch_steps_over_stream"] = Samples.of(ratio).summary()
    lines = [header(), "", f"Useful slot occupancy: {a.batches} batches of {a.chunks_per_batch} prompts x K={a.k}, "
             f"{a.slots} slots, thoughts geometric with mean {a.vocab / a.stops:.0f} capped at {a.new}, chunks of "
             f"{a.steps_per_sync} steps, seeds {a.seeds}; min / median / max over the seeds. The same samples in "
             "both modes (checked).", "", "| mode | occupancy | decode steps |", "|---|---|---|"]
    for mode in ("per_batch", "stream"):
        o, s = summary[mode]["occupancy"], summary[mode]["decode_steps"]
        lines.append(f"| {mode} | {o['min']:.3f} / {o['median']:.3f} / {o['max']:.3f} | "
                     f"{s['min']:,.0f} / {s['median']:,.0f} / {s['max']:,.0f} |")
    q = summary["per_batch_steps_over_stream"]
    lines += ["", f"decode steps, per_batch / stream (seed against seed): min {q['min']:.2f}x, median "
              f"{q['median']:.2f}x, max {q['max']:.2f}x (the same samples in fewer steps: the speed-up of the "
              "sampler where a decode step's time does not depend on how many slots are live)"]
    text = "\n".join(lines) + "\n"
    print(text)
    stem = os.path.join(a.out, f"occupancy-{datetime.date.today().isoformat()}")
    for r in rows:
        r.pop("tokens_digest")
    write_results(stem, {"args": vars(a), "runs": rows, "summary": summary}, text)


if __name__ == "__main__":
    main()
