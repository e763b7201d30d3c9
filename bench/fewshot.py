"""Few-shot evaluation throughput: GSM8K prompts per second through our sampler, the paper's variant and lengths.

    python bench/fewshot.py --smoke                  # the tiny model on CPU: 16 GSM8K test prompts, 64 new tokens
    python bench/fewshot.py                          # TinyLlama shapes (random weights), all 1319 prompts, 1024 new

The model has random weights, so it never writes the answer pattern and every prompt runs to `--new` tokens unless a
stop string appears: the work per prompt is the variant's prompt (8 synthetic exemplars, left-truncated to 1024
tokens) plus up to `--new` decoded tokens, the worst case of a real evaluation. Each scheduler runs once to compile,
then `--repeats` times; prompts/s and generated tokens/s as min / median / max over the repeats, written to
bench/results/fewshot-<date>-<device>.{json,md}. The wall time of the full GSM8K test set follows from prompts/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

from common import header

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSM8K = "/work/shared/data/gsm8k/test.jsonl"


def model_and_tokenizer(a):
    """A random model of the preset with the test tokenizer (vocab 512 + BoLT tokens on the smoke run)."""
    import tempfile

    from bolt_jax import parallel
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.model import create_model
    from bolt_jax.model.config import preset
    sys.path.insert(0, ROOT)  # the test suite's tokenizer builder (tests/helpers.py)
    from tests.helpers import build_tokenizer
    tok = load_tokenizer(build_tokenizer(tempfile.mkdtemp(prefix="bench_fewshot_"), vocab_size=512))
    cfg = preset(a.preset, vocab_size=len(tok.hf), compute_dtype=a.dtype,
                 max_position_embeddings=max(2048, a.prompt + a.new))
    mesh = parallel.make_mesh()
    return create_model(cfg, mesh, seed=0), tok, mesh


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b_bolt")
    p.add_argument("--variant", default="gsm8k_cot_synthetic_alt")
    p.add_argument("--limit", type=int, default=0, help="prompts (0 = all 1319)")
    p.add_argument("--new", type=int, default=1024)
    p.add_argument("--prompt", type=int, default=1024, help="max prompt tokens (left-truncated, as the original)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--scheduler", default="static,continuous")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, 16 prompts, 64 new tokens")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    a = p.parse_args()
    if a.smoke:
        a.preset, a.limit, a.new, a.prompt, a.dtype = "tiny", 16, 64, 512, "float32"

    import jax

    from bolt_jax.eval import fewshot
    model, tok, mesh = model_and_tokenizer(a)
    examples = fewshot.read_gsm8k(GSM8K, a.limit)
    results = {}
    for scheduler in a.scheduler.split(","):
        gen = fewshot.sampler_generate_fn(model, tok, mesh, scheduler=scheduler)
        runs = []
        for r in range(a.repeats + 1):  # run 0 compiles
            t0 = time.perf_counter()
            out = fewshot.evaluate_fewshot(examples, a.variant, gen, tokenizer=tok, max_new_tokens=a.new,
                                           max_prompt_tokens=a.prompt)
            seconds = time.perf_counter() - t0
            new_tokens = sum(len(tok.encode(o)) for rec in out["records"] for o in rec["outputs"])
            row = {"seconds": seconds, "prompts_per_s": len(examples) / seconds,
                   "generated_tokens_per_s": new_tokens / seconds}
            print(f"  {scheduler} run {r}{' (compile)' if r == 0 else ''}: {row['prompts_per_s']:.2f} prompts/s",
                  flush=True)
            if r:
                runs.append(row)
        values = [x["prompts_per_s"] for x in runs]
        results[scheduler] = {"runs": runs, "prompts_per_s": {"min": min(values), "median": statistics.median(values),
                                                              "max": max(values)},
                              "gsm8k_1319_minutes_at_median": 1319 / statistics.median(values) / 60}
    lines = [f"# Few-shot throughput: {a.variant}, {a.preset} (random weights, {a.dtype}), {len(examples)} prompts, "
             f"prompts <= {a.prompt} tokens, <= {a.new} new", "", header(), "",
             "| scheduler | prompts/s (min / median / max) | GSM8K test (1319 prompts) at the median |",
             "|---|---|---|"]
    for name, r in results.items():
        q = r["prompts_per_s"]
        lines.append(f"| {name} | {q['min']:.2f} / {q['median']:.2f} / {q['max']:.2f} | "
                     f"{r['gsm8k_1319_minutes_at_median']:.1f} min |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    device = jax.devices()[0].device_kind.replace(" ", "_").lower()
    stem = os.path.join(a.out, f"fewshot-{datetime.date.today().isoformat()}-{device}{'-smoke' if a.smoke else ''}")
    os.makedirs(a.out, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump({"args": vars(a), "header": header(), "results": results}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
