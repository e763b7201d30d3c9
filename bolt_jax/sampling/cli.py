"""The `generate` workflow: sample from a model checkpoint for prompts from the command line or a file."""

from __future__ import annotations

import json
import time
from typing import Any

import ml_collections


def default_generate_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "checkpoint": "",
        "prompts": "",  # prompts separated by "|" ("" = read prompts_file)
        "prompts_file": "",  # one prompt per line (JSONL lines with "prompt" also work)
        "n": 1,
        "max_new_tokens": 128,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "greedy": False,
        "stop_strings": "",  # "|"-separated
        "seed": 0,
        "scheduler": "continuous",  # or "static" (bolt_jax.sampling.schedulers)
        "decode_slots": 0,  # continuous: rows decoded together (0 = every request at once, up to 256)
        "output_path": "",  # JSONL of the samples ("" = print only)
    })


def run_generate(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    from bolt_jax import parallel
    from bolt_jax.config import rules_of, runtime_overrides
    from bolt_jax.data.schema import write_jsonl
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.model import artifact as model_ckpt
    from bolt_jax.sampling import generate
    g = config.generate
    if not g.checkpoint:
        raise ValueError("config.generate.checkpoint is empty")
    texts = [p for p in g.prompts.split("|") if p] if g.prompts else []
    if g.prompts_file:
        for line in open(g.prompts_file):
            line = line.rstrip("\n")
            if line.strip():
                texts.append(json.loads(line)["prompt"] if line.lstrip().startswith("{") else line)
    if not texts:
        raise ValueError("no prompts: set config.generate.prompts or config.generate.prompts_file")
    mesh = parallel.make_mesh(dict(config.mesh))
    model, _, tok_dir = model_ckpt.load_model(g.checkpoint, mesh, rules=rules_of(config), **runtime_overrides(config))
    tok = load_tokenizer(tok_dir)
    ids = [[tok.bos_id] + tok.encode(t) for t in texts]
    kw = dict(n=g.n, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
              greedy=g.greedy, stop_token_ids=[tok.eos_id], stop_strings=[s for s in g.stop_strings.split("|") if s],
              seed=g.seed, mesh=mesh, tokenizer=tok.hf, scheduler=g.scheduler, decode_slots=g.decode_slots or None)
    t0 = time.perf_counter()
    r = generate(model, ids, **kw)
    seconds = time.perf_counter() - t0
    rows = []
    for i, text in enumerate(texts):
        for j in range(g.n):
            k = i * g.n + j
            rows.append({"prompt": text, "sample": j, "text": r.texts[k], "logq": float(r.logq[k]),
                         "tokens": int(r.lengths[k]), "done": bool(r.done[k])})
            print(f"--- prompt {i} sample {j} (log q {r.logq[k]:.2f}, {r.lengths[k]} tokens)\n{text}{r.texts[k]}")
    total = int(r.lengths.sum())
    print(f"\n{total} tokens in {seconds:.2f}s (compile included): {total / seconds:,.1f} tokens/s; "
          f"{r.num_truncated_prompts} prompts truncated")
    if g.output_path:
        write_jsonl(g.output_path, rows)
    return rows
