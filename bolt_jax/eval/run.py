"""The `eval` workflow: few-shot GSM8K / MATH (plain and latent variants) and validation NLL of a model checkpoint;
one results JSON per benchmark and a metrics.json summary in `config.eval.output_dir`."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from bolt_jax.runtime.atomic import atomic_write_text


def default_eval_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "checkpoint": "",  # a model checkpoint (bolt_jax.model.artifact)
        "output_dir": "",  # "" = <run_dir>/eval
        "gsm8k_path": "",  # GSM8K test.jsonl ({question, answer}); "" = skip
        "math_path": "",  # MATH test (.jsonl/.parquet with problem, solution); "" = skip
        "variants": "gsm8k_cot,latent_gsm8k_cot,math_cot,latent_math_cot",
        "limit": 0,  # examples per benchmark (0 = all)
        "num_samples": 1,
        "temperature": 0.0,  # greedy, as the original's few-shot evaluation
        "top_p": 1.0,
        "top_k": 0,
        "max_new_tokens": 512,
        "max_prompt_tokens": 1536,  # the original left-truncated at 1024 silently; here the count is reported
        "truncation": "drop_exemplars",  # or left_truncate
        "validation_path": "",  # raw documents for NLL per token / per char
        "validation_docs": 1000,
        "elbo_samples": 0,  # > 0: also the validation ELBO_1..K per token (E-step code; K = 4 in the paper)
        "elbo_docs": 1000,
        "seed": 1234,
        "scheduler": "continuous",  # the sampler's (bolt_jax.sampling.schedulers): "continuous" or "static"
        "decode_slots": 0,  # continuous: rows decoded together (0 = every request at once, up to 256)
    })


def run_eval(config: ml_collections.ConfigDict) -> dict[str, Any]:
    from bolt_jax import parallel
    from bolt_jax.config import rules_of, runtime_overrides
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.eval import fewshot, prompts, validation
    from bolt_jax.model import artifact as model_ckpt
    e = config.eval
    if not e.checkpoint:
        raise ValueError("config.eval.checkpoint is empty: name a model checkpoint")
    out_dir = e.output_dir or os.path.join(config.run_dir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    mesh = parallel.make_mesh(dict(config.mesh))
    model, _, tok_dir = model_ckpt.load_model(e.checkpoint, mesh, rules=rules_of(config), **runtime_overrides(config))
    tok = load_tokenizer(tok_dir)
    gen = fewshot.sampler_generate_fn(model, tok, mesh, seed=e.seed, scheduler=e.scheduler,
                                      decode_slots=e.decode_slots or None)
    summary: dict[str, Any] = {"checkpoint": os.path.abspath(e.checkpoint)}
    sources = {"gsm8k": (e.gsm8k_path, fewshot.read_gsm8k), "math": (e.math_path, fewshot.read_math)}
    for name in [v.strip() for v in e.variants.split(",") if v.strip()]:
        if name not in prompts.VARIANTS:
            raise ValueError(f"config.eval.variants: unknown {name!r}; known: {sorted(prompts.VARIANTS)}")
        variant = prompts.VARIANTS[name]
        path, reader = sources.get(variant.benchmark, ("", None))
        if not path:
            continue
        result = fewshot.evaluate_fewshot(
            reader(path, e.limit), name, gen, tokenizer=tok, num_samples=e.num_samples, max_new_tokens=e.max_new_tokens,
            temperature=e.temperature, top_p=e.top_p, top_k=e.top_k, max_prompt_tokens=e.max_prompt_tokens,
            truncation=e.truncation, output_path=os.path.join(out_dir, f"{name}.json"))
        summary[name] = result["metrics"]
        m = result["metrics"]
        print(f"{name:20s} accuracy {m['accuracy']:.4f} +- {m['accuracy_se']:.4f} on {m['examples']} examples "
              f"({m['prompts_shortened']} prompts shortened)")
    if e.validation_path:
        from bolt_jax.data.readers import open_corpus
        summary["validation"] = validation.validation_nll(model, tok, open_corpus(e.validation_path),
                                                          limit=e.validation_docs, mesh=mesh)
        print(f"validation NLL {summary['validation']['nll_per_token']:.4f} / token")
        if e.elbo_samples > 0:
            summary["validation_elbo"] = validation.validation_elbo(
                config, e.checkpoint, e.validation_path, k=e.elbo_samples, docs=e.elbo_docs,
                store_dir=os.path.join(out_dir, "elbo_store"))
            print(f"validation ELBO: {summary['validation_elbo']}")
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(summary, indent=2))
    return summary
